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

Checked when a scene is listed (``BopScene.validate``; a violation raises ``DatasetFormatError`` naming the file and
the field): every image of scene_gt.json has a camera in scene_camera.json with a valid ``cam_K`` and positive
``depth_scale``, poses are finite rotations/translations, object ids positive integers, scene_gt_info.json (when
present) lists the same instances; an object id missing from models_info.json is named with the ids it has.

BOP intrinsics follow OpenCV's integer-pixel convention (pixel centre at 0); corr3d uses continuous coordinates
(pixel centre at +0.5), so the principal point is shifted by +0.5 at load time (as for OnePose, datasets/onepose.py).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from corr3d.errors import DatasetFormatError
from corr3d.utils.reading import (
    ItemList,
    apply_filter,
    as_array,
    check_finite,
    check_intrinsics,
    check_rotation,
    describe,
    fail,
    preview,
    reading,
)

log = logging.getLogger(__name__)

DOWNLOAD_HINT = ("YCB-Video (BOP): download ycbv_base.zip, ycbv_models.zip and ycbv_test_bop19.zip from the BOP "
                 "website (https://bop.felk.cvut.cz/datasets/ -> YCB-Video; files also at "
                 "huggingface.co/datasets/bop-benchmark/ycbv) and unzip them so that "
                 "{test_dir}/000048/scene_gt.json and {models_dir}/models_info.json exist")
PIXEL_OFFSET = 0.5
FIX = ("expected the BOP format (https://github.com/thodan/bop_toolkit/blob/master/docs/bop_datasets_format.md); "
       "unzip the dataset again")


def _read_json(path: Path, what: str = "BOP JSON file"):
    with reading(path, what, FIX):
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
        return _read_json(self.root / "scene_gt.json", "BOP scene_gt.json")

    @cached_property
    def scene_camera(self) -> dict:
        path = self.root / "scene_camera.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (every BOP scene has one next to scene_gt.json)")
        return _read_json(path, "BOP scene_camera.json")

    @cached_property
    def scene_gt_info(self) -> dict:
        path = self.root / "scene_gt_info.json"
        return _read_json(path, "BOP scene_gt_info.json") if path.exists() else {}

    def validate(self) -> "BopScene":
        """Check the scene's JSON files against each other and the BOP format; raises
        :class:`corr3d.errors.DatasetFormatError` naming the file and the field (image id, gt index)."""
        gt_path, cam_path = self.root / "scene_gt.json", self.root / "scene_camera.json"
        info_path = self.root / "scene_gt_info.json"
        for path, data in ((gt_path, self.scene_gt), (cam_path, self.scene_camera)):
            if not isinstance(data, dict):
                fail(path, "", f"a JSON {type(data).__name__}, expected an object keyed by image id", FIX)
        with reading(gt_path, "BOP scene_gt.json", FIX):
            ids = sorted(int(k) for k in self.scene_gt)
        missing = [i for i in ids if str(i) not in self.scene_camera]
        if missing:
            fail(cam_path, "image ids", f"{len(missing)} image(s) of scene_gt.json have no camera (e.g. "
                                        f"{preview(missing, 5)})", FIX)
        info = self.scene_gt_info
        for im_id in ids:
            key = str(im_id)
            gts = self.scene_gt[key]
            if not isinstance(gts, list):
                fail(gt_path, f"image {key}", f"a JSON {type(gts).__name__}, expected a list of instances", FIX)
            for idx, gt in enumerate(gts):
                field = f"image {key}, instance {idx}"
                with reading(gt_path, f"BOP scene_gt.json ({field})", FIX):
                    R = check_finite(gt_path, f"{field}: cam_R_m2c",
                                     as_array(gt_path, f"{field}: cam_R_m2c", gt["cam_R_m2c"], (9,), FIX), FIX)
                    check_rotation(gt_path, f"{field}: cam_R_m2c", R.reshape(3, 3), FIX)
                    check_finite(gt_path, f"{field}: cam_t_m2c",
                                 as_array(gt_path, f"{field}: cam_t_m2c", gt["cam_t_m2c"], (3,), FIX), FIX)
                    obj_id = gt["obj_id"]
                    if isinstance(obj_id, bool) or int(obj_id) != obj_id or int(obj_id) <= 0:
                        fail(gt_path, f"{field}: obj_id", f"{obj_id!r} is not a positive integer", FIX)
            with reading(cam_path, f"BOP scene_camera.json (image {key})", FIX):
                camera = self.scene_camera[key]
                check_intrinsics(cam_path, f"image {key}: cam_K", camera["cam_K"], FIX)
                scale = float(camera.get("depth_scale", 1.0))
                if not (np.isfinite(scale) and scale > 0):
                    fail(cam_path, f"image {key}: depth_scale", f"{scale!r} must be positive", FIX)
            if info and len(info.get(key, [])) != len(gts):
                fail(info_path, f"image {key}", f"{len(info.get(key, []))} entries for the {len(gts)} instances of "
                                                f"scene_gt.json (the two files must list the same instances)", FIX)
        return self

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


