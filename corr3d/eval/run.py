"""``make eval``: every downstream task for the pretrained backbone and the finetuned adapter, plus the report.

``run_eval(cfg)`` = for each model: for each task: :func:`run_eval_part` (one JSON part each), then
:func:`gather_eval` (metrics.json, CSVs, report.md, plots). A SLURM array job can run ``run_eval_part(cfg, task,
model)`` per element and ``gather_eval(cfg, parts_dir)`` at the end.

Metric keys are flat: ``pose/acc@1cm1deg``, ``tracking/aj``, ``semantic/pck@0.10`` (real datasets) and the same keys
under ``offline/`` for the synthetic offline suite (e.g. ``offline/tracking/aj``); equivariance keys come from
``corr3d.eval.equivariance`` (``equivariance/ape``...), real photographs from ``corr3d.eval.real_pairs``
(``real_pairs/pck@0.05``...). Values are percentages (``*median_px``: pixels).

Trust: every task also returns per-item results (``tables["items"]``, written to ``parts/<task>/<model>.json``);
gathering adds to metrics.json ``"ci"`` ({model: {key: [lo, hi]}}, cluster bootstrap) and ``"deltas"``
({"<model>-<ref>": {key: {delta, lo, hi, significant}}}, paired bootstrap on identical items; each model against
``pretrained``, and ``finetuned`` against ``pretrained_head_init``), see ``corr3d.eval.stats``. The models
(``corr3d.models.compared_model``) share one configuration and differ only in weights / adapter / head;
``random`` is the floor and ``oracle`` (ground truth as features, ``ORACLE_TASKS`` only) the ceiling of the
validity section of report.md.

Resume: each part records :func:`part_fingerprint` (what its numbers depend on); ``run_eval`` reuses the finished
parts of the selected tasks and models whose fingerprint matches (``eval.resume``), so a killed ``make eval``
continues where it stopped and the report equals an uninterrupted run's.
"""
from __future__ import annotations

import datetime as _dt
import gc
import hashlib
import json
import logging
import re
import time
import traceback
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from corr3d.assets.experiment import listed_specs
from corr3d.assets.sh3d import write_attribution
from corr3d.assets.objaverse import check_experiment_disjoint
from corr3d.errors import Corr3dUserError, EmptySelectionError, RunLockedError
from corr3d.eval.datasets import bop, onepose, pfpascal, spair, tapvid
from corr3d.eval.datasets.onepose import list_objects
from corr3d.eval.datasets.tapvid import iter_videos
from corr3d.eval.equivariance import OracleModel, control_sets, evaluate_equivariance
from corr3d.eval.offline_suite import SUITE_VERSION, ensure_offline_suite
from corr3d.eval.pose import evaluate_objects, evaluate_oracle_pose
from corr3d.eval.pose_ycbv import evaluate_bop_dataset
from corr3d.eval.real_pairs import evaluate_real_pairs
from corr3d.eval.semantic import GroundTruthMatcher, SemanticMatcher, evaluate_pfpascal, evaluate_spair
from corr3d.eval.stats import (
    MAX_CI_HALF_WIDTH,
    ORACLE_MAX_ERROR,
    ORACLE_MIN_SCORE,
    ci_table,
    delta_table,
    validity,
)
from corr3d.eval.tracking import evaluate_oracle_tracking, evaluate_videos
from corr3d.models import compared_model
from corr3d.utils import report
from corr3d.utils.io import sha256_of
from corr3d.utils.paths import is_within, safe_join, safe_name
from corr3d.utils.run_dir import RunLock, latest_run

log = logging.getLogger(__name__)

