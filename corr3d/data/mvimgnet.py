"""MVImgNet objects: frames in ``images/`` plus the COLMAP model shipped in ``sparse/0`` (read with pycolmap).

Correspondences are sparse: two frames match where they observe the same COLMAP 3D point (a shared track). The
observed keypoint positions are the true image positions (COLMAP stores them in the distorted image, already in the
project's continuous pixel convention, pixel centre at +0.5), so they need no undistortion; ``K`` is the pinhole
part of the camera (distortion parameters are kept in ``camera_params`` but not used).

Object space: the COLMAP world is centred and scaled so the object's point cloud has max extent 1 (percentile-trimmed
bounding box: MVImgNet clouds carry stray background points), which is what the loss radii (0.005 / 0.1 of the
object extent) assume. Poses are rigid object->camera maps in that normalised space; the camera frame is scaled by
the same factor, so projecting normalised points with ``K`` and ``poses`` lands on the observed keypoints.

The dataset has known holes (objects without ``sparse/``, several models ``sparse/0,1``, missing frames). They are
reported as a reason string instead of raising through a training run: dropped frames (missing or unreadable
images, cameras with a non-positive size or focal length, non-finite parameters or poses, images whose aspect ratio
differs from their camera's) are counted in ``MVImgNetObject.notes``; unusable objects are ``open_objects``'
``skipped`` ``{path: reason}``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from corr3d.errors import DataFileError
from corr3d.utils.optional import import_extra

MODEL_FILES = ("cameras.bin", "images.bin", "points3D.bin")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class MVImgNetSkip(Exception):
    """An object that cannot serve correspondences; ``str(exc)`` is the recorded reason."""


def find_model_dir(object_dir: Path) -> tuple[Path, list[str]]:
    """The COLMAP model folder of an object (``sparse/0``; ``sparse`` itself for flat layouts) and notes."""
    sparse = object_dir / "sparse"
    if not sparse.is_dir():
        raise MVImgNetSkip("missing sparse/ (no COLMAP model)")
    notes = []
    models = sorted(p.name for p in sparse.iterdir() if p.is_dir() and p.name.isdigit())
    if len(models) > 1:
        notes.append(f"{len(models)} COLMAP models (sparse/{','.join(models)}); using sparse/0")
    for candidate in (sparse / "0", sparse):
        if all((candidate / name).exists() for name in MODEL_FILES):
            return candidate, notes
    raise MVImgNetSkip("sparse/ holds no complete binary model (cameras.bin, images.bin, points3D.bin)")


def structural_problem(object_dir: str | os.PathLike) -> str | None:
    """Cheap check without reading the model: the reason the object is unusable, or None."""
    object_dir = Path(object_dir)
    if not (object_dir / "images").is_dir():
        return "missing images/"
    try:
        find_model_dir(object_dir)
    except MVImgNetSkip as exc:
        return str(exc)
    return None


def discover_objects(root: str | os.PathLike, max_depth: int = 3) -> list[Path]:
    """Object folders (those holding ``images/`` or ``sparse/``) under ``root`` up to ``max_depth`` levels, sorted.

    MVImgNet nests ``<category>/<object>/``; the depth limit stops the walk from entering image folders.
    """
    root = Path(root)
    found, frontier = [], [root]
    for _ in range(max_depth + 1):
        next_frontier = []
        for folder in frontier:
            if (folder / "images").is_dir() or (folder / "sparse").is_dir():
                found.append(folder)
            else:
                next_frontier += sorted(p for p in folder.iterdir() if p.is_dir())
        frontier = next_frontier
    return sorted(found)


def normalization(xyz: np.ndarray, percentile: float = 1.0) -> tuple[np.ndarray, float]:
    """Centre and scale mapping a point cloud's trimmed bounding box to max extent 1 (``percentile`` per side)."""
    lo = np.percentile(xyz, percentile, axis=0)
    hi = np.percentile(xyz, 100.0 - percentile, axis=0)
    extent = float(np.max(hi - lo))
    if not extent > 0:
        raise MVImgNetSkip("degenerate point cloud (zero extent)")
    return (lo + hi) / 2.0, 1.0 / extent


