"""Pose errors and accuracies against hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest

from corr3d.eval.metrics.pose import PoseAccuracyMetric, pose_errors, rotation_error_deg
from tests.helpers.poses import rot_z


def test_pose_errors_and_accuracy():
    assert rotation_error_deg(rot_z(30), np.eye(3)) == pytest.approx(30.0)
    T_gt = np.eye(4)
    T_gt[:3, 3] = [0.1, 0.0, 0.5]
    T_pred = T_gt.copy()
    T_pred[:3, :3] = rot_z(2.0)
    T_pred[:3, 3] += [0.02, 0.0, 0.0]                            # 2 cm
    r, t = pose_errors(T_pred, T_gt)
    assert r == pytest.approx(2.0) and t == pytest.approx(2.0)
    m = PoseAccuracyMetric((1, 3, 5), ["o1", "o2"])
    m.update([r, 0.5], [t, 0.5], "o1")                           # 1cm1deg: 1/2; 3: 2/2
    m.update([10.0], [0.1], "o2")                                # all fail
    out = {k: float(v) for k, v in m.compute().items()}
    assert out["acc@1cm1deg"] == pytest.approx(100 * (0.5 + 0) / 2)
    assert out["acc@3cm3deg"] == pytest.approx(100 * (1 + 0) / 2)
    assert out["frames_acc@3cm3deg"] == pytest.approx(100 * 2 / 3)