TASKS = ("pose", "tracking", "semantic", "equivariance", "pose_ycbv", "real_pairs")
# tasks with a ground-truth oracle (dense GT for every point)
ORACLE_TASKS = ("equivariance", "real_pairs", "pose", "tracking", "semantic", "pose_ycbv")
MODEL_ORDER = ("oracle", "pretrained", "pretrained_head_init", "pretrained_default_conv", "random", "finetuned")
HEADLINE = {
    "pose": ["acc@1cm1deg", "acc@3cm3deg", "acc@5cm5deg"],
    "tracking": ["aj", "delta_avg", "oa"],
    "semantic": ["pck@0.05", "pck@0.10", "pck@0.15", "pck_bbox@0.10", "same/pck@0.10", "spair/pck@0.10",
                 "spair/pck_img@0.10"],
    "equivariance": ["ape", "pcdp@0.05", "pcdp@0.1", "pcdp@0.2"],   # + <control>/ape, <control>/pcdp@0.05
    "real_pairs": ["pck@0.01", "pck@0.02", "pck@0.05", "median_px", "stereo/pck@0.01", "stereo/pck@0.02",
                   "stereo/pck@0.05", "stereo/median_px", "homography/pck@0.01", "homography/pck@0.02",
                   "homography/pck@0.05", "homography/median_px"],
    "pose_ycbv": ["acc@1cm1deg", "acc@3cm3deg", "acc@5cm5deg", "add_s_auc", "add_s@0.1d"],
}
LOWER_IS_BETTER = ("ape", "err", "median_px")


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
    if name == "oracle":
        return OracleModel()
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
    """Where an evaluation writes: ``eval.out_dir``; else the evaluated run's ``eval/`` when the adapter is a run
    of *this* experiment; else a directory of its own under ``<output_dir>/<experiment>/`` (an adapter of another
    experiment or an imported adapter never gets numbers computed under this config written into its folder).
    Every name that becomes a path component is validated here, before anything touches the disk."""
    if cfg.eval.out_dir:
        return Path(cfg.eval.out_dir)
    experiment_dir = safe_join(cfg.output_dir, cfg.experiment, what="experiment name")
    if cfg.eval.ckpt:
        adapter = resolve_adapter(cfg)
        if _is_run_of(adapter.parent, experiment_dir, cfg.experiment):
            return adapter.parent / "eval"
        return safe_join(experiment_dir, "eval_ckpt", _ckpt_tag(adapter), what="adapter tag")
    if cfg.eval.backbone:
        return safe_join(experiment_dir, f"eval_{safe_name(cfg.eval.backbone, 'backbone name')}",
                         what="backbone name")
    run = latest_run(cfg.output_dir, cfg.experiment)
    if run is not None:
        return run / "eval"
    return experiment_dir / "eval"


def _is_run_of(run: Path, experiment_dir: Path, experiment: str) -> bool:
    """True for a training run directory of ``experiment``: inside its folder, with its config.yaml naming it."""
    cfg_file = run / "config.yaml"
    if not (cfg_file.is_file() and is_within(experiment_dir, run)):
        return False
    try:
        saved = yaml.safe_load(cfg_file.read_text()) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return False
    return isinstance(saved, dict) and saved.get("experiment") == experiment


def _ckpt_tag(adapter: Path) -> str:
    """``<folder name>-<hash of the resolved path>``: readable, one per adapter, a safe path component."""
    folder = adapter.resolve().parent
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", folder.name).lstrip("._-")[:60] or "adapter"
    return f"{readable}-{hashlib.sha256(str(folder).encode()).hexdigest()[:8]}"


def _suite(cfg: DictConfig, task: str) -> dict[str, Path]:
    return ensure_offline_suite(cfg.eval.offline.dir, [task], force=bool(cfg.eval.offline.regenerate))


class RealDataset(NamedTuple):
    name: str
    prefix: str
    fields: dict                    # of the dataset entry (its paths)
    present: Callable[[], bool]
    missing: str                    # the message when it is absent


def real_datasets(e: DictConfig) -> dict[str, list[RealDataset]]:
    """Task -> the real datasets it reads, under the ``eval`` section ``e``."""
    p, y, t, s = e.pose, e.pose_ycbv, e.tracking, e.semantic
    return {
        "pose": [RealDataset("onepose_lowtexture", "pose/", {"data_dir": Path(p.data_dir), "sfm_dir": Path(p.sfm_dir)},
                             lambda: onepose.data_present(p.data_dir, p.sfm_dir),
                             "real data missing — " + onepose.DOWNLOAD_HINT.format(data_dir=p.data_dir,
                                                                                    sfm_dir=p.sfm_dir))],
        "pose_ycbv": [RealDataset("ycbv", "pose_ycbv/", {"test_dir": Path(y.test_dir), "models_dir": Path(y.models_dir),
                                                         "targets": y.targets},
                                  lambda: bop.data_present(y.test_dir, y.models_dir),
                                  "YCB-V missing — " + bop.DOWNLOAD_HINT.format(test_dir=y.test_dir,
                                                                                models_dir=y.models_dir))],
        "tracking": [RealDataset("tapvid_davis", "tracking/", {"path": Path(t.data)}, lambda: Path(t.data).exists(),
                                 "real data missing — " + tapvid.DOWNLOAD_HINT.format(path=t.data))],
        "semantic": [RealDataset("pfpascal", "semantic/", {"path": Path(s.pfpascal_dir)},
                                 lambda: pfpascal.data_present(s.pfpascal_dir),
                                 "PF-PASCAL missing — " + pfpascal.DOWNLOAD_HINT.format(path=s.pfpascal_dir)),
                     RealDataset("spair", "semantic/spair/", {"path": Path(s.spair_dir)},
                                 lambda: spair.data_present(s.spair_dir, s.spair_split),
                                 "SPair-71k missing — " + spair.DOWNLOAD_HINT.format(path=s.spair_dir))],
    }


