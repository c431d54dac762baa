"""The TAP-Vid reader: the official and DINO-Tracker formats on real-format fixtures, and query sampling like
tapnet's."""
from __future__ import annotations

import pickle

import numpy as np

from corr3d.eval.datasets.tapvid import sample_queries_first, sample_queries_strided


def test_tapvid_official_and_dinotracker_formats(tmp_path):
    from PIL import Image

    from corr3d.eval.datasets.tapvid import iter_videos, write_tapvid_pickle

    T, H, W = 6, 32, 48
    video = np.random.default_rng(0).integers(0, 255, (T, H, W, 3), dtype=np.uint8)
    points = np.random.default_rng(1).uniform(0, 1, (3, T, 2)).astype(np.float32)
    occ = np.zeros((3, T), dtype=bool)
    occ[0, 0] = True
    write_tapvid_pickle(tmp_path / "tapvid_davis.pkl", {"v": {"video": video, "points": points, "occluded": occ}})
    (v,) = list(iter_videos(tmp_path / "tapvid_davis.pkl", "strided", 5))
    assert v.query_t.tolist() == [0, 0, 5, 5, 5]
    assert np.allclose(v.target_xy[0], points[1] * [W, H])
    assert np.allclose(v.query_points_256()[0], [0, points[1, 0, 1] * 256, points[1, 0, 0] * 256])
    # DINO-Tracker's strided format with frames on disk at a different resolution than its h/w
    frames = tmp_path / "tapvid-davis" / "0" / "video"
    frames.mkdir(parents=True)
    for i in range(T):
        Image.fromarray(video[i]).save(frames / f"{i:05d}.jpg")
    data = {"videos": [{"video_idx": 0, "h": H * 2, "w": W * 2, "query_points": {0: [[10.0, 20.0]]},
                        "target_points": {0: np.ones((1, T, 2)) * 8}, "occluded": {0: np.zeros((1, T), bool)}}]}
    with open(tmp_path / "strided.pkl", "wb") as f:
        pickle.dump(data, f)
    (d,) = list(iter_videos(tmp_path / "strided.pkl"))
    assert d.frames.shape == (T, H, W, 3) and np.allclose(d.query_xy, [[5.0, 10.0]])
    assert np.allclose(d.target_xy, 4.0) and d.query_mode == "strided"


def test_query_sampling_like_tapnet():
    pts = np.arange(2 * 7 * 2, dtype=float).reshape(2, 7, 2)
    occ = np.array([[True, False, False, True, True, False, False], [False] * 7])
    qt, qxy, tr, oc = sample_queries_strided(pts, occ, stride=5)
    assert qt.tolist() == [0, 5, 5]          # frame 0: only point 1 visible; frame 5: both
    assert np.allclose(qxy[0], pts[1, 0]) and np.allclose(qxy[1], pts[0, 5])
    qt, qxy, tr, oc = sample_queries_first(pts, occ)
    assert qt.tolist() == [1, 0] and np.allclose(qxy[0], pts[0, 1])
