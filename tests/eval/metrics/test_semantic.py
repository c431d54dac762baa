"""PCK against hand-computed values."""
from __future__ import annotations

import pytest
import torch

from corr3d.eval.metrics.semantic import PCKMetric, pck_hits


def test_pck_hand_computed():
    pred = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 30.0], [5.0, 5.0]])
    gt = torch.zeros(4, 2)
    hits = pck_hits(pred, gt, 100.0, (0.05, 0.1))
    assert hits[:, 0].tolist() == [True, False, False, False]    # < 5 px
    assert hits[:, 1].tolist() == [True, False, False, True]     # < 10 px (10 is not < 10)
    m = PCKMetric((0.1,), ["a", "b"])
    m.update(pred, gt, 100.0, "a")                               # 2/4
    m.update(pred[:1], gt[:1], 100.0, "b")                       # 1/1
    m.update(pred[:2], gt[:2], 100.0, "b", valid=torch.tensor([False, True]))  # 0/1
    out = {k: float(v) for k, v in m.compute().items()}
    assert out["pck@0.10"] == pytest.approx(100 * 3 / 6)
    assert out["pck_img@0.10"] == pytest.approx(100 * (0.5 + 1 + 0) / 3)
    assert out["pck_classmean@0.10"] == pytest.approx(100 * (0.5 + 0.5) / 2)
    assert out["pck_weighted@0.10"] == pytest.approx(100 * (0.5 * 1 + 0.5 * 2) / 3)
    rows = {r["category"]: r for r in m.per_category()}
    assert rows["b"]["pairs"] == 2 and rows["b"]["keypoints"] == 2