# task -> its datasets in the offline suite: (name, prefix, suite paths -> fields of the dataset entry)
OFFLINE_DATASETS: dict[str, list[tuple[str, str, Callable[[dict], dict]]]] = {
    "pose": [("offline_onepose", "offline/pose/",
              lambda paths: {"data_dir": paths["onepose_data"], "sfm_dir": paths["onepose_sfm"]})],
    "pose_ycbv": [("offline_ycbv", "offline/pose_ycbv/",
                   lambda paths: {"test_dir": paths["bop_ycbv_test"], "models_dir": paths["bop_ycbv_models"],
                                  "targets": None})],
    "tracking": [("offline_tapvid", "offline/tracking/", lambda paths: {"path": paths["tapvid"]})],
    "semantic": [("offline_pfpascal", "offline/semantic/", lambda paths: {"path": paths["pfpascal"]}),
                 ("offline_spair", "offline/semantic/spair/", lambda paths: {"path": paths["spair"]})],
}


def datasets_for(cfg: DictConfig, task: str, messages: list[str] | None = None) -> list[dict]:
    """[{name, prefix, source, ...paths}] for a task: the real dataset when present, the offline suite if enabled."""
    messages = messages if messages is not None else []
    out: list[dict] = []
    if cfg.eval.real_data:
        for ds in real_datasets(cfg.eval).get(task, []):
            if ds.present():
                out.append({"name": ds.name, "prefix": ds.prefix, "source": "real", **ds.fields})
            else:
                messages.append(f"{task}: {ds.missing}")
    if cfg.eval.offline.enabled and task in OFFLINE_DATASETS:
        paths = _suite(cfg, task)
        out += [{"name": name, "prefix": prefix, "source": "offline", **fields(paths)}
                for name, prefix, fields in OFFLINE_DATASETS[task]]
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
        pose = cfg.eval.pose
        objects = list_objects(ds["data_dir"], ds["sfm_dir"], list(pose.objects) or None, pose.ref_seq,
                               pose.test_seq)
        if offline:   # the suite's short test captures: its own query step
            pose = OmegaConf.merge(pose, {"query_step": pose.offline_query_step})
        if getattr(model, "is_oracle", False):   # ground-truth 2D-3D matches -> the same PnP (the ceiling)
            result = evaluate_oracle_pose(objects, pose, seed=cfg.eval.seed, prefix=ds["prefix"], desc=desc)
        else:
            result = evaluate_objects(model, objects, pose, seed=cfg.eval.seed, prefix=ds["prefix"], desc=desc)
        return _with_skipped(result, objects)
    if task == "pose_ycbv":
        ycbv = cfg.eval.pose_ycbv
        features = None if getattr(model, "is_oracle", False) else model   # None: ground-truth matches (ceiling)
        return evaluate_bop_dataset(features, ds["test_dir"], ds["models_dir"], ycbv, seed=cfg.eval.seed,
                                    ref_step=ycbv.offline_ref_step if offline else ycbv.ref_step,
                                    scene_ids=None if offline else (list(ycbv.scenes) or None),
                                    targets_file=ds["targets"], prefix=ds["prefix"], desc=desc)
    if task == "tracking":
        t, o = cfg.eval.tracking, cfg.eval.offline
        videos = iter_videos(ds["path"], t.query_mode, t.query_stride, t.format, t.frames_dir, t.max_videos)
        if getattr(model, "is_oracle", False):   # ground-truth tracks and occlusion (the ceiling)
            return _with_skipped(evaluate_oracle_tracking(videos, t, ds["prefix"], desc), videos)
        # the offline suite's small videos: their own size unless eval.offline.tracking_frame_size, a smaller radius
        frame_size, radius = (o.tracking_frame_size or None, o.tracking_argmax_radius) if offline \
            else (t.frame_size, t.argmax_radius)
        return _with_skipped(evaluate_videos(model, videos, t, frame_size=frame_size, argmax_radius=radius,
                                             batch_size=cfg.eval.batch_size, prefix=ds["prefix"], desc=desc), videos)
    if task == "semantic":
        semantic = cfg.eval.semantic
        size = cfg.eval.offline.semantic_image_size if offline else semantic.image_size
        if getattr(model, "is_oracle", False):   # ground-truth keypoints (the ceiling)
            matcher = GroundTruthMatcher(semantic, image_size=size)
        else:
            matcher = SemanticMatcher(model, semantic, cache_size=cfg.eval.feature_cache_size, image_size=size)
        if ds["name"].endswith("pfpascal"):
            return evaluate_pfpascal(matcher, ds["path"], list(semantic.pfpascal_views), ds["prefix"], desc)
        return evaluate_spair(matcher, ds["path"], semantic.spair_split, ds["prefix"], desc)
    raise ValueError(task)


