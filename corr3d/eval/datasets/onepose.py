"""OnePose / OnePose++ LowTexture reader (the real on-disk layout).

::

    <data_dir>/<id>-<name>-<kind>/            e.g. 0700-toyrobot-others
        <name>-1/  color/<i>.png  intrin_ba/<i>.txt (3x3)  poses_ba/<i>.txt (4x4 object->camera, metres)
                   anno_loftr/<i>.json  {"keypoints2d": [[x, y], ...], "assign_matrix": [[2d idx...], [3d idx...]]}
        <name>-2/  color/  intrin_ba/  poses_ba/          (test sequence)
    <sfm_dir>/<id>-<name>-<kind>/anno/anno_3d_average.npz   keypoints3d (P, 3), metres, object frame

Checked: a requested object without its sequences, SfM model or per-frame intrinsics/poses is skipped with the
reason (``list_objects(...).skipped``); intrinsics (positive, finite), poses (finite, rigid 3x4/4x4), 2D-3D
annotations (indices in range, keypoints inside the image) and SfM points (finite) raise ``DatasetFormatError``
naming the file and the field when they are read.

OnePose pixel coordinates are integer-index based (pixel centre at 0); corr3d uses continuous coordinates (pixel
centre at +0.5), so 2D keypoints and the principal point are shifted by +0.5 at load time.

Get the data: OnePose++ (github.com/zju3dv/OnePose_Plus_Plus) -> "LowTexture" test data and the SfM outputs produced
by ``python run.py +preprocess=sfm_inference_lowtexture.yaml``.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from zipfile import BadZipFile

import numpy as np
from PIL import Image

from corr3d.errors import EmptySelectionError
from corr3d.utils.reading import (
    ItemList,
    apply_filter,
    as_array,
    check_finite,
    check_intrinsics,
    check_points,
    check_pose,
    fail,
    image_size,
    preview,
    reading,
)

log = logging.getLogger(__name__)

DOWNLOAD_HINT = ("OnePose-LowTexture: get lowtexture_test_data from OnePose++ (github.com/zju3dv/OnePose_Plus_Plus, "
                 "'Download datasets'), put it at {data_dir}, and build the SfM models with OnePose++ "
                 "(`python run.py +preprocess=sfm_inference_lowtexture.yaml`) so that "
                 "{sfm_dir}/<object>/anno/anno_3d_average.npz exists")
PIXEL_OFFSET = 0.5  # OnePose integer pixel indices -> continuous coordinates
FIX = ("expected OnePose++'s LowTexture layout (<object>/<name>-<seq>/color, intrin_ba (3x3 K), poses_ba (4x4 "
       "object->camera), anno_loftr JSON); copy the object again")


def _frame_key(path: Path):
    stem = path.stem
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def _load_txt(path: Path, what: str) -> np.ndarray:
    with reading(path, what, FIX):
        return np.loadtxt(path, dtype=np.float64, ndmin=1)


class _Unusable(Exception):
    """An object that cannot be evaluated; ``str(exc)`` is the reason reported in ``skipped``."""


@dataclass
class OnePoseSequence:
    root: Path
    num_points3d: int | None = None  # size of the object's SfM point set (checks anno_loftr's 3D indices)

    @cached_property
    def frame_ids(self) -> list[str]:
        return [p.stem for p in sorted((self.root / "color").glob("*.png"), key=_frame_key)]

    def __len__(self) -> int:
        return len(self.frame_ids)

    def image(self, fid: str) -> np.ndarray:
        return np.asarray(Image.open(self.root / "color" / f"{fid}.png").convert("RGB"))

    def image_size(self, fid: str) -> tuple[int, int]:
        """(width, height) from the PNG header."""
        return image_size(self.root / "color" / f"{fid}.png", "the image is truncated: copy the object again")

    def K(self, fid: str) -> np.ndarray:
        """3x3 intrinsics (continuous pixel convention), checked: finite, positive focal lengths and principal
        point, last row [0, 0, 1]."""
        path = self.root / "intrin_ba" / f"{fid}.txt"
        K = check_intrinsics(path, "K", _load_txt(path, "OnePose intrinsics"), FIX).copy()
        K[0, 2] += PIXEL_OFFSET
        K[1, 2] += PIXEL_OFFSET
        return K

    def pose(self, fid: str) -> np.ndarray:
        """4x4 object->camera pose (metres) from a 3x4 or 4x4 file, checked: finite, rigid."""
        path = self.root / "poses_ba" / f"{fid}.txt"
        return check_pose(path, "pose", _load_txt(path, "OnePose pose"), FIX)

    @cached_property
    def anno_ids(self) -> list[str]:
        return [p.stem for p in sorted((self.root / "anno_loftr").glob("*.json"), key=_frame_key)]

    def anno(self, fid: str) -> tuple[np.ndarray, np.ndarray]:
        """(keypoints2d (M, 2) continuous px, indices into keypoints3d (M,)) of the assigned 2D-3D pairs, checked:
        indices inside keypoints2d (and the SfM points when ``num_points3d`` is known), keypoints inside the image."""
        path = self.root / "anno_loftr" / f"{fid}.json"
        with reading(path, "OnePose 2D-3D annotation", FIX):
            data = json.loads(path.read_text())
            kps = as_array(path, "keypoints2d", data["keypoints2d"], (-1, 2), FIX) if len(data["keypoints2d"]) \
                else np.zeros((0, 2))
            assign = np.asarray(data["assign_matrix"], dtype=np.float64)
            if assign.size and (assign.ndim != 2 or len(assign) != 2):
                fail(path, "assign_matrix", f"shape {assign.shape}, expected [[2D indices], [3D indices]]", FIX)
            assign = check_finite(path, "assign_matrix", assign.reshape(2, -1), FIX)
            if (assign != np.round(assign)).any() or (assign < 0).any():
                fail(path, "assign_matrix", "indices must be non-negative integers", FIX)
            assign = assign.astype(np.int64)
            if assign.size and assign[0].max() >= len(kps):
                fail(path, "assign_matrix", f"2D index {assign[0].max()} but only {len(kps)} keypoints2d", FIX)
            if assign.size and self.num_points3d is not None and assign[1].max() >= self.num_points3d:
                fail(path, "assign_matrix", f"3D index {assign[1].max()} but the SfM model has {self.num_points3d} "
                                            "points (anno_loftr and anno_3d_average.npz from different runs?)", FIX)
        kps = kps[assign[0]] + PIXEL_OFFSET
        if len(kps):
            check_points(path, "keypoints2d", kps, *self.image_size(fid), fix=FIX, file_offset=PIXEL_OFFSET,
                         convention=" (OnePose keypoints are 0-based pixel indices)")
        return kps, assign[1]


@dataclass
class OnePoseObject:
    name: str
    ref: OnePoseSequence
    test: OnePoseSequence
    sfm_file: Path

    @cached_property
    def keypoints3d(self) -> np.ndarray:
        """(P, 3) SfM points (metres, object frame), checked: finite, at least one."""
        fix = ("rebuild the SfM model with OnePose++ (`python run.py +preprocess=sfm_inference_lowtexture.yaml`)")
        errors = (KeyError, ValueError, OSError, EOFError, BadZipFile)
        with reading(self.sfm_file, "OnePose SfM model", fix, errors=errors):
            with np.load(self.sfm_file) as data:
                if "keypoints3d" not in data.files:
                    fail(self.sfm_file, "keypoints3d", f"missing (the archive holds {preview(data.files)})", fix)
                points = data["keypoints3d"]
        points = check_finite(self.sfm_file, "keypoints3d", as_array(self.sfm_file, "keypoints3d", points, (-1, 3),
                                                                    fix), fix)
        if not len(points):
            fail(self.sfm_file, "keypoints3d", "no points", fix)
        return points


def sequence_name(object_name: str, seq: int | str) -> str:
    """``0700-toyrobot-others`` + 1 -> ``toyrobot-1`` (OnePose naming)."""
    parts = object_name.split("-")
    return f"{parts[1] if len(parts) > 1 else parts[0]}-{seq}"


def object_dirs(data_dir: str | Path) -> list[Path]:
    """The object folders (``<id>-<name>-<kind>``) of ``data_dir``, sorted."""
    return sorted(p for p in Path(data_dir).iterdir() if p.is_dir() and re.match(r"^\d+-", p.name))


def _missing_files(seq: Path, folder: str, suffix: str, frame_ids: list[str]) -> str | None:
    missing = [f for f in frame_ids if not (seq / folder / f"{f}{suffix}").is_file()]
    if missing:
        return (f"{len(missing)} of {len(frame_ids)} frames of {seq.name} have no {folder}/<frame>{suffix} "
                f"(e.g. {missing[0]})")
    return None


def _open_object(obj_dir: Path, sfm_dir: Path, ref_seq, test_seq) -> OnePoseObject:
    """The object, or :class:`_Unusable` naming what is missing (sequences, frames' files, SfM model)."""
    ref = obj_dir / sequence_name(obj_dir.name, ref_seq)
    test = obj_dir / sequence_name(obj_dir.name, test_seq)
    sfm = sfm_dir / obj_dir.name / "anno" / "anno_3d_average.npz"
    for role, seq in (("reference", ref), ("test", test)):
        if not seq.is_dir():
            raise _Unusable(f"no {role} sequence {seq.name}/ in {obj_dir}")
    if not sfm.is_file():
        raise _Unusable(f"no SfM model {sfm} (build it with OnePose++: `python run.py "
                        "+preprocess=sfm_inference_lowtexture.yaml`)")
    obj = OnePoseObject(obj_dir.name, OnePoseSequence(ref), OnePoseSequence(test), sfm)
    if not obj.ref.anno_ids:
        raise _Unusable(f"reference sequence {ref.name} has no anno_loftr/*.json (2D-3D annotations)")
    if not obj.test.frame_ids:
        raise _Unusable(f"test sequence {test.name} has no color/*.png frames")
    problem = (_missing_files(ref, "color", ".png", obj.ref.anno_ids)
               or _missing_files(test, "intrin_ba", ".txt", obj.test.frame_ids)
               or _missing_files(test, "poses_ba", ".txt", obj.test.frame_ids))
    if problem:
        raise _Unusable(problem)
    obj.ref.num_points3d = obj.test.num_points3d = len(obj.keypoints3d)  # reads and checks the SfM points
    return obj


def list_objects(data_dir: str | Path, sfm_dir: str | Path, names=None, ref_seq: int | str = 1,
                 test_seq: int | str = 2) -> ItemList:
    """The OnePose objects of ``data_dir`` (optionally only ``names``) as an :class:`~corr3d.utils.reading.ItemList`.

    A requested object that cannot be evaluated (no reference/test sequence, no SfM model, frames without intrinsics
    or pose) is not returned but listed in ``.skipped`` as ``(object, reason)``, with requested names that are not in
    ``data_dir``. Raises :class:`corr3d.errors.UnknownNameError` when ``names`` matches no object (listing the
    available ones) and :class:`corr3d.errors.EmptySelectionError` when no object can be evaluated."""
    data_dir, sfm_dir = Path(data_dir), Path(sfm_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"no OnePose data directory {data_dir}: "
                                + DOWNLOAD_HINT.format(data_dir=data_dir, sfm_dir=sfm_dir))
    selected, skipped = apply_filter(object_dirs(data_dir), names, what="OnePose object", source=data_dir,
                                     key=lambda p: p.name)
    objects = ItemList(skipped=skipped)
    for obj_dir in selected:
        try:
            objects.append(_open_object(obj_dir, sfm_dir, ref_seq, test_seq))
        except _Unusable as reason:
            objects.skipped.append((obj_dir.name, str(reason)))
    for name, reason in objects.skipped:
        log.warning("OnePose object %s skipped: %s", name, reason)
    if not objects:
        raise EmptySelectionError(
            f"no OnePose object can be evaluated in {data_dir}: "
            + ("; ".join(f"{n}: {r}" for n, r in objects.skipped[:5]) or "no <id>-<name>-<kind> folders")
            + (f" (+{len(objects.skipped) - 5} more)" if len(objects.skipped) > 5 else ""),
            path=data_dir, fix=DOWNLOAD_HINT.format(data_dir=data_dir, sfm_dir=sfm_dir))
    return objects


def data_present(data_dir: str | Path, sfm_dir: str | Path) -> bool:
    """Both folders exist and ``data_dir`` holds object folders (what is wrong with them, :func:`list_objects`
    reports)."""
    data_dir = Path(data_dir)
    return data_dir.is_dir() and Path(sfm_dir).is_dir() and bool(object_dirs(data_dir))
