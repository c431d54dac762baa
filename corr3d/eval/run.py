"""``make eval``: every downstream task for the pretrained backbone and the finetuned adapter, plus the report.

``run_eval(cfg)`` = for each model: for each task: :func:`run_eval_part` (one JSON part each), then
:func:`gather_eval` (metrics.json, CSVs, report.md, plots). A SLURM array job can run ``run_eval_part(cfg, task,
model)`` per element and ``gather_eval(cfg, parts_dir)`` at the end.

Metric keys are flat: ``pose/acc@1cm1deg``, ``tracking/aj``, ``semantic/pck@0.10`` (real datasets) and the same keys
under ``offline/`` for the synthetic offline suite (e.g. ``offline/tracking/aj``); equivariance keys come from
``corr3d.eval.equivariance`` (``equivariance/ape``...). Values are percentages.
"""
from __future__ import annotations

import datetime as _dt
import gc
import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from corr3d.utils import report

log = logging.getLogger(__name__)

TASKS = ("pose", "tracking", "semantic", "equivariance")
HEADLINE = {
    "pose": ["acc@1cm1deg", "acc@3cm3deg", "acc@5cm5deg"],
    "tracking": ["aj", "delta_avg", "oa"],
    "semantic": ["pck@0.05", "pck@0.10", "pck@0.15", "pck_bbox@0.10", "same/pck@0.10", "spair/pck@0.10",
                 "spair/pck_img@0.10"],
    "equivariance": ["ape", "pcdp@0.05", "pcdp@0.1", "pcdp@0.2"],
}
LOWER_IS_BETTER = ("ape", "err")


def _say(msg: str) -> None:
    print(f"[corr3d eval] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------------- models
def _adapter_from(path: str | Path) -> Path | None:
    path = Path(path)
    if path.is_dir():
        for cand in (path / "adapter.safetensors", path / "latest" / "adapter.safetensors"):
            if cand.exists():
                return cand
        return None
    return path if path.exists() else None


def resolve_adapter(cfg: DictConfig) -> Path | None:
    """The adapter to evaluate as "finetuned": ``eval.ckpt`` or the experiment's latest run (same backbone only)."""
    if cfg.eval.ckpt:
        found = _adapter_from(cfg.eval.ckpt)
        if found is None:
            raise FileNotFoundError(f"eval.ckpt={cfg.eval.ckpt}: no adapter.safetensors there")
        return found
    if cfg.eval.backbone and cfg.eval.backbone != cfg.model.backbone:
        return None
    from corr3d.utils.run_dir import latest_run

    run = latest_run(cfg.output_dir, cfg.experiment)
    return _adapter_from(run) if run is not None else None


def model_names(cfg: DictConfig) -> list[str]:
    names = []
    for name in cfg.eval.models:
        if name == "finetuned" and resolve_adapter(cfg) is None:
            _say(f"no adapter found (runs/{cfg.experiment}/latest/adapter.safetensors or eval.ckpt); "
                 "evaluating the pretrained backbone only")
            continue
        names.append(str(name))
    return names


def eval_device(cfg: DictConfig) -> torch.device:
    if cfg.eval.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.eval.device)


def load_eval_model(cfg: DictConfig, name: str):
    """Compared model ``name`` (:func:`corr3d.models.compared_model`): every model of one evaluation shares the
    finetuned adapter's resolution, layer and norm (or the experiment's when there is no adapter)."""
    from corr3d.models import compared_model

    adapter = resolve_adapter(cfg)
    if name == "finetuned" and adapter is None:
        raise FileNotFoundError("no adapter to evaluate as 'finetuned'")
    model = compared_model(name, cfg.model, adapter=adapter, seed=int(cfg.seed),
                           backbone=None if adapter is not None else cfg.eval.backbone)
    return model.to(eval_device(cfg)).eval()


def describe_model(cfg: DictConfig, name: str, model=None) -> str:
    if model is not None and hasattr(model, "describe"):
        text = model.describe()
    else:
        text = cfg.eval.backbone or cfg.model.backbone
    if name == "finetuned":
        text += f"; adapter {resolve_adapter(cfg)}"
    return text


# ------------------------------------------------------------------------------------------------------- data
def output_dir(cfg: DictConfig) -> Path:
    if cfg.eval.out_dir:
        return Path(cfg.eval.out_dir)
    adapter = resolve_adapter(cfg)
    if adapter is not None and (adapter.parent / "config.yaml").exists():
        return adapter.parent / "eval"
    from corr3d.utils.run_dir import latest_run

    run = latest_run(cfg.output_dir, cfg.experiment)
    if run is not None and not cfg.eval.backbone:
        return run / "eval"
    tag = f"_{cfg.eval.backbone}" if cfg.eval.backbone else ""
    return Path(cfg.output_dir) / cfg.experiment / f"eval{tag}"


