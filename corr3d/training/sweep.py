"""Grid sweeps over an experiment: ``corr3d sweep <experiment> key=v1,v2 [key2=...] [--name N]`` (= ``make sweep``).

Every cell of the grid (the cartesian product of the axes, in the order given; seeds are an ordinary axis, e.g.
``seed=0,1,2``) is one training run, ``corr3d.training.run.train(cfg, run_dir=...)``, in its own directory
``runs/<experiment>/sweeps/<name>/<cell>/``. Axes come from the experiment's ``sweep.axes`` (the ablation files in
experiments/ carry theirs) and from the command line (which replaces an axis of the same key).

- Locally the cells run one after another; a cell with a ``DONE`` marker is skipped, an unfinished one resumes from
  its last checkpoint (``train`` does that for a given run directory), so re-running the command finishes a sweep.
- ``launcher.name=slurm`` submits one array task per unfinished cell and a gather job (``afterany``), reusing
  ``corr3d.launch.slurm`` (executor, bookkeeping) and ``corr3d.launch.tasks.TrainTask``.
- ``sweep.share_baselines``: rows that training does not change are measured once: a finished cell's
  ``pretrained`` row (and reference rows) go to every cell with the same backbone and evaluation settings, its
  ``pretrained_head_init`` row to cells with the same adapter structure and seed (``train`` skips rows already in
  metrics.json). And a cell that differs from a finished one only in ``trainer.max_steps`` continues that cell's
  latest step checkpoint instead of starting over (resuming is exact: corr3d/training/run.py), so an iteration
  sweep 0, 1, 5, ..., 100 trains about 100 steps, not 186.

Gathering writes ``results.csv`` (one row per cell: the axis values, each model's metrics with their 95% CI from the
cell's metrics.json ``"ci"``, and the paired deltas ``finetuned-pretrained_head_init`` / ``finetuned-pretrained``
from ``"deltas"``), a plot per metric against the first numeric axis (error bars = CI) and ``report.md``.

Names become paths: the sweep name (``--name`` / ``sweep.name``) is validated like an experiment name
(:func:`corr3d.utils.paths.safe_name`: one component, no ``/``, ``..``, leading dot, at most 200 characters) before
anything touches the disk; cell names are built from the axis values by :func:`cell_name`, which keeps only
``[A-Za-z0-9.+-]`` (``seed=../x`` -> ``seed-.._x``) and shortens over-long names with a hash, and every cell
directory is checked to resolve inside the sweep directory (:meth:`SweepPlan.run_dir`). Sweep cells do not move the
experiment's ``latest`` (``corr3d.utils.run_dir.point_latest``): ``make eval`` keeps evaluating its own run.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import re
import shutil
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import yaml
from omegaconf import DictConfig, OmegaConf

from corr3d.config import ConfigError, load_config
from corr3d.eval.stats import bootstrap_ci, paired_delta
from corr3d.utils.paths import MAX_NAME, ensure_within, safe_join, safe_name
from corr3d.utils.report import _pyplot, markdown_table, write_csv, write_text
from corr3d.utils.run_dir import DONE_MARKER, SWEEPS_DIR, atomic_write_text, experiment_name

log = logging.getLogger("corr3d.training.sweep")

MODELS = ("pretrained", "pretrained_head_init", "finetuned")
DELTAS = ("finetuned-pretrained_head_init", "finetuned-pretrained")
# Config sections (besides the model) that decide the rows training does not change (see ``row_signatures``).
EVAL_KEYS = ("equivariance", "eval.real_pairs", "eval.seed", "data.render", "data.rendered_dir")
RESULTS_FILE = "results.csv"


# ---- grid ----------------------------------------------------------------------------------------------------------
def split_values(text: str) -> list[str]:
    """``"1,5,[a,b]"`` -> ``["1", "5", "[a,b]"]``: commas split values except inside brackets/braces/quotes."""
    values, depth, quote, current = [], 0, None, []
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            values.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    values.append("".join(current).strip())
    if any(v == "" for v in values):
        raise ConfigError(f"empty value in sweep axis values '{text}'")
    return values


def parse_axes(specs: Iterable[str]) -> dict[str, list[str]]:
    """``["lr=1,2", "seed=0,1"]`` -> ``{"lr": ["1", "2"], "seed": ["0", "1"]}`` (insertion order kept)."""
    axes: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"sweep axis '{spec}' must look like key=v1,v2,...")
        axes[key.strip()] = split_values(values)
    return axes


def config_axes(cfg: DictConfig) -> dict[str, list[str]]:
    """The experiment's ``sweep.axes`` (``{key: [values]}``) as strings, ready to be used as overrides."""
    axes = OmegaConf.to_container(cfg.sweep.axes, resolve=True) or {}
    return {str(k): [_override_text(v) for v in (vs if isinstance(vs, list) else [vs])] for k, vs in axes.items()}


