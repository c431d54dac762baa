"""MVImgNet loader against objects written here: JPEG frames plus a COLMAP model in the real binary format."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from corr3d.data.mvimgnet import (  # noqa: E402
    MVImgNetObject,
    MVImgNetSkip,
    discover_objects,
    open_objects,
    structural_problem,
)
from tests.helpers.mvimgnet import (
    FOCAL,
    HEIGHT,
    WIDTH,
    object_points,
    write_object,
)


def _project(points: np.ndarray, K: np.ndarray, pose: np.ndarray) -> np.ndarray:
    cam = points @ pose[:3, :3].T + pose[:3, 3]
    uv = cam @ K.T
    return uv[:, :2] / uv[:, 2:]


def test_reads_binary_model_and_correspondences_reproject(tmp_path):
    truth = write_object(tmp_path / "cat1" / "obj_a", object_points(0), num_frames=5)
    obj = MVImgNetObject.open(tmp_path / "cat1" / "obj_a", extent_percentile=0.0)
    assert obj.num_views == 5 and obj.object_id == "obj_a" and obj.notes == []
    assert [p.name for p in obj.image_paths] == [f"{f:03d}.jpg" for f in range(5)]
    np.testing.assert_allclose(obj.K[0], truth["K"])
    # normalised cloud: exact bounding box of the triangulated points -> max extent 1, centred
    extent = obj.xyz.max(0) - obj.xyz.min(0)
    assert extent.max() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose((obj.xyz.max(0) + obj.xyz.min(0)) / 2, 0, atol=1e-6)
    counts = obj.shared_counts()
    assert counts[0, 1] > 20 and counts[0, 1] == counts[1, 0]
    for i, j in [(0, 1), (0, 4), (2, 3)]:
        uv_i, uv_j, xyz = obj.correspondences(i, j)
        assert len(uv_i) == counts[i, j] == len(xyz)
        # the matched keypoints are the projections of the same normalised 3D point in both frames
        np.testing.assert_allclose(_project(xyz.astype(np.float64), obj.K[i], obj.poses[i]), uv_i, atol=1e-3)
        np.testing.assert_allclose(_project(xyz.astype(np.float64), obj.K[j], obj.poses[j]), uv_j, atol=1e-3)
        # and the 3D point is the original world point, normalised
        world = xyz / obj.scale + obj.center
        gt_uv = _project(world, truth["K"], np.vstack([truth["cams"][i], [0, 0, 0, 1]]))
        np.testing.assert_allclose(gt_uv, uv_i, atol=1e-3)
    # poses stay rigid (rotation part orthonormal) after the normalisation
    R = obj.poses[:, :3, :3]
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-9)
    assert obj.rgb(0).shape == (HEIGHT, WIDTH, 3)


def test_trimmed_normalisation_ignores_stray_points(tmp_path):
    points = object_points(1, count=400)
    points[:3] += np.array([40.0, 0.0, 0.0])  # a few far background points
    write_object(tmp_path / "obj", points)
    robust = MVImgNetObject.open(tmp_path / "obj", extent_percentile=1.0)
    inner = robust.xyz[np.abs(robust.xyz[:, 0]) < 5]
    assert 0.8 < (inner.max(0) - inner.min(0)).max() <= 1.05


def test_several_models_use_sparse_0(tmp_path):
    write_object(tmp_path / "obj", object_points(2), extra_models=1)
    obj = MVImgNetObject.open(tmp_path / "obj")
    assert obj.num_views == 5
    assert any("sparse/0,1" in note for note in obj.notes)


def test_holes_are_skipped_with_reasons(tmp_path):
    write_object(tmp_path / "good", object_points(3))
    write_object(tmp_path / "no_sparse", object_points(3))
    import shutil
    shutil.rmtree(tmp_path / "no_sparse" / "sparse")
    write_object(tmp_path / "few_images", object_points(3))
    for f in range(1, 5):
        (tmp_path / "few_images" / "images" / f"{f:03d}.jpg").unlink()
    write_object(tmp_path / "some_missing", object_points(3))
    (tmp_path / "some_missing" / "images" / "002.jpg").unlink()
    write_object(tmp_path / "corrupt", object_points(3))
    (tmp_path / "corrupt" / "sparse" / "0" / "images.bin").write_bytes(b"garbage")
    (tmp_path / "empty_sparse" / "sparse" / "0").mkdir(parents=True)
    (tmp_path / "empty_sparse" / "images").mkdir()

    dirs = discover_objects(tmp_path)
    assert [d.name for d in dirs] == sorted(["good", "no_sparse", "few_images", "some_missing", "corrupt",
                                             "empty_sparse"])
    assert structural_problem(tmp_path / "no_sparse") == "missing sparse/ (no COLMAP model)"
    assert "no complete binary model" in structural_problem(tmp_path / "empty_sparse")
    assert structural_problem(tmp_path / "good") is None
    objects, skipped = open_objects(dirs)
    assert sorted(o.object_id for o in objects) == ["good", "some_missing"]
    reasons = {Path(k).name: v for k, v in skipped.items()}
    assert reasons["no_sparse"].startswith("missing sparse/")
    assert reasons["few_images"].startswith("fewer than 2 registered frames")
    assert reasons["corrupt"].startswith("unreadable COLMAP model")
    assert "no complete binary model" in reasons["empty_sparse"]
    partial = next(o for o in objects if o.object_id == "some_missing")
    assert partial.num_views == 4 and "1 registered images missing" in partial.notes[0]
    with pytest.raises(MVImgNetSkip):
        MVImgNetObject.open(tmp_path / "no_sparse")


def test_radial_camera_model_reads_pinhole_part(tmp_path):
    write_object(tmp_path / "obj", object_points(4), model="SIMPLE_RADIAL")
    obj = MVImgNetObject.open(tmp_path / "obj")
    np.testing.assert_allclose(obj.K[0], [[FOCAL, 0, WIDTH / 2], [0, FOCAL, HEIGHT / 2], [0, 0, 1]])
    assert len(obj.camera_params[0]) == 4  # f, cx, cy, k
