import numpy as np
import pytest
import torch

from corr3d.eval.metrics.equivariance import EquivarianceMetric, normalized_pixel_error


def test_hand_computed_ape_pcdp():
    # 200 x 100 image -> shortest edge 100 px; errors 0, 3, 8, 15, 40 px -> 0, .03, .08, .15, .40
    gt = torch.tensor([[10.0, 10.0]] * 5)
    pred = gt + torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 8.0], [9.0, 12.0], [24.0, 32.0]])
    m = EquivarianceMetric((0.05, 0.1, 0.2))
    m.add_points(pred, gt, image_size=(100, 200))
    out = m.compute()
    assert out["equivariance/ape"].item() == pytest.approx(100 * (0 + .03 + .08 + .15 + .40) / 5)
    assert out["equivariance/pcdp@0.05"].item() == pytest.approx(40.0)
    assert out["equivariance/pcdp@0.1"].item() == pytest.approx(60.0)
    assert out["equivariance/pcdp@0.2"].item() == pytest.approx(80.0)
    assert out["equivariance/num_points"].item() == 5


def test_accumulates_like_one_batch():
    rng = np.random.default_rng(0)
    gt = torch.from_numpy(rng.uniform(0, 64, (300, 2)))
    pred = gt + torch.from_numpy(rng.normal(0, 6, (300, 2)))
    whole, parts = EquivarianceMetric(), EquivarianceMetric()
    whole.add_points(pred, gt, (64, 64))
    for s in range(0, 300, 70):
        parts.add_points(pred[s:s + 70], gt[s:s + 70], (64, 64))
    a, b = whole.compute(), parts.compute()
    for k in a:
        assert a[k].item() == pytest.approx(b[k].item())
    errors = np.linalg.norm((pred - gt).numpy(), axis=1) / 64
    assert a["equivariance/ape"].item() == pytest.approx(100 * errors.mean())
    assert a["equivariance/pcdp@0.1"].item() == pytest.approx(100 * (errors < 0.1).mean())


def test_normalized_error_uses_shortest_edge():
    e = normalized_pixel_error(torch.tensor([[3.0, 4.0]]), torch.zeros(1, 2), (50, 500))
    assert e.item() == pytest.approx(0.1)
