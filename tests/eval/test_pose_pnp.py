"""PnP with RANSAC recovers a known pose through outliers and gives up (identity, not ok) on too few points."""
from __future__ import annotations

import numpy as np

from corr3d.eval.metrics.pose import pose_errors
from tests.helpers.poses import rot_z


def test_pnp_recovers_known_pose():
    from corr3d.eval.pose import solve_pnp
    from corr3d.geometry import intrinsics, project
    from tests.helpers.config import config_section

    rng = np.random.default_rng(0)
    pts = rng.uniform(-0.1, 0.1, (60, 3))
    T = np.eye(4)
    T[:3, :3] = rot_z(20) @ np.array([[1, 0, 0], [0, 0.8, -0.6], [0, 0.6, 0.8]])
    T[:3, 3] = [0.02, -0.01, 0.5]
    K = intrinsics(500, 256, 256)
    uv, _ = project(pts, K, T)
    uv[:10] += rng.uniform(30, 60, (10, 2))                       # outliers
    pnp = config_section("eval.pose", ransac_iters=2000)
    pose, n_in, ok = solve_pnp(pts, uv, K, pnp, pnp.points_scale)
    assert ok and n_in >= 45
    r, t = pose_errors(pose, T)
    assert r < 0.1 and t < 0.05
    pnp = config_section("eval.pose")
    pose, n_in, ok = solve_pnp(pts[:3], uv[:3], K, pnp, pnp.points_scale)
    assert not ok and np.allclose(pose, np.eye(4))