def _suite(cfg: DictConfig, task: str) -> dict[str, Path]:
    from corr3d.eval.offline_suite import ensure_offline_suite

    return ensure_offline_suite(cfg.eval.offline.dir, [task], force=bool(cfg.eval.offline.regenerate))


def datasets_for(cfg: DictConfig, task: str, messages: list[str] | None = None) -> list[dict]:
    """[{name, prefix, source, ...paths}] for a task: the real dataset when present, the offline suite if enabled."""
    from corr3d.eval.datasets import onepose, pfpascal, spair, tapvid

    messages = messages if messages is not None else []
    out: list[dict] = []
    e = cfg.eval
    if task == "pose":
        if e.real_data:
            if onepose.data_present(e.pose.data_dir, e.pose.sfm_dir):
                out.append({"name": "onepose_lowtexture", "prefix": "pose/", "source": "real",
                            "data_dir": Path(e.pose.data_dir), "sfm_dir": Path(e.pose.sfm_dir)})
            else:
                messages.append("pose: real data missing — " + onepose.DOWNLOAD_HINT.format(
                    data_dir=e.pose.data_dir, sfm_dir=e.pose.sfm_dir))
        if e.offline.enabled:
            p = _suite(cfg, task)
            out.append({"name": "offline_onepose", "prefix": "offline/pose/", "source": "offline",
                        "data_dir": p["onepose_data"], "sfm_dir": p["onepose_sfm"]})
    elif task == "tracking":
        if e.real_data:
            if Path(e.tracking.data).exists():
                out.append({"name": "tapvid_davis", "prefix": "tracking/", "source": "real", "path": Path(e.tracking.data)})
            else:
                messages.append("tracking: real data missing — " + tapvid.DOWNLOAD_HINT.format(path=e.tracking.data))
        if e.offline.enabled:
            p = _suite(cfg, task)
            out.append({"name": "offline_tapvid", "prefix": "offline/tracking/", "source": "offline", "path": p["tapvid"]})
    elif task == "semantic":
        if e.real_data:
            if pfpascal.data_present(e.semantic.pfpascal_dir):
                out.append({"name": "pfpascal", "prefix": "semantic/", "source": "real",
                            "path": Path(e.semantic.pfpascal_dir)})
            else:
                messages.append("semantic: PF-PASCAL missing — " + pfpascal.DOWNLOAD_HINT.format(
                    path=e.semantic.pfpascal_dir))
            if spair.data_present(e.semantic.spair_dir, e.semantic.spair_split):
                out.append({"name": "spair", "prefix": "semantic/spair/", "source": "real",
                            "path": Path(e.semantic.spair_dir)})
            else:
                messages.append("semantic: SPair-71k missing — " + spair.DOWNLOAD_HINT.format(path=e.semantic.spair_dir))
        if e.offline.enabled:
            p = _suite(cfg, task)
            out.append({"name": "offline_pfpascal", "prefix": "offline/semantic/", "source": "offline",
                        "path": p["pfpascal"]})
            out.append({"name": "offline_spair", "prefix": "offline/semantic/spair/", "source": "offline",
                        "path": p["spair"]})
    return out


def selected_tasks(cfg: DictConfig) -> list[str]:
    tasks = [str(t) for t in cfg.eval.tasks] if cfg.eval.tasks else list(TASKS)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown eval task(s) {unknown}; known: {', '.join(TASKS)}")
    return tasks


