"""MVImgNet fixtures written by pycolmap in the real on-disk layout (images/ + sparse/0/*.bin)."""
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
