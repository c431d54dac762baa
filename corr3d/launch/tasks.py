"""Callables that run inside SLURM jobs.

submitit pickles one of these at submission time and every task of the job (one per GPU) unpickles and calls it on
its node. They carry the config as YAML text and absolute paths only, so a job restarted by a requeue (ours on the
pre-timeout signal, or an admin's ``scontrol requeue``) rebuilds exactly the same call: training continues the same
run directory from ``checkpoints/last.ckpt``, rendering skips the objects already on disk.
"""
from __future__ import annotations

import datetime as _dt
import importlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from corr3d.config import config_from_yaml
from corr3d.utils.optional import import_extra
from corr3d.utils.io import write_json

log = logging.getLogger("corr3d.launch")

ATTEMPTS_FILE = "attempts.jsonl"


def resolve_entry(spec: str) -> Callable:
    """``"package.module:function"`` -> the function (entry points are named, not pickled, so code fixes made
    between a requeue and the restart are picked up)."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def entry_name(fn: Callable) -> str:
    """The ``"package.module:function"`` a task carries for ``fn`` (:func:`resolve_entry` turns it back), derived
    from the function so a renamed or moved entry point cannot leave a stale name behind. Only a module-level
    function can be found again by name in the job's fresh process."""
    spec = f"{fn.__module__}:{fn.__qualname__}"
    try:
        found = resolve_entry(spec)
    except (ImportError, AttributeError):
        found = None
    if found is not fn:
        raise ValueError(f"SLURM entry point {spec!r} cannot be imported by name in a job: pass a function defined "
                         f"at the top level of an importable module (e.g. corr3d.training.run.train)")
    return spec


JOB_CONFIG = "the SLURM job's config"   # names the source in a config error


def cfg_to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=False)


def global_rank() -> int:
    return int(os.environ.get("SLURM_PROCID", "0"))


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def append_event(path: Path, event: dict[str, Any]) -> None:
    """One JSON line per job start / requeue, so users (and the tests) can see how a run was interrupted."""
    record = {"time": _now(), "job_id": os.environ.get("SLURM_JOB_ID"), "host": socket.gethostname(),
              "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0")), **event}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def _requeue_submission(task: Any):
    DelayedSubmission = import_extra("submitit.helpers").DelayedSubmission  # deferred: the [cluster] extra

    return DelayedSubmission(task)


class TrainTask:
    """Train (or resume) ``cfg`` in the fixed run directory ``run_dir``; one instance per job, called by every rank."""

    def __init__(self, cfg_yaml: str, run_dir: str, entry: str):
        self.cfg_yaml, self.run_dir, self.entry = cfg_yaml, str(run_dir), entry

    @property
    def attempts_file(self) -> Path:
        return Path(self.run_dir) / "slurm" / ATTEMPTS_FILE

    def __call__(self) -> str:
        # deferred: import cost (lightning + torch, ~5 s CPU), only the job on the cluster needs it
        from lightning.fabric.plugins.environments import SLURMEnvironment

        if global_rank() == 0:
            last = Path(self.run_dir) / "checkpoints" / "last.ckpt"
            append_event(self.attempts_file, {"event": "start", "resume": last.exists()})
        train = resolve_entry(self.entry)
        # submitit owns requeueing (SIGUSR2 -> checkpoint() below); Lightning's own auto-requeue would requeue the
        # job a second time, so it is switched off. Lightning still reads ranks and the master address from SLURM.
        plugins = [SLURMEnvironment(auto_requeue=False)]
        run = train(config_from_yaml(self.cfg_yaml, JOB_CONFIG), run_dir=self.run_dir, trainer_plugins=plugins)
        return str(run)

    def checkpoint(self):
        """Called by submitit on rank 0 when the pre-timeout signal (or a preemption) arrives.

        Lightning already keeps ``checkpoints/last.ckpt`` in the run directory and a rank cannot write a consistent
        DDP checkpoint from a signal handler alone, so the requeued job is this same task: it resumes from there.
        """
        append_event(self.attempts_file, {"event": "requeue"})
        return _requeue_submission(self)


