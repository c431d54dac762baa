"""OnePose / OnePose++ LowTexture reader (the real on-disk layout).

::

    <data_dir>/<id>-<name>-<kind>/            e.g. 0700-toyrobot-others
        <name>-1/  color/<i>.png  intrin_ba/<i>.txt (3x3)  poses_ba/<i>.txt (4x4 object->camera, metres)
                   anno_loftr/<i>.json  {"keypoints2d": [[x, y], ...], "assign_matrix": [[2d idx...], [3d idx...]]}
        <name>-2/  color/  intrin_ba/  poses_ba/          (test sequence)
    <sfm_dir>/<id>-<name>-<kind>/anno/anno_3d_average.npz   keypoints3d (P, 3), metres, object frame

OnePose pixel coordinates are integer-index based (pixel centre at 0); corr3d uses continuous coordinates (pixel
centre at +0.5), so 2D keypoints and the principal point are shifted by +0.5 at load time.

Get the data: OnePose++ (github.com/zju3dv/OnePose_Plus_Plus) -> "LowTexture" test data and the SfM outputs produced
by ``python run.py +preprocess=sfm_inference_lowtexture.yaml``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

DOWNLOAD_HINT = ("OnePose-LowTexture: get lowtexture_test_data from OnePose++ (github.com/zju3dv/OnePose_Plus_Plus, "
                 "'Download datasets'), put it at {data_dir}, and build the SfM models with OnePose++ "
                 "(`python run.py +preprocess=sfm_inference_lowtexture.yaml`) so that "
                 "{sfm_dir}/<object>/anno/anno_3d_average.npz exists")
PIXEL_OFFSET = 0.5  # OnePose integer pixel indices -> continuous coordinates


def _frame_key(path: Path):
    stem = path.stem
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


@dataclass
class OnePoseSequence:
    root: Path

    @cached_property
    def frame_ids(self) -> list[str]:
        return [p.stem for p in sorted((self.root / "color").glob("*.png"), key=_frame_key)]

    def __len__(self) -> int:
        return len(self.frame_ids)

    def image(self, fid: str) -> np.ndarray:
        return np.asarray(Image.open(self.root / "color" / f"{fid}.png").convert("RGB"))

    def K(self, fid: str) -> np.ndarray:
        K = np.loadtxt(self.root / "intrin_ba" / f"{fid}.txt").reshape(3, 3).astype(np.float64)
        K[0, 2] += PIXEL_OFFSET
        K[1, 2] += PIXEL_OFFSET
        return K

    def pose(self, fid: str) -> np.ndarray:
        T = np.loadtxt(self.root / "poses_ba" / f"{fid}.txt").astype(np.float64)
        if T.shape == (3, 4):
            T = np.vstack([T, [0, 0, 0, 1]])
        return T.reshape(4, 4)

    @cached_property
    def anno_ids(self) -> list[str]:
        return [p.stem for p in sorted((self.root / "anno_loftr").glob("*.json"), key=_frame_key)]

    def anno(self, fid: str) -> tuple[np.ndarray, np.ndarray]:
        """(keypoints2d (M, 2) continuous px, indices into keypoints3d (M,)) of the assigned 2D-3D pairs."""
        data = json.loads((self.root / "anno_loftr" / f"{fid}.json").read_text())
        kps = np.asarray(data["keypoints2d"], dtype=np.float64).reshape(-1, 2)
        assign = np.asarray(data["assign_matrix"], dtype=np.int64).reshape(2, -1)
        return kps[assign[0]] + PIXEL_OFFSET, assign[1]


@dataclass
class OnePoseObject:
    name: str
    ref: OnePoseSequence
    test: OnePoseSequence
    sfm_file: Path

    @cached_property
    def keypoints3d(self) -> np.ndarray:
        return np.load(self.sfm_file)["keypoints3d"].astype(np.float64)


def sequence_name(object_name: str, seq: int | str) -> str:
    """``0700-toyrobot-others`` + 1 -> ``toyrobot-1`` (OnePose naming)."""
    parts = object_name.split("-")
    return f"{parts[1] if len(parts) > 1 else parts[0]}-{seq}"


def list_objects(data_dir: str | Path, sfm_dir: str | Path, names=None, ref_seq: int | str = 1,
                 test_seq: int | str = 2) -> list[OnePoseObject]:
    data_dir, sfm_dir = Path(data_dir), Path(sfm_dir)
    objects = []
    for obj_dir in sorted(p for p in data_dir.iterdir() if p.is_dir() and re.match(r"^\d+-", p.name)):
        if names and obj_dir.name not in names:
            continue
        ref = obj_dir / sequence_name(obj_dir.name, ref_seq)
        test = obj_dir / sequence_name(obj_dir.name, test_seq)
        sfm = sfm_dir / obj_dir.name / "anno" / "anno_3d_average.npz"
        if not (ref.is_dir() and test.is_dir() and sfm.exists()):
            continue
        objects.append(OnePoseObject(obj_dir.name, OnePoseSequence(ref), OnePoseSequence(test), sfm))
    return objects


def data_present(data_dir: str | Path, sfm_dir: str | Path) -> bool:
    data_dir = Path(data_dir)
    return data_dir.is_dir() and Path(sfm_dir).is_dir() and bool(list_objects(data_dir, sfm_dir))