def _override_text(value) -> str:
    """A config value as override text; a mapping value is a bundle of keys under the axis' section
    (``loss: [{name: infonce, temperature: 0.07}, ...]`` sets both keys together)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_override_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_override_text(v) for v in value) + "]"
    if value is None:
        return "null"
    return str(value)


def expand_grid(axes: Mapping[str, Sequence[str]]) -> list[dict[str, str]]:
    """Cartesian product of the axes (first axis varies slowest); no axes -> one cell with no overrides."""
    keys = list(axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]


def variant_bundle(cfg: DictConfig, key: str, value: str) -> dict | None:
    """The dotted overrides of a variant-axis value (see ``SweepPlan.cell_overrides``); None for a config key."""
    if OmegaConf.select(cfg, key, default="__missing__") != "__missing__":
        return None
    parsed = yaml.safe_load(value)
    if not isinstance(parsed, dict):
        raise ConfigError(f"sweep axis '{key}' is not a config key, so its values must be mappings of dotted keys "
                          f"(e.g. {{optim.lr: 1e-4, _name: lr1e-4}}), got {value!r}")
    return {str(k): v for k, v in parsed.items() if k != "_name"}


def _variant_label(value: str) -> str | None:
    if not value.startswith("{"):
        return None
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return None
    return str(parsed["_name"]) if isinstance(parsed, dict) and "_name" in parsed else None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "x"


_LEADING = re.compile(r"^[^A-Za-z0-9]+")


def cell_name(assignment: Mapping[str, str], short: bool = True) -> str:
    """A directory name for a cell: ``max_steps-10__init-identity`` (last key component unless ambiguous).

    Only ``[A-Za-z0-9.+-]`` of keys and values survive (``seed=../x`` -> ``seed-.._x``), the name starts with a
    letter or digit, and a name longer than :data:`~corr3d.utils.paths.MAX_NAME` is cut and ends in a hash of the
    full name (still unique): always a single safe path component (:func:`corr3d.utils.paths.safe_name`).
    """
    if not assignment:
        return "default"
    parts = []
    for key, value in assignment.items():
        label = key.rsplit(".", 1)[-1] if short else key
        parts.append(f"{_slug(label)}-{_slug(_variant_label(value) or value)}")
    name = _LEADING.sub("", "__".join(parts)) or "x"
    if len(name) > MAX_NAME:
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        name = f"{name[:MAX_NAME - len(digest) - 2].rstrip('_.-')}__{digest}"
    return safe_name(name, "sweep cell name")


def cell_names(cells: Sequence[Mapping[str, str]]) -> list[str]:
    names = [cell_name(c) for c in cells]
    if len(set(names)) != len(names):  # e.g. model.lora.rank and model.head.rank: fall back to full keys
        names = [cell_name(c, short=False) for c in cells]
    if len(set(names)) != len(names):
        raise ConfigError("sweep cells have identical names (duplicate axis values?)")
    return names


class SweepPlan:
    """Everything a sweep needs: the base config, the axes, and each cell's (name, overrides, config, run dir)."""

    def __init__(self, experiment: str, axis_specs: Sequence[str] = (), overrides: Sequence[str] = (),
                 name: str | None = None):
        if name is not None:
            sweep_name(name, "--name")  # refused before the config is even read
        self.experiment = experiment
        self.overrides = list(overrides)
        self.base = load_config(experiment, self.overrides)
        axes = config_axes(self.base)
        axes.update(parse_axes(axis_specs))  # the command line replaces an axis of the same key
        self.axes = axes
        self.name = sweep_name(name, "--name") if name is not None else \
            sweep_name(self.base.sweep.name or "default", "sweep.name")
        self.experiment_dir = Path(self.base.output_dir) / experiment_name(self.base)
        self.root = self.experiment_dir / SWEEPS_DIR / self.name
        self.cells = expand_grid(axes)
        self.names = cell_names(self.cells)
        for cell in self.names:  # nothing of the sweep is on disk yet: refuse here, not halfway through the grid
            self.run_dir(cell)

    def cell_overrides(self, assignment: Mapping[str, str]) -> list[str]:
        """``key=value`` overrides of a cell; a *variant* axis (a key that is not a config key, e.g. ``recipe``)
        holds mappings of dotted keys (``{optim.lr: 1e-4, loss.name: infonce, _name: infonce}``) applied together,
        so "one change at a time" comparisons are one axis."""
        out = []
        for key, value in assignment.items():
            bundle = variant_bundle(self.base, key, value)
            out += [f"{k}={_override_text(v)}" for k, v in bundle.items()] if bundle is not None else [f"{key}={value}"]
        return out

    def cell_config(self, assignment: Mapping[str, str]) -> DictConfig:
        return load_config(self.experiment, [*self.overrides, *self.cell_overrides(assignment)])

    def run_dir(self, cell: str) -> Path:
        """``<root>/<cell>``: a safe name that resolves inside the sweep directory (symlinks followed)."""
        ensure_within(self.experiment_dir, self.root, "sweep directory")
        return safe_join(self.root, cell, what="sweep cell name")

    def write_manifest(self) -> None:
        ensure_within(self.experiment_dir, self.root, "sweep directory")
        self.root.mkdir(parents=True, exist_ok=True)
        manifest = {"experiment": str(self.base.experiment), "name": self.name, "axes": self.axes,
                    "overrides": self.overrides, "cells": [{"name": n, "overrides": c}
                                                          for n, c in zip(self.names, self.cells)]}
        atomic_write_text(self.root / "sweep.json", json.dumps(manifest, indent=2))


