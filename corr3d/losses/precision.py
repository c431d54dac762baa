"""Losses compute in full precision whatever the trainer's precision (issue 22).

Under ``trainer.precision: auto`` (bf16-mixed on CUDA) the features reach the loss as bf16 and the similarity GEMM
would run in bf16 under autocast: similarities near 1 are quantised to steps of ~0.004 = 0.4 tau at tau = 0.01, which
reorders the ranks SmoothAP is made of. The authors train in fp32. ``full_precision_loss`` turns autocast off inside
the loss and casts half-precision inputs to fp32 (fp32/fp64 inputs are passed unchanged, so fp32 numbers are
bit-identical to calling the loss directly); gradients flow back through the casts in the inputs' dtype.
"""
from __future__ import annotations

import contextlib
import functools

import torch

_FULL = (torch.float32, torch.float64)


def _full(x):
    return x if x is None or not torch.is_tensor(x) or not x.is_floating_point() or x.dtype in _FULL else x.float()


def autocast_off(device: torch.device):
    """A context with autocast disabled for ``device``'s type (a no-op where torch has no autocast for it)."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # device types without autocast support
        return contextlib.nullcontext()


def full_precision_loss(fn):
    """Wrap ``loss(feat0, feat1, xyz0, xyz1, valid0=None, valid1=None, **kw)`` to run in fp32 without autocast."""

    @functools.wraps(fn)
    def wrapper(feat0, feat1, xyz0, xyz1, valid0=None, valid1=None, **kwargs):
        with autocast_off(feat0.device):
            return fn(_full(feat0), _full(feat1), _full(xyz0), _full(xyz1), valid0, valid1, **kwargs)

    return wrapper
