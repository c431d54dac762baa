"""MVImgNet loader against objects written here: JPEG frames plus a COLMAP model in the real binary format."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap
from PIL import Image

WIDTH, HEIGHT, FOCAL = 64, 48, 60.0


def look_at(eye: np.ndarray, target=np.zeros(3), up=np.array([0.0, -1.0, 0.0])) -> np.ndarray:
    """OpenCV world->camera 3x4 (z towards the target, y down)."""
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(up, z)
    if np.linalg.norm(x) < 1e-6:
        x = np.cross(np.array([1.0, 0.0, 0.0]), z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    return np.hstack([R, (-R @ eye)[:, None]])


def camera_ring(num_frames: int, radius: float = 6.0, height: float = -1.5, spread_deg: float = 90.0):
    """Cameras on an arc around the origin (MVImgNet captures walk around the object)."""
    angles = np.deg2rad(np.linspace(0.0, spread_deg, num_frames))
    return [look_at(np.array([radius * np.sin(a), height, -radius * np.cos(a)])) for a in angles]


def build_reconstruction(points: np.ndarray, cams: list[np.ndarray], seed: int = 0, observe_p: float = 0.8,
                         model: str = "PINHOLE"):
    """A pycolmap Reconstruction whose keypoints are the exact projections of ``points`` (random subsets per frame,
    so tracks have different lengths); returns it with the ground-truth projections per frame."""
    rng = np.random.default_rng(seed)
    recon = pycolmap.Reconstruction()
    params = [FOCAL, FOCAL, WIDTH / 2, HEIGHT / 2] if model == "PINHOLE" else [FOCAL, WIDTH / 2, HEIGHT / 2, 0.0]
    recon.add_camera_with_trivial_rig(pycolmap.Camera(camera_id=1, model=model, width=WIDTH, height=HEIGHT,
                                                      params=params))
    K = np.array([[FOCAL, 0, WIDTH / 2], [0, FOCAL, HEIGHT / 2], [0, 0, 1]])
    observed = []  # per frame: indices into points and their keypoints
    for f, cam in enumerate(cams):
        cam_pts = points @ cam[:, :3].T + cam[:, 3]
        uv = cam_pts @ K.T
        uv = uv[:, :2] / uv[:, 2:]
        inside = (uv[:, 0] > 0) & (uv[:, 0] < WIDTH) & (uv[:, 1] > 0) & (uv[:, 1] < HEIGHT) & (cam_pts[:, 2] > 0)
        keep = np.flatnonzero(inside & (rng.random(len(points)) < observe_p))
        observed.append((keep, uv[keep]))
        image = pycolmap.Image(name=f"{f:03d}.jpg", keypoints=uv[keep], camera_id=1, image_id=f + 1)
        recon.add_image_with_trivial_frame(image, pycolmap.Rigid3d(cam))
    tracks: dict[int, list[tuple[int, int]]] = {}
    for f, (keep, _) in enumerate(observed):
        for k, p in enumerate(keep):
            tracks.setdefault(int(p), []).append((f + 1, k))
    point_ids = {}
    for p, elements in sorted(tracks.items()):
        if len(elements) < 2:
            continue  # COLMAP only keeps triangulated points seen twice
        track = pycolmap.Track()
        for image_id, idx in elements:
            track.add_element(image_id, idx)
        point_ids[p] = recon.add_point3D(points[p], track)
    return recon, K, point_ids


def write_object(object_dir: Path, points: np.ndarray, num_frames: int = 5, seed: int = 0,
                 legacy_files_only: bool = True, extra_models: int = 0, model: str = "PINHOLE") -> dict:
    """An MVImgNet object folder; ``legacy_files_only`` leaves just cameras/images/points3D.bin like the dataset."""
    cams = camera_ring(num_frames)
    recon, K, point_ids = build_reconstruction(points, cams, seed=seed, model=model)
    for index in range(1 + extra_models):
        model_dir = object_dir / "sparse" / str(index)
        model_dir.mkdir(parents=True, exist_ok=True)
        recon.write(str(model_dir))
        if legacy_files_only:
            for extra in ("rigs.bin", "frames.bin"):
                (model_dir / extra).unlink(missing_ok=True)
        if index > 0:  # a second, different model: must be ignored
            (model_dir / "points3D.bin").write_bytes(b"\0" * 8)
    images = object_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for f in range(num_frames):
        Image.fromarray(rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(images / f"{f:03d}.jpg")
    return {"cams": cams, "K": K, "point_ids": point_ids, "points": points}


def object_points(seed: int = 0, count: int = 300) -> np.ndarray:
    """A box-shaped cloud (2 x 1 x 1 world units, off-centre) so normalisation has something to undo."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.5, 0.5, (count, 3)) * np.array([2.0, 1.0, 1.0]) + np.array([0.3, -0.2, 0.1])


# ---------------------------------------------------------------------------------------------------------------
# tests

import pytest  # noqa: E402

from corr3d.data.mvimgnet import (MVImgNetObject, MVImgNetSkip, discover_objects, open_objects,  # noqa: E402
                                  structural_problem)


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