def sweep_name(name, source: str = "sweep.name") -> str:
    """The validated sweep name: one safe path component like an experiment name (``corr3d.utils.paths``)."""
    fix = (f"give {source} a plain name with letters, digits, '.', '_' or '-' (at most {MAX_NAME} characters; "
           f"it names runs/<experiment>/sweeps/<name>/)")
    return safe_name(name, "sweep name", fix=fix)


def is_done(run: Path) -> bool:
    return (Path(run) / DONE_MARKER).exists()


# ---- sharing between cells: baseline rows and training prefixes ------------------------------------------------
def _select(cfg: DictConfig, key: str):
    node = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def row_signatures(cfg: DictConfig) -> dict[str, str]:
    """For each measurement that does not depend on training, what it depends on (as text). Cells with equal
    signatures have identical rows: ``pretrained`` (and the reference models) need the backbone and the evaluation
    settings only, ``pretrained_head_init`` also the adapter structure (LoRA, head, its init) and the seed."""
    evaluation = {k: _select(cfg, k) for k in EVAL_KEYS}
    model = _select(cfg, "model") or {}
    backbone = {k: v for k, v in model.items() if k not in ("lora", "head", "unfreeze_blocks")}
    plain = json.dumps({"model": backbone, **evaluation}, sort_keys=True, default=str)
    seeded = json.dumps({"model": backbone, "seed": _select(cfg, "seed"), **evaluation}, sort_keys=True, default=str)
    head = json.dumps({"model": model, "seed": _select(cfg, "seed"), **evaluation}, sort_keys=True, default=str)
    return {"pretrained": plain, "weights": plain, "random": seeded, "oracle": plain, "pretrained_head_init": head}


