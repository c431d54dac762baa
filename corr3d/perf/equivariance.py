"""Equivariance-evaluation throughput: pairs/s, backbone forwards per pair, and the share of time in the backbone.

Two settings of the dinov2_single_object protocol (DINOv2-S/14, 448-px inputs, 512² renders, 800 source points per
pair, nearest neighbour over every 2nd target foreground pixel) on held-out procedural objects:

- ``main``: the main job's setting (2 objects x 12 pairs among 10 views = 24 pairs);
- ``all_views``: one object, every ordered pair of its 42 views within 70 degrees (428 pairs, 0.098 forwards/pair):
  the setting where matching, not the backbone, used to dominate (issue 13).

The backbone share is the time inside ``model.forward`` (backbone + head) over the whole ``evaluate_objects`` call;
the rest is decoding views, ground truth, sampling and nearest-neighbour matching.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from corr3d.config import load_config
from corr3d.eval.equivariance import evaluate_objects, open_rendered_objects
from corr3d.models import compared_model
from corr3d.render import ensure_rendered

SETTINGS = {
    # name: (objects, max_pairs_per_object, max_views_per_object)
    "main": (["procedural:sphere_astronaut", "procedural:torus_coffee"], 12, 10),
    "all_views": (["procedural:sphere_astronaut"], 0, 0),
}


class TimedModel(nn.Module):
    """Delegates to a Corr3DModel and adds up the time of its forward passes (the backbone + head)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.forward_seconds = 0.0
        self.views = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = self.model(images)
        if out.is_cuda:
            torch.cuda.synchronize()
        self.forward_seconds += time.perf_counter() - start
        self.views += images.shape[0]
        return out

    def sample_points(self, *args, **kwargs):
        return self.model.sample_points(*args, **kwargs)


def measure(name: str, model, root: Path, quick: bool = False) -> dict[str, float | str]:
    """Run ``evaluate_objects`` for one setting of ``SETTINGS``; returns pairs/s, backbone share and counts."""
    objects, max_pairs, max_views = SETTINGS[name]
    if quick:
        objects, max_pairs, max_views = objects[:1], 4, 4
    cfg = load_config("dinov2_single_object", [f"equivariance.objects=[{','.join(objects)}]",
                                               f"equivariance.max_pairs_per_object={max_pairs}",
                                               f"equivariance.max_views_per_object={max_views}"])
    dirs = ensure_rendered(objects, root, cfg.data.render)
    timed = TimedModel(model)
    items: list = []
    start = time.perf_counter()
    results = evaluate_objects(timed, open_rendered_objects(dirs), cfg.equivariance, seed=cfg.eval.seed, items=items)
    total = time.perf_counter() - start
    pairs = len(items)
    return {f"{name}_pairs": pairs, f"{name}_views": timed.views,
            f"{name}_forwards_per_pair": round(timed.views / max(pairs, 1), 3),
            f"{name}_pairs_per_s": round(pairs / total, 3),
            f"{name}_backbone_share_%": round(100 * timed.forward_seconds / total, 1),
            f"{name}_s_per_view_forward": round(timed.forward_seconds / max(timed.views, 1), 3),
            f"{name}_s_per_pair_outside_backbone": round((total - timed.forward_seconds) / max(pairs, 1), 4),
            f"{name}_seconds_total": round(total, 2), f"{name}_points": int(results["equivariance/num_points"]),
            f"{name}_ape": round(results["equivariance/ape"], 3)}


def run(quick: bool = False) -> dict:
    cfg = load_config("dinov2_single_object", [])
    model = compared_model("pretrained", cfg.model)
    if torch.cuda.is_available():
        model = model.cuda()
    out: dict[str, float | str] = {"device": "cuda" if torch.cuda.is_available() else "cpu",
                                   "input_px": "x".join(map(str, model.input_size(512, 512))),
                                   "weights": model.weights_info.source}
    with tempfile.TemporaryDirectory(prefix="corr3d_bench_eq_") as tmp:
        for name in (("main",) if quick else ("main", "all_views")):
            out.update(measure(name, model, Path(tmp), quick))
    return out
