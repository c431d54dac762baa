"""``make eval``: every downstream task for the pretrained backbone and the finetuned adapter, plus the report.

``run_eval(cfg)`` = for each model: for each task of the registry (``corr3d.eval.tasks``: one module per task, each
an ``EvalTask`` with its datasets, ``run``, headline keys, breakdowns and protocol label): :func:`run_eval_part`
(one JSON part each), then :func:`gather_eval` (metrics.json, CSVs, report.md, plots). A SLURM array job can run
``run_eval_part(cfg, task, model)`` per element and ``gather_eval(cfg, parts_dir)`` at the end; training's
before/after measurement calls ``run_eval_part`` too.

Metric keys are flat: ``pose/acc@1cm1deg``, ``tracking/aj``, ``semantic/pck@0.10`` (real datasets) and the same keys
under ``offline/`` for the synthetic offline suite (e.g. ``offline/tracking/aj``); equivariance keys come from
``corr3d.eval.equivariance`` (``equivariance/ape``...), real photographs from ``corr3d.eval.real_pairs``
(``real_pairs/pck@0.05``...). Values are percentages (``*median_px``: pixels).

Trust: every task also returns per-item results (``tables["items"]``, written to ``parts/<task>/<model>.json``);
gathering adds to metrics.json ``"ci"`` ({model: {key: [lo, hi]}}, t-interval over units) and ``"deltas"``
({"<model>-<ref>": {key: {delta, lo, hi, significant}}}, paired on identical items; each model against
``pretrained``, and ``finetuned`` against ``pretrained_head_init``), see ``corr3d.eval.stats``. The models
(``corr3d.models.compared_model``) share one configuration and differ only in weights / adapter / head;
``random`` is the floor and ``oracle`` (ground truth as features, for the tasks whose ``EvalTask.oracle`` is set)
the ceiling of the validity section of report.md; ``"protocols"`` and ``"breakdowns"`` say which protocol made each
dataset's numbers and how they vary with the viewpoint change.

Resume: each part records :func:`part_fingerprint` (what its numbers depend on); ``run_eval`` reuses the finished
parts of the selected tasks and models whose fingerprint matches (``eval.resume``), so a killed ``make eval``
continues where it stopped and the report equals an uninterrupted run's. Every finished part is also kept under its
fingerprint in ``eval.part_cache``, so another run (another output directory, another training run of the same
configuration) reuses it: reference rows are measured once per configuration, suite and weights.
"""
from __future__ import annotations

import datetime as _dt
import gc
import hashlib
import json
import logging
import os
import re
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from corr3d.assets.experiment import listed_specs
from corr3d.assets.sh3d import write_attribution
from corr3d.assets.objaverse import check_experiment_disjoint
from corr3d.errors import Corr3dUserError, EmptySelectionError, RunLockedError
from corr3d.eval.equivariance import OracleModel, control_sets
from corr3d.eval.offline_suite import SUITE_VERSION, ensure_offline_suite
from corr3d.eval.stats import (
    MAX_CI_HALF_WIDTH,
    binned_table,
    ORACLE_MAX_ERROR,
    ORACLE_MIN_SCORE,
    ci_table,
    delta_table,
    validity,
)
from corr3d.eval.tasks import Dataset, get_task, offline_parts, registry
from corr3d.models.backbones import TimmViTFamily
from corr3d.models.shared import shared_backbone_maps
from corr3d.models import (COMPARED_MODELS, compared_model, compared_model_config, model_config,
                           reference_model_config)
from corr3d.utils import report
from corr3d.utils.io import sha256_of, write_json
from corr3d.utils.paths import is_within, safe_join, safe_name
from corr3d.utils.run_dir import RunLock, latest_run

log = logging.getLogger(__name__)

MODEL_ORDER = ("oracle", *COMPARED_MODELS)   # the report's order: ceiling, baselines and controls, floor, trained
AUTO = "auto"   # the adapter argument's default: resolve_adapter(cfg)
# compared models whose backbone is the untouched pretrained one (corr3d/models/shared.py shares its tokens)
# (the oracle has no backbone: its group keeps nothing)
FROZEN_BACKBONE_MODELS = ("pretrained", "pretrained_head_init", "pretrained_default_conv")
PREFIX_SHARING_MODELS = ("finetuned",)   # adapted last blocks only: the leading blocks' tokens are pretrained
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