def warm_signature(cfg: DictConfig) -> str:
    """Everything but the step budget: a cell with more steps can continue a finished cell's checkpoint (the pair
    stream is a function of (seed, rank, epoch, index) and resuming is exact, so the result equals a fresh run)."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    tree.get("trainer", {}).pop("max_steps", None)
    tree.pop("sweep", None)
    return json.dumps(tree, sort_keys=True, default=str)


def share_rows(sources: Mapping[str, Path], target: Path) -> list[str]:
    """Copy rows (``{row: finished cell}``) with their CIs and per-item parts into ``target``'s metrics.json,
    keeping rows it already has. Returns the rows copied."""
    target = Path(target)
    path = target / "metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else {}
    copied = []
    for row, source in sources.items():
        if row in metrics:
            continue
        src = json.loads((Path(source) / "metrics.json").read_text())
        if row not in src:
            continue
        metrics[row] = src[row]
        copied.append(row)
        if row in src.get("per_object", {}):
            metrics.setdefault("per_object", {})[row] = src["per_object"][row]
        if row in src.get("ci", {}):
            metrics.setdefault("ci", {})[row] = src["ci"][row]
        parts = Path(source) / "parts"
        if parts.is_dir():  # per-item lists of that row (their file names carry the model name)
            for part in parts.rglob("*"):
                if part.is_file() and row in {p.replace(".json", "").split("__")[-1] for p in
                                              part.relative_to(parts).parts}:
                    dest = target / "parts" / part.relative_to(parts)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(part, dest)
    if copied:
        target.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(metrics, indent=2, sort_keys=True))
    return copied


def step_checkpoints(run: Path) -> dict[int, Path]:
    """``{step: file}`` of a run's step checkpoints (``step000050.ckpt``, corr3d/training/run.py build_trainer)."""
    out = {}
    for path in (Path(run) / "checkpoints").glob("step*.ckpt"):
        try:
            out[int(path.stem[4:])] = path
        except ValueError:
            continue
    return out


def warm_start(candidates: Sequence[Path], target: Path, max_steps: int) -> int:
    """Copy the latest step checkpoint (< ``max_steps``) of the finished ``candidates`` into ``target`` so its
    training resumes from there; returns that step (0: none)."""
    if step_checkpoints(target) or (Path(target) / "checkpoints" / "last.ckpt").exists():
        return 0  # the cell has checkpoints of its own: it resumes from them
    best_step, best_path = 0, None
    for run in candidates:
        for step, path in step_checkpoints(run).items():
            if best_step < step < max_steps:
                best_step, best_path = step, path
    if best_path is None:
        return 0
    dest = Path(target) / "checkpoints" / best_path.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(best_path, dest)  # a fresh mtime: run.resume_checkpoint takes the newest file
    return best_step


# ---- running ----------------------------------------------------------------------------------------------------
def run_sweep(experiment: str, axis_specs: Sequence[str] = (), overrides: Sequence[str] = (),
              name: str | None = None, train_fn=None) -> Path:
    """Run (or finish) the sweep locally, one cell at a time, then gather; returns the sweep directory."""
    plan = SweepPlan(experiment, axis_specs, overrides, name)
    if plan.base.launcher.name == "slurm":
        submit_sweep(plan)
        return plan.root
    if train_fn is None:
        # deferred: pulls the training/evaluation stack only when used
        from corr3d.training.run import train as train_fn
    plan.write_manifest()
    rows: dict[tuple[str, str], Path] = {}  # (row, signature) -> a finished cell holding that row
    prefixes: dict[str, list[Path]] = {}  # warm signature -> finished cells
    share = bool(plan.base.sweep.share_baselines)

    def remember(run: Path, cfg: DictConfig) -> None:
        metrics_path = run / "metrics.json"
        have = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        for row, signature in row_signatures(cfg).items():
            if row in have:
                rows.setdefault((row, signature), run)
        prefixes.setdefault(warm_signature(cfg), []).append(run)

    for index, (cell, assignment) in enumerate(zip(plan.names, plan.cells)):
        cfg = plan.cell_config(assignment)
        run = plan.run_dir(cell)
        if is_done(run):
            log.info("sweep %s: cell %s already done", plan.name, cell)
            remember(run, cfg)
            continue
        if share:
            sources = {row: rows[(row, sig)] for row, sig in row_signatures(cfg).items() if (row, sig) in rows}
            copied = share_rows(sources, run)
            start = warm_start(prefixes.get(warm_signature(cfg), []), run, int(cfg.trainer.max_steps))
            if copied or start:
                log.info("sweep %s: cell %s reuses rows %s%s", plan.name, cell, copied,
                         f" and continues a finished cell from step {start}" if start else "")
        log.info("sweep %s: cell %d/%d %s", plan.name, index + 1, len(plan.cells), cell)
        print(f"[corr3d] sweep {plan.name}: cell {index + 1}/{len(plan.cells)} {cell}", flush=True)
        train_fn(cfg, run_dir=run)
        remember(run, cfg)
        gather_sweep(plan.root)  # partial results are readable while the sweep runs
    return gather_sweep(plan.root)