# ------------------------------------------------------------------------------------------------------- parts
def _run_dataset(cfg: DictConfig, model, task: str, ds: dict, desc: str) -> tuple[dict, dict]:
    offline = ds["source"] == "offline"
    if task == "pose":
        from corr3d.eval.datasets.onepose import list_objects
        from corr3d.eval.pose import PoseSettings, evaluate_objects

        objects = list_objects(ds["data_dir"], ds["sfm_dir"], list(cfg.eval.pose.objects) or None,
                               cfg.eval.pose.ref_seq, cfg.eval.pose.test_seq)
        return evaluate_objects(model, objects, PoseSettings.from_config(cfg), ds["prefix"], desc)
    if task == "tracking":
        from corr3d.eval.datasets.tapvid import iter_videos
        from corr3d.eval.tracking import TrackingSettings, evaluate_videos

        t = cfg.eval.tracking
        settings = (TrackingSettings.from_config(cfg, frame_size=cfg.eval.offline.tracking_frame_size or (0, 0),
                                                 argmax_radius=cfg.eval.offline.tracking_argmax_radius)
                    if offline else TrackingSettings.from_config(cfg))
        if offline and not cfg.eval.offline.tracking_frame_size:
            settings.frame_size = None
        videos = iter_videos(ds["path"], t.query_mode, int(t.query_stride), str(t.format),
                             t.frames_dir, None if t.max_videos is None else int(t.max_videos))
        return evaluate_videos(model, videos, settings, ds["prefix"], desc)
    if task == "semantic":
        from corr3d.eval.semantic import (
            SemanticMatcher,
            SemanticSettings,
            evaluate_pfpascal,
            evaluate_spair,
        )

        settings = SemanticSettings.from_config(cfg)
        if offline:
            settings.image_size = int(cfg.eval.offline.semantic_image_size)
        matcher = SemanticMatcher(model, settings)
        if ds["name"].endswith("pfpascal"):
            return evaluate_pfpascal(matcher, ds["path"], list(cfg.eval.semantic.pfpascal_views), ds["prefix"], desc)
        return evaluate_spair(matcher, ds["path"], str(cfg.eval.semantic.spair_split), ds["prefix"], desc)
    raise ValueError(task)


def run_eval_part(cfg: DictConfig, task: str, model_name: str, model=None,
                  parts_dir: str | Path | None = None) -> dict:
    """Evaluate one model on one task (all of its datasets); returns and (optionally) writes the part JSON."""
    torch.manual_seed(int(cfg.eval.seed))
    messages: list[str] = []
    own_model = model is None
    if own_model:
        model = load_eval_model(cfg, model_name)
    part: dict[str, Any] = {"task": task, "model": model_name, "description": describe_model(cfg, model_name, model),
                            "metrics": {}, "tables": {}, "timings": {}, "datasets": [], "messages": messages}
    with torch.no_grad():
        if task == "equivariance":
            from corr3d.eval.equivariance import evaluate_equivariance

            start = time.perf_counter()
            part["metrics"].update({k: float(v) for k, v in evaluate_equivariance(model, cfg).items()})
            part["timings"]["equivariance"] = time.perf_counter() - start
            part["datasets"].append({"name": "equivariance", "source": "rendered"})
        else:
            for ds in datasets_for(cfg, task, messages):
                start = time.perf_counter()
                metrics, tables = _run_dataset(cfg, model, task, ds, f"{model_name} {ds['name']}")
                part["timings"][ds["name"]] = time.perf_counter() - start
                part["metrics"].update(metrics)
                part["tables"].update({f"{ds['name']}__{k}": v for k, v in tables.items()})
                part["datasets"].append({"name": ds["name"], "source": ds["source"], "prefix": ds["prefix"]})
    for msg in messages:
        _say(msg)
    part = report.to_jsonable(part)
    if parts_dir is not None:
        report.write_json(Path(parts_dir) / f"{task}__{model_name}.json", part)
    if own_model:
        del model
        gc.collect()
    return part


# ------------------------------------------------------------------------------------------------------- gather
def _headline_keys(metrics: dict[str, dict[str, float]]) -> dict[str, list[str]]:
    keys_all = {k for m in metrics.values() for k in m}
    out: dict[str, list[str]] = {}
    for task, leaves in HEADLINE.items():
        for scope in ("", "offline/"):
            base = f"{scope}{task}/"
            keys = [base + leaf for leaf in leaves if base + leaf in keys_all]
            if keys:
                out[f"{scope}{task}"] = keys
    return out