def list_scenes(test_dir: str | Path, scene_ids=None) -> ItemList:
    """The (validated, :meth:`BopScene.validate`) scenes of ``test_dir`` as an
    :class:`~corr3d.utils.reading.ItemList`; ``scene_ids`` selects some. Requested scenes that are absent (or have
    no scene_gt.json) are listed in ``.skipped`` as ``(scene id, reason)``; a filter that matches no scene raises
    :class:`corr3d.errors.UnknownNameError` listing the scene ids present."""
    test_dir = Path(test_dir)
    dirs = sorted(p for p in test_dir.iterdir() if p.is_dir() and p.name.isdigit()) if test_dir.is_dir() else []
    scenes = [BopScene(p) for p in dirs if (p / "scene_gt.json").exists()]
    if not scenes:
        raise FileNotFoundError(f"no BOP scenes (<scene>/scene_gt.json) under {test_dir}")
    if scene_ids:
        requested = [str(int(s)) for s in scene_ids]
        scenes, skipped = apply_filter(scenes, requested, what="BOP scene", source=test_dir,
                                       key=lambda s: str(s.scene_id))
        without_gt = {str(int(p.name)) for p in dirs if not (p / "scene_gt.json").exists()}
        skipped = [(s, f"scene folder {test_dir}/{int(s):06d} has no scene_gt.json" if s in without_gt else why)
                   for s, why in skipped]
    else:
        skipped = [(str(int(p.name)), f"no scene_gt.json in {p}") for p in dirs if not (p / "scene_gt.json").exists()]
    for scene, reason in skipped:
        log.warning("BOP scene %s skipped: %s", scene, reason)
    return ItemList((s.validate() for s in scenes), skipped)


def read_targets(path: str | Path) -> set[tuple[int, int, int]] | None:
    """{(scene_id, im_id, obj_id)} of a BOP ``test_targets_bop19.json``; None when the file is absent."""
    path = Path(path)
    if not path.is_file():
        return None
    with reading(path, "BOP test targets", FIX):
        return {(int(t["scene_id"]), int(t["im_id"]), int(t["obj_id"])) for t in _read_json(path, "BOP test targets")}


def unmatched_targets(targets: set[tuple[int, int, int]] | None, scenes) -> list[tuple[str, str]]:
    """``[(target, reason)]`` for targets ``(scene, image, object)`` of the read ``scenes`` that no annotated
    instance matches (they cannot be measured). Targets of scenes that were not read are not requested."""
    if not targets:
        return []
    read = {s.scene_id: s for s in scenes}
    out = []
    for scene_id, im_id, obj_id in sorted(targets):
        scene = read.get(scene_id)
        if scene is None:
            continue
        gts = scene.scene_gt.get(str(im_id))
        if gts is None:
            out.append((f"{scene_id:06d}/{im_id:06d}/obj_{obj_id:06d}", f"image {im_id} is not in {scene.root}"))
        elif not any(int(gt["obj_id"]) == obj_id for gt in gts):
            out.append((f"{scene_id:06d}/{im_id:06d}/obj_{obj_id:06d}",
                        f"object {obj_id} is not annotated in image {im_id} of {scene.root / 'scene_gt.json'}"))
    return out


class ModelsInfo(dict):
    """``models_info.json`` keyed by int object id; a missing id raises a ``DatasetFormatError`` naming the file and
    the ids it has (instead of a bare ``KeyError``)."""

    path: Path

    def __missing__(self, obj_id):
        fail(self.path, f"object {obj_id}", f"not in models_info.json (it has objects {preview(sorted(self), 30)}); "
                                            "the scenes annotate an object the models folder does not describe",
             "use the models folder of the same dataset as the test scenes (e.g. ycbv_models.zip for YCB-V)")


def load_models_info(models_dir: str | Path) -> ModelsInfo:
    """``models_info.json`` (every entry checked: a positive finite ``diameter`` in mm)."""
    path = Path(models_dir) / "models_info.json"
    data = _read_json(path, "BOP models_info.json")
    info = ModelsInfo()
    info.path = path
    with reading(path, "BOP models_info.json", FIX):
        for key, entry in data.items():
            diameter = float(entry["diameter"])
            if not (np.isfinite(diameter) and diameter > 0):
                fail(path, f"object {key}: diameter", f"{entry['diameter']!r} must be a positive length in mm", FIX)
            info[int(key)] = entry
    return info


def load_object_model(models_dir: str | Path, obj_id: int, max_points: int = 2000, seed: int = 0,
                      info: dict | None = None) -> BopObjectModel:
    """Vertices of ``obj_<id>.ply`` (a deterministic subsample of at most ``max_points``) and models_info facts."""
    import trimesh  # deferred: import cost (~0.7 s), only mesh reading needs it

    models_dir = Path(models_dir)
    info = info if info is not None else load_models_info(models_dir)[obj_id]
    path = models_dir / f"obj_{obj_id:06d}.ply"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the models folder has no mesh for object {obj_id}")
    try:
        mesh = trimesh.load(path, process=False, force="mesh")
        points = np.asarray(mesh.vertices, dtype=np.float64).reshape(-1, 3)
    except Exception as err:  # noqa: BLE001 - trimesh raises many types for corrupt files
        raise DatasetFormatError(f"unreadable model ({describe(err)})", path=path, fix=FIX) from None
    if not len(points) or not np.isfinite(points).all():
        fail(path, "vertices", "no vertices" if not len(points) else "non-finite vertex coordinates", FIX)
    if len(points) > max_points:
        keep = np.sort(np.random.default_rng(seed + obj_id).choice(len(points), max_points, replace=False))
        points = points[keep]
    return BopObjectModel(obj_id, points, float(info["diameter"]), list(info.get("symmetries_discrete", [])),
                          list(info.get("symmetries_continuous", [])))


def data_present(test_dir: str | Path, models_dir: str | Path) -> bool:
    test_dir, models_dir = Path(test_dir), Path(models_dir)
    return (models_dir / "models_info.json").is_file() and test_dir.is_dir() and any(
        (p / "scene_gt.json").is_file() for p in test_dir.iterdir() if p.is_dir())