class EvalPartTask:
    """One benchmark x model evaluation of an array; the entry writes ``<parts_dir>/<task>__<model>.json``."""

    def __init__(self, cfg_yaml: str, task: str, model: str, parts_dir: str, entry: str):
        self.cfg_yaml, self.task, self.model, self.parts_dir, self.entry = cfg_yaml, task, model, str(parts_dir), entry

    def __call__(self) -> dict:
        run_part = resolve_entry(self.entry)
        return run_part(config_from_yaml(self.cfg_yaml, JOB_CONFIG), self.task, self.model, parts_dir=Path(self.parts_dir))

    def checkpoint(self):
        return _requeue_submission(self)  # an evaluation part restarts from scratch after a timeout


class GatherTask:
    """Runs after the whole evaluation array (``afterany``): merges the parts into metrics.json / report.md even if
    some parts failed, and says which are missing."""

    def __init__(self, cfg_yaml: str, parts_dir: str, out_dir: str, expected: list[str], entry: str):
        self.cfg_yaml, self.parts_dir, self.out_dir, self.entry = cfg_yaml, str(parts_dir), str(out_dir), entry
        self.expected = list(expected)

    def __call__(self) -> Any:
        missing = [name for name in self.expected if not (Path(self.parts_dir) / name).exists()]
        if missing:
            log.warning("evaluation parts missing (their array tasks failed; see slurm/ logs): %s", missing)
            print(f"[corr3d] missing evaluation parts: {', '.join(missing)}", flush=True)
        gather = resolve_entry(self.entry)
        return gather(config_from_yaml(self.cfg_yaml, JOB_CONFIG), Path(self.parts_dir), Path(self.out_dir))


class OfflineSuiteTask:
    """Generates the offline benchmark suite parts the evaluation needs, once, before the array starts: the array's
    tasks would otherwise generate the same parts concurrently into one directory."""

    def __init__(self, root: str, parts: list[str], force: bool):
        self.root, self.parts, self.force = str(root), list(parts), bool(force)

    def __call__(self) -> None:
        # deferred: a SLURM job loads only the stack of its task
        from corr3d.eval.offline_suite import ensure_offline_suite

        ensure_offline_suite(self.root, self.parts, force=self.force)


class RenderChunkTask:
    """Renders one chunk of an object list, one object at a time (each atomic), skipping finished objects.

    It calls ``render_object`` per object rather than ``render_batch``: array tasks on different nodes share the
    output directory, and the batch's shared manifest / dead-pid temp cleanup assume a single host. Each chunk writes
    its own record to ``<root>/slurm/chunks/``; the next ``ensure_rendered`` on the root rebuilds the manifest.
    """

    def __init__(self, specs: list[str], root: str, render_cfg_yaml: str, chunk: int):
        self.specs, self.root, self.render_cfg_yaml, self.chunk = list(specs), str(root), render_cfg_yaml, chunk

    def __call__(self) -> list[dict]:
        from corr3d.assets.objects import object_dir_name  # deferred: a SLURM job loads only the stack of its task
        # deferred: a SLURM job loads only the stack of its task
        from corr3d.render.batch import is_complete, render_object, render_settings

        render_cfg = OmegaConf.create(self.render_cfg_yaml)
        settings = render_settings(render_cfg)
        results = []
        for spec in self.specs:
            out_dir = Path(self.root) / object_dir_name(spec)
            if not is_complete(out_dir, settings):
                results.append(_render_one(spec, out_dir, render_cfg, render_object))
            else:
                results.append({"spec": spec, "status": "done", "dir": out_dir.name, "skipped": True})
        record = Path(self.root) / "slurm" / "chunks" / f"chunk_{self.chunk:05d}.json"
        write_json(record, results, indent=1)
        return results

    def checkpoint(self):
        return _requeue_submission(self)


def _render_one(spec: str, out_dir: Path, render_cfg, render_object) -> dict:
    try:
        render_object(spec, out_dir, render_cfg)
        return {"spec": spec, "status": "done", "dir": out_dir.name}
    except Exception as err:  # one broken mesh must not fail the other objects of the chunk
        log.warning("rendering %s failed: %s", spec, err)
        return {"spec": spec, "status": "failed", "dir": out_dir.name, "error": f"{type(err).__name__}: {err}"[:500]}


def part_file_name(task: str, model: str) -> str:
    return f"{task}__{model}.json"  # the name corr3d.eval.run.run_eval_part writes
