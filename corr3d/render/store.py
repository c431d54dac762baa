"""Reading rendered objects: the corr3d layout and the authors' BlenderProc layout.

corr3d layout (format_version 1), one directory per object, written by ``corr3d.render.batch``:
- ``meta.json``: format, format_version, renderer, renderer_version, object_id, spec, width, height, K (3x3),
  poses (V x 4x4 OpenCV object->camera), num_views, normalization {center, scale} (x_obj = (x_file - center) * scale),
  render settings and their hash, mesh statistics, ``foreground_pixels`` (per view; a render with fewer than 16 in
  every view is refused). Written LAST, so its presence marks a complete directory. A malformed meta.json raises
  ``DatasetFormatError`` naming it and the field.
- ``rgb_%03d.png`` (RGB uint8, background colour outside the mask), ``mask_%03d.png`` (L, 0/255).
- ``depth.npz`` (zip-deflated): one float32 (H,W) array per view, key ``view_%03d``: the exact camera z of the ray
  hit through each pixel centre, 0 on the background.
- xyz is not stored: ``xyz(i)`` unprojects the float32 depth through the pixel centre with K and the pose in
  float64. The ray-cast hit lies on that ray, so the only differences to the renderer's xyz are float32 round-off
  (depth storage and open3d's float32 barycentrics): < 5e-6 object units, far below the 0.005 positive radius,
  at no disk cost.

BlenderProc layout (the authors' ``data_utils/blenderproc.py`` output), one directory per object:
- ``color_%06d.png``, ``mask_%06d.png``, ``depth_%06d.png`` (uint16 depth in millimetres, i.e. object units x 1000
  since the object has unit extent; 0 and 65535 mean no surface); xyz is unprojected from this quantised depth.
- poses from ``obj_poses.npy`` (V,4,4) in the object directory or its parent (the authors keep one shared
  ``data/obj_poses.npy``), or passed explicitly. The authors describe them as object->camera; the convention
  (OpenCV: camera looks along +z, y down; Blender/OpenGL: camera looks along -z, y up; or the inverse,
  camera->object) is detected from the fact that every camera looks at the object centre: an object->camera
  pose puts the origin at (0, 0, +d) in OpenCV and (0, 0, -d) in Blender. Pass ``convention`` to override.
- intrinsics: ``K.npy`` / ``cam_K.npy`` if present, else the paper's K (f = 560, c = 256 at 512 px) scaled to the
  image size. These K are in BlenderProc's convention: ``set_intrinsics_from_K_matrix`` puts the optical axis at
  ``(W - 1) / 2`` for ``cx = (W - 1) / 2``, i.e. pixel CENTRES at integer coordinates; corr3d puts pixel centres at
  ``x + 0.5`` (continuous coordinates), so the reader adds 0.5 to cx and cy (the paper's c = 256 is 256.5 here; a
  0.5 px error is ~2 mm at depth 2, against the 5 mm positive radius). A ``K=`` passed to ``open`` is taken as is
  (corr3d convention); :func:`write_blenderproc_layout` writes ``K.npy`` back in BlenderProc's convention.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from corr3d.errors import DataFileError, DatasetFormatError
from corr3d.geometry import depth_to_xyz, intrinsics, invert_pose
from corr3d.utils.reading import as_array, fail, reading

log = logging.getLogger(__name__)

FORMAT = "corr3d-render"
FORMAT_VERSION = 1
BLENDER_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])  # flips camera y and z axes
PAPER_FOCAL, PAPER_SIZE = 560.0, 512
BLENDERPROC_PIXEL_OFFSET = 0.5  # BlenderProc K (pixel centre at integer x) -> corr3d K (pixel centre at x + 0.5)
MIN_FOREGROUND = 16  # = corr3d.render.batch.MIN_FOREGROUND_PIXELS: fewer in every view is a failed (zero-area) render
RERENDER_FIX = "re-render this object (delete the directory and run `corr3d render`)"


def blenderproc_K_to_corr3d(K) -> np.ndarray:
    """BlenderProc/OpenCV integer-pixel intrinsics -> corr3d's continuous convention (principal point + 0.5)."""
    K = np.asarray(K, dtype=np.float64).reshape(3, 3).copy()
    K[0, 2] += BLENDERPROC_PIXEL_OFFSET
    K[1, 2] += BLENDERPROC_PIXEL_OFFSET
    return K