def submit_sweep(plan: SweepPlan, entry: str | None = None):
    """One SLURM array task per unfinished cell (each a ``TrainTask`` in its cell directory), then a gather job.

    Returns (array jobs, gather job). Baselines are not shared between array tasks (they run concurrently).
    """
    # deferred: pulls the training/evaluation stack only when used
    from corr3d.launch.slurm import (
        _announce,
        align_trainer_with_launcher,
        gpus_per_task_node,
        job_name,
        make_executor,
        record_jobs,
        script_path,
        slurm_parameters,
        validate_launcher,
    )
    # deferred: pulls the training/evaluation stack only when used
    from corr3d.launch.tasks import TRAIN_ENTRY, TrainTask, cfg_to_yaml

    validate_launcher(plan.base.launcher)  # before anything is written (the batch script is built from it)
    base = align_trainer_with_launcher(plan.base)
    root = script_path(plan.root.resolve(), "the sweep directory")
    plan.write_manifest()
    log_root = root / "slurm"
    tasks, cells = [], []
    for cell, assignment in zip(plan.names, plan.cells):
        run = plan.run_dir(cell).resolve()
        if is_done(run):
            continue
        cfg = align_trainer_with_launcher(plan.cell_config(assignment))
        run.mkdir(parents=True, exist_ok=True)
        tasks.append(TrainTask(cfg_to_yaml(cfg), str(run), entry or TRAIN_ENTRY))
        cells.append(cell)
    launcher = base.launcher
    gpus = gpus_per_task_node(base, int(base.trainer.devices))
    array = []
    dependency = None
    if tasks:
        params = slurm_parameters(launcher, name=job_name(base, "sweep"), nodes=int(base.trainer.num_nodes),
                                  tasks_per_node=int(base.trainer.devices), gpus_per_node=gpus)
        array = make_executor(log_root, params, int(launcher.max_requeues)).submit_array(tasks)
        dependency = f"afterany:{array[0].job_id.split('_')[0]}"
    gather_params = slurm_parameters(launcher, name=job_name(base, "sweep-gather"), nodes=1, tasks_per_node=1,
                                     gpus_per_node=0, dependency=dependency)
    gather = make_executor(log_root, gather_params).submit(GatherSweepTask(str(root)))
    job_ids = [job.job_id for job in array]
    record_jobs(log_root, "sweep", job_ids, gather_job_id=gather.job_id, cells=cells, sweep_dir=str(root))
    _announce("sweep", job_ids or [gather.job_id], log_root,
              f"\n[corr3d]   {len(cells)} cells to run; gather job {gather.job_id} writes {root / RESULTS_FILE}")
    if launcher.wait:
        from corr3d.launch.slurm import wait_for_jobs  # deferred: pulls the training/evaluation stack only when used

        wait_for_jobs([*(j.job_id for j in array[:1]), gather.job_id])
    return array, gather


class GatherSweepTask:
    """SLURM job after the sweep's array (``afterany``): writes results.csv / report.md from the finished cells."""

    def __init__(self, sweep_dir: str):
        self.sweep_dir = str(sweep_dir)

    def __call__(self) -> str:
        return str(gather_sweep(Path(self.sweep_dir)))


# ---- gathering --------------------------------------------------------------------------------------------------
def _number(text: str):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return text
    return int(value) if value.is_integer() and "." not in str(text) and "e" not in str(text).lower() else value


