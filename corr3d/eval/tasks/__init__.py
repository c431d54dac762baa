"""The registry of evaluation tasks: every module of this package but ``base`` is one task and exposes ``TASK``.

Adding a task = adding its module here (plus its config section and tests); ``make eval``, the SLURM array, training's
before/after measurement and the report find it through :func:`registry`. ``TASK_NAMES`` is discovered without
importing the task modules, so the config schema can validate ``eval.tasks`` cheaply.
"""
from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import Iterable

from corr3d.eval.tasks.base import Dataset, EvalTask, OfflineSource, RealSource

__all__ = ["Dataset", "EvalTask", "OfflineSource", "RealSource", "TASK_NAMES", "registry", "get_task",
           "offline_parts", "headline_metric_keys"]

TASK_NAMES: tuple[str, ...] = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__)
                                           if m.name != "base" and not m.name.startswith("_")))


@cache
def registry() -> dict[str, EvalTask]:
    """{name: task}, in report order."""
    tasks = [importlib.import_module(f"{__name__}.{name}").TASK for name in TASK_NAMES]
    for name, task in zip(TASK_NAMES, tasks):
        if task.name != name:   # the module's name is the task's name: eval.tasks validates against the modules
            raise TypeError(f"corr3d/eval/tasks/{name}.py declares a task named {task.name!r}")
    return {task.name: task for task in sorted(tasks, key=lambda t: (t.order, t.name))}


def get_task(name: str) -> EvalTask:
    try:
        return registry()[name]
    except KeyError:
        raise ValueError(f"unknown eval task {name!r}; known: {', '.join(registry())}") from None


def headline_metric_keys(tasks: Iterable[str]) -> list[str]:
    """Every headline metric key the ``tasks`` can report, under both scopes (real data: ``<task>/..``, offline
    suite: ``offline/<task>/..``); a run has one of them per task."""
    return [f"{scope}{task}/{leaf}" for task in tasks for scope in ("", "offline/")
            for leaf in get_task(str(task)).headline]


def offline_parts(tasks: Iterable[str]) -> list[str]:
    """The offline-suite parts the tasks read, in a stable order."""
    return list(dict.fromkeys(src.part for name in tasks for src in get_task(name).offline_sources))
