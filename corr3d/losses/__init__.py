"""Training losses. ``smooth_ap_loss`` is the paper's objective; ``infonce_loss`` and
``diff_procrustes_loss`` are the Table 4 alternatives (definitions in their modules). ``build_loss`` picks one by
``loss.name``; training uses it (corr3d/training/run.py ``build_module``)."""
from __future__ import annotations

import functools

from omegaconf import DictConfig, OmegaConf

from corr3d.losses.infonce import infonce_loss
from corr3d.losses.procrustes import diff_procrustes_loss
from corr3d.losses.smooth_ap import smooth_ap_loss, smooth_sigmoid

LOSSES = {"smooth_ap": smooth_ap_loss, "infonce": infonce_loss, "diff_procrustes": diff_procrustes_loss}


def build_loss(loss_cfg):
    """``loss(feat0, feat1, xyz0, xyz1, valid0, valid1) -> (loss, stats)`` from the config's ``loss:`` section."""
    if isinstance(loss_cfg, DictConfig):  # plain values: functools.partial must not hold DictConfig nodes
        loss_cfg = OmegaConf.to_container(loss_cfg, resolve=True)
    cfg = dict(loss_cfg)
    name = cfg.pop("name", "smooth_ap")
    if name not in LOSSES:
        raise KeyError(f"unknown loss '{name}'; available: {sorted(LOSSES)}")
    return functools.partial(LOSSES[name], **cfg)


__all__ = ["LOSSES", "build_loss", "diff_procrustes_loss", "infonce_loss", "smooth_ap_loss", "smooth_sigmoid"]
