"""Training losses. ``smooth_ap_loss`` is the paper's objective (paper.md §3.2)."""
from __future__ import annotations

import functools

from corr3d.losses.smooth_ap import smooth_ap_loss, smooth_sigmoid

LOSSES = {"smooth_ap": smooth_ap_loss}


def build_loss(loss_cfg):
    """``loss(feat0, feat1, xyz0, xyz1, valid0, valid1) -> (loss, stats)`` from the config's ``loss:`` section."""
    cfg = dict(loss_cfg)
    name = cfg.pop("name", "smooth_ap")
    if name not in LOSSES:
        raise KeyError(f"unknown loss '{name}'; available: {sorted(LOSSES)}")
    return functools.partial(LOSSES[name], **cfg)


__all__ = ["LOSSES", "build_loss", "smooth_ap_loss", "smooth_sigmoid"]
