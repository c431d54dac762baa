"""Training losses. ``smooth_ap_loss`` is the paper's objective; ``infonce_loss`` and
``diff_procrustes_loss`` are the Table 4 alternatives (definitions in their modules). ``build_loss`` picks one by
``loss.name``; training uses it (corr3d/training/run.py ``build_module``)."""
from __future__ import annotations

import difflib
import functools
import inspect

from omegaconf import DictConfig, OmegaConf

from corr3d.config import ConfigError
from corr3d.losses.infonce import infonce_loss
from corr3d.losses.procrustes import diff_procrustes_loss
from corr3d.losses.smooth_ap import smooth_ap_loss, smooth_sigmoid

LOSSES = {"smooth_ap": smooth_ap_loss, "infonce": infonce_loss, "diff_procrustes": diff_procrustes_loss}
# every loss takes these positionally: they come from the batch, never from the ``loss:`` section
BATCH_ARGS = ("feat0", "feat1", "xyz0", "xyz1", "valid0", "valid1")


def loss_options(fn) -> tuple[str, ...]:
    """The ``loss:`` keys ``fn`` declares: its keyword parameters beyond the batch arguments (``inspect.signature``
    follows ``functools.wraps`` through the full-precision wrapper to the loss's own signature)."""
    return tuple(name for name in inspect.signature(fn).parameters if name not in BATCH_ARGS)


def build_loss(loss_cfg):
    """``loss(feat0, feat1, xyz0, xyz1, valid0, valid1) -> (loss, stats)`` from the config's ``loss:`` section.

    The ``loss:`` section is shared by every loss; each gets only the keys its signature declares, so a key for one
    loss (e.g. ``block_elements``) is added to that loss alone. A key that no loss declares is a typo: ConfigError
    with the closest declared key."""
    if isinstance(loss_cfg, DictConfig):  # plain values: functools.partial must not hold DictConfig nodes
        loss_cfg = OmegaConf.to_container(loss_cfg, resolve=True)
    cfg = dict(loss_cfg)
    name = cfg.pop("name", "smooth_ap")
    if name not in LOSSES:
        raise KeyError(f"unknown loss '{name}'; available: {sorted(LOSSES)}")
    declared = {key for fn in LOSSES.values() for key in loss_options(fn)}
    for key in cfg:
        if key not in declared:
            close = difflib.get_close_matches(str(key), sorted(declared), n=1)
            hint = f"; did you mean 'loss.{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key 'loss.{key}': no loss declares it{hint}",
                              fix=f"use 'loss.{close[0]}'" if close else
                              f"remove it (loss keys: {', '.join(sorted(declared))})")
    own = loss_options(LOSSES[name])
    return functools.partial(LOSSES[name], **{key: value for key, value in cfg.items() if key in own})


__all__ = ["BATCH_ARGS", "LOSSES", "build_loss", "diff_procrustes_loss", "infonce_loss", "loss_options",
           "smooth_ap_loss", "smooth_sigmoid"]
