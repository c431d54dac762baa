"""Equivariance-evaluation throughput: views/s and pairs/s, and the share of the time spent in the backbone.

Uses the dinov2_single_object protocol (DINOv2-S/14, 448-px inputs, 512² renders, 800 source points per pair,
nearest neighbour over every 2nd target foreground pixel) on held-out procedural objects.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from corr3d.config import load_config


class TimedModel(nn.Module):
    """Delegates to a Corr3DModel and adds up the time of its forward passes (the backbone + head)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.forward_seconds = 0.0
        self.views = 0
        self.samples = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = self.model(images)
        self.forward_seconds += time.perf_counter() - start
        self.views += images.shape[0]
        return out

    def sample_points(self, *args, **kwargs):
        self.samples += 1
        return self.model.sample_points(*args, **kwargs)


def run(quick: bool = False) -> dict:
    from corr3d.eval.equivariance import (
        EquivarianceSettings,
        evaluate_objects,
        open_rendered_objects,
    )
    from corr3d.models import compared_model
    from corr3d.render import ensure_rendered

    objects = ["procedural:sphere_astronaut"] if quick else ["procedural:sphere_astronaut", "procedural:torus_coffee"]
    cfg = load_config("dinov2_single_object", [f"equivariance.objects=[{','.join(objects)}]",
                                               f"equivariance.max_pairs_per_object={4 if quick else 12}"])
    with tempfile.TemporaryDirectory() as tmp:
        dirs = ensure_rendered(objects, Path(tmp), cfg.data.render)
        model = TimedModel(compared_model("pretrained", cfg.model))
        settings = EquivarianceSettings.from_config(cfg)
        start = time.perf_counter()
        results = evaluate_objects(model, open_rendered_objects(dirs), settings)
        total = time.perf_counter() - start
    pairs = model.samples // 2
    return {"objects": len(objects), "views": model.views, "pairs": pairs,
            "views_per_s": round(model.views / total, 3), "pairs_per_s": round(pairs / total, 3),
            "backbone_share_%": round(100 * model.forward_seconds / total, 1),
            "seconds_total": round(total, 2), "points": int(results["equivariance/num_points"]),
            "input_px": "x".join(map(str, model.model.input_size(512, 512))), "weights": model.model.weights_info.source}
