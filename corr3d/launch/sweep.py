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

Gathering (``results.csv``, plots, ``report.md``: :func:`corr3d.training.sweep_report.gather_sweep`) runs after
every local cell and as the SLURM gather job; it only reads the cells' metrics.json, so it lives with training.

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
import re
import shutil
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf

from corr3d.config import ConfigError, load_config
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
    wait_for_jobs,
)
from corr3d.launch.tasks import TrainTask, cfg_to_yaml, entry_name
from corr3d.training.sweep_report import RESULTS_FILE, gather_sweep, is_done, slug, variant_label
from corr3d.utils.paths import MAX_NAME, ensure_within, safe_join, safe_name
from corr3d.utils.io import write_json
from corr3d.utils.run_dir import SWEEPS_DIR, experiment_name

log = logging.getLogger("corr3d.launch.sweep")

# Config sections (besides the model) that decide the rows training does not change (see ``row_signatures``).
# what the untrained rows depend on besides the backbone: all of `eval` (real_pairs, the seed, and the settings of the
# equivariance.downstream tasks)
EVAL_KEYS = ("equivariance", "eval", "data.render", "data.rendered_dir")


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
        parts.append(f"{slug(label)}-{slug(variant_label(value) or value)}")
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
        write_json(self.root / "sweep.json", manifest)


def sweep_name(name, source: str = "sweep.name") -> str:
    """The validated sweep name: one safe path component like an experiment name (``corr3d.utils.paths``)."""
    fix = (f"give {source} a plain name with letters, digits, '.', '_' or '-' (at most {MAX_NAME} characters; "
           f"it names runs/<experiment>/sweeps/<name>/)")
    return safe_name(name, "sweep name", fix=fix)


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
        write_json(path, metrics, sort_keys=True)
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
            start = warm_start(prefixes.get(warm_signature(cfg), []), run, cfg.trainer.max_steps)
            if copied or start:
                log.info("sweep %s: cell %s reuses rows %s%s", plan.name, cell, copied,
                         f" and continues a finished cell from step {start}" if start else "")
        log.info("sweep %s: cell %d/%d %s", plan.name, index + 1, len(plan.cells), cell)
        print(f"[corr3d] sweep {plan.name}: cell {index + 1}/{len(plan.cells)} {cell}", flush=True)
        train_fn(cfg, run_dir=run)
        remember(run, cfg)
        gather_sweep(plan.root)  # partial results are readable while the sweep runs
    return gather_sweep(plan.root)


def submit_sweep(plan: SweepPlan):
    """One SLURM array task per unfinished cell (each a ``TrainTask`` in its cell directory), then a gather job.

    Returns (array jobs, gather job). Baselines are not shared between array tasks (they run concurrently).
    """
    validate_launcher(plan.base.launcher)  # before anything is written (the batch script is built from it)
    from corr3d.training.run import train  # deferred: the training stack loads only when a sweep is submitted

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
        tasks.append(TrainTask(cfg_to_yaml(cfg), str(run), entry_name(train)))
        cells.append(cell)
    launcher = base.launcher
    gpus = gpus_per_task_node(base, base.trainer.devices)
    array = []
    dependency = None
    if tasks:
        params = slurm_parameters(launcher, name=job_name(base, "sweep"), nodes=base.trainer.num_nodes,
                                  tasks_per_node=base.trainer.devices, gpus_per_node=gpus)
        array = make_executor(log_root, params, launcher.max_requeues).submit_array(tasks)
        dependency = f"afterany:{array[0].job_id.split('_')[0]}"
    gather_params = slurm_parameters(launcher, name=job_name(base, "sweep-gather"), nodes=1, tasks_per_node=1,
                                     gpus_per_node=0, dependency=dependency)
    gather = make_executor(log_root, gather_params).submit(GatherSweepTask(str(root)))
    job_ids = [job.job_id for job in array]
    record_jobs(log_root, "sweep", job_ids, gather_job_id=gather.job_id, cells=cells, sweep_dir=str(root))
    _announce("sweep", job_ids or [gather.job_id], log_root,
              f"\n[corr3d]   {len(cells)} cells to run; gather job {gather.job_id} writes {root / RESULTS_FILE}")
    if launcher.wait:
        wait_for_jobs([*(j.job_id for j in array[:1]), gather.job_id])
    return array, gather


class GatherSweepTask:
    """SLURM job after the sweep's array (``afterany``): writes results.csv / report.md from the finished cells."""

    def __init__(self, sweep_dir: str):
        self.sweep_dir = str(sweep_dir)

    def __call__(self) -> str:
        return str(gather_sweep(Path(self.sweep_dir)))