def _with_skipped(result: tuple[dict, dict], selection) -> tuple[dict, dict]:
    """Attach the reader's ``skipped`` ([(item, reason)], corr3d.utils.reading) to the tables: the report names them."""
    metrics, tables = result
    return metrics, {**tables, "skipped": list(tables.get("skipped", [])) + list(getattr(selection, "skipped", []))}


def _skipped_messages(task: str, dataset: str, skipped) -> list[str]:
    return [f"{task}: {dataset}: {item} not evaluated — {reason}" for item, reason in skipped]


def run_eval_part(cfg: DictConfig, task: str, model_name: str, model=None,
                  parts_dir: str | Path | None = None) -> dict:
    """Evaluate one model on one task (all of its datasets); returns and (optionally) writes the part JSON."""
    torch.manual_seed(int(cfg.eval.seed))
    messages: list[str] = []
    part: dict[str, Any] = {"task": task, "model": model_name, "description": "", "metrics": {}, "tables": {},
                            "timings": {}, "datasets": [], "messages": messages,
                            "fingerprint": part_fingerprint(cfg, task, model_name)}
    items: list[dict] = []
    if model_name == "oracle" and task not in ORACLE_TASKS:
        part["description"] = f"oracle: not defined for {task} (no dense ground truth)"
        return _finish_part(part, items, task, model_name, parts_dir)
    own_model = model is None
    if own_model:
        model = load_eval_model(cfg, model_name)
    part["description"] = describe_model(cfg, model_name, model)
    with torch.no_grad():
        if task in ("equivariance", "real_pairs"):
            start = time.perf_counter()
            if task == "equivariance":
                skipped: list = []
                metrics = evaluate_equivariance(model, cfg, items=items, skipped=skipped, controls=True)
                messages += _skipped_messages(task, "objects", skipped)
                part["datasets"].append({"name": task, "source": "rendered"})
            else:

                metrics = evaluate_real_pairs(model, cfg, items=items)
                part["datasets"].append({"name": task, "source": "real"})
            part["metrics"].update({k: float(v) for k, v in metrics.items()})
            part["timings"][task] = time.perf_counter() - start
        else:
            for ds in datasets_for(cfg, task, messages):
                start = time.perf_counter()
                metrics, tables = _run_dataset(cfg, model, task, ds, f"{model_name} {ds['name']}")
                part["timings"][ds["name"]] = time.perf_counter() - start
                part["metrics"].update(metrics)
                tables = dict(tables)
                messages += _skipped_messages(task, ds["name"], tables.pop("skipped", []))
                # a dataset's items get its name in id and unit: real and offline sets may reuse object names
                items += [{**it, "id": f"{ds['name']}/{it['id']}", "unit": f"{ds['name']}/{it['unit']}"}
                          for it in tables.pop("items", None) or []]
                part["tables"].update({f"{ds['name']}__{k}": v for k, v in tables.items()})
                part["datasets"].append({"name": ds["name"], "source": ds["source"], "prefix": ds["prefix"]})
    for msg in messages:
        _say(msg)
    if part["datasets"] and not items:   # every requested item was skipped: a number over nothing is no number
        raise EmptySelectionError(f"{task}: no item could be measured for {model_name}"
                                  + (f" ({'; '.join(messages[:3])})" if messages else ""),
                                  fix="see the reasons above; fix or replace the listed inputs")
    if own_model:
        del model
        gc.collect()
    return _finish_part(part, items, task, model_name, parts_dir)


class EvaluationFailed(Corr3dUserError):
    """Some tasks of ``make eval`` failed (recorded in their parts); the others completed and were reported."""


def _record_failed_part(task: str, model_name: str, err: Exception, parts_dir, fingerprint: str | None = None) -> dict:
    """A task that raised: its part records the error (report "Missing data"), the other tasks still run."""
    message = f"{task} FAILED for {model_name}: {type(err).__name__}: {err}"
    _say(message)
    part = {"task": task, "model": model_name, "description": "", "metrics": {}, "tables": {}, "timings": {},
            "datasets": [], "messages": [message], "status": "failed", "fingerprint": fingerprint,
            "error": {"type": type(err).__name__, "message": str(err), "traceback": traceback.format_exc()}}
    return _finish_part(part, [], task, model_name, parts_dir)


def _finish_part(part: dict, items: list[dict], task: str, model_name: str, parts_dir) -> dict:
    """Write the part summary (``<task>__<model>.json``) and its items (``<task>/<model>.json``); return both."""
    part["num_items"] = len(items)
    # a metric over zero items is NaN in the metric modules; in JSON and reports it is n/a (null), never 0
    part["metrics"] = {k: None if isinstance(v, float) and v != v else v for k, v in part["metrics"].items()}
    part = report.to_jsonable(part)
    items = report.to_jsonable(items)
    if parts_dir is not None:
        report.write_json(part_path(parts_dir, task, model_name), part)
        report.write_json(items_path(parts_dir, task, model_name), items, indent=None)
    return {**part, "items": items}


