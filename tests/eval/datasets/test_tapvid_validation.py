"""TAP-Vid readers validate their inputs and report what they skip (issue 21): official ``tapvid_davis.pkl`` and
DINO-Tracker pickles in their exact formats, one field broken per case."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from corr3d.errors import DatasetFormatError, UnknownNameError
from corr3d.eval.datasets import tapvid

T, H, W = 6, 16, 24


def _video(n=3, occluded=False, seed=0) -> dict:
    """One official-format video: uint8 frames [T, H, W, 3], normalised (x, y) points [N, T, 2], bool [N, T]."""
    rng = np.random.default_rng(seed)
    return {"video": rng.integers(0, 255, (T, H, W, 3), dtype=np.uint8),
            "points": rng.uniform(0.05, 0.95, (n, T, 2)).astype(np.float32), "occluded": np.full((n, T), occluded)}


def _write(tmp_path, videos: dict):
    path = tmp_path / "tapvid_davis.pkl"
    tapvid.write_tapvid_pickle(path, videos)
    return path


def _broken(**fields) -> dict:
    return {**_video(), **fields}


@pytest.mark.parametrize("broken,match", [
    # pixel coordinates where normalised ones are documented
    (_broken(points=_video()["points"] * np.array([W, H], np.float32)),
     r"points: \d+ of 18 visible points outside the frame .*normalised x, y"),
    # visibility scores instead of bool occlusion flags
    (_broken(occluded=np.full((3, T), 0.7)), r"occluded: values \[0.7\] of dtype float64; expected bool"),
    # occluded transposed ([T, N]) -> shape does not fit points [N, T]
    (_broken(occluded=np.zeros((T, 3), bool)), r"points \(3, 6, 2\) / occluded \(6, 3\) do not fit 6 frames"),
    # float frames in [0, 1] would turn black under astype(uint8)
    (_broken(video=np.random.default_rng(0).random((T, H, W, 3)).astype(np.float32)),
     r"video: frames of dtype float32 .* expected uint8"),
    # a track with one frame more than the video
    (_broken(points=np.full((3, T + 1, 2), 0.5, np.float32), occluded=np.zeros((3, T + 1), bool)),
     r"do not fit 6 frames"),
])
def test_official_format_broken_field_names_file_video_and_field(tmp_path, broken, match):
    path = _write(tmp_path, {"bear": _video(), "broken": broken})
    with pytest.raises(DatasetFormatError, match=match) as info:
        list(tapvid.iter_videos(path))
    assert str(path) in str(info.value) and "video 'broken' is malformed" in str(info.value) and info.value.fix


def test_points_on_the_border_and_occluded_points_anywhere_are_accepted(tmp_path):
    video = _video()
    video["points"][0, 0] = [1.0, 0.0]               # exactly on the frame border
    video["points"][1, 2] = [-7.0, 300.0]            # occluded: any value
    video["occluded"][1, 2] = True
    (v,) = list(tapvid.iter_videos(_write(tmp_path, {"bear": video})))
    assert v.target_xy.shape[1] == T


def test_video_filter_and_skipped_videos(tmp_path):
    path = _write(tmp_path, {"bear": _video(), "cows": _video(seed=1), "dark": _video(occluded=True)})
    videos = tapvid.iter_videos(path, videos=["cows", "dark", "goat"])
    assert [v.name for v in videos] == ["cows"]
    assert videos.skipped == [("goat", f"no TAP-Vid video 'goat' in {path}"),
                              ("dark", "no visible query point (all points occluded at every query frame)")]
    with pytest.raises(UnknownNameError, match=r"TAP-Vid video filter \[goat\] matches nothing .*available: bear, "
                                               r"cows, dark"):
        list(tapvid.iter_videos(path, videos=["goat"]))
    everything = tapvid.iter_videos(path)
    assert [v.name for v in everything] == ["bear", "cows"] and [n for n, _ in everything.skipped] == ["dark"]


def _dinotracker(tmp_path, frames_on_disk: int = T, **entry):
    frames = tmp_path / "tapvid-davis" / "0" / "video"
    frames.mkdir(parents=True)
    for i in range(frames_on_disk):
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(frames / f"{i:05d}.jpg")
    cfg = {"video_idx": 0, "h": H * 2, "w": W * 2, "query_points": {0: [[10.0, 20.0]]},
           "target_points": {0: np.full((1, T, 2), 8.0)}, "occluded": {0: np.zeros((1, T), bool)}}
    cfg.update(entry)
    path = tmp_path / "tapvid_davis_data_strided.pkl"
    path.write_bytes(pickle.dumps({"videos": [cfg]}))
    return path


def test_dinotracker_fixture_loads(tmp_path):
    (v,) = list(tapvid.iter_videos(_dinotracker(tmp_path)))
    assert v.frames.shape == (T, H, W, 3) and np.allclose(v.query_xy, [[5.0, 10.0]])


@pytest.mark.parametrize("frames_on_disk,entry,match", [
    (T - 2, {}, r"target_points\[0\] \(1, 6, 2\) / occluded\[0\] \(1, 6\) do not fit 1 queries x 4 frames on disk"),
    (T, {"query_points": {9: [[10.0, 20.0]]}, "target_points": {9: np.ones((1, T, 2))},
         "occluded": {9: np.zeros((1, T), bool)}}, r"query frame 9 outside the 6 frames"),
    (T, {"target_points": {0: np.full((1, T, 2), 500.0)}}, r"target_points\[0\]: 6 of 6 visible points outside"),
    (T, {"h": 0}, r"h, w: 0 x 48"),
    (T, {"occluded": {0: np.full((1, T), 3)}}, r"occluded\[0\]: values \[3\]"),
])
def test_dinotracker_broken_field_is_named(tmp_path, frames_on_disk, entry, match):
    path = _dinotracker(tmp_path, frames_on_disk, **entry)
    with pytest.raises(DatasetFormatError, match=match) as info:
        list(tapvid.iter_videos(path))
    assert str(path) in str(info.value) and "video 0 is malformed" in str(info.value)