def gather_eval(cfg: DictConfig, parts_dir: str | Path, out_dir: str | Path | None = None) -> dict:
    """Combine part JSONs into ``metrics.json`` ({model: {key: value}}), CSVs, ``report.md`` and plots."""
    parts_dir = Path(parts_dir)
    out = Path(out_dir) if out_dir else parts_dir.parent
    parts = [report.read_json(p) for p in sorted(parts_dir.glob("*__*.json"))]
    order = {n: i for i, n in enumerate(["pretrained", "finetuned"])}
    parts.sort(key=lambda p: (order.get(p["model"], 9), TASKS.index(p["task"]) if p["task"] in TASKS else 9))
    metrics: dict[str, dict[str, float]] = {}
    descriptions: dict[str, str] = {}
    timings: list[dict] = []
    messages: list[str] = []
    tables: dict[str, list[dict]] = {}
    for part in parts:
        metrics.setdefault(part["model"], {}).update(part["metrics"])
        descriptions[part["model"]] = part.get("description", "")
        for ds, secs in part.get("timings", {}).items():
            timings.append({"model": part["model"], "task": part["task"], "dataset": ds, "seconds": secs})
        messages += [m for m in part.get("messages", []) if m not in messages]
        for name, rows in part.get("tables", {}).items():
            tables.setdefault(name, []).extend({"model": part["model"], **r} for r in rows)
    report.write_json(out / "metrics.json", metrics)
    meta = {"experiment": cfg.experiment, "created": _dt.datetime.now().isoformat(timespec="seconds"),
            "models": descriptions, "timings": timings, "messages": messages,
            "config": OmegaConf.to_container(cfg.eval, resolve=True)}
    report.write_json(out / "eval_meta.json", meta)
    for name, rows in tables.items():
        report.write_csv(out / "csv" / f"{name}.csv", rows)
    report.write_csv(out / "csv" / "timings.csv", timings)
    flat_rows = [{"model": m, "metric": k, "value": v} for m, vals in metrics.items() for k, v in vals.items()]
    report.write_csv(out / "metrics.csv", flat_rows)
    text = render_report(cfg, metrics, descriptions, tables, timings, messages, out)
    report.write_text(out / "report.md", text)
    _say(f"wrote {out / 'metrics.json'} and {out / 'report.md'}")
    return {"metrics": metrics, "out_dir": str(out)}


def render_report(cfg, metrics, descriptions, tables, timings, messages, out: Path) -> str:
    lines = [f"# Downstream evaluation — {cfg.experiment}", "",
             f"Generated {_dt.datetime.now().isoformat(timespec='seconds')}. Values in percent. "
             "`offline/...` keys: the synthetic offline suite (not comparable with the paper's numbers).", "",
             "## Models", ""]
    lines += [f"- **{name}**: {desc}" for name, desc in descriptions.items()] + [""]
    baseline = "pretrained" if "pretrained" in metrics else next(iter(metrics), None)
    plots = out / "plots"
    for group, keys in _headline_keys(metrics).items():
        lines += [f"## {group}", ""]
        if baseline is not None:
            lines.append(report.before_after_table(metrics, baseline, keys, LOWER_IS_BETTER))
        values = {m: {k.split("/", 1 if not group.startswith("offline/") else 2)[-1]: v for k, v in vals.items()
                      if k in keys} for m, vals in metrics.items()}
        try:
            png = report.plot_grouped_bars(values, plots / f"{group.replace('/', '_')}.png", title=group, ylabel="%")
            lines += [f"![{group}](plots/{png.name})", ""]
        except Exception as err:  # pragma: no cover - plotting must never fail an evaluation
            log.warning("plot failed: %s", err)
    detail = [(n, r) for n, r in tables.items() if n.endswith(("_objects", "_videos", "_classes", "_viewpoints"))]
    if detail:
        lines += ["## Details", ""]
        for name, rows in detail:
            lines += [f"### {name.replace('__', ' / ')}", "", report.markdown_table(rows), ""]
    if timings:
        lines += ["## Timings (s)", "", report.markdown_table(timings), ""]
    if messages:
        lines += ["## Missing data", ""] + [f"- {m}" for m in messages] + [""]
    lines += ["CSV files: `csv/` (per pair / frame / video / object rows), `metrics.csv` (all keys).", ""]
    return "\n".join(lines)


def run_eval(cfg: DictConfig) -> dict:
    """Evaluate every selected task for every model, then write metrics.json / CSVs / report.md."""
    out = output_dir(cfg)
    parts_dir = out / "parts"
    parts_dir.mkdir(parents=True, exist_ok=True)
    for stale in parts_dir.glob("*__*.json"):
        stale.unlink()
    tasks = selected_tasks(cfg)
    names = model_names(cfg)
    _say(f"tasks {tasks}; models {names}; output {out}")
    for name in names:
        model = load_eval_model(cfg, name)
        for task in tasks:
            start = time.perf_counter()
            run_eval_part(cfg, task, name, model=model, parts_dir=parts_dir)
            _say(f"{name} / {task}: {time.perf_counter() - start:.1f} s")
        del model
        gc.collect()
    return gather_eval(cfg, parts_dir, out)
