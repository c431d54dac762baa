"""BOP19 errors and recalls (corr3d/eval/metrics/bop.py) against hand-computed cases and plain loop implementations."""
from __future__ import annotations

import numpy as np
import pytest

from corr3d.eval.metrics import bop
from tests.helpers.poses import pose, rot_z




SQUARE = np.array([[10.0, 0, 0], [0, 10, 0], [-10, 0, 0], [0, -10, 0]])
K = np.array([[500.0, 0, 320.0], [0, 500.0, 240.0], [0, 0, 1]])


def test_symmetry_transformations_identity_discrete_and_continuous():
    R, t = bop.symmetry_transformations({})
    assert R.shape == (1, 3, 3) and np.allclose(R[0], np.eye(3)) and np.allclose(t, 0)
    flip = pose(rot_z(180), (0, 0, 5)).reshape(-1).tolist()
    R, t = bop.symmetry_transformations({"symmetries_discrete": [flip]})
    assert len(R) == 2 and np.allclose(R[1], rot_z(180)) and np.allclose(t[1], [0, 0, 5])
    # continuous about y through (1, 0, 0): ceil(pi / 0.01) = 315 rotations; the axis line stays fixed
    R, t = bop.symmetry_transformations({"symmetries_continuous": [{"axis": [0, 2, 0], "offset": [1, 0, 0]}]})
    assert len(R) == 315
    on_axis = np.array([1.0, 7.0, 0.0])
    assert np.allclose(np.einsum("sij,j->si", R, on_axis) + t, on_axis)
    # discrete x continuous: every combination
    R, _ = bop.symmetry_transformations({"symmetries_discrete": [flip],
                                         "symmetries_continuous": [{"axis": [0, 0, 1], "offset": [0, 0, 0]}]})
    assert len(R) == 2 * 315
    with pytest.raises(ValueError, match="16 numbers"):
        bop.symmetry_transformations({"symmetries_discrete": [[1, 0, 0]]})
    with pytest.raises(ValueError, match="zero axis"):
        bop.symmetry_transformations({"symmetries_continuous": [{"axis": [0, 0, 0], "offset": [0, 0, 0]}]})


def test_mssd_mspd_hand_computed():
    gt = pose(t=(0, 0, 500))
    none = bop.symmetry_transformations({})
    # a 3-mm shift moves every point 3 mm
    assert bop.mssd(pose(t=(3, 0, 500)), gt, SQUARE, none) == pytest.approx(3.0)
    # a lateral shift of 3 mm at 500 mm depth projects to 500 * 3 / 500 = 3 px for every point
    assert bop.mspd(pose(t=(3, 0, 500)), gt, K, SQUARE, none) == pytest.approx(3.0)
    # 90 deg about z: each vertex moves |p - Rp| = 10 * sqrt(2) mm; a declared 90-deg symmetry makes it 0
    turned = pose(rot_z(90), (0, 0, 500))
    assert bop.mssd(turned, gt, SQUARE, none) == pytest.approx(10 * np.sqrt(2))
    sym90 = bop.symmetry_transformations({"symmetries_discrete": [pose(rot_z(90)).reshape(-1).tolist()]})
    assert bop.mssd(turned, gt, SQUARE, sym90) == pytest.approx(0.0, abs=1e-9)
    assert bop.mspd(turned, gt, K, SQUARE, sym90) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="4x4 or 3x4"):
        bop.mssd(np.eye(3), gt, SQUARE, none)