def cell_row(cell: str, assignment: Mapping[str, str], run: Path, keys: Sequence[str]) -> dict:
    """One results.csv row: axis values, status, per model ``<model>/<key>`` (+ ``_lo``/``_hi``), deltas."""
    row: dict = {"cell": cell, **{k: _number(_variant_label(v) or v) for k, v in assignment.items()}}
    path = Path(run) / "metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else {}
    row["status"] = "done" if is_done(run) else ("partial" if metrics else "missing")
    train = metrics.get("train", {})
    row["steps"] = train.get("global_step")
    row["wall_seconds"] = train.get("wall_seconds")
    row["peak_rss_mb"] = train.get("peak_rss_mb")
    ci = metrics.get("ci") or {}
    deltas = metrics.get("deltas") or {}
    if not ci and metrics.get("per_object"):
        ci, deltas = per_object_intervals(metrics, keys)
    for model in MODELS:
        values = metrics.get(model, {})
        for key in keys:
            if key not in values:
                continue
            row[f"{model}/{key}"] = values[key]
            lo_hi = ci.get(model, {}).get(key)
            if lo_hi:
                row[f"{model}/{key}_lo"], row[f"{model}/{key}_hi"] = lo_hi
    for name, by_key in deltas.items():
        if name not in DELTAS:
            continue
        for key in keys:
            d = by_key.get(key)
            if d:
                row[f"{name}/{key}"] = d["delta"]
                row[f"{name}/{key}_lo"], row[f"{name}/{key}_hi"] = d["lo"], d["hi"]
                row[f"{name}/{key}_significant"] = bool(d["significant"])
    for model in MODELS[1:]:  # deltas computable without CIs (older metrics.json)
        for key in keys:
            ref = "pretrained_head_init" if model == "finetuned" else "pretrained"
            name = f"{model}-{ref}/{key}"
            if name not in row and f"{model}/{key}" in row and f"{ref}/{key}" in row:
                row[name] = row[f"{model}/{key}"] - row[f"{ref}/{key}"]
    return row


def per_object_items(metrics: Mapping, model: str) -> list[dict]:
    """Items in the ``corr3d.eval.stats`` convention from a run's ``per_object`` block: one item per held-out
    object (its own unit), weighted by its number of evaluated points, so the weighted mean is the pooled metric."""
    per = metrics.get("per_object", {}).get(model, {})
    return [{"id": obj, "unit": obj, "weight": float(vals.get("equivariance/num_points", 1.0)), **vals}
            for obj, vals in sorted(per.items())]


def per_object_intervals(metrics: Mapping, keys: Sequence[str], n_boot: int = 2000, seed: int = 0
                         ) -> tuple[dict, dict]:
    """("ci", "deltas") in the metrics.json shape, for runs written before training recorded them: cluster
    bootstrap over the held-out objects with ``corr3d.eval.stats``. Keys without per-object values get none."""
    items = {m: per_object_items(metrics, m) for m in MODELS}
    ci = {m: {} for m in MODELS if items[m]}
    for model in ci:
        for key in keys:
            if any(key in it for it in items[model]):
                _, lo, hi = bootstrap_ci(items[model], key, n_boot=n_boot, seed=seed)
                ci[model][key] = [lo, hi]
    deltas: dict = {}
    # a run without a conv head has no separate untrained-head row: its reference is the pretrained model
    head_ref = "pretrained_head_init" if items["pretrained_head_init"] else "pretrained"
    for name, (a, b) in {"finetuned-pretrained_head_init": ("finetuned", head_ref),
                         "finetuned-pretrained": ("finetuned", "pretrained")}.items():
        if not items[a] or not items[b]:
            continue
        for key in keys:
            if any(key in it for it in items[a]):
                try:
                    deltas.setdefault(name, {})[key] = paired_delta(items[a], items[b], key, n_boot=n_boot,
                                                                    seed=seed)
                except ValueError as err:  # an object scored for one model only: no paired interval
                    log.warning("no paired delta %s %s: %s", name, key, err)
    return ci, deltas


def sweep_rows(sweep_dir: Path) -> tuple[dict, list[dict]]:
    manifest = json.loads((Path(sweep_dir) / "sweep.json").read_text())
    keys = _report_keys(manifest)
    rows = [cell_row(c["name"], c["overrides"], safe_join(sweep_dir, c["name"], what="sweep cell name"), keys)
            for c in manifest["cells"]]
    return manifest, rows


def _report_keys(manifest: dict) -> list[str]:
    cfg = load_config(manifest["experiment"] if manifest["experiment"] != "base" else "base", manifest["overrides"])
    return [str(k) for k in cfg.sweep.metrics]


def gather_sweep(sweep_dir: str | Path) -> Path:
    """Write results.csv, plots and report.md for the sweep in ``sweep_dir``; returns the directory."""
    sweep_dir = Path(sweep_dir)
    manifest, rows = sweep_rows(sweep_dir)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    write_csv(sweep_dir / RESULTS_FILE, rows, columns)
    try:
        write_sweep_report(sweep_dir, manifest, rows)
    except Exception as err:  # the CSV is the product; a plotting problem must not lose it
        log.warning("sweep report failed: %s", err)
    return sweep_dir