def _suite(cfg: DictConfig):
    """``parts -> suite paths``: generates the offline-suite parts a task reads when missing."""
    return lambda parts: ensure_offline_suite(cfg.eval.offline.dir, parts, force=bool(cfg.eval.offline.regenerate))


def datasets_for(cfg: DictConfig, task: str, messages: list[str] | None = None) -> list[Dataset]:
    """A task's datasets: the real benchmark when present, the offline suite when enabled (``EvalTask.datasets``)."""
    return get_task(task).datasets(cfg, messages if messages is not None else [], _suite(cfg))


def selected_tasks(cfg: DictConfig) -> list[str]:
    tasks = [str(t) for t in cfg.eval.tasks] if cfg.eval.tasks else list(registry())
    unknown = [t for t in tasks if t not in registry()]
    if unknown:
        raise ValueError(f"unknown eval task(s) {unknown}; known: {', '.join(registry())}")
    return tasks


# ------------------------------------------------------------------------------------------------------- parts
def _skipped_messages(task: str, dataset: str, skipped) -> list[str]:
    where = f"{task}: " if dataset == task else f"{task}: {dataset}: "
    return [f"{where}{item} not evaluated — {reason}" for item, reason in skipped]


def run_eval_part(cfg: DictConfig, task: str, model_name: str, model=None,
                  parts_dir: str | Path | None = None, datasets: list[Dataset] | None = None,
                  adapter: Path | None | str = AUTO, variant: str = "", cache: bool = False,
                  fingerprint: str | None = None) -> dict:
    """Evaluate one model on one task (all of its datasets, or ``datasets``, then named by ``variant``); returns
    and (optionally) writes the part JSON. ``make eval``, its SLURM array and training's before/after measurement
    all measure through here.

    ``model``: the compared model ``model_name`` (else loaded from ``cfg``); ``adapter``: the finetuned adapter its
    configuration derives from (``"auto"``: :func:`resolve_adapter`; training passes None). With ``cache``, a part
    measured under the same fingerprint by any earlier run (``eval.part_cache``) is reused, and a new one kept: the
    caller guarantees ``model`` is what ``cfg`` and ``adapter`` describe. ``fingerprint``: this part's
    :func:`part_fingerprint`, when the caller has computed it already."""
    if fingerprint is None:
        fingerprint = part_fingerprint(cfg, task, model_name, adapter=adapter, variant=variant)
    if cache and (done := reuse_cached_part(cfg, task, model_name, fingerprint, parts_dir)) is not None:
        return done
    torch.manual_seed(int(cfg.eval.seed))
    spec = get_task(task)
    messages: list[str] = []
    part: dict[str, Any] = {"task": task, "model": model_name, "description": "", "metrics": {}, "tables": {},
                            "timings": {}, "datasets": [], "messages": messages, "fingerprint": fingerprint}
    items: list[dict] = []
    if model_name == "oracle" and not spec.oracle:
        part["description"] = f"oracle: not defined for {task} (no dense ground truth)"
        return _finish_part(part, items, task, model_name, parts_dir)
    own_model = model is None
    if own_model:
        model = load_eval_model(cfg, model_name)
    part["description"] = describe_model(cfg, model_name, model)
    with torch.no_grad():
        for ds in datasets if datasets is not None else datasets_for(cfg, task, messages):
            start = time.perf_counter()
            metrics, tables = spec.run(cfg, model, ds, f"{model_name} {ds.name}")
            part["timings"][ds.name] = time.perf_counter() - start
            part["metrics"].update(metrics)
            tables = dict(tables)
            messages += _skipped_messages(task, ds.name, tables.pop("skipped", []))
            found = tables.pop("items", None) or []
            if ds.qualify_items:   # real and offline sets may reuse object names
                found = [{**it, "id": f"{ds.name}/{it['id']}", "unit": f"{ds.name}/{it['unit']}"} for it in found]
            items += found
            part["tables"].update({f"{ds.name}__{k}": v for k, v in tables.items()})
            label, detail = spec.protocol(cfg, ds)
            part["datasets"].append({"name": ds.name, "source": ds.source, "prefix": ds.prefix,
                                     "protocol": label, "protocol_detail": detail})
    for msg in messages:
        _say(msg)
    if part["datasets"] and not items:   # every requested item was skipped: a number over nothing is no number
        raise EmptySelectionError(f"{task}: no item could be measured for {model_name}"
                                  + (f" ({'; '.join(messages[:3])})" if messages else ""),
                                  fix="see the reasons above; fix or replace the listed inputs")
    if own_model:
        del model
        gc.collect()
    finished = _finish_part(part, items, task, model_name, parts_dir)
    if cache:
        store_part(cfg, finished)
    return finished


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
        write_json(part_path(parts_dir, task, model_name), part)
        write_json(items_path(parts_dir, task, model_name), items, indent=None)
    return {**part, "items": items}


