"""Metrics against hand-computed values and an independent straightforward implementation of tapnet's semantics."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from corr3d.eval.datasets.tapvid import sample_queries_first, sample_queries_strided
from corr3d.eval.metrics.pose import PoseAccuracyMetric, pose_errors, rotation_error_deg
from corr3d.eval.metrics.semantic import PCKMetric, pck_hits
from corr3d.eval.metrics.tracking import TapVidMetric, compute_tapvid_metrics
from tests.helpers.poses import rot_z


def loop_tapvid(query_t, gt_occ, gt_tracks, pred_occ, pred_tracks, mode, thresholds=(1, 2, 4, 8, 16)):
    """Independent per-element loop version of TAP-Vid's definitions for one video."""
    n, T = gt_occ.shape
    ev = [[(t > query_t[i]) if mode == "first" else (t != query_t[i]) for t in range(T)] for i in range(n)]
    total = occ_ok = 0
    for i in range(n):
        for t in range(T):
            if ev[i][t]:
                total += 1
                occ_ok += int(bool(gt_occ[i, t]) == bool(pred_occ[i, t]))
    out = {"occlusion_accuracy": occ_ok / total}
    fracs, jacs = [], []
    for d in thresholds:
        vis = correct = tp = fp = 0
        for i in range(n):
            for t in range(T):
                if not ev[i][t]:
                    continue
                dist = np.hypot(*(pred_tracks[i, t] - gt_tracks[i, t]))
                close = dist < d
                if not gt_occ[i, t]:
                    vis += 1
                    correct += int(close)
                    tp += int(close and not pred_occ[i, t])
                if not pred_occ[i, t] and (gt_occ[i, t] or not close):
                    fp += 1
        fracs.append(correct / vis)
        jacs.append(tp / (vis + fp))
    out["average_pts_within_thresh"] = float(np.mean(fracs))
    out["average_jaccard"] = float(np.mean(jacs))
    return out


@pytest.mark.parametrize("mode", ["strided", "first"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tapvid_matches_loop_reference(mode, seed):
    rng = np.random.default_rng(seed)
    n, T = 7, 9
    gt = rng.uniform(0, 256, (n, T, 2))
    pred = gt + rng.normal(0, 6, (n, T, 2))
    gt_occ = rng.random((n, T)) < 0.3
    pred_occ = rng.random((n, T)) < 0.3
    qt = rng.integers(0, T - 1, n)
    gt_occ[np.arange(n), qt] = False
    qp = np.stack([qt, rng.uniform(0, 256, n), rng.uniform(0, 256, n)], 1)
    ours = compute_tapvid_metrics(qp[None], gt_occ[None], gt[None], pred_occ[None], pred[None], mode)
    ref = loop_tapvid(qt, gt_occ, gt, pred_occ, pred, mode)
    for key, value in ref.items():
        assert ours[key][0] == pytest.approx(value, abs=1e-12), key


def test_tapvid_hand_computed():
    # one track, 4 frames, query at frame 0 (strided: frames 1..3 evaluated)
    gt = np.array([[[10, 10], [20, 20], [30, 30], [40, 40]]], dtype=float)
    pred = np.array([[[10, 10], [20, 23], [99, 99], [40, 40]]], dtype=float)   # errors: -, 3, far, 0
    gt_occ = np.array([[False, False, False, True]])
    pred_occ = np.array([[False, False, False, False]])
    qp = np.array([[0, 10, 10]], dtype=float)
    m = compute_tapvid_metrics(qp[None], gt_occ[None], gt[None], pred_occ[None], pred[None], "strided")
    assert m["occlusion_accuracy"][0] == pytest.approx(2 / 3)
    # visible eval frames 1, 2: within d: d=1,2 -> 0/2; d=4,8,16 -> 1/2
    assert m["average_pts_within_thresh"][0] == pytest.approx((0 + 0 + 0.5 + 0.5 + 0.5) / 5)
    # jaccard: gt positives 2; FP: frame 3 (occluded, predicted visible) + frame 2 (far) [+ frame 1 when d<=2]
    # d=1,2: TP 0, FP 3 -> 0/5; d=4,8,16: TP 1, FP 2 -> 1/4
    assert m["average_jaccard"][0] == pytest.approx((0 + 0 + 0.25 + 0.25 + 0.25) / 5)
    metric = TapVidMetric("strided")
    metric.update(qp, gt_occ, gt, pred_occ, pred)
    metric.update(qp, gt_occ, gt, gt_occ, gt)   # perfect second video
    out = metric.compute()
    assert float(out["aj"]) == pytest.approx(100 * (0.15 + 1.0) / 2)
    assert float(out["oa"]) == pytest.approx(100 * (2 / 3 + 1.0) / 2)
    assert float(out["num_videos"]) == 2


def test_query_sampling_like_tapnet():
    pts = np.arange(2 * 7 * 2, dtype=float).reshape(2, 7, 2)
    occ = np.array([[True, False, False, True, True, False, False], [False] * 7])
    qt, qxy, tr, oc = sample_queries_strided(pts, occ, stride=5)
    assert qt.tolist() == [0, 5, 5]          # frame 0: only point 1 visible; frame 5: both
    assert np.allclose(qxy[0], pts[1, 0]) and np.allclose(qxy[1], pts[0, 5])
    qt, qxy, tr, oc = sample_queries_first(pts, occ)
    assert qt.tolist() == [1, 0] and np.allclose(qxy[0], pts[0, 1])


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