def part_path(parts_dir: str | Path, task: str, model_name: str) -> Path:
    return Path(parts_dir) / f"{task}__{model_name}.json"


def items_path(parts_dir: str | Path, task: str, model_name: str) -> Path:
    return Path(parts_dir) / task / f"{model_name}.json"


# eval keys that choose what to run or where to write, not what a part measures
# (ckpt: the adapter's bytes stand for it)
_UNFINGERPRINTED_EVAL_KEYS = ("tasks", "models", "out_dir", "n_boot", "resume", "device", "batch_size",
                              "feature_cache_size", "ckpt")


def part_fingerprint(cfg: DictConfig, task: str, model_name: str) -> str:
    """What a part's numbers depend on: the sections that the tasks and the compared models read (model, data,
    equivariance, eval but its selection / output / speed keys), the adapter's bytes (every model but the oracle:
    the adapter fixes the resolution, layer and norm all compared models share) and the offline suite's version.
    Equal fingerprints -> the part can be reused."""
    sections = {key: OmegaConf.to_container(cfg[key], resolve=True) if isinstance(cfg[key], DictConfig)
                else cfg[key] for key in ("seed", "data_root", "model", "data", "equivariance") if key in cfg}
    sections["eval"] = {k: v for k, v in OmegaConf.to_container(cfg.eval, resolve=True).items()
                        if k not in _UNFINGERPRINTED_EVAL_KEYS}
    sections["eval"]["offline"].pop("regenerate", None)   # the suite's version stands for its content
    adapter = resolve_adapter(cfg) if model_name != "oracle" else None
    sections.update(task=task, compared_model=model_name, suite_version=SUITE_VERSION,
                    adapter=file_digest(adapter) if adapter is not None else None,
                    weights=_weights_digest(cfg.model.weights) if model_name != "oracle" else None)
    return hashlib.sha256(json.dumps(sections, sort_keys=True, default=str).encode()).hexdigest()[:16]


