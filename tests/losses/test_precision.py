"""The losses compute in fp32 under bf16 autocast (trainer.precision auto = bf16-mixed on CUDA; issue 22)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from corr3d.losses import LOSSES

AUTOCAST_BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


def _batch(seed: int = 0, n: int = 96):
    """Two views of the same points, features a tiny perturbation apart: positive similarities all near 1,
    where bf16 (8 mantissa bits, steps of ~0.004 below 1) changes the ranking the losses see."""
    g = torch.Generator().manual_seed(seed)
    xyz0 = torch.rand(2, n, 3, generator=g)
    xyz1 = xyz0 + 0.001 * torch.randn(2, n, 3, generator=g)
    base = torch.randn(2, n, 3, generator=g)   # 3 channels: many negatives as similar as the positive
    f0 = F.normalize(base, dim=-1)
    f1 = F.normalize(base + 0.05 * torch.randn(2, n, 3, generator=g), dim=-1)
    return f0, f1, xyz0, xyz1


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_under_bf16_autocast_equals_fp32(name):
    loss_fn = LOSSES[name]
    f0, f1, xyz0, xyz1 = _batch()
    ref, _ = loss_fn(f0, f1, xyz0, xyz1, temperature=0.01)
    with torch.autocast(**AUTOCAST_BF16):
        got, _ = loss_fn(f0, f1, xyz0, xyz1, temperature=0.01)
    assert got.dtype == torch.float32
    assert float(ref) > 0
    assert abs(float(got) - float(ref)) <= 1e-6 * abs(float(ref))


def test_without_the_guard_bf16_autocast_changes_smooth_ap():
    # the same batch through the unguarded function: shows the test above can fail (bf16 GEMM inside the loss)
    raw = LOSSES["smooth_ap"].__wrapped__
    f0, f1, xyz0, xyz1 = _batch()
    ref, _ = raw(f0, f1, xyz0, xyz1)
    with torch.autocast(**AUTOCAST_BF16):
        got, _ = raw(f0, f1, xyz0, xyz1)
    assert abs(float(got) - float(ref)) > 1e-4 * abs(float(ref))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_fp32_inputs_give_bit_identical_results_and_bf16_inputs_are_upcast(name):
    loss_fn = LOSSES[name]
    f0, f1, xyz0, xyz1 = _batch(1)
    wrapped, _ = loss_fn(f0, f1, xyz0, xyz1)
    direct, _ = loss_fn.__wrapped__(f0, f1, xyz0, xyz1)
    assert torch.equal(wrapped, direct)
    h0, h1 = f0.bfloat16().requires_grad_(), f1.bfloat16().requires_grad_()
    got, _ = loss_fn(h0, h1, xyz0, xyz1)
    want, _ = loss_fn.__wrapped__(h0.detach().float(), h1.detach().float(), xyz0, xyz1)
    assert got.dtype == torch.float32 and torch.equal(got.detach(), want)
    got.backward()
    assert h0.grad is not None and h0.grad.dtype == torch.bfloat16
