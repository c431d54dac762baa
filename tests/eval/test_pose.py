"""Pose evaluation: per-item results reproduce the headline, the ground-truth oracle is perfect, frame order."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from corr3d.eval.pose import _evaluate_pose, evaluate_objects, evaluate_oracle_pose, query_frames
from corr3d.geometry.icosphere import look_at_pose
from tests.helpers.config import config_section

SIZE, FOCAL = 96, 120.0


@dataclass
class Seq:
    """A duck-typed OnePose sequence (the reader's interface) with exact poses and random images."""

    poses: dict
    images: dict
    K_: np.ndarray
    annos: dict = field(default_factory=dict)

    @property
    def frame_ids(self):
        return sorted(self.poses, key=int)

    @property
    def anno_ids(self):
        return sorted(self.annos, key=int)

    def image(self, fid):
        return self.images[fid]

    def K(self, fid):
        return self.K_

    def pose(self, fid):
        return self.poses[fid]

    def anno(self, fid):
        return self.annos[fid]


@dataclass
class Obj:
    name: str
    ref: Seq
    test: Seq
    keypoints3d: np.ndarray


def _object(name: str, n_test: int, seed: int) -> Obj:
    rng = np.random.default_rng(seed)
    K = np.array([[FOCAL, 0, SIZE / 2], [0, FOCAL, SIZE / 2], [0, 0, 1.0]])
    points = rng.uniform(-0.05, 0.05, (400, 3))

    def pose(az):
        eye = 0.5 * np.array([np.sin(az), 0.3, np.cos(az)])
        return look_at_pose(eye, np.zeros(3))

    test = {str(i): pose(0.3 * i) for i in range(n_test)}
    images = {str(i): rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8) for i in range(n_test)}
    ref_poses = {"0": pose(0.1), "1": pose(1.0)}
    annos = {}
    for fid, T in ref_poses.items():
        cam = points @ T[:3, :3].T + T[:3, 3]
        uv = (cam @ K.T)[:, :2] / cam[:, 2:]
        annos[fid] = (uv, np.arange(len(points)))
    ref = Seq(ref_poses, {f: rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8) for f in ref_poses}, K, annos)
    return Obj(name, ref, Seq(test, images, K), points)


def _settings(**kw):
    return config_section("eval.pose", query_step=1, grid_step=2, ransac_iters=200, frame_order="numeric", **kw)


def test_oracle_is_perfect():
    objects = [_object("0700-a-others", 4, 0), _object("0701-b-others", 3, 1)]
    metrics, tables = evaluate_oracle_pose(objects, _settings(), seed=0, prefix="p/")
    assert metrics["p/acc@1cm1deg"] == 100.0 and metrics["p/acc@5cm5deg"] == 100.0
    assert len(tables["items"]) == 7 and all(r["match_precision"] == 1.0 for r in tables["pose_frames"])


def test_items_reproduce_the_per_object_mean():
    """Objects with different frame counts and hit rates: the weighted item mean is the mean over objects of the
    per-object accuracy (not the pooled frame accuracy)."""
    objects = [_object("0700-a-others", 4, 0), _object("0701-b-others", 2, 1), _object("0702-c-others", 5, 2)]
    good = {("0700-a-others", "1"), ("0701-b-others", "0"), ("0701-b-others", "1"), ("0702-c-others", "3")}
    rng = np.random.default_rng(5)

    def correspondences(obj):
        def match(fid):
            T, K = obj.test.pose(fid), obj.test.K(fid)
            cam = obj.keypoints3d @ T[:3, :3].T + T[:3, 3]
            uv = (cam @ K.T)[:, :2] / cam[:, 2:]
            if (obj.name, fid) not in good:
                uv = rng.uniform(0, SIZE, uv.shape)          # garbage matches: a failed pose
            return obj.keypoints3d, uv
        return match

    metrics, tables = _evaluate_pose(objects, _settings(), "p/", "t", correspondences)
    expected = np.mean([100 * 1 / 4, 100 * 2 / 2, 100 * 1 / 5])
    assert metrics["p/acc@5cm5deg"] == pytest.approx(expected)
    items = tables["items"]
    assert {i["unit"] for i in items} == {o.name for o in objects} and len({i["id"] for i in items}) == 11
    for k in ("acc@1cm1deg", "acc@3cm3deg", "acc@5cm5deg"):
        w = np.array([i["weight"] for i in items])
        v = np.array([i[f"p/{k}"] for i in items])
        assert (w * v).sum() / w.sum() == pytest.approx(metrics[f"p/{k}"])