@dataclass
class MVImgNetObject:
    """One MVImgNet object with registered frames that exist on disk, in normalised object space."""

    object_id: str
    root: Path
    image_paths: list[Path]
    K: np.ndarray            # (F, 3, 3) at the camera's (COLMAP) resolution
    poses: np.ndarray        # (F, 4, 4) normalised object -> scaled camera
    sizes: np.ndarray        # (F, 2) camera width, height
    camera_params: list[np.ndarray]
    frame_point_ids: list[np.ndarray]  # per frame: 3D point ids of its observations (unique)
    frame_uv: list[np.ndarray]         # per frame: (n, 2) keypoints of those observations
    point_ids: np.ndarray    # (P,)
    xyz: np.ndarray          # (P, 3) normalised
    center: np.ndarray
    scale: float
    notes: list[str] = field(default_factory=list)

    @property
    def num_views(self) -> int:
        return len(self.image_paths)

    @classmethod
    def open(cls, object_dir: str | os.PathLike, extent_percentile: float = 1.0) -> "MVImgNetObject":
        pycolmap = import_extra("pycolmap")  # deferred: the [colmap] extra, only MVImgNet needs it

        object_dir = Path(object_dir)
        if not (object_dir / "images").is_dir():
            raise MVImgNetSkip("missing images/")
        model_dir, notes = find_model_dir(object_dir)
        try:
            recon = pycolmap.Reconstruction(str(model_dir))
        except Exception as exc:  # pycolmap raises plain RuntimeError/ValueError for corrupt files
            raise MVImgNetSkip(f"unreadable COLMAP model {model_dir}: {exc}") from exc
        if recon.num_points3D() == 0:
            raise MVImgNetSkip("COLMAP model has no 3D points")
        point_ids = np.array(sorted(recon.point3D_ids()), dtype=np.int64)
        world_xyz = np.stack([recon.points3D[int(i)].xyz for i in point_ids])
        center, scale = normalization(world_xyz, extent_percentile)
        frames, missing = _registered_frames(recon, object_dir)
        if missing:
            notes.append(f"{missing} registered images missing on disk (frames dropped)")
        broken = [(path, problem) for _, path in frames if (problem := image_problem(path))]
        if broken:  # truncated/corrupt images are dropped up front instead of failing mid-training (issue 14)
            notes.append(f"{len(broken)} unreadable images (frames dropped): "
                         + "; ".join(f"{p.name}: {why}" for p, why in broken[:3]))
            bad = {p for p, _ in broken}
            frames = [(image, path) for image, path in frames if path not in bad]
        invalid = [(path, problem) for image, path in frames if (problem := frame_problem(recon, image, path))]
        if invalid:  # a camera or pose that would put the keypoints in the wrong place: dropped with the reason
            notes.append(f"{len(invalid)} frames with invalid cameras (frames dropped): "
                         + "; ".join(f"{p.name}: {why}" for p, why in invalid[:3]))
            bad = {p for p, _ in invalid}
            frames = [(image, path) for image, path in frames if path not in bad]
        if len(frames) < 2:
            dropped = broken + invalid
            raise MVImgNetSkip(f"fewer than 2 registered frames with readable images ({len(frames)}; {missing} "
                               f"missing, {len(broken)} unreadable"
                               + (f", {len(invalid)} with invalid cameras" if invalid else "")
                               + (f", e.g. {dropped[0][0].name}: {dropped[0][1]}" if dropped else "") + ")")
        return cls(object_id=object_dir.name, root=object_dir, notes=notes, point_ids=point_ids,
                   xyz=((world_xyz - center) * scale).astype(np.float32), center=center, scale=scale,
                   **_frame_arrays(recon, frames, center, scale))

    # -- correspondences ---------------------------------------------------------------------------------------
    def shared_counts(self) -> np.ndarray:
        """(F, F) number of 3D points observed by both frames (diagonal: observations per frame)."""
        column = {int(p): k for k, p in enumerate(self.point_ids)}
        incidence = np.zeros((self.num_views, len(self.point_ids)), dtype=np.float32)
        for f, ids in enumerate(self.frame_point_ids):
            incidence[f, [column[int(i)] for i in ids]] = 1.0
        return (incidence @ incidence.T).astype(np.int64)

    def correspondences(self, i: int, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Matched keypoints of frames i and j (M,2) each, and their normalised 3D points (M,3), by point id."""
        ids, in_i, in_j = np.intersect1d(self.frame_point_ids[i], self.frame_point_ids[j], return_indices=True)
        rows = np.searchsorted(self.point_ids, ids)
        return (self.frame_uv[i][in_i].astype(np.float32), self.frame_uv[j][in_j].astype(np.float32),
                self.xyz[rows])

    def rgb(self, i: int) -> np.ndarray:
        try:
            with Image.open(self.image_paths[i]) as img:
                return np.asarray(img.convert("RGB"))
        except OSError as err:
            raise DataFileError(f"unreadable image ({err})", path=self.image_paths[i],
                                fix="the file is truncated or corrupt: copy the object again") from None


def image_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete image (None if it looks whole), without decoding the pixels: the header must
    parse and the file must end with its format's end marker (JPEG EOI ``FFD9``, PNG ``IEND``), which a truncated
    copy lacks (FFD9 cannot occur inside JPEG entropy-coded data, so finding it in the tail is reliable)."""
    try:
        with Image.open(path) as img:
            fmt = img.format
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 1024))
            tail = fh.read()
    except Exception as err:  # noqa: BLE001 - PIL raises OSError/SyntaxError/ValueError for broken headers
        return f"unreadable ({type(err).__name__}: {err})"
    if fmt == "JPEG" and b"\xff\xd9" not in tail:
        return "truncated JPEG (no end-of-image marker)"
    if fmt == "PNG" and b"IEND" not in tail[-16:]:
        return "truncated PNG (no IEND chunk)"
    return None