def _fmt_ci(row: dict, key: str, digits: int = 2) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = f"{value:+.{digits}f}" if "-" in key.split("/")[0] else f"{value:.{digits}f}"
    lo, hi = row.get(f"{key}_lo"), row.get(f"{key}_hi")
    if lo is not None and hi is not None:
        text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    if row.get(f"{key}_significant"):
        text += " *"
    return text


def seed_summary(rows: Sequence[dict], axes: Sequence[str], key: str) -> list[dict]:
    """Mean and standard deviation over the ``seed`` axis of ``key`` for each setting of the other axes."""
    others = [a for a in axes if a != "seed"]
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        if row.get(key) is None:
            continue
        groups.setdefault(tuple(row.get(a) for a in others), []).append(float(row[key]))
    out = []
    for combo, values in groups.items():
        out.append({**dict(zip(others, combo)), "n_seeds": len(values), f"{key} mean": float(np.mean(values)),
                    f"{key} sd": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")})
    return out


def write_sweep_report(sweep_dir: Path, manifest: dict, rows: list[dict]) -> Path:
    axes = list(manifest["axes"])
    keys = _report_keys(manifest)
    lines = [f"# Sweep `{manifest['name']}` of `{manifest['experiment']}`", "",
             f"Axes: {', '.join(f'`{k}` = {v}' for k, v in manifest['axes'].items()) or 'none'}; "
             f"overrides: {' '.join(manifest['overrides']) or 'none'}.", "",
             "Values are the held-out equivariance metrics (APE % lower is better, PCDP % higher) with their 95% "
             "CI (t-interval over units) in brackets where the run recorded one; Δ columns are paired deltas "
             "(`*`: the CI excludes 0). `head_init` = pretrained + untrained head.", ""]
    for key in [k for k in keys if any(r.get(f"{m}/{k}") is not None for r in rows for m in MODELS)]:
        table = []
        for row in rows:
            entry = {"cell": row["cell"], **{a: row.get(a) for a in axes}, "status": row["status"]}
            for model, label in (("pretrained", "pretrained"), ("pretrained_head_init", "head_init"),
                                 ("finetuned", "finetuned")):
                entry[label] = _fmt_ci(row, f"{model}/{key}")
            entry["Δ ft−head_init"] = _fmt_ci(row, f"finetuned-pretrained_head_init/{key}")
            entry["Δ ft−pretrained"] = _fmt_ci(row, f"finetuned-pretrained/{key}")
            table.append(entry)
        lines += [f"## `{key}`", "", markdown_table(table), ""]
        plot = plot_sweep(sweep_dir, axes, rows, key)
        if plot is not None:
            lines += [f"![{key}]({plot.name})", ""]
        if "seed" in axes:
            summary = seed_summary(rows, axes, f"finetuned/{key}")
            if summary:
                lines += ["Across seeds (finetuned):", "", markdown_table(summary), ""]
    corr = correlation_rows(rows, keys)
    if corr:
        lines += ["## Correlation of APE with the other metrics across cells and models", "",
                  markdown_table(corr, digits=3), ""]
    return write_text(sweep_dir / "report.md", "\n".join(lines))


def _numeric_axis(axes: Sequence[str], rows: Sequence[dict]) -> str | None:
    for axis in axes:
        if axis != "seed" and all(isinstance(r.get(axis), (int, float)) for r in rows):
            return axis
    return None


def plot_sweep(sweep_dir: Path, axes: Sequence[str], rows: Sequence[dict], key: str) -> Path | None:
    """``key`` against the first numeric axis (or the cells in order), one line per model and per setting of the
    remaining axes, error bars = 95% CI."""
    x_axis = _numeric_axis(axes, rows)
    others = [a for a in axes if a != x_axis]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(a) for a in others), []).append(row)
    drawn = False
    for combo, members in groups.items():
        members = sorted(members, key=lambda r: r.get(x_axis) if x_axis else 0)
        xs = [r.get(x_axis) for r in members] if x_axis else list(range(len(members)))
        suffix = ", ".join(f"{a}={v}" for a, v in zip(others, combo))
        for model, style in (("finetuned", "-o"), ("pretrained_head_init", "--s"), ("pretrained", ":^")):
            full = f"{model}/{key}"
            pts = [(x, r) for x, r in zip(xs, members) if r.get(full) is not None]
            if not pts:
                continue
            if model != "finetuned" and len({round(r[full], 6) for _, r in pts}) == 1 and len(groups) > 1:
                continue  # a constant baseline repeated per group only clutters the plot
            y = [r[full] for _, r in pts]
            err = None
            if all(r.get(f"{full}_lo") is not None for _, r in pts):
                err = [[v - r[f"{full}_lo"] for v, (_, r) in zip(y, pts)],
                       [r[f"{full}_hi"] - v for v, (_, r) in zip(y, pts)]]
            ax.errorbar([x for x, _ in pts], y, yerr=err, fmt=style, capsize=3,
                        label=f"{model}" + (f" ({suffix})" if suffix else ""))
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    if x_axis and all(isinstance(x, (int, float)) and x > 0 for x in (r.get(x_axis) for r in rows)) \
            and max(r.get(x_axis) for r in rows) / max(min(r.get(x_axis) for r in rows), 1e-12) >= 50:
        ax.set_xscale("log")
    elif x_axis and any(r.get(x_axis) == 0 for r in rows) and max(r.get(x_axis) for r in rows) >= 50:
        ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel(x_axis or "cell")
    if not x_axis:
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r["cell"] for r in rows], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    path = Path(sweep_dir) / f"{_slug(key)}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- Fig. 3: correlation of APE with the other metrics ---------------------------------------------------------
def pearson_spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(Pearson r, Spearman rho) of paired samples; NaN when fewer than 3 points or a constant series."""
    from scipy import stats  # deferred: heavy optional dependency, loaded only when used

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan"), float("nan")
    return float(stats.pearsonr(x, y)[0]), float(stats.spearmanr(x, y)[0])


def metric_points(metrics_list: Iterable[Mapping], models: Sequence[str] = MODELS) -> list[dict[str, float]]:
    """Every (run or evaluation, model) of the given metrics.json dicts as one point {metric: value}."""
    points = []
    for metrics in metrics_list:
        for model, values in metrics.items():
            if model in models and isinstance(values, Mapping):
                points.append({k: float(v) for k, v in values.items() if isinstance(v, (int, float))})
    return points


def correlation_table(points: Sequence[Mapping[str, float]], x_key: str = "equivariance/ape",
                      y_keys: Sequence[str] | None = None) -> list[dict]:
    """Pearson and Spearman r of ``x_key`` against every other metric present in at least 3 points (Fig. 3)."""
    y_keys = y_keys or sorted({k for p in points for k in p if k != x_key and not k.endswith(("seconds", "num_points"))})
    out = []
    for key in y_keys:
        pairs = [(p[x_key], p[key]) for p in points if x_key in p and key in p]
        if len(pairs) < 3:
            continue
        r, rho = pearson_spearman([a for a, _ in pairs], [b for _, b in pairs])
        out.append({"metric": key, "n": len(pairs), "pearson_r": r, "spearman_r": rho})
    return out


def correlation_rows(rows: Sequence[dict], keys: Sequence[str], x_key: str = "equivariance/ape") -> list[dict]:
    points = []
    for row in rows:
        for model in MODELS:
            point = {k: row[f"{model}/{k}"] for k in keys if row.get(f"{model}/{k}") is not None}
            if point and point not in points:  # a baseline row shared by many cells is one point, not many
                points.append(point)
    return correlation_table(points, x_key, [k for k in keys if k != x_key]) if len(points) >= 3 else []


def correlate_metrics_files(paths: Sequence[str | Path], x_key: str = "equivariance/ape",
                            out: str | Path | None = None) -> list[dict]:
    """Fig. 3 over checkpoints: each metrics.json (a training run or a ``make eval`` directory) contributes one
    point per model; writes ``out`` (CSV) if given."""
    metrics_list = []
    for path in paths:
        path = Path(path)
        path = path / "metrics.json" if path.is_dir() else path
        metrics_list.append(json.loads(path.read_text()))
    table = correlation_table(metric_points(metrics_list, models=("pretrained", "pretrained_head_init",
                                                                  "finetuned", "random")), x_key)
    if out is not None:
        write_csv(out, table)
    return table
