"""Multiview equivariance on rendered held-out objects (the paper's APE / PCDP, Sec. 3): the default benchmark."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from corr3d.eval.equivariance import evaluate_equivariance
from corr3d.eval.stats import ROTATION_BINS
from corr3d.eval.tasks.base import Dataset, EvalTask

CONTROL_LEAVES = ("ape", "pcdp@0.05")   # the report's leaves for each secondary object set (equivariance.controls)


class EquivarianceTask(EvalTask):
    name = "equivariance"
    order = 3
    cost = 2.0
    section = "equivariance"
    headline = ("ape", "pcdp@0.05", "pcdp@0.1", "pcdp@0.2")
    breakdowns = (("ape", "rotation_deg", ROTATION_BINS), ("pcdp@0.05", "rotation_deg", ROTATION_BINS))

    def settings(self, cfg):
        return cfg.equivariance

    def dataset(self, object_dirs: Sequence[Path] | None = None, controls: bool = True) -> Dataset:
        """The rendered held-out objects (``object_dirs``: already rendered, else rendered on demand) and, with
        ``controls``, the secondary sets of ``equivariance.control_sets`` (make eval; training measures the main
        set only)."""
        return Dataset("equivariance", "equivariance/", "rendered",
                       {"object_dirs": object_dirs, "controls": controls}, qualify_items=False)

    def datasets(self, cfg, messages, suite=None):
        return [self.dataset()]

    def run(self, cfg, model, dataset, desc):
        items: list[dict] = []
        skipped: list = []
        per_object: dict[str, dict] = {}
        metrics = evaluate_equivariance(model, cfg, object_dirs=dataset.paths.get("object_dirs"),
                                        per_object=per_object, items=items, skipped=skipped,
                                        controls=bool(dataset.paths.get("controls", True)))
        objects = [{"object": name, **values} for name, values in per_object.items()]
        return ({k: float(v) for k, v in metrics.items()},
                {"items": items, "skipped": [(f"objects: {spec}", reason) for spec, reason in skipped],
                 "objects": objects})

    def protocol(self, cfg, dataset):
        eq = cfg.equivariance
        if eq.protocol == "paper":
            return "paper", "every ordered view pair, every visible point (the paper's APE/PCDP)"
        return "corr3d", (f"fast: {eq.max_pairs_per_object or 'all'} pairs/object within {eq.max_rotation_deg:g} deg, "
                          f"{eq.num_source_points} points/pair")

    def headline_keys(self, keys, scope=""):
        base = f"{scope}{self.name}/"
        depth = base.count("/") + 1
        controls = sorted(k for k in keys if k.startswith(base) and k.count("/") == depth
                          and k.rsplit("/", 1)[1] in CONTROL_LEAVES)
        return super().headline_keys(keys, scope) + controls


TASK = EquivarianceTask()