_DIGESTS: dict[tuple, str] = {}


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (memoised per path, size and mtime: a replaced file gets a new digest)."""
    st = Path(path).stat()
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_of(path)
    return _DIGESTS[key]


def _weights_digest(weights: str) -> str | None:
    """``model.weights`` given as a file: its content, not its path, decides whether parts can be reused."""
    path = Path(str(weights)).expanduser()
    return file_digest(path) if path.is_file() else None


def reusable_part(parts_dir: Path, task: str, model_name: str, fingerprint: str) -> bool:
    """A finished (not failed) part of this task and model, with its items, measured under ``fingerprint``."""
    path = part_path(parts_dir, task, model_name)
    if not (path.exists() and items_path(parts_dir, task, model_name).exists()):
        return False
    try:
        part = report.read_json(path)
    except (ValueError, OSError):
        return False
    return part.get("fingerprint") == fingerprint and part.get("status") != "failed"


def delta_pairs(models) -> list[tuple[str, str]]:
    """Which paired deltas to compute: every model against ``pretrained``, and ``finetuned`` against
    ``pretrained_head_init`` (what training did beyond adding an untrained head)."""
    models = list(models)
    pairs = [(m, "pretrained") for m in models if m != "pretrained" and "pretrained" in models]
    for control in ("pretrained_head_init", "pretrained_default_conv"):   # training beyond an untrained head
        if "finetuned" in models and control in models:
            pairs.append(("finetuned", control))
    return pairs


def confidence(items_by_task: dict[str, dict[str, list[dict]]], metrics: dict[str, dict[str, float]],
               n_boot: int, seed: int) -> tuple[dict, dict]:
    """("ci", "deltas") of metrics.json from per-task item lists; only keys that are metrics of the model.

    Deltas are computed task by task: items of one task must match across models (same pairs, frames, videos),
    a task whose items differ is left without deltas (logged) rather than compared on different items."""
    ci: dict[str, dict] = {}
    deltas: dict[str, dict] = {}
    for task, by_model in items_by_task.items():
        for model, values in ci_table(by_model, n_boot=n_boot, seed=seed).items():
            ci.setdefault(model, {}).update({k: v for k, v in values.items() if k in metrics.get(model, {})})
        for name, values in delta_table(by_model, delta_pairs(by_model), n_boot=n_boot, seed=seed).items():
            a, b = name.split("-", 1)
            deltas.setdefault(name, {}).update({k: v for k, v in values.items()
                                                if k in metrics.get(a, {}) and k in metrics.get(b, {})})
    return ci, {k: v for k, v in deltas.items() if v}


# ------------------------------------------------------------------------------------------------------- gather
def _headline_keys(metrics: dict[str, dict[str, float]]) -> dict[str, list[str]]:
    keys_all = {k for m in metrics.values() for k in m}
    out: dict[str, list[str]] = {}
    for task, leaves in HEADLINE.items():
        for scope in ("", "offline/"):
            base = f"{scope}{task}/"
            keys = [base + leaf for leaf in leaves if base + leaf in keys_all]
            if task == "equivariance":   # the secondary object sets (equivariance.controls)
                keys += sorted(k for k in keys_all if k.startswith(base) and k.count("/") == 2 + scope.count("/")
                               and k.rsplit("/", 1)[1] in ("ape", "pcdp@0.05"))
            if keys:
                out[f"{scope}{task}"] = keys
    return out


def gather_eval(cfg: DictConfig, parts_dir: str | Path, out_dir: str | Path | None = None) -> dict:
    """Combine part JSONs into ``metrics.json`` ({model: {key: value}}), CSVs, ``report.md`` and plots."""
    parts_dir = Path(parts_dir)
    out = Path(out_dir) if out_dir else parts_dir.parent
    parts, not_reported = current_parts(cfg, parts_dir)
    order = {n: i for i, n in enumerate(MODEL_ORDER)}
    parts.sort(key=lambda p: (order.get(p["model"], 9), TASKS.index(p["task"]) if p["task"] in TASKS else 9))
    metrics: dict[str, dict[str, float]] = {}
    descriptions: dict[str, str] = {}
    timings: list[dict] = []
    messages: list[str] = []
    tables: dict[str, list[dict]] = {}
    items_by_task: dict[str, dict[str, list[dict]]] = {}
    for part in parts:
        if not part["metrics"] and part["model"] == "oracle":
            continue  # the oracle is not defined for this task
        metrics.setdefault(part["model"], {}).update(part["metrics"])
        descriptions[part["model"]] = part.get("description", "")
        path = items_path(parts_dir, part["task"], part["model"])
        if path.exists():
            items_by_task.setdefault(part["task"], {})[part["model"]] = report.read_json(path)
        for ds, secs in part.get("timings", {}).items():
            timings.append({"model": part["model"], "task": part["task"], "dataset": ds, "seconds": secs})
        messages += [m for m in part.get("messages", []) if m not in messages]
        for name, rows in part.get("tables", {}).items():
            tables.setdefault(name, []).extend({"model": part["model"], **r} for r in rows)
    messages += not_reported
    ci, deltas = confidence(items_by_task, metrics, int(cfg.eval.n_boot), int(cfg.eval.seed))
    report.write_json(out / "metrics.json", {**metrics, "ci": ci, "deltas": deltas})
    meta = {"experiment": cfg.experiment, "created": _dt.datetime.now().isoformat(timespec="seconds"),
            "models": descriptions, "timings": timings, "messages": messages,
            "config": OmegaConf.to_container(cfg.eval, resolve=True)}
    report.write_json(out / "eval_meta.json", meta)
    for name, rows in tables.items():
        report.write_csv(out / "csv" / f"{name}.csv", rows)
    report.write_csv(out / "csv" / "timings.csv", timings)
    flat_rows = [{"model": m, "metric": k, "value": v, "ci_lo": ci.get(m, {}).get(k, [None, None])[0],
                  "ci_hi": ci.get(m, {}).get(k, [None, None])[1]} for m, vals in metrics.items() for k, v in vals.items()]
    report.write_csv(out / "metrics.csv", flat_rows)
    delta_rows = [{"delta": name, "metric": k, **d} for name, values in deltas.items() for k, d in values.items()]
    report.write_csv(out / "deltas.csv", delta_rows)
    text = render_report(cfg, metrics, descriptions, tables, timings, messages, out, ci=ci, deltas=deltas)
    report.write_text(out / "report.md", text)
    if any(k.startswith("equivariance/") for m in metrics.values() for k in m):   # credit the CC-BY objects measured
        eq = cfg.equivariance
        write_attribution(listed_specs(eq.objects, eq.object_list)
                          + [s for n in control_sets(eq) for s in listed_specs(eq.controls[n].objects,
                                                                                eq.controls[n].object_list)], out)
    _say(f"wrote {out / 'metrics.json'} and {out / 'report.md'}")
    return {"metrics": metrics, "ci": ci, "deltas": deltas, "out_dir": str(out)}


def current_parts(cfg: DictConfig, parts_dir: Path) -> tuple[list[dict], list[str]]:
    """The parts in ``parts_dir`` measured under ``cfg`` (their fingerprint matches), whatever run wrote them: a
    subset evaluation merges into the earlier results. The others stay on disk, unreported, each named in a
    message (another configuration, adapter or weights measured them)."""
    parts, others = [], []
    expected: dict[tuple, str | None] = {}
    for path in sorted(parts_dir.glob("*__*.json")):
        try:
            part = report.read_json(path)
            key = (str(part["task"]), str(part["model"]))
        except (ValueError, OSError, KeyError, TypeError):
            others.append(f"{path.name}: unreadable part, not reported (rerun its task to replace it)")
            continue
        if key not in expected:
            try:
                expected[key] = part_fingerprint(cfg, *key) if key[0] in TASKS else None
            except (OSError, Corr3dUserError):   # e.g. the adapter it measured is gone
                expected[key] = None
        if expected[key] is not None and part.get("fingerprint") == expected[key]:
            parts.append(part)
        else:
            others.append(f"{key[0]} / {key[1]}: not reported — measured under another configuration, adapter or "
                          f"weights (kept in {path.parent.name}/; `make eval TASKS={key[0]}` measures it again)")
    return parts, others


def object_sets_section(cfg: DictConfig) -> list[str]:
    """Markdown: the equivariance object sets, each with its size and what it controls for."""
    eq = cfg.equivariance
    main = listed_specs(eq.objects, eq.object_list)
    lines = ["## Equivariance object sets", "",
             f"- `equivariance/...` (the benchmark): {len(main)} held-out objects ({', '.join(map(str, eq.objects))}"
             f"{', ' + str(eq.object_list) if eq.object_list else ''})"]
    for name in control_sets(eq):
        section = eq.controls[name]
        n = len(listed_specs(section.objects, section.object_list))
        lines.append(f"- `equivariance/{name}/...`: {n} objects — {section.about or 'secondary set'}")
    return lines + [""]


def _lower_is_better(key: str) -> bool:
    return any(s in key for s in LOWER_IS_BETTER)


def validity_section(metrics, deltas, groups: dict[str, list[str]], ci=None) -> list[str]:
    """Markdown: per benchmark, oracle / pretrained / random and the paired Δ pretrained − random, with the
    verdict of ``corr3d.eval.stats.validity`` (a benchmark random init passes does not measure pretraining)."""
    rows, flagged = [], []
    for group, keys in groups.items():
        for key in keys:
            v = validity(key, metrics, deltas, _lower_is_better(key), ci)
            rows.append({"benchmark": group, "metric": key, "oracle": report.format_value(v["oracle"]),
                         "pretrained": report.format_value(v["pretrained"]),
                         "CI ± (pretrained)": report.format_value(v["ci_half_width"]),
                         "random": report.format_value(v["random"]),
                         "Δ pretrained − random": report.format_delta(v["pretrained-random"]),
                         "verdict": v["verdict"]})
            if v["verdict"] != "ok" and group not in flagged:
                flagged.append(group)
    lines = ["## Validity: floors and ceilings", "",
             "A benchmark measures what pretraining learned only if a random-init backbone scores significantly "
             "worse than the pretrained one (paired Δ CI excludes 0), and its oracle (ground truth as features, "
             f"where defined) is near perfect (≥ {ORACLE_MIN_SCORE:g} % / error ≤ {ORACLE_MAX_ERROR:g}), and it "
             f"resolves a few points only if its 95% CI is at most ±{MAX_CI_HALF_WIDTH:g} points. Rows that fail are "
             "reported but marked **does not discriminate** (or **oracle far from perfect**, or **CI ±x > ±3**: "
             "too few units).", "",
             report.markdown_table(rows)]
    if flagged:
        lines += [f"Benchmarks with a flag: {', '.join(flagged)}.", ""]
    return lines


def render_report(cfg, metrics, descriptions, tables, timings, messages, out: Path, ci=None, deltas=None) -> str:
    ci, deltas = ci or {}, deltas or {}
    lines = [f"# Downstream evaluation — {cfg.experiment}", "",
             f"Generated {_dt.datetime.now().isoformat(timespec='seconds')}. Values in percent (`median_px`: "
             "pixels). `offline/...` keys: the synthetic offline suite (not comparable with the paper's numbers).",
             "", report.CI_LEGEND, "", "## Models", ""]
    lines += [f"- **{name}**: {desc}" for name, desc in descriptions.items()] + [""]
    if any(k.startswith("equivariance/") for m in metrics.values() for k in m):
        lines += object_sets_section(cfg)
    baseline = "pretrained" if "pretrained" in metrics else next(iter(metrics), None)
    models = [m for m in MODEL_ORDER if m in metrics] + [m for m in metrics if m not in MODEL_ORDER]
    delta_names = [f"{a}-{b}" for a, b in delta_pairs(models) if a != "oracle"]
    plots = out / "plots"
    groups = _headline_keys(metrics)
    for group, keys in groups.items():
        lines += [f"## {group}", ""]
        if baseline is not None:
            lines.append(report.markdown_table(report.ci_comparison_rows(metrics, ci, deltas, models, keys,
                                                                         delta_names)))
        values = {m: {k.split("/", 1 if not group.startswith("offline/") else 2)[-1]: v for k, v in vals.items()
                      if k in keys} for m, vals in metrics.items()}
        try:
            png = report.plot_grouped_bars(values, plots / f"{group.replace('/', '_')}.png", title=group, ylabel="%")
            lines += [f"![{group}](plots/{png.name})", ""]
        except Exception as err:  # pragma: no cover - plotting must never fail an evaluation
            log.warning("plot failed: %s", err)
    if groups:
        lines += validity_section(metrics, deltas, groups, ci)
    detail = [(n, r) for n, r in tables.items() if n.endswith(("_objects", "_videos", "_classes", "_viewpoints"))]
    if detail:
        lines += ["## Details", ""]
        for name, rows in detail:
            lines += [f"### {name.replace('__', ' / ')}", "", report.markdown_table(rows), ""]
    if timings:
        lines += ["## Timings (s)", "", report.markdown_table(timings), ""]
    if messages:
        lines += ["## Missing data", ""] + [f"- {m}" for m in messages] + [""]
    lines += ["CSV files: `csv/` (per pair / frame / video / object rows), `metrics.csv` (all keys, with CIs), "
              "`deltas.csv` (paired deltas); per-item results: `parts/<task>/<model>.json`.", ""]
    return "\n".join(lines)


def run_eval(cfg: DictConfig) -> dict:
    """Evaluate every selected task for every model, then write metrics.json / CSVs / report.md.

    Results merge: parts of tasks and models that were not selected are kept, and the report covers every part
    measured under this configuration. One evaluation at a time holds an output directory (``.eval.lock``)."""
    out = output_dir(cfg)           # validates every name that becomes a path, before any write
    tasks = selected_tasks(cfg)
    names = model_names(cfg)
    if "equivariance" in tasks:
        control_sets(cfg.equivariance)   # an unknown set name fails here, before any work
    check_experiment_disjoint(cfg)   # refuse held-out evaluation objects that the experiment trains on
    try:
        lock = RunLock(out, name=".eval.lock", what="evaluation output directory").acquire()
    except RunLockedError as err:
        raise RunLockedError(str(err), path=out, fix="wait for the other evaluation to finish, or write this one "
                                                      "elsewhere with eval.out_dir=<directory>") from None
    try:
        return _run_eval_locked(cfg, out, tasks, names)
    finally:
        lock.release()


def _run_eval_locked(cfg: DictConfig, out: Path, tasks: list[str], names: list[str]) -> dict:
    parts_dir = out / "parts"
    parts_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if cfg.eval.offline.enabled and cfg.eval.offline.regenerate:   # once here, not once per model
        ensure_offline_suite(cfg.eval.offline.dir, tasks, force=True)
        cfg = OmegaConf.merge(cfg, {"eval": {"offline": {"regenerate": False}}})
    # a selected part is reused when finished under the same fingerprint, otherwise measured again (overwritten);
    # nothing is deleted: parts of other tasks and models stay and merge into the report
    reuse = {(t, m) for t in tasks for m in names
             if cfg.eval.resume and reusable_part(parts_dir, t, m, part_fingerprint(cfg, t, m))}
    _say(f"tasks {tasks}; models {names}; output {out}"
         + (f"; reusing {len(reuse)} finished part(s) (eval.resume=false to redo them)" if reuse else ""))
    failed: list[str] = []
    for name in names:
        todo = [task for task in tasks if (task, name) not in reuse]
        if not todo:
            continue
        model = load_eval_model(cfg, name)
        for task in todo:
            start = time.perf_counter()
            try:
                run_eval_part(cfg, task, name, model=model, parts_dir=parts_dir)
            except Exception as err:  # noqa: BLE001 - one bad dataset file fails its task, not the evaluation
                _record_failed_part(task, name, err, parts_dir, part_fingerprint(cfg, task, name))
                failed.append(f"{task}/{name}")
                continue
            _say(f"{name} / {task}: {time.perf_counter() - start:.1f} s")
        del model
        gc.collect()
    _say(f"evaluation: {time.perf_counter() - started:.1f} s")
    result = gather_eval(cfg, parts_dir, out)
    if failed:  # the other tasks' metrics and the report are written; the command still reports the failure
        raise EvaluationFailed(f"{len(failed)} task(s) failed: {', '.join(failed)}; their errors are in "
                               f"{parts_dir}/<task>__<model>.json and {out / 'report.md'}")
    return result