ASPECT_TOLERANCE = 0.02  # relative; images on disk may be resized from the COLMAP camera, not cropped or rotated


def frame_problem(recon, image, path: Path) -> str | None:
    """Why a registered frame's geometry cannot be used (None if it can): its camera must have a positive size and
    focal length and finite parameters, its pose must be finite, and the image on disk must have the camera's aspect
    ratio (a resized copy is fine: keypoints are rescaled; a rotated or cropped one is not)."""
    camera = recon.camera(image.camera_id)
    width, height = int(camera.width), int(camera.height)
    params = np.asarray(camera.params, dtype=np.float64)
    if width <= 0 or height <= 0:
        return f"camera {image.camera_id} has size {width}x{height}"
    if not np.isfinite(params).all():
        return f"camera {image.camera_id} has non-finite parameters {params.tolist()}"
    K = np.asarray(camera.calibration_matrix(), dtype=np.float64)
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        return f"camera {image.camera_id} has focal length fx={K[0, 0]:g}, fy={K[1, 1]:g} (must be positive)"
    if not np.isfinite(np.asarray(image.cam_from_world().matrix(), dtype=np.float64)).all():
        return "non-finite camera pose"
    try:
        with Image.open(path) as img:
            w, h = img.size
    except Exception as err:  # noqa: BLE001 - checked by image_problem already; a race (file replaced) lands here
        return f"unreadable ({type(err).__name__}: {err})"
    if abs((w / h) / (width / height) - 1.0) > ASPECT_TOLERANCE:
        return (f"image is {w}x{h} but its COLMAP camera {image.camera_id} is {width}x{height} (another aspect ratio: "
                "rotated or cropped after reconstruction)")
    return None


def _image_path(object_dir: Path, name: str) -> Path | None:
    """COLMAP image names are relative to the image folder; some exports keep an ``images/`` prefix."""
    for candidate in (object_dir / "images" / name, object_dir / name):
        if candidate.is_file():
            return candidate
    return None


def _registered_frames(recon, object_dir: Path) -> tuple[list[tuple[object, Path]], int]:
    frames, missing = [], 0
    for image_id in sorted(recon.reg_image_ids()):
        image = recon.image(image_id)
        path = _image_path(object_dir, image.name)
        if path is None:
            missing += 1
        else:
            frames.append((image, path))
    frames.sort(key=lambda item: item[0].name)
    return frames, missing


def _observations(image) -> tuple[np.ndarray, np.ndarray]:
    """3D point ids and keypoints of an image's triangulated observations, one per point (first kept)."""
    ids, uv = [], []
    for point in image.points2D:
        if point.has_point3D():
            ids.append(point.point3D_id)
            uv.append(point.xy)
    ids = np.asarray(ids, dtype=np.int64)
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    unique_ids, first = np.unique(ids, return_index=True)
    return unique_ids, uv[first]


def _frame_arrays(recon, frames, center: np.ndarray, scale: float) -> dict:
    Ks, poses, sizes, params, frame_ids, frame_uv, paths = [], [], [], [], [], [], []
    for image, path in frames:
        camera = recon.camera(image.camera_id)
        pose = np.eye(4)
        pose[:3] = image.cam_from_world().matrix()
        # world = obj / scale + center, camera scaled by `scale` keeps the map rigid: t' = scale * (R c + t)
        pose[:3, 3] = scale * (pose[:3, :3] @ center + pose[:3, 3])
        ids, uv = _observations(image)
        Ks.append(camera.calibration_matrix())
        poses.append(pose)
        sizes.append((camera.width, camera.height))
        params.append(np.asarray(camera.params, dtype=np.float64))
        frame_ids.append(ids)
        frame_uv.append(uv)
        paths.append(path)
    return dict(image_paths=paths, K=np.stack(Ks), poses=np.stack(poses), sizes=np.asarray(sizes),
                camera_params=params, frame_point_ids=frame_ids, frame_uv=frame_uv)


def open_objects(object_dirs, extent_percentile: float = 1.0) -> tuple[list[MVImgNetObject], dict[str, str]]:
    """Open every object; unusable ones are returned as {path: reason} instead of raising."""
    objects, skipped = [], {}
    for path in object_dirs:
        try:
            objects.append(MVImgNetObject.open(path, extent_percentile))
        except MVImgNetSkip as exc:
            skipped[str(path)] = str(exc)
    return objects, skipped