def part_path(parts_dir: str | Path, task: str, model_name: str) -> Path:
    return Path(parts_dir) / f"{task}__{model_name}.json"


def items_path(parts_dir: str | Path, task: str, model_name: str) -> Path:
    return Path(parts_dir) / task / f"{model_name}.json"


# eval keys that choose what to run or where to write, not what a part measures
# (ckpt: the adapter's bytes stand for it)
_UNFINGERPRINTED_EVAL_KEYS = ("tasks", "models", "out_dir", "n_boot", "resume", "device", "batch_size",
                              "feature_cache_size", "ckpt", "part_cache", "shared_features_mb", "workers")
# data keys that only training reads (what it trains on and how it batches): never part of what a part measured, so
# a second training run with other training objects or pairs reuses the reference rows of the first
_TRAINING_DATA_KEYS = ("kind", "train_objects", "val_objects", "object_list", "num_train_objects", "val_fraction",
                       "val_pairs", "pairs", "augment", "batch_size", "num_workers", "pairs_per_epoch")
# equivariance keys that only say which tasks training adds to its before/after rows, not what a part measured
_UNFINGERPRINTED_EQUIVARIANCE_KEYS = ("downstream",)
# compared models whose features do not depend on the run's seed (no random head, no random backbone)
_SEED_FREE_MODELS = ("pretrained", "oracle")


def _plain_section(cfg: DictConfig, key: str):
    value = cfg[key]
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def model_identity(cfg: DictConfig, model_name: str, adapter: Path | None) -> dict:
    """What fixes compared model ``model_name``'s features: the finetuned adapter's bytes; for the other models
    their configuration (``corr3d.models.compared_model_config``, derived from the adapter's own configuration when
    there is one, not from its weights), the weights file's content and, where a random draw is involved, the seed.
    The optimiser, loss and training data never enter: another training run reuses the reference rows."""
    reference = reference_model_config(cfg.model, adapter=adapter, backbone=None if adapter else cfg.eval.backbone)
    if model_name == "oracle":   # ground truth; the model section stays in (input sizes), conservatively
        return {"model": "oracle", "config": model_config(reference)}
    config = model_config(compared_model_config(reference, model_name, seed=int(cfg.seed)))
    if not config["head"]["num_layers"]:   # a head without layers has no initialisation: one identity for all
        config["head"] = {**config["head"], "init": "identity"}
    identity = {"model": model_name, "config": config, "weights": _weights_digest(reference.weights)}
    if model_name == "finetuned":
        identity["adapter"] = file_digest(adapter) if adapter is not None else None
    if model_name not in _SEED_FREE_MODELS:
        identity["seed"] = int(cfg.seed)
    return identity


