"""OnePose reader (issue 21): objects in the real LowTexture layout, one piece missing or broken per case. Missing
sequences, SfM models or per-frame files skip the object with the reason (``list_objects(...).skipped``), never
silently; a filter that matches nothing and a selection with nothing left are errors; broken intrinsics, poses and
annotations name their file and field."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from corr3d.errors import DatasetFormatError, EmptySelectionError, UnknownNameError
from corr3d.eval.datasets import onepose

SIZE = 32
K_ONEPOSE = np.array([[40.0, 0, 15.5], [0, 40.0, 15.5], [0, 0, 1]])     # integer-pixel convention (centre 15.5)
POSE = np.array([[1.0, 0, 0, 0.01], [0, 1, 0, -0.02], [0, 0, 1, 0.5], [0, 0, 0, 1]])


def _sequence(seq: Path, frames: int, anno: bool) -> None:
    for sub in ("color", "intrin_ba", "poses_ba") + (("anno_loftr",) if anno else ()):
        (seq / sub).mkdir(parents=True, exist_ok=True)
    for i in range(frames):
        Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(seq / "color" / f"{i}.png")
        np.savetxt(seq / "intrin_ba" / f"{i}.txt", K_ONEPOSE)
        np.savetxt(seq / "poses_ba" / f"{i}.txt", POSE)
        if anno:
            (seq / "anno_loftr" / f"{i}.json").write_text(json.dumps(
                {"keypoints2d": [[3.0, 4.0], [30.0, 31.0]], "assign_matrix": [[0, 1], [2, 0]]}))


def _object(data: Path, sfm: Path, name: str = "0700-toyrobot-others") -> Path:
    """``<data>/<name>/{toyrobot-1 (reference, anno_loftr), toyrobot-2 (test)}`` and the SfM points."""
    short = name.split("-")[1]
    _sequence(data / name / f"{short}-1", 2, anno=True)
    _sequence(data / name / f"{short}-2", 3, anno=False)
    (sfm / name / "anno").mkdir(parents=True)
    np.savez(sfm / name / "anno" / "anno_3d_average.npz", keypoints3d=np.random.default_rng(0).normal(0, 0.05, (5, 3)))
    return data / name


@pytest.fixture
def dirs(tmp_path):
    data, sfm = tmp_path / "lowtexture_test_data", tmp_path / "sfm_output"
    _object(data, sfm, "0700-toyrobot-others")
    _object(data, sfm, "0701-teddy-others")
    return data, sfm


def test_objects_in_the_real_layout_load_and_read(dirs):
    objects = onepose.list_objects(*dirs)
    assert [o.name for o in objects] == ["0700-toyrobot-others", "0701-teddy-others"] and objects.skipped == []
    obj = objects[0]
    np.testing.assert_allclose(obj.test.K("0")[:2, 2], [16.0, 16.0])        # +0.5: continuous convention
    np.testing.assert_allclose(obj.test.pose("1"), POSE)
    kps, idx = obj.ref.anno("0")
    np.testing.assert_allclose(kps, [[3.5, 4.5], [30.5, 31.5]])
    assert idx.tolist() == [2, 0]
    np.savetxt(obj.test.root / "poses_ba" / "2.txt", POSE[:3])               # a 3x4 pose is a documented form
    np.testing.assert_allclose(obj.test.pose("2"), POSE)


def test_missing_sfm_and_test_sequence_are_reported_not_dropped(dirs):
    data, sfm = dirs
    shutil.rmtree(sfm / "0700-toyrobot-others")
    objects = onepose.list_objects(data, sfm)
    assert [o.name for o in objects] == ["0701-teddy-others"]
    ((name, reason),) = objects.skipped
    assert name == "0700-toyrobot-others" and "no SfM model" in reason and "anno_3d_average.npz" in reason
    shutil.rmtree(data / "0701-teddy-others" / "teddy-2")
    with pytest.raises(EmptySelectionError, match="no OnePose object can be evaluated.*0700-toyrobot-others: no SfM "
                                                  "model.*0701-teddy-others: no test sequence teddy-2/") as info:
        onepose.list_objects(data, sfm)
    assert info.value.fix and "sfm_inference_lowtexture" in info.value.fix


def test_frames_without_pose_or_intrinsics_skip_the_object(dirs):
    data, sfm = dirs
    (data / "0700-toyrobot-others" / "toyrobot-2" / "poses_ba" / "1.txt").unlink()
    (data / "0701-teddy-others" / "teddy-2" / "intrin_ba" / "2.txt").unlink()
    with pytest.raises(EmptySelectionError, match="2 of 3 frames|1 of 3 frames of toyrobot-2"):
        onepose.list_objects(data, sfm, names=["0700-toyrobot-others", "0701-teddy-others"])
    shutil.copy(data / "0701-teddy-others" / "teddy-2" / "intrin_ba" / "0.txt",
                data / "0701-teddy-others" / "teddy-2" / "intrin_ba" / "2.txt")
    objects = onepose.list_objects(data, sfm)
    assert [o.name for o in objects] == ["0701-teddy-others"]
    assert objects.skipped == [("0700-toyrobot-others", "1 of 3 frames of toyrobot-2 have no poses_ba/<frame>.txt "
                                                        "(e.g. 1)")]


def test_object_filter(dirs):
    objects = onepose.list_objects(*dirs, names=["0701-teddy-others", "0799-ghost-others"])
    assert [o.name for o in objects] == ["0701-teddy-others"]
    assert objects.skipped == [("0799-ghost-others", f"no OnePose object '0799-ghost-others' in {dirs[0]}")]
    with pytest.raises(UnknownNameError, match=r"OnePose object filter \[toyrobot\] matches nothing .*available: "
                                               r"0700-toyrobot-others, 0701-teddy-others"):
        onepose.list_objects(*dirs, names=["toyrobot"])


@pytest.mark.parametrize("content,match", [
    ("-40 0 15.5\n0 40 15.5\n0 0 1\n", r"K: focal lengths fx=-40, fy=40 must be positive"),
    ("40 0 15.5\n0 40 15.5\n", r"K: 6 values .* expected 9"),
    ("40 0 nan\n0 40 15.5\n0 0 1\n", r"K: 1 non-finite value"),
    ("40 0 15.5\n0 40 15.5\n0 0 0\n", r"K: not an intrinsics matrix"),
    ("forty 0 15.5\n", r"malformed OnePose intrinsics"),
])
def test_broken_intrinsics_name_the_file(dirs, content, match):
    obj = onepose.list_objects(*dirs)[0]
    path = obj.test.root / "intrin_ba" / "1.txt"
    path.write_text(content)
    with pytest.raises(DatasetFormatError, match=match) as info:
        obj.test.K("1")
    assert str(path) in str(info.value) and info.value.fix


@pytest.mark.parametrize("pose,match", [
    (np.where(np.eye(4) > 0, np.nan, POSE), r"pose: \d+ non-finite value"),
    (POSE[:2], r"pose: 8 values of shape \(2, 4\), expected a 3x4 or 4x4 pose"),
    (POSE * 2, r"last row \[0.0, 0.0, 0.0, 2.0\] of a 4x4 pose"),
    (np.vstack([POSE[:3] * [[3], [1], [1]], POSE[3:]]), r"pose: not a rotation"),
])
def test_broken_pose_names_the_file(dirs, pose, match):
    obj = onepose.list_objects(*dirs)[0]
    path = obj.test.root / "poses_ba" / "0.txt"
    np.savetxt(path, pose)
    with pytest.raises(DatasetFormatError, match=match) as info:
        obj.test.pose("0")
    assert str(path) in str(info.value)


@pytest.mark.parametrize("anno,match", [
    ({"keypoints2d": [[3.0, 4.0]], "assign_matrix": [[0], [9]]}, r"assign_matrix: 3D index 9 but the SfM model has 5"),
    ({"keypoints2d": [[3.0, 4.0]], "assign_matrix": [[4], [0]]}, r"assign_matrix: 2D index 4 but only 1 keypoints2d"),
    ({"keypoints2d": [[3.0, 40.0]], "assign_matrix": [[0], [0]]}, r"keypoints2d: 1 of 1 points outside the 32x32"),
    ({"keypoints2d": [[3.0, 4.0]]}, r"missing field 'assign_matrix'"),
    ({"keypoints2d": [[3.0, 4.0]], "assign_matrix": [[0, 1, 2]]}, r"assign_matrix: shape \(1, 3\)"),
])
def test_broken_annotation_names_the_file(dirs, anno, match):
    obj = onepose.list_objects(*dirs)[0]
    path = obj.ref.root / "anno_loftr" / "1.json"
    path.write_text(json.dumps(anno))
    with pytest.raises(DatasetFormatError, match=match) as info:
        obj.ref.anno("1")
    assert str(path) in str(info.value)


def test_broken_sfm_points_name_the_file(dirs):
    data, sfm = dirs
    npz = sfm / "0700-toyrobot-others" / "anno" / "anno_3d_average.npz"
    np.savez(npz, keypoints3d=np.array([[0.0, np.inf, 0.0]]))
    with pytest.raises(DatasetFormatError, match="keypoints3d: 1 non-finite") as info:
        onepose.list_objects(data, sfm)
    assert str(npz) in str(info.value)
    npz.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DatasetFormatError, match="malformed OnePose SfM model"):
        onepose.list_objects(data, sfm)
    np.savez(npz, points=np.zeros((3, 3)))
    with pytest.raises(DatasetFormatError, match=r"keypoints3d: missing \(the archive holds points\)"):
        onepose.list_objects(data, sfm)


def test_data_present_needs_object_folders(tmp_path, dirs):
    assert onepose.data_present(*dirs)
    (tmp_path / "empty").mkdir()
    assert not onepose.data_present(tmp_path / "empty", dirs[1])
    with pytest.raises(FileNotFoundError, match="no OnePose data directory"):
        onepose.list_objects(tmp_path / "absent", dirs[1])
