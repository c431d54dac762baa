"""Dense correspondence on real photographs with exact ground truth (viewpoint, stereo, homography pairs)."""
from __future__ import annotations

from corr3d.eval.real_pairs import evaluate_real_pairs
from corr3d.eval.stats import ROTATION_BINS
from corr3d.eval.tasks.base import Dataset, EvalTask


class RealPairsTask(EvalTask):
    name = "real_pairs"
    order = 5
    cost = 0.3
    section = "real_pairs"
    headline = ("pck@0.01", "pck@0.02", "pck@0.05", "median_px", "stereo/pck@0.01", "stereo/pck@0.02",
                "stereo/pck@0.05", "stereo/median_px", "homography/pck@0.01", "homography/pck@0.02",
                "homography/pck@0.05", "homography/median_px")
    # only pairs with a known camera rotation have one (the stereo pair: 0 deg; homographies: none)
    breakdowns = (("stereo/pck@0.05", "rotation_deg", ROTATION_BINS),)

    def datasets(self, cfg, messages, suite=None):
        return [Dataset("real_pairs", "real_pairs/", "real", qualify_items=False)]

    def run(self, cfg, model, dataset, desc):
        items: list[dict] = []
        metrics = evaluate_real_pairs(model, cfg, items=items)
        return {k: float(v) for k, v in metrics.items()}, {"items": items}

    def protocol(self, cfg, dataset):
        return "corr3d", "real photographs with exact ground truth (viewpoint, stereo, homography)"


TASK = RealPairsTask()
