"""SmoothAP (paper.md §3.2) against a plain Python-loop implementation, hand-made values and edge cases."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from corr3d.losses import build_loss, smooth_ap_loss


def _sig(x: float, tau: float) -> float:
    return 1.0 / (1.0 + math.exp(min(max(-x / tau, -50.0), 50.0)))


def loop_loss(f0, f1, x0, x1, v0=None, v1=None, pos_r=0.005, neg_r=0.1, tau=0.01):
    """Literal transcription of the formula, one pair at a time, in Python floats."""
    f0, f1, x0, x1 = (t.double().tolist() for t in (f0, f1, x0, x1))
    terms = []
    for b in range(len(f0)):
        ok0 = [True] * len(f0[b]) if v0 is None else v0[b].tolist()
        ok1 = [True] * len(f1[b]) if v1 is None else v1[b].tolist()
        for i, (fi, xi) in enumerate(zip(f0[b], x0[b])):
            if not ok0[i]:
                continue
            for j, (fj, xj) in enumerate(zip(f1[b], x1[b])):
                if not ok1[j] or math.dist(xi, xj) >= pos_r:
                    continue
                s_ij = sum(a * c for a, c in zip(fi, fj))
                sum1 = sum2 = 0.0
                for k, (fk, xk) in enumerate(zip(f1[b], x1[b])):
                    if ok1[k] and math.dist(xi, xk) > neg_r:
                        s_ik = sum(a * c for a, c in zip(fi, fk))
                        sum1 += _sig(s_ik - 1.0, tau)
                        sum2 += _sig(s_ik - s_ij, tau)
                ap1 = (1 + _sig(s_ij - 1, tau)) / (1 + _sig(s_ij - 1, tau) + sum1)
                ap2 = (1 + _sig(1 - s_ij, tau)) / (1 + _sig(1 - s_ij, tau) + sum2)
                terms.append(1 - (ap1 + ap2) / 2)
    return sum(terms) / len(terms) if terms else 0.0, len(terms)


def random_case(seed: int, batch=2, n=24, m=20, dim=8, noise=0.02):
    """Point clouds with near-duplicates across views (positives) and correlated features."""
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(batch, n, 3, generator=gen) * 0.5
    x1 = torch.rand(batch, m, 3, generator=gen) * 0.5
    x1[:, : n // 2] = x0[:, : n // 2] + (torch.rand(batch, n // 2, 3, generator=gen) - 0.5) * 0.004
    f0 = F.normalize(torch.randn(batch, n, dim, generator=gen), dim=-1)
    f1 = F.normalize(torch.randn(batch, m, dim, generator=gen), dim=-1)
    f1[:, : n // 2] = F.normalize(f0[:, : n // 2] + noise * torch.randn(batch, n // 2, dim, generator=gen), dim=-1)
    return f0, f1, x0, x1


@pytest.mark.parametrize("tau", [0.01, 0.1, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_loop_on_random_cases(seed, tau):
    f0, f1, x0, x1 = random_case(seed, noise=0.3)
    expected, count = loop_loss(f0, f1, x0, x1, tau=tau)
    loss, stats = smooth_ap_loss(f0.double(), f1.double(), x0.double(), x1.double(), temperature=tau)
    assert count > 0 and int(stats["num_positives"]) == count
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    loss32, _ = smooth_ap_loss(f0, f1, x0, x1, temperature=tau)
    assert loss32.item() == pytest.approx(expected, abs=1e-5)


def test_matches_loop_with_valid_masks_and_tiny_blocks():
    f0, f1, x0, x1 = random_case(3, noise=0.5)
    gen = torch.Generator().manual_seed(7)
    v0 = torch.rand(f0.shape[:2], generator=gen) > 0.3
    v1 = torch.rand(f1.shape[:2], generator=gen) > 0.3
    expected, count = loop_loss(f0, f1, x0, x1, v0, v1, tau=0.1)
    for block in (1 << 22, 7, 1):  # blocks smaller than one row exercise every chunking path
        loss, stats = smooth_ap_loss(f0.double(), f1.double(), x0.double(), x1.double(), v0, v1,
                                     temperature=0.1, block_elements=block)
        assert int(stats["num_positives"]) == count
        assert loss.item() == pytest.approx(expected, abs=1e-12)


def _hand_case(neg_feature: list[float], num_neg: int):
    """One anchor at the origin with one exact positive and ``num_neg`` far negatives with a given feature."""
    f0 = torch.tensor([[[1.0, 0.0]]])
    f1 = torch.tensor([[[1.0, 0.0]] + [neg_feature] * num_neg])
    x0 = torch.zeros(1, 1, 3)
    x1 = torch.zeros(1, 1 + num_neg, 3)
    x1[0, 1:, 0] = 1.0
    return f0, f1, x0, x1


def test_hand_made_values():
    # Perfectly separated: s_ij = 1, negatives at s = -1 -> every sigmoid of a negative is ~0 -> AP1 = AP2 = 1.
    loss, _ = smooth_ap_loss(*_hand_case([-1.0, 0.0], 3))
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    # One negative identical to the positive: sigma(0) = 0.5 -> AP1 = AP2 = 1.5 / 2 -> loss 0.25.
    loss, stats = smooth_ap_loss(*_hand_case([1.0, 0.0], 1))
    assert loss.item() == pytest.approx(0.25, abs=1e-7)
    assert stats["ap1"].item() == pytest.approx(0.75) and stats["ap2"].item() == pytest.approx(0.75)
    # Two such negatives: 1.5 / 2.5 = 0.6 -> loss 0.4.
    loss, _ = smooth_ap_loss(*_hand_case([1.0, 0.0], 2))
    assert loss.item() == pytest.approx(0.4, abs=1e-7)


def test_ignored_band_and_radii():
    # A negative-looking point at distance 0.05 sits between the radii: ignored, so the loss stays 0.
    f0, f1, x0, x1 = _hand_case([1.0, 0.0], 1)
    x1[0, 1, 0] = 0.05
    loss, stats = smooth_ap_loss(f0, f1, x0, x1)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    assert stats["mean_negatives_per_anchor"].item() == 0
    # Moving the positive to 0.006 leaves no positives at the paper's radius.
    x1[0, 0, 0] = 0.006
    _, stats = smooth_ap_loss(f0, f1, x0, x1)
    assert int(stats["num_positives"]) == 0


def test_zero_positives_keeps_graph():
    f0 = F.normalize(torch.randn(1, 5, 4), dim=-1).requires_grad_()
    f1 = F.normalize(torch.randn(1, 6, 4), dim=-1).requires_grad_()
    x0 = torch.zeros(1, 5, 3)
    x1 = torch.ones(1, 6, 3)
    loss, stats = smooth_ap_loss(f0, f1, x0, x1)
    assert loss.item() == 0.0 and loss.requires_grad and int(stats["num_positives"]) == 0
    loss.backward()
    assert f0.grad is not None and torch.count_nonzero(f0.grad) == 0


def test_symmetric_is_average_of_both_directions():
    f0, f1, x0, x1 = random_case(5, noise=0.3)
    forward, _ = smooth_ap_loss(f0, f1, x0, x1, temperature=0.1)
    backward, _ = smooth_ap_loss(f1, f0, x1, x0, temperature=0.1)
    loss, stats = smooth_ap_loss(f0, f1, x0, x1, temperature=0.1, symmetric=True)
    assert loss.item() == pytest.approx((forward.item() + backward.item()) / 2, abs=1e-6)
    assert stats["loss_10"].item() == pytest.approx(backward.item(), abs=1e-6)


def test_gradients_match_finite_differences():
    f0, f1, x0, x1 = random_case(2, batch=1, n=8, m=8, dim=4, noise=0.4)
    f0 = f0.double().requires_grad_()
    f1 = f1.double().requires_grad_()
    fn = lambda a, b: smooth_ap_loss(a, b, x0.double(), x1.double(), temperature=0.5)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (f0, f1))


def test_loss_decreases_when_positives_align():
    f0, f1, x0, x1 = random_case(4, noise=1.0)
    f0 = f0.clone().requires_grad_()
    opt = torch.optim.SGD([f0], lr=0.5)
    first = None
    for _ in range(20):
        loss, _ = smooth_ap_loss(F.normalize(f0, dim=-1), f1, x0, x1, temperature=0.1)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_build_loss_from_config():
    loss_fn = build_loss({"name": "smooth_ap", "pos_radius": 0.005, "neg_radius": 0.1, "temperature": 0.01,
                          "symmetric": False})
    loss, _ = loss_fn(*_hand_case([1.0, 0.0], 1))
    assert loss.item() == pytest.approx(0.25, abs=1e-7)
    with pytest.raises(KeyError):
        build_loss({"name": "contrastive"})


def test_matches_loop_with_many_positives_per_anchor_and_blocks():
    """Clusters of near-coincident points: every anchor has several positives (and some none), so positive pairs
    share anchors; small blocks split anchors and pairs across blocks."""
    gen = torch.Generator().manual_seed(11)
    centres = torch.rand(1, 6, 3, generator=gen)
    x0 = (centres[:, torch.arange(30) % 6] + (torch.rand(1, 30, 3, generator=gen) - 0.5) * 0.004).double()
    x1 = (centres[:, torch.arange(26) % 5] + (torch.rand(1, 26, 3, generator=gen) - 0.5) * 0.004).double()
    f0 = F.normalize(torch.randn(1, 30, 6, generator=gen), dim=-1).double()
    f1 = F.normalize(torch.randn(1, 26, 6, generator=gen), dim=-1).double()
    expected, count = loop_loss(f0, f1, x0, x1, tau=0.1)
    assert count > 2 * 30 // 6 * 5  # several positives per anchor
    for block in (1 << 22, 50, 26, 1):
        loss, stats = smooth_ap_loss(f0, f1, x0, x1, temperature=0.1, block_elements=block)
        assert int(stats["num_positives"]) == count
        assert int(stats["num_anchors_with_positive"]) == 25  # anchors of cluster 5 have no partner in view 1
        assert loss.item() == pytest.approx(expected, abs=1e-12)