def test_model_items_reproduce_headline():
    from tests.helpers.models import tiny_model

    model = tiny_model(16)
    objects = [_object("0700-a-others", 3, 0), _object("0701-b-others", 2, 1)]
    metrics, tables = evaluate_objects(model, objects, _settings(feature_px=8), seed=0, prefix="p/")
    items = tables["items"]
    assert [i["id"] for i in items] == ["0700-a-others/0", "0700-a-others/1", "0700-a-others/2",
                                        "0701-b-others/0", "0701-b-others/1"]
    for k in ("acc@1cm1deg", "acc@3cm3deg", "acc@5cm5deg"):
        w = np.array([i["weight"] for i in items])
        assert (w * np.array([i[f"p/{k}"] for i in items])).sum() / w.sum() == pytest.approx(metrics[f"p/{k}"])


def test_frame_order():
    obj = _object("0700-a-others", 12, 0)
    assert query_frames(obj, config_section("eval.pose", query_step=5, frame_order="numeric")) == ["0", "5", "10"]
    # the authors' sorted(glob): 0, 1, 10, 11, 2, 3, ...
    assert query_frames(obj, config_section("eval.pose", query_step=5, frame_order="lexicographic")) == ["0", "3", "8"]
    with pytest.raises(ValueError, match="frame_order"):
        query_frames(obj, config_section("eval.pose", frame_order="random"))


def _noisy_matches(n: int, inlier_fraction: float, seed: int):
    """2D-3D matches of a known pose (metres, OnePose scale): a share exact, the rest uniform garbage."""
    obj = _object("0700-a-others", 1, seed)
    T, K = obj.test.pose("0"), obj.test.K("0")
    rng = np.random.default_rng(seed)
    pts = rng.uniform(-0.05, 0.05, (n, 3))
    cam = pts @ T[:3, :3].T + T[:3, 3]
    uv = (cam @ K.T)[:, :2] / cam[:, 2:]
    bad = rng.random(n) >= inlier_fraction
    uv[bad] = rng.uniform(0, SIZE, (bad.sum(), 2))
    return pts, uv, K, T


def test_paper_ransac_is_the_authors_call_bit_for_bit():
    """``ransac: paper`` = cv2.solvePnPRansac(EPnP, 8 px, ransac_iters) on points x 1000, exactly."""
    import cv2

    from corr3d.eval.pose import solve_pnp

    pnp = config_section("eval.pose", ransac="paper", ransac_iters=300)
    for seed, frac in ((0, 0.5), (1, 0.05)):
        pts, uv, K, _ = _noisy_matches(300, frac, seed)
        pose, n_in, ok = solve_pnp(pts, uv, K, pnp, 1000.0)
        ok_ref, rvec, tvec, inliers = cv2.solvePnPRansac(pts * 1000.0, uv, K, None, reprojectionError=8.0,
                                                         iterationsCount=300, flags=cv2.SOLVEPNP_EPNP)
        assert n_in == (0 if inliers is None else len(inliers))
        if ok:
            assert np.array_equal(pose[:3, :3], cv2.Rodrigues(rvec)[0]) and np.array_equal(pose[:3, 3],
                                                                                          tvec.reshape(3) / 1000.0)
        assert ok == (bool(ok_ref) and n_in >= pnp.min_inliers)


def test_fast_ransac_recovers_the_pose_and_is_reproducible_in_a_new_process():
    import subprocess
    import sys

    from corr3d.eval.metrics.pose import pose_errors
    from corr3d.eval.pose import solve_pnp

    pnp = config_section("eval.pose", ransac="fast")
    pts, uv, K, T = _noisy_matches(400, 0.3, 3)
    pose, n_in, ok = solve_pnp(pts, uv, K, pnp, 1000.0)
    r_err, t_err = pose_errors(pose, T, "m")
    assert ok and r_err < 0.5 and t_err < 0.5 and n_in >= 0.25 * 400
    again = solve_pnp(pts, uv, K, pnp, 1000.0)
    assert np.array_equal(pose, again[0]) and n_in == again[1]
    code = ("import numpy as np, sys; from tests.eval.test_pose import _noisy_matches; "
            "from corr3d.eval.pose import solve_pnp; from tests.helpers.config import config_section; "
            "p, u, K, _ = _noisy_matches(400, 0.3, 3); "
            "pnp = config_section('eval.pose', ransac='fast'); "
            "sys.stdout.write(solve_pnp(p, u, K, pnp, 1000.0)[0].tobytes().hex())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert bytes.fromhex(out) == pose.tobytes()
    with pytest.raises(ValueError, match="ransac must be one of"):
        solve_pnp(pts, uv, K, config_section("eval.pose", ransac="magic"), 1000.0)
