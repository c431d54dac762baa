"""BOP-format reader (YCB-Video test set ``ycbv_test_bop19`` and models ``ycbv_models``; the real on-disk layout).

::

    <test_dir>/<scene:06d>/rgb/<im:06d>.png          (or .jpg)
                         depth/<im:06d>.png          uint16, depth in mm = value * depth_scale
                         mask_visib/<im:06d>_<gt:06d>.png   visible mask of the gt-th instance of the image
                         scene_gt.json       {"<im>": [{"cam_R_m2c": [9], "cam_t_m2c": [3] (mm), "obj_id": int}, ...]}
                         scene_camera.json   {"<im>": {"cam_K": [9], "depth_scale": float}}
                         scene_gt_info.json  {"<im>": [{"bbox_obj", "bbox_visib": [x, y, w, h], "px_count_*",
                                                         "visib_fract"}, ...]}
    <models_dir>/obj_<id:06d>.ply                    mm
    <models_dir>/models_info.json {"<id>": {"diameter": mm, "symmetries_discrete": [[16]], "symmetries_continuous":
                                            [{"axis": [3], "offset": [3]}], ...}}
    <test_dir>/../test_targets_bop19.json (optional) [{"scene_id", "im_id", "obj_id", "inst_count"}, ...]

BOP intrinsics follow OpenCV's integer-pixel convention (pixel centre at 0); corr3d uses continuous coordinates
(pixel centre at +0.5), so the principal point is shifted by +0.5 at load time (as for OnePose, datasets/onepose.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

DOWNLOAD_HINT = ("YCB-Video (BOP): download ycbv_base.zip, ycbv_models.zip and ycbv_test_bop19.zip from the BOP "
                 "website (https://bop.felk.cvut.cz/datasets/ -> YCB-Video; files also at "
                 "huggingface.co/datasets/bop-benchmark/ycbv) and unzip them so that "
                 "{test_dir}/000048/scene_gt.json and {models_dir}/models_info.json exist")
PIXEL_OFFSET = 0.5


def _read_json(path: Path):
    return json.loads(Path(path).read_text())


@dataclass
class BopInstance:
    """One annotated object instance in one image (pose: object -> camera, translation in mm)."""

    scene_id: int
    im_id: int
    gt_idx: int
    obj_id: int
    pose: np.ndarray                     # 4x4, mm
    bbox_visib: tuple[int, int, int, int]
    visib_fract: float

    @property
    def id(self) -> str:
        return f"{self.scene_id:06d}/{self.im_id:06d}/{self.gt_idx}/obj_{self.obj_id:06d}"


@dataclass
class BopScene:
    root: Path

    @property
    def scene_id(self) -> int:
        return int(self.root.name)

    @cached_property
    def scene_gt(self) -> dict:
        return _read_json(self.root / "scene_gt.json")

    @cached_property
    def scene_camera(self) -> dict:
        return _read_json(self.root / "scene_camera.json")

    @cached_property
    def scene_gt_info(self) -> dict:
        path = self.root / "scene_gt_info.json"
        return _read_json(path) if path.exists() else {}

    @cached_property
    def image_ids(self) -> list[int]:
        return sorted(int(k) for k in self.scene_gt)

    def _file(self, folder: str, stem: str) -> Path:
        for ext in (".png", ".jpg", ".jpeg", ".tif"):
            path = self.root / folder / f"{stem}{ext}"
            if path.exists():
                return path
        raise FileNotFoundError(f"{self.root / folder}/{stem}.(png|jpg|tif) not found")

    def image(self, im_id: int) -> np.ndarray:
        return np.asarray(Image.open(self._file("rgb", f"{im_id:06d}")).convert("RGB"))

    def depth(self, im_id: int) -> np.ndarray:
        """(H, W) float depth in mm (0 = no measurement)."""
        raw = np.asarray(Image.open(self._file("depth", f"{im_id:06d}")), dtype=np.float64)
        return raw * float(self.scene_camera[str(im_id)].get("depth_scale", 1.0))

    def K(self, im_id: int) -> np.ndarray:
        K = np.asarray(self.scene_camera[str(im_id)]["cam_K"], dtype=np.float64).reshape(3, 3).copy()
        K[0, 2] += PIXEL_OFFSET
        K[1, 2] += PIXEL_OFFSET
        return K

    def mask_visib(self, im_id: int, gt_idx: int) -> np.ndarray:
        return np.asarray(Image.open(self._file("mask_visib", f"{im_id:06d}_{gt_idx:06d}"))) > 0

    def instances(self, im_id: int) -> list[BopInstance]:
        gts = self.scene_gt[str(im_id)]
        infos = self.scene_gt_info.get(str(im_id), [{}] * len(gts))
        out = []
        for idx, (gt, info) in enumerate(zip(gts, infos)):
            pose = np.eye(4)
            pose[:3, :3] = np.asarray(gt["cam_R_m2c"], dtype=np.float64).reshape(3, 3)
            pose[:3, 3] = np.asarray(gt["cam_t_m2c"], dtype=np.float64).reshape(3)
            out.append(BopInstance(self.scene_id, im_id, idx, int(gt["obj_id"]), pose,
                                   tuple(int(v) for v in info.get("bbox_visib", (-1, -1, -1, -1))),
                                   float(info.get("visib_fract", 1.0))))
        return out


@dataclass
class BopObjectModel:
    """Model points (mm, subsampled), diameter and symmetry of one object (``symmetric`` -> ADD-S)."""

    obj_id: int
    points: np.ndarray
    diameter: float
    symmetries_discrete: list = field(default_factory=list)
    symmetries_continuous: list = field(default_factory=list)

    @property
    def symmetric(self) -> bool:
        return bool(self.symmetries_discrete or self.symmetries_continuous)


def list_scenes(test_dir: str | Path, scene_ids=None) -> list[BopScene]:
    test_dir = Path(test_dir)
    scenes = [BopScene(p) for p in sorted(test_dir.iterdir()) if p.is_dir() and (p / "scene_gt.json").exists()]
    if scene_ids:
        wanted = {int(s) for s in scene_ids}
        scenes = [s for s in scenes if s.scene_id in wanted]
    if not scenes:
        raise FileNotFoundError(f"no BOP scenes (<scene>/scene_gt.json) under {test_dir}")
    return scenes


def read_targets(path: str | Path) -> set[tuple[int, int, int]] | None:
    """{(scene_id, im_id, obj_id)} of a BOP ``test_targets_bop19.json``; None when the file is absent."""
    path = Path(path)
    if not path.is_file():
        return None
    return {(int(t["scene_id"]), int(t["im_id"]), int(t["obj_id"])) for t in _read_json(path)}


def load_models_info(models_dir: str | Path) -> dict[int, dict]:
    return {int(k): v for k, v in _read_json(Path(models_dir) / "models_info.json").items()}


def load_object_model(models_dir: str | Path, obj_id: int, max_points: int = 2000, seed: int = 0,
                      info: dict | None = None) -> BopObjectModel:
    """Vertices of ``obj_<id>.ply`` (a deterministic subsample of at most ``max_points``) and models_info facts."""
    import trimesh  # deferred: heavy optional dependency, loaded only when used

    models_dir = Path(models_dir)
    info = info if info is not None else load_models_info(models_dir)[obj_id]
    mesh = trimesh.load(models_dir / f"obj_{obj_id:06d}.ply", process=False, force="mesh")
    points = np.asarray(mesh.vertices, dtype=np.float64)
    if len(points) > max_points:
        keep = np.sort(np.random.default_rng(seed + obj_id).choice(len(points), max_points, replace=False))
        points = points[keep]
    return BopObjectModel(obj_id, points, float(info["diameter"]), list(info.get("symmetries_discrete", [])),
                          list(info.get("symmetries_continuous", [])))


def data_present(test_dir: str | Path, models_dir: str | Path) -> bool:
    test_dir, models_dir = Path(test_dir), Path(models_dir)
    return (models_dir / "models_info.json").is_file() and test_dir.is_dir() and any(
        (p / "scene_gt.json").is_file() for p in test_dir.iterdir() if p.is_dir())
