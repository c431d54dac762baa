"""The TAP-Vid reader on bad input (issue 14): crafted pickles never execute, malformed files name themselves,
all points occluded gives n/a metrics, never 0."""
import math
import os
import pickle

import numpy as np
import pytest

from corr3d.errors import DataFileError
from corr3d.eval.datasets import tapvid
from corr3d.utils.safe_load import restricted_pickle_load


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Evals:
    def __reduce__(self):
        return eval, ("__import__('os').system('true')",)


def _video(t=6, n=4, occluded=False):
    rng = np.random.default_rng(0)
    return {"video": rng.integers(0, 255, (t, 16, 16, 3), dtype=np.uint8),
            "points": rng.random((n, t, 2)).astype(np.float32), "occluded": np.full((n, t), occluded)}


def test_crafted_tapvid_pickle_does_not_run_code(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "tapvid_davis.pkl"
    bad.write_bytes(pickle.dumps({"v": {"video": _RunsShell(marker)}}))
    with pytest.raises(DataFileError, match="posix.system|os.system") as info:
        list(tapvid.iter_videos(bad))
    assert str(bad) in str(info.value) and not marker.exists()
    bad.write_bytes(pickle.dumps(_Evals()))
    with pytest.raises(DataFileError, match="builtins.eval"):
        restricted_pickle_load(bad)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_official_format_still_loads(tmp_path, protocol):
    path = tmp_path / "tapvid_davis.pkl"
    path.write_bytes(pickle.dumps({"bear": _video(), "cows": _video(t=5)}, protocol=protocol))
    videos = list(tapvid.iter_videos(path, query_mode="first"))
    assert [v.name for v in videos] == ["bear", "cows"] and videos[0].frames.shape == (6, 16, 16, 3)
    written = tapvid.write_tapvid_pickle(tmp_path / "w.pkl", {"x": _video()})
    assert len(list(tapvid.iter_videos(written))) == 1


def test_truncated_and_foreign_pickles_name_the_file(tmp_path):
    path = tmp_path / "t.pkl"
    path.write_bytes(pickle.dumps({"bear": _video()})[:100])
    with pytest.raises(DataFileError, match="not a readable TAP-Vid pickle") as info:
        list(tapvid.iter_videos(path))
    assert str(path) in str(info.value) and info.value.fix
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataFileError, match="expected a non-empty dict"):
        list(tapvid.iter_videos(path))


@pytest.mark.parametrize("broken", [
    {"video": np.zeros((6, 16, 16, 3), np.uint8), "occluded": np.zeros((4, 6), bool)},           # no points
    {**_video(), "points": np.zeros((4, 3, 2))},                                                    # wrong T
    {**_video(), "video": np.zeros((6, 16, 16), np.uint8)},                                        # no channels
])
def test_malformed_tapvid_video_names_file_and_video(tmp_path, broken):
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps({"good": _video(), "broken": broken}))
    with pytest.raises(DataFileError, match="video 'broken' is malformed") as info:
        list(tapvid.iter_videos(path))
    assert str(path) in str(info.value)


def test_malformed_dinotracker_entry(tmp_path):
    path = tmp_path / "d.pkl"
    path.write_bytes(pickle.dumps({"videos": [{"video_idx": 0, "h": 16, "w": 16}]}))
    (tmp_path / "frames" / "0" / "video").mkdir(parents=True)
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "frames" / "0" / "video" / "00.jpg")
    with pytest.raises(DataFileError, match="video 0 is malformed.*query_points"):
        list(tapvid.iter_videos(path, frames_dir=tmp_path / "frames"))


def test_all_occluded_videos_are_skipped_and_metrics_are_nan(tmp_path, caplog):
    from corr3d.eval.metrics.tracking import TapVidMetric
    from corr3d.eval.tracking import _evaluate_tracks
    from tests.helpers.config import config_section

    path = tmp_path / "occ.pkl"
    path.write_bytes(pickle.dumps({"dark": _video(occluded=True)}))
    with caplog.at_level("WARNING"):
        videos = list(tapvid.iter_videos(path))
    assert videos == [] and "no visible query point" in caplog.text
    metrics, _ = _evaluate_tracks(videos, config_section("eval.tracking").resolution, "tracking/", "t",
                                  predict=None)
    assert math.isnan(metrics["tracking/aj"]) and math.isnan(metrics["tracking/oa"])
    assert metrics["tracking/num_videos"] == 0
    metric = TapVidMetric(prefix="x/")
    assert all(math.isnan(float(v)) for k, v in metric.compute().items() if k != "x/num_videos")
