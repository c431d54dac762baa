"""TAP-Vid metrics against hand-computed values and an independent straightforward implementation of tapnet's
semantics."""
from __future__ import annotations

import numpy as np
import pytest

from corr3d.eval.metrics.tracking import TapVidMetric, compute_tapvid_metrics


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