def paper_K(width: int, height: int) -> np.ndarray:
    """The authors' K (f = 560, c = 256 at 512 px, BlenderProc convention) scaled to the image, in corr3d's."""
    s = width / PAPER_SIZE
    return blenderproc_K_to_corr3d(intrinsics(PAPER_FOCAL * s, width, height, cx=PAPER_SIZE / 2 * s,
                                              cy=PAPER_SIZE / 2 * height / PAPER_SIZE))


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def _mask_from_png(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3:
        array = array[..., 0] if array.shape[2] < 4 else array[..., 3]
    threshold = 127 if array.max() > 1 else 0  # 0/255 masks (and anti-aliased ones) vs 0/1 masks
    return array > threshold


def poses_to_opencv(poses: np.ndarray, convention: str = "auto") -> tuple[np.ndarray, str]:
    """(V,4,4) poses in ``convention`` -> OpenCV object->camera; returns (poses, convention used).

    Conventions: ``opencv`` / ``blender`` (object->camera), ``opencv_c2w`` / ``blender_c2w`` (camera->object), or
    ``auto`` (cameras must look at the origin; decided by majority over views).
    """
    poses = np.asarray(poses, dtype=np.float64)
    if convention == "auto":
        convention = detect_pose_convention(poses)
    if convention.endswith("_c2w"):
        poses = invert_pose(poses)
        convention_base = convention[:-4]
    else:
        convention_base = convention
    if convention_base == "blender":
        poses = BLENDER_TO_OPENCV @ poses
    elif convention_base != "opencv":
        raise ValueError(f"unknown pose convention {convention!r}")
    return poses, convention


def detect_pose_convention(poses: np.ndarray) -> str:
    """Which convention makes every camera look at the origin (see ``poses_to_opencv``)."""
    votes = {"opencv": 0, "blender": 0, "opencv_c2w": 0, "blender_c2w": 0}
    for pose in np.asarray(poses, dtype=np.float64):
        for name, t in (("", pose[:3, 3]), ("_c2w", invert_pose(pose)[:3, 3])):
            norm = np.linalg.norm(t)
            if norm > 0 and np.linalg.norm(t[:2]) < 1e-3 * norm:
                votes[("opencv" if t[2] > 0 else "blender") + name] += 1
    best = max(votes, key=votes.get)
    if votes[best] == 0:
        log.warning("cannot detect the pose convention (cameras do not look at the origin); assuming opencv")
        return "opencv"
    return best


@dataclass
class RenderedObject:
    """Multiview renders of one object with exact per-pixel geometry; see the module docstring for layouts."""

    path: Path
    object_id: str
    K: np.ndarray
    poses: np.ndarray
    width: int
    height: int
    layout: str = "corr3d"
    spec: str | None = None
    normalization: dict | None = None
    meta: dict = field(default_factory=dict, repr=False)
    _files: dict = field(default_factory=dict, repr=False)

    @property
    def num_views(self) -> int:
        return len(self.poses)

    def __post_init__(self) -> None:
        # NaN geometry would silently turn into "no foreground" (NaN > 0 is False) and a loss/APE over nothing
        for name in ("K", "poses"):
            if not np.isfinite(np.asarray(getattr(self, name), dtype=np.float64)).all():
                raise DataFileError(f"non-finite values (NaN/inf) in the camera {name}", path=self.path,
                                    fix="re-render this object (delete the directory and run `corr3d render`)")

    @classmethod
    def open(cls, path, poses=None, K=None, convention: str = "auto") -> "RenderedObject":
        """Open a corr3d render directory or a BlenderProc one (``poses``/``K``/``convention`` for the latter)."""
        path = Path(path)
        if (path / "meta.json").is_file():
            return cls._open_corr3d(path)
        if sorted(path.glob("color_*.png")):
            return cls._open_blenderproc(path, poses, K, convention)
        raise FileNotFoundError(f"{path} is neither a corr3d render (meta.json) nor a BlenderProc one (color_*.png)")

    @classmethod
    def _open_corr3d(cls, path: Path) -> "RenderedObject":
        meta_path = path / "meta.json"
        with reading(meta_path, "render meta.json", RERENDER_FIX):
            meta = json.loads(meta_path.read_text())
            if not isinstance(meta, dict):
                raise TypeError(f"a JSON {type(meta).__name__}, expected an object")
            if meta.get("format") != FORMAT or int(meta.get("format_version", 0)) > FORMAT_VERSION:
                raise DatasetFormatError(f"unsupported render format {meta.get('format')} "
                                         f"v{meta.get('format_version')}", path=meta_path, fix=RERENDER_FIX)
            n = int(meta["num_views"])
            K = as_array(meta_path, "K", meta["K"], (3, 3), RERENDER_FIX)
            poses = as_array(meta_path, "poses", meta["poses"], (n, 4, 4), RERENDER_FIX)
            width, height = int(meta["width"]), int(meta["height"])
            foreground = meta.get("foreground_pixels")
            if isinstance(foreground, list) and len(foreground) == n and max(foreground, default=0) < MIN_FOREGROUND:
                fail(meta_path, "foreground_pixels", f"the object covers at most {max(foreground, default=0)} pixels "
                                                     "in every view (a zero-area mesh); it cannot be evaluated",
                     RERENDER_FIX)
        files = {"rgb": [path / f"rgb_{i:03d}.png" for i in range(n)],
                 "mask": [path / f"mask_{i:03d}.png" for i in range(n)], "depth": path / "depth.npz"}
        return cls(path=path, object_id=str(meta["object_id"]), K=K, poses=poses, width=width, height=height,
                   layout="corr3d", spec=meta.get("spec"), normalization=meta.get("normalization"), meta=meta,
                   _files=files)

    @classmethod
    def _open_blenderproc(cls, path: Path, poses, K, convention: str) -> "RenderedObject":
        colors = sorted(path.glob("color_*.png"), key=lambda p: int(re.findall(r"\d+", p.stem)[-1]))
        indices = [int(re.findall(r"\d+", p.stem)[-1]) for p in colors]
        if poses is None:
            # the object directory, its parent, or the authors' layout: data/obj_poses.npy three levels above
            # data/objaverse_renderings/000-xxx/<uid> (their render_objects.py output next to their shared poses)
            candidates = [path / "obj_poses.npy", path.parent / "obj_poses.npy",
                          path.parents[2] / "obj_poses.npy" if len(path.parents) > 2 else None]
            found = [p for p in candidates if p is not None and p.is_file()]
            if not found:
                raise FileNotFoundError(f"{path}: no obj_poses.npy here, in the parent directory or three levels up "
                                        "(the authors' data/obj_poses.npy); pass poses= (an array or a .npy path)")
            poses = np.load(found[0])
        elif isinstance(poses, (str, Path)):
            poses = np.load(poses)
        poses = np.asarray(poses, dtype=np.float64)
        if poses.ndim != 3 or poses.shape[1:] != (4, 4):
            raise DatasetFormatError(f"poses of shape {poses.shape}, expected (V, 4, 4)", path=path,
                                     fix="pass the (V, 4, 4) object->camera poses (obj_poses.npy)")
        if len(poses) < max(indices) + 1:
            raise DatasetFormatError(f"{len(poses)} poses for view index {max(indices)} (color_{max(indices):06d}.png)",
                                     path=path, fix="obj_poses.npy must hold one pose per rendered view")
        poses, used = poses_to_opencv(poses[indices], convention)
        height, width = _read_png(colors[0]).shape[:2]
        if K is None:
            K = next((blenderproc_K_to_corr3d(np.load(p)) for p in (path / "K.npy", path / "cam_K.npy")
                      if p.is_file()), None)
        if K is None:
            K = paper_K(width, height)
        files = {"rgb": colors, "mask": [path / f"mask_{i:06d}.png" for i in indices],
                 "depth": [path / f"depth_{i:06d}.png" for i in indices]}
        meta = {"format": "blenderproc", "pose_convention": used, "view_indices": indices}
        return cls(path=path, object_id=path.name, K=np.asarray(K, dtype=np.float64).reshape(3, 3), poses=poses,
                   width=int(width), height=int(height), layout="blenderproc", meta=meta, _files=files)

    # ------------------------------------------------------------------------------------------- per view
    def rgb(self, i: int) -> np.ndarray:
        img = _read_png(self._files["rgb"][i])
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        return np.ascontiguousarray(img[..., :3]).astype(np.uint8)

    def mask(self, i: int) -> np.ndarray:
        mask = _mask_from_png(_read_png(self._files["mask"][i]))
        if self.layout == "blenderproc":  # pixels without a valid depth have no 3D point: not foreground
            mask &= self._blenderproc_depth(i) > 0
        return mask

    def depth(self, i: int) -> np.ndarray:
        if self.layout == "blenderproc":
            depth = self._blenderproc_depth(i)
            return np.where(_mask_from_png(_read_png(self._files["mask"][i])), depth, 0.0).astype(np.float32)
        with np.load(self._files["depth"]) as arrays:
            depth = arrays[f"view_{i:03d}"].astype(np.float32)
        if not np.isfinite(depth).all():
            raise DataFileError(f"view {i}: non-finite depth values (NaN/inf)", path=self._files["depth"],
                                fix="re-render this object (delete the directory and run `corr3d render`)")
        return depth

    def xyz(self, i: int) -> np.ndarray:
        """(H,W,3) float32 object-space point of each pixel centre, 0 on the background."""
        return depth_to_xyz(self.depth(i), self.K, self.poses[i])

    def view(self, i: int) -> dict:
        depth = self.depth(i)
        return {"rgb": self.rgb(i), "mask": depth > 0, "depth": depth,
                "xyz": depth_to_xyz(depth, self.K, self.poses[i]), "K": self.K, "pose": self.poses[i]}

    def _blenderproc_depth(self, i: int) -> np.ndarray:
        raw = _read_png(self._files["depth"][i])
        if raw.ndim == 3:
            raw = raw[..., 0]
        raw = raw.astype(np.float64)
        valid = (raw > 0) & (raw < 65535)
        return np.where(valid, raw / 1000.0, 0.0).astype(np.float32)


def write_blenderproc_layout(obj: RenderedObject, out_dir, convention: str = "opencv") -> Path:
    """Export renders in the authors' BlenderProc layout (depth quantised to uint16 mm); poses to obj_poses.npy.

    ``convention`` picks how the poses are stored (see ``poses_to_opencv``); used to test the reader round trip.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i in range(obj.num_views):
        Image.fromarray(obj.rgb(i)).save(out_dir / f"color_{i:06d}.png")
        mask = obj.mask(i)
        Image.fromarray((mask * 255).astype(np.uint8)).save(out_dir / f"mask_{i:06d}.png")
        mm = np.clip(np.round(obj.depth(i).astype(np.float64) * 1000.0), 0, 65534).astype(np.uint16)
        Image.fromarray(np.where(mask, mm, 0).astype(np.uint16)).save(out_dir / f"depth_{i:06d}.png")
    poses = obj.poses
    base = convention.replace("_c2w", "")
    if base == "blender":
        poses = BLENDER_TO_OPENCV @ poses  # the flip is its own inverse
    if convention.endswith("_c2w"):
        poses = invert_pose(poses)
    np.save(out_dir / "obj_poses.npy", poses)
    K = np.asarray(obj.K, dtype=np.float64).copy()
    K[:2, 2] -= BLENDERPROC_PIXEL_OFFSET   # back to BlenderProc's integer-pixel convention
    np.save(out_dir / "K.npy", K)
    return out_dir


__all__ = ["RenderedObject", "write_blenderproc_layout", "poses_to_opencv", "detect_pose_convention", "FORMAT",
           "FORMAT_VERSION", "blenderproc_K_to_corr3d", "paper_K"]