def part_fingerprint(cfg: DictConfig, task: str, model_name: str, adapter: Path | None | str = AUTO,
                     variant: str = "") -> str:
    """What a part's numbers depend on: the compared model (:func:`model_identity`), the sections the tasks read
    (``equivariance``, ``eval`` but its selection / output / speed keys, ``data`` but its training-only keys), the
    offline suite's version and ``variant`` (a part measured on other datasets than the task's own, e.g. training's
    equivariance without control sets). ``adapter``: the finetuned adapter, ``"auto"``: :func:`resolve_adapter`.
    Equal fingerprints -> the part can be reused."""
    if adapter == AUTO:
        adapter = resolve_adapter(cfg)
    sections = {key: _plain_section(cfg, key) for key in ("data_root", "equivariance") if key in cfg}
    if "equivariance" in sections:
        sections["equivariance"] = {k: v for k, v in sections["equivariance"].items()
                                    if k not in _UNFINGERPRINTED_EQUIVARIANCE_KEYS}
    sections["data"] = {k: v for k, v in _plain_section(cfg, "data").items() if k not in _TRAINING_DATA_KEYS}
    sections["eval"] = {k: v for k, v in _plain_section(cfg, "eval").items() if k not in _UNFINGERPRINTED_EVAL_KEYS}
    sections["eval"]["offline"].pop("regenerate", None)   # the suite's version stands for its content
    sections.update(task=task, model=model_identity(cfg, model_name, adapter), suite_version=SUITE_VERSION,
                    variant=variant)
    return hashlib.sha256(json.dumps(sections, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------------- part cache
def part_cache_dir(cfg: DictConfig) -> Path | None:
    return Path(cfg.eval.part_cache) if cfg.eval.part_cache else None


def cached_part(cfg: DictConfig, task: str, model_name: str, fingerprint: str) -> dict | None:
    """A part measured under ``fingerprint`` by any earlier run (``eval.part_cache``), with its items; None if
    absent or unreadable (then it is measured again)."""
    root = part_cache_dir(cfg)
    if root is None:
        return None
    path = root / task / model_name / f"{fingerprint}.json"
    try:
        part = report.read_json(path)
    except (OSError, ValueError):
        return None
    ok = isinstance(part, dict) and part.get("fingerprint") == fingerprint and isinstance(part.get("items"), list)
    return part if ok and part.get("status") != "failed" else None


def reuse_cached_part(cfg: DictConfig, task: str, model_name: str, fingerprint: str, parts_dir) -> dict | None:
    """The cached part of this fingerprint, written into ``parts_dir`` as if just measured; None when not cached."""
    found = cached_part(cfg, task, model_name, fingerprint)
    if found is None:
        return None
    _say(f"{model_name} / {task}: reusing the part an earlier run measured under the same fingerprint "
         f"({part_cache_dir(cfg)}; eval.part_cache=null measures everything again)")
    found = {**found, "timings": {}, "reused": True}
    items = found.pop("items")
    return _finish_part(found, items, task, model_name, parts_dir)


def store_part(cfg: DictConfig, part: dict) -> None:
    """Keep a finished part for later runs (atomic write; the cache is an optimisation: a failure only warns)."""
    root = part_cache_dir(cfg)
    if root is None or part.get("status") == "failed" or not part.get("fingerprint"):
        return
    try:
        write_json(root / part["task"] / part["model"] / f"{part['fingerprint']}.json", part, indent=None)
    except OSError as err:
        log.warning("part cache %s not written: %s", root, err)


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
    """{report group: its keys}: each task's headline keys (``EvalTask.headline_keys``), real then offline."""
    keys_all = {k for m in metrics.values() for k in m}
    out: dict[str, list[str]] = {}
    for name, task in registry().items():
        for scope in ("", "offline/"):
            keys = task.headline_keys(keys_all, scope)
            if keys:
                out[f"{scope}{name}"] = keys
    return out


def gather_eval(cfg: DictConfig, parts_dir: str | Path, out_dir: str | Path | None = None) -> dict:
    """Combine part JSONs into ``metrics.json`` ({model: {key: value}}), CSVs, ``report.md`` and plots."""
    parts_dir = Path(parts_dir)
    out = Path(out_dir) if out_dir else parts_dir.parent
    parts, not_reported = current_parts(cfg, parts_dir)
    order = {n: i for i, n in enumerate(MODEL_ORDER)}
    task_order = {name: i for i, name in enumerate(registry())}
    parts.sort(key=lambda p: (order.get(p["model"], 9), task_order.get(p["task"], 99)))
    metrics: dict[str, dict[str, float]] = {}
    descriptions: dict[str, str] = {}
    timings: list[dict] = []
    messages: list[str] = []
    tables: dict[str, list[dict]] = {}
    items_by_task: dict[str, dict[str, list[dict]]] = {}
    protocols: dict[str, dict[str, str]] = {}
    for part in parts:
        for ds in part.get("datasets", []):   # which protocol made the keys under each prefix
            if ds.get("protocol") and ds.get("prefix"):
                protocols[ds["prefix"]] = {"protocol": ds["protocol"], "detail": ds.get("protocol_detail", "")}
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
    breakdowns = breakdown_tables(items_by_task, int(cfg.eval.n_boot), int(cfg.eval.seed))
    write_json(out / "metrics.json", {**metrics, "ci": ci, "deltas": deltas, "protocols": protocols,
                                      "breakdowns": breakdowns})
    meta = {"experiment": cfg.experiment, "created": _dt.datetime.now().isoformat(timespec="seconds"),
            "models": descriptions, "timings": timings, "messages": messages,
            "config": OmegaConf.to_container(cfg.eval, resolve=True)}
    write_json(out / "eval_meta.json", meta)
    for name, rows in tables.items():
        report.write_csv(out / "csv" / f"{name}.csv", rows)
    report.write_csv(out / "csv" / "timings.csv", timings)
    flat_rows = [{"model": m, "metric": k, "value": v, "ci_lo": ci.get(m, {}).get(k, [None, None])[0],
                  "ci_hi": ci.get(m, {}).get(k, [None, None])[1]} for m, vals in metrics.items() for k, v in vals.items()]
    report.write_csv(out / "metrics.csv", flat_rows)
    delta_rows = [{"delta": name, "metric": k, **d} for name, values in deltas.items() for k, d in values.items()]
    report.write_csv(out / "deltas.csv", delta_rows)
    text = render_report(cfg, metrics, descriptions, tables, timings, messages, out, ci=ci, deltas=deltas,
                         protocols=protocols, breakdowns=breakdowns)
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
                expected[key] = part_fingerprint(cfg, *key) if key[0] in registry() else None
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


def protocol_lines(protocols: dict[str, dict[str, str]], group: str) -> list[str]:
    """Markdown: the protocol of each dataset of a report group (``paper``: compare with the paper's tables)."""
    rows = [f"- `{prefix}`: **{p['protocol']}**" + (f" — {p['detail']}" if p.get("detail") else "")
            for prefix, p in sorted(protocols.items()) if prefix.startswith(group + "/")]
    return (["Protocol (" + ", ".join(PROTOCOL_MEANING) + "):", ""] + rows + [""]) if rows else []


PROTOCOL_MEANING = ("**paper**: the authors' settings, comparable with the paper's tables",
                    "**official**: the benchmark's own protocol", "**corr3d**: corr3d's own settings")


def breakdown_tables(items_by_task: dict[str, dict[str, list[dict]]], n_boot: int, seed: int) -> dict[str, dict]:
    """``{"<key> by <field>": {model: {bin: {value, lo, hi, n, n_units}}}}`` for each task's ``breakdowns``,
    real and offline, wherever the items carry the field (``corr3d.eval.stats.binned_table``)."""
    out: dict[str, dict] = {}
    for name, by_model in items_by_task.items():
        task = registry().get(name)
        for leaf, field, bins in task.breakdowns if task is not None else ():
            for scope in ("", "offline/"):
                key = f"{scope}{name}/{leaf}"
                if not any(field in it and key in it for items in by_model.values() for it in items):
                    continue
                try:
                    table = binned_table(by_model, key, bins=bins, field=field, n_boot=n_boot, seed=seed)
                except ValueError as err:   # a breakdown must never cost the report: say why it is missing
                    log.warning("breakdown of %s by %s skipped: %s", key, field, err)
                    continue
                out[f"{key} by {field}"] = {model: cells for model, cells in table.items()
                                            if any(cell["n"] for cell in cells.values())}
    return out


def breakdown_section(breakdowns: dict[str, dict], models: list[str]) -> list[str]:
    """Markdown: each breakdown as one table, a row per bin, a column per model (value [95% CI], n items)."""
    if not breakdowns:
        return []
    lines = ["## By viewpoint change", "",
             "Each metric again over the items of each bin of the viewpoint change (relative camera rotation in "
             "degrees; SPair: its viewpoint-variation difficulty 0/1/2), with its 95% CI over the bin's units.", ""]
    for name, by_model in breakdowns.items():
        names = [m for m in models if m in by_model]
        labels = list(dict.fromkeys(b for m in names for b in by_model[m]))
        rows = [{"bin": label, **{m: _bin_cell(by_model[m].get(label)) for m in names}} for label in labels]
        lines += [f"### {name}", "", report.markdown_table(rows), ""]
    return lines


def _bin_cell(cell: dict | None) -> str:
    if not cell or not cell.get("n"):
        return "–"
    lo_hi = [cell["lo"], cell["hi"]] if cell.get("lo") is not None else None
    return f"{report.format_ci(cell['value'], lo_hi)} (n={cell['n']})"


def render_report(cfg, metrics, descriptions, tables, timings, messages, out: Path, ci=None, deltas=None,
                  protocols=None, breakdowns=None) -> str:
    ci, deltas, protocols = ci or {}, deltas or {}, protocols or {}
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
        lines += [f"## {group}", ""] + protocol_lines(protocols, group)
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
    lines += breakdown_section(breakdowns or {}, models)
    detail = [(n, r) for n, r in tables.items() if n.endswith(("_objects", "_videos", "_classes", "_viewpoints"))]
    if detail:
        lines += ["## Details", ""]
        for name, rows in detail:
            lines += [f"### {name.replace('__', ' / ')}", "", report.markdown_table(rows), ""]
    if timings:
        lines += ["## Time per task and model (s)", "",
                  "Wall seconds of each part (a reused part took none here). With `eval.workers` > 1 parts run side "
                  "by side, so the evaluation's wall time is less than the sum.", "",
                  report.markdown_table(timing_table(timings, models)), ""]
    if messages:
        lines += ["## Missing data", ""] + [f"- {m}" for m in messages] + [""]
    lines += ["CSV files: `csv/` (per pair / frame / video / object rows), `metrics.csv` (all keys, with CIs), "
              "`deltas.csv` (paired deltas); per-item results: `parts/<task>/<model>.json`.", ""]
    return "\n".join(lines)


def timing_table(timings: list[dict], models: list[str]) -> list[dict]:
    """Seconds per task (rows) and model (columns), datasets summed, with a total row and column."""
    seconds: dict[str, dict[str, float]] = {}
    for row in timings:
        per_model = seconds.setdefault(row["task"], {})
        per_model[row["model"]] = per_model.get(row["model"], 0.0) + float(row["seconds"])
    columns = [m for m in models if any(m in v for v in seconds.values())]
    rows = [{"task": task, **{m: round(v[m], 1) if m in v else "" for m in columns},
             "total": round(sum(v.values()), 1)} for task, v in seconds.items()]
    totals = {m: round(sum(v.get(m, 0.0) for v in seconds.values()), 1) for m in columns}
    return rows + [{"task": "total", **totals, "total": round(sum(totals.values()), 1)}]


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
    if cfg.eval.offline.enabled:   # once here, before any worker starts: not once per model or per worker
        ensure_offline_suite(cfg.eval.offline.dir, offline_parts(tasks), force=bool(cfg.eval.offline.regenerate))
        cfg = OmegaConf.merge(cfg, {"eval": {"offline": {"regenerate": False}}})
    # each part's fingerprint once: reuse check, part-cache lookup and the part itself all use this one
    fingerprints = {(t, m): part_fingerprint(cfg, t, m) for t in tasks for m in names}
    # a selected part is reused when finished under the same fingerprint, otherwise measured again (overwritten);
    # nothing is deleted: parts of other tasks and models stay and merge into the report
    reuse = {key for key, fp in fingerprints.items() if cfg.eval.resume and reusable_part(parts_dir, *key, fp)}
    workers = eval_workers(cfg)
    _say(f"tasks {tasks}; models {names}; output {out}"
         + (f"; reusing {len(reuse)} finished part(s) (eval.resume=false to redo them)" if reuse else "")
         + (f"; {workers} parallel workers" if workers > 1 else ""))
    # backbone tokens are kept per group of models with the same backbone (the pretrained one and its untrained
    # heads; each other model alone): computed once per input for the group's tasks, passes and models. The
    # finetuned model joins the pretrained group: its blocks before the adapted ones are the pretrained blocks
    sharing = FROZEN_BACKBONE_MODELS + PREFIX_SHARING_MODELS
    frozen = [name for name in names if name in sharing]
    groups = ([frozen] if frozen else []) + [[name] for name in names if name not in sharing]
    job = _PartJob(cfg, reuse, fingerprints, parts_dir)
    if workers > 1:
        failed = _measure_in_parallel(job, tasks, groups, workers)
    else:
        failed = [part for group in groups for part in _measure_unit(job, tasks, group)]
    _say(f"evaluation: {time.perf_counter() - started:.1f} s")
    result = gather_eval(cfg, parts_dir, out)
    if failed:  # the other tasks' metrics and the report are written; the command still reports the failure
        raise EvaluationFailed(f"{len(failed)} task(s) failed: {', '.join(failed)}; their errors are in "
                               f"{parts_dir}/<task>__<model>.json and {out / 'report.md'}")
    return result


MAX_AUTO_WORKERS = 4   # each worker holds its models and up to eval.shared_features_mb of backbone tokens


def eval_workers(cfg: DictConfig) -> int:
    """``eval.workers``: processes measuring parts side by side. ``auto``: one per CPU core (at most
    :data:`MAX_AUTO_WORKERS`) on CPU, one on a GPU (the device is the bottleneck there)."""
    value = cfg.eval.workers
    if str(value) != AUTO:
        return max(1, int(value))
    if eval_device(cfg).type != "cpu":
        return 1
    return max(1, min(MAX_AUTO_WORKERS, torch.get_num_threads()))



class _PartJob:
    """What every worker needs to measure parts: the configuration, the reused parts and the fingerprints."""

    def __init__(self, cfg: DictConfig, reuse: set, fingerprints: dict, parts_dir: Path):
        self.cfg, self.reuse, self.fingerprints, self.parts_dir = cfg, reuse, fingerprints, parts_dir

    def measure(self, tasks: list[str], names: list[str]) -> list[str]:
        """Measure every selected part not reused; returns the failed ones (``task/model``)."""
        cfg, failed = self.cfg, []
        for name in names:
            todo = [task for task in tasks if (task, name) not in self.reuse]
            if cfg.eval.resume:   # parts another run measured under the same fingerprint (eval.part_cache)
                todo = [task for task in todo if reuse_cached_part(
                    cfg, task, name, self.fingerprints[task, name], self.parts_dir) is None]
            if not todo:
                continue
            model = load_eval_model(cfg, name)
            for task in todo:
                start = time.perf_counter()
                try:
                    run_eval_part(cfg, task, name, model=model, parts_dir=self.parts_dir,
                                  cache=bool(cfg.eval.resume), fingerprint=self.fingerprints[task, name])
                except Exception as err:  # noqa: BLE001 - one bad dataset file fails its task, not the evaluation
                    _record_failed_part(task, name, err, self.parts_dir, self.fingerprints[task, name])
                    failed.append(f"{task}/{name}")
                    continue
                _say(f"{name} / {task}: {time.perf_counter() - start:.1f} s")
            del model
            gc.collect()
        return failed


def _measure_in_parallel(job: _PartJob, tasks: list[str], groups: list[list[str]], workers: int) -> list[str]:
    """One unit per (task, model group), longest first (``EvalTask.cost`` × models), on ``workers`` spawned
    processes with torch threads × workers <= the threads one process would use. Each part seeds itself
    (``eval.seed``), so a part's numbers do not depend on which worker measures it or when
    (tests/eval/test_run_workers.py)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    units = sorted(((task, group) for group in groups for task in tasks),
                   key=lambda unit: -get_task(unit[0]).cost * len(unit[1]))
    threads = max(1, torch.get_num_threads() // workers)
    failed: list[str] = []
    with ProcessPoolExecutor(max_workers=min(workers, len(units)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(threads, os.getpid())) as pool:
        futures = {pool.submit(_measure_unit, job, [task], group): (task, group) for task, group in units}
        for future, (task, group) in futures.items():
            try:
                failed += future.result()
            except BrokenProcessPool as err:   # a worker died (killed, out of memory): its parts are failed parts
                for name in group:
                    _record_failed_part(task, name, err, job.parts_dir, job.fingerprints[task, name])
                    failed.append(f"{task}/{name}")
    return failed


def _init_worker(threads: int, parent: int) -> None:
    torch.set_num_threads(threads)
    # a killed make eval (SIGTERM, SIGKILL) cannot shut its pool down: its workers leave with it instead of writing
    # parts into an output directory that is no longer locked (tests/eval/test_run_workers.py)
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    try:
        import cv2   # OpenCV's own pool (RANSAC, resizing) follows the same budget
        cv2.setNumThreads(threads)
    except ImportError:
        pass


def _exit_when_orphaned(parent: int, poll_seconds: float = 1.0) -> None:
    while os.getppid() == parent:
        time.sleep(poll_seconds)
    os._exit(1)


def _measure_unit(job: _PartJob, tasks: list[str], names: list[str]) -> list[str]:
    """Measure a group's parts with one token store (models/shared.py); a finetuned model measured after a frozen
    one continues from the tokens before its adapted blocks instead of recomputing them."""
    prefix_of_last = None
    if any(n in PREFIX_SHARING_MODELS for n in names) and any(n in FROZEN_BACKBONE_MODELS for n in names):
        prefix_of_last = TimmViTFamily.adapted_last_blocks(job.cfg.model)
    with shared_backbone_maps(float(job.cfg.eval.shared_features_mb), prefix_of_last):
        return job.measure(tasks, names)