def test_mssd_mspd_match_a_loop_over_symmetries_and_points():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(50, 3)) * 30
    syms = bop.symmetry_transformations({"symmetries_discrete": [pose(rot_z(120)).reshape(-1).tolist(),
                                                                 pose(rot_z(240)).reshape(-1).tolist()]})
    est, gt = pose(rot_z(100), (4, -2, 600)), pose(rot_z(-15), (0, 0, 610))

    def proj(X):
        x = X @ K.T
        return x[:, :2] / x[:, 2:]

    worst_3d, worst_2d = [], []
    for R_s, t_s in zip(*syms):
        e3 = g3 = 0.0
        for x in pts:
            xe = est[:3, :3] @ x + est[:3, 3]
            xg = gt[:3, :3] @ (R_s @ x + t_s) + gt[:3, 3]
            e3 = max(e3, float(np.linalg.norm(xe - xg)))
            g3 = max(g3, float(np.linalg.norm(proj(xe[None])[0] - proj(xg[None])[0])))
        worst_3d.append(e3)
        worst_2d.append(g3)
    assert bop.mssd(est, gt, pts, syms) == pytest.approx(min(worst_3d))
    assert bop.mspd(est, gt, K, pts, syms) == pytest.approx(min(worst_2d))


def test_distance_image_hand_computed():
    K2 = np.array([[100.0, 0, 2.5], [0, 100.0, 1.5], [0, 0, 1]])   # continuous convention: centre of pixel (2, 1)
    depth = np.full((3, 5), 200.0)
    depth[0, 0] = 0.0
    d = bop.distance_image(depth, K2)
    assert d[1, 2] == pytest.approx(200.0)
    # pixel (x=4, y=1): centre 4.5, 2 px right of the principal point: ray (0.02, 0, 1)
    assert d[1, 4] == pytest.approx(200.0 * np.sqrt(1 + 0.02 ** 2))
    assert d[0, 0] == 0.0


# focal lengths so long that distance = depth to 1e-12 (hand-computed VSD in depth units)
K_FLAT = np.array([[1e9, 0, 2.0], [0, 1e9, 0.5], [0, 0, 1]])


def test_vsd_hand_computed():
    """Pixels: 0 both poses agree; 1 the estimate is 22 mm behind (not visible vs the test depth, but in visib_gt);
    2 only the estimate, where the test has no depth (bop19: visible); 3 empty.
    visib_gt = {0, 1}, visib_est = {0, 2} | (visib_gt & est) = {0, 1, 2}; union 3, intersection {0, 1}.
    Pixel 1's error 22 / 100 = 0.22 costs 1 for tau <= 0.2: e = (1 + 1) / 3; for tau >= 0.25: e = 1 / 3."""
    gt = np.array([[100.0, 100.0, 0.0, 0.0]])
    est = np.array([[100.0, 122.0, 100.0, 0.0]])
    test = np.array([[100.0, 100.0, 0.0, 0.0]])
    e = bop.vsd(est, gt, test, K_FLAT, diameter=100.0)
    expected = [2 / 3] * 4 + [1 / 3] * 6
    np.testing.assert_allclose(e, expected)
    # perfect estimate: 0; nothing visible anywhere: 1 (bop_toolkit's convention)
    np.testing.assert_allclose(bop.vsd(gt, gt, test, K_FLAT, 100.0), 0.0)
    empty = np.zeros((1, 4))
    np.testing.assert_allclose(bop.vsd(empty, empty, test, K_FLAT, 100.0), 1.0)
    # occluded by the scene (test 50 mm in front of the object by more than delta): not visible -> union empty
    np.testing.assert_allclose(bop.vsd(gt, gt, np.full((1, 4), 50.0), K_FLAT, 100.0), 1.0)
    with pytest.raises(ValueError, match="share one shape"):
        bop.vsd(gt, gt, np.zeros((2, 4)), K_FLAT, 100.0)
    with pytest.raises(ValueError, match="diameter"):
        bop.vsd(gt, gt, test, K_FLAT, 0.0)


def _vsd_loop(d_est, d_gt, d_test, delta, taus, diameter):
    """bop_toolkit's vsd written pixel by pixel (distance images given)."""
    out = []
    for tau in taus:
        union = inter_cost = outside = 0
        for e, g, t in zip(d_est.ravel(), d_gt.ravel(), d_test.ravel()):
            vg = g > 0 and (g - t <= delta or t == 0)
            ve = (e > 0 and (e - t <= delta or t == 0)) or (vg and e > 0)
            if vg or ve:
                union += 1
                if vg and ve:
                    inter_cost += abs(g - e) / diameter >= tau
                else:
                    outside += 1
        out.append(1.0 if union == 0 else (inter_cost + outside) / union)
    return np.array(out)


