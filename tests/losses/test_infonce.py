"""InfoNCE and differentiable-Procrustes losses against straightforward per-pair implementations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from corr3d.losses import build_loss, diff_procrustes_loss, infonce_loss
from corr3d.losses.procrustes import kabsch


def _naive_infonce(f0, f1, x0, x1, pos_r, neg_r, tau):
    terms = []
    for b in range(f0.shape[0]):
        for i in range(f0.shape[1]):
            d = [float(torch.linalg.norm(x0[b, i] - x1[b, k])) for k in range(f1.shape[1])]
            s = [float(f0[b, i] @ f1[b, k]) for k in range(f1.shape[1])]
            negs = [s[k] / tau for k in range(len(d)) if d[k] > neg_r]
            for j in range(len(d)):
                if d[j] < pos_r:
                    logits = [s[j] / tau] + negs
                    m = max(logits)
                    lse = m + math.log(sum(math.exp(v - m) for v in logits))
                    terms.append(lse - s[j] / tau)
    return sum(terms) / len(terms)


def _example(seed=0, b=2, n=12, m=15, c=8):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(b, n, 3, generator=g, dtype=torch.float64)
    x1 = torch.rand(b, m, 3, generator=g, dtype=torch.float64)
    x1[:, :5] = x0[:, :5] + 0.001  # some positives
    f0 = F.normalize(torch.randn(b, n, c, generator=g, dtype=torch.float64), dim=-1)
    f1 = F.normalize(torch.randn(b, m, c, generator=g, dtype=torch.float64), dim=-1)
    return f0, f1, x0, x1


def test_infonce_matches_naive_loop():
    f0, f1, x0, x1 = _example()
    loss, stats = infonce_loss(f0, f1, x0, x1, pos_radius=0.005, neg_radius=0.3, temperature=0.1)
    assert loss.item() == pytest.approx(_naive_infonce(f0, f1, x0, x1, 0.005, 0.3, 0.1), rel=1e-9)
    assert int(stats["num_positives"]) == 10


def test_infonce_blocking_and_symmetry():
    f0, f1, x0, x1 = _example(1)
    full, _ = infonce_loss(f0, f1, x0, x1, temperature=0.07, neg_radius=0.2)
    blocked, _ = infonce_loss(f0, f1, x0, x1, temperature=0.07, neg_radius=0.2, block_elements=20)
    assert blocked.item() == pytest.approx(full.item(), rel=1e-12)
    sym, stats = infonce_loss(f0, f1, x0, x1, temperature=0.07, neg_radius=0.2, symmetric=True)
    rev, _ = infonce_loss(f1, f0, x1, x0, temperature=0.07, neg_radius=0.2)
    assert sym.item() == pytest.approx((full.item() + rev.item()) / 2, rel=1e-12)


def test_infonce_hand_computed_case():
    # one anchor, one positive with s=1, one negative with s=0, tau=1: -log(e / (e + 1))
    f0 = torch.tensor([[[1.0, 0.0]]])
    f1 = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    x0 = torch.zeros(1, 1, 3)
    x1 = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    loss, _ = infonce_loss(f0, f1, x0, x1, temperature=1.0)
    assert loss.item() == pytest.approx(-math.log(math.e / (math.e + 1)), rel=1e-6)


def test_no_positives_gives_zero_with_graph():
    f0, f1, x0, x1 = _example(2)
    f0.requires_grad_(True)
    x1 = x1 + 10.0
    for fn in (infonce_loss, diff_procrustes_loss):
        loss, _ = fn(f0, f1, x0, x1)
        assert loss.item() == 0.0
        loss.backward()


def _rotation(angle_deg, axis):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.deg2rad(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def test_kabsch_recovers_a_known_motion_and_matches_numpy():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(30, 3))
    rot, t = _rotation(37.0, [1, 2, 3]), np.array([0.1, -0.2, 0.3])
    dst = src @ rot.T + t
    r, tt = kabsch(torch.from_numpy(src), torch.from_numpy(dst))
    assert np.allclose(r.numpy(), rot, atol=1e-9) and np.allclose(tt.numpy(), t, atol=1e-9)
    # noisy case against the textbook numpy solution (Umeyama without scale)
    noisy = dst + rng.normal(scale=0.05, size=dst.shape)
    mu_s, mu_d = src.mean(0), noisy.mean(0)
    u, _, vt = np.linalg.svd((noisy - mu_d).T @ (src - mu_s))
    d = np.diag([1, 1, np.sign(np.linalg.det(u @ vt))])
    expected = u @ d @ vt
    r, _ = kabsch(torch.from_numpy(src), torch.from_numpy(noisy))
    assert np.allclose(r.numpy(), expected, atol=1e-9)


def test_diff_procrustes_zero_for_exact_sharp_matches_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    n = 20
    x = torch.rand(1, n, 3, generator=g, dtype=torch.float64)
    f = F.normalize(torch.randn(1, n, 64, generator=g, dtype=torch.float64), dim=-1)
    exact, stats = diff_procrustes_loss(f, f, x, x, temperature=0.001)
    assert exact.item() == pytest.approx(0.0, abs=1e-6)
    shuffled = f[:, torch.randperm(n, generator=g)]
    wrong, _ = diff_procrustes_loss(f, shuffled, x, x, temperature=0.001)
    assert wrong.item() > 0.1
    # hand check of the soft-match term: uniform features -> every soft match is the centroid
    flat = F.normalize(torch.ones(1, n, 4, dtype=torch.float64), dim=-1)
    loss, stats = diff_procrustes_loss(flat, flat, x, x, temperature=0.1)
    expected = (x[0].mean(0) - x[0]).norm(dim=-1).mean().item()
    assert stats["soft_match_error"].item() == pytest.approx(expected, rel=1e-9)


def test_diff_procrustes_gradient_flows():
    f0, f1, x0, x1 = _example(3)
    f0 = f0.clone().requires_grad_(True)
    loss, _ = diff_procrustes_loss(f0, f1, x0, x1, temperature=0.1)
    loss.backward()
    assert torch.isfinite(f0.grad).all() and f0.grad.abs().sum() > 0


def test_build_loss_by_name():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"name": "infonce", "pos_radius": 0.005, "neg_radius": 0.3, "temperature": 0.1,
                            "symmetric": False})
    f0, f1, x0, x1 = _example()
    loss, _ = build_loss(cfg)(f0, f1, x0, x1)
    assert loss.item() == pytest.approx(_naive_infonce(f0, f1, x0, x1, 0.005, 0.3, 0.1), rel=1e-9)
    with pytest.raises(KeyError):
        build_loss({"name": "nope"})