def test_vsd_matches_a_pixel_loop_on_random_depths():
    rng = np.random.default_rng(1)
    shape = (12, 16)
    K2 = np.array([[40.0, 0, 8.0], [0, 40.0, 6.0], [0, 0, 1]])
    gt = np.where(rng.random(shape) < 0.6, rng.uniform(480, 520, shape), 0.0)
    est = np.where(rng.random(shape) < 0.6, rng.uniform(470, 540, shape), 0.0)
    test = np.where(rng.random(shape) < 0.8, rng.uniform(460, 530, shape), 0.0)
    d = [bop.distance_image(x, K2) for x in (est, gt, test)]
    np.testing.assert_allclose(bop.vsd(est, gt, test, K2, 80.0), _vsd_loop(*d, 15.0, bop.VSD_TAUS, 80.0))


def test_instance_recalls_hand_computed_and_strict():
    zeros = [0.0] * 10
    r = bop.instance_recalls(zeros, 0.12 * 100, 12.0, diameter=100.0, image_width=640)
    # MSSD 12 mm < 0.15..0.5 x 100: 8 of 10; MSPD 12 px < 15..50: 8 of 10; VSD 0 passes all 100
    assert r == pytest.approx({"vsd": 1.0, "mssd": 0.8, "mspd": 0.8, "ar": (1 + 0.8 + 0.8) / 3})
    # a 320-px image: r = 0.5, thresholds 2.5..25 px -> 12.5, 15, ..., 25 exceed 12 px: 6 of 10
    assert bop.instance_recalls(zeros, 0.0, 12.0, 100.0, 320)["mspd"] == pytest.approx(0.6)
    # correct means strictly below: an error equal to a threshold fails it
    assert bop.instance_recalls(zeros, 0.0, 10.0, 100.0, 640)["mspd"] == pytest.approx(0.8)
    # VSD 0.22 at every tau passes thresholds 0.25..0.5 (6 of 10 for each tau)
    assert bop.instance_recalls([0.22] * 10, 0.0, 0.0, 100.0, 640)["vsd"] == pytest.approx(0.6)
    # failures (NaN / inf errors from degenerate poses) pass nothing
    r = bop.instance_recalls([np.nan] * 10, np.inf, np.nan, 100.0, 640)
    assert r == {"vsd": 0.0, "mssd": 0.0, "mspd": 0.0, "ar": 0.0}
    with pytest.raises(ValueError, match="one per tau"):
        bop.instance_recalls([0.0] * 3, 0.0, 0.0, 100.0, 640)


def test_mean_of_instance_shares_is_bops_average_recall():
    """bop_toolkit: recall per threshold setting = share of instances below it, AR = mean over settings. Averaging
    per-instance shares instead must give the same number."""
    rng = np.random.default_rng(2)
    n = 40
    vsd_e, mssd_e, mspd_e = rng.random((n, 10)) * 0.6, rng.random(n) * 60, rng.random(n) * 60
    shares = [bop.instance_recalls(v, a, b, 100.0, 640) for v, a, b in zip(vsd_e, mssd_e, mspd_e)]
    vsd_recalls = [np.mean(vsd_e[:, i] < th) for i in range(10) for th in bop.VSD_THRESHOLDS]
    mssd_recalls = [np.mean(mssd_e < th * 100.0) for th in bop.MSSD_THRESHOLDS]
    mspd_recalls = [np.mean(mspd_e < th) for th in bop.MSPD_THRESHOLDS_PX]
    ar = np.mean([np.mean(vsd_recalls), np.mean(mssd_recalls), np.mean(mspd_recalls)])
    assert np.mean([s["ar"] for s in shares]) == pytest.approx(ar)
    assert np.mean([s["vsd"] for s in shares]) == pytest.approx(np.mean(vsd_recalls))
