"""Per-view augmentation of a training pair (paper §3.1), with albumentations 2.x.

Geometric (p=0.5): the equivalent of the authors' ``ShiftScaleRotate(0.25, 0.25, 45°, constant 0 border)`` as
``Affine`` with one isotropic scale (``keep_ratio``), applied jointly to image, mask and keypoints. Colour: Gaussian
blur (kernel 1-3), ISO noise, Gaussian noise, CLAHE, brightness/contrast, each with probability ``color_p`` (the
library default 0.5). The background is re-zeroed with the warped mask afterwards (noise would otherwise paint it).
Object-space xyz of the points is untouched: a point moves in the image but stays the same surface point.

Keypoint conventions: albumentations/OpenCV put pixel centres on integers, corr3d on +0.5 (corr3d/geometry/pixels.py), so
points are shifted by 0.5 around the call. Points leaving the image become invalid (never removed), so the point
arrays keep their fixed length.

Determinism: every transform gets its own generators derived from the caller's ``np.random.Generator``.
(``Compose.set_random_seed`` would give all transforms the SAME seed, which makes their random draws identical
and e.g. applies all colour ops together or none.)
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import cv2
import numpy as np

# albumentations 1.3.1 GaussNoise default var_limit=(10, 50) on 0..255 images -> std in 2.x units of the max value
_GAUSS_NOISE_STD = (float(np.sqrt(10.0) / 255.0), float(np.sqrt(50.0) / 255.0))


@dataclass
class AugmentResult:
    rgb: np.ndarray      # uint8 HxWx3
    points: np.ndarray   # float32 (N,2) continuous pixel coords in the augmented image
    valid: np.ndarray    # bool (N,)
    mask: np.ndarray | None


class ViewAugmenter:
    """Augments one view (image, optional foreground mask, keypoints); call with a numpy Generator.

    ``augment``: the ``data.augment`` config section (its ``enabled`` is the caller's choice: see the datamodule);
    ``geometric`` / ``color`` false leave that family out."""

    def __init__(self, augment, geometric: bool = True, color: bool = True):
        import albumentations as A  # deferred: slow import (~2 s), needed only to augment

        transforms = []
        shift, scale, rotate_deg = augment.shift, augment.scale, augment.rotate_deg
        self.geometric = bool(geometric and augment.geometric_p > 0)
        if self.geometric:
            transforms.append(A.Affine(translate_percent=(-shift, shift), scale=(1.0 - scale, 1.0 + scale),
                                       rotate=(-rotate_deg, rotate_deg), keep_ratio=True,
                                       interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                                       border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0,
                                       p=augment.geometric_p))
        color_p = augment.color_p
        if color and color_p > 0:
            transforms += [A.GaussianBlur(blur_limit=(1, 3), p=color_p), A.ISONoise(p=color_p),
                           A.GaussNoise(std_range=_GAUSS_NOISE_STD, p=color_p), A.CLAHE(p=color_p),
                           A.RandomBrightnessContrast(p=color_p)]
        keypoints = A.KeypointParams(format="xy", label_fields=["point_index"], remove_invisible=True) \
            if self.geometric else None
        self.compose = A.Compose(transforms, keypoint_params=keypoints)

    def _reseed(self, rng: np.random.Generator) -> None:
        seeds = rng.integers(0, 2**63 - 1, size=len(self.compose.transforms) + 1)
        self.compose.set_random_state(np.random.default_rng(seeds[0]), random.Random(int(seeds[0])))
        for transform, seed in zip(self.compose.transforms, seeds[1:]):
            transform.set_random_state(np.random.default_rng(seed), random.Random(int(seed)))

    def __call__(self, rgb: np.ndarray, points: np.ndarray, valid: np.ndarray, rng: np.random.Generator,
                 mask: np.ndarray | None = None) -> AugmentResult:
        self._reseed(rng)
        data = dict(image=rgb)
        if mask is not None:
            data["mask"] = mask.astype(np.uint8)
        if self.geometric:
            index = np.flatnonzero(valid & _inside(points, rgb.shape[1], rgb.shape[0], margin=0.5))
            data.update(keypoints=points[index].astype(np.float64) - 0.5, point_index=index)
        out = self.compose(**data)
        if self.geometric:
            points, valid = _moved_points(out, len(points), rgb.shape[1], rgb.shape[0])
        image = out["image"]
        new_mask = out["mask"].astype(bool) if mask is not None else None
        if new_mask is not None:
            image = np.where(new_mask[..., None], image, 0).astype(rgb.dtype)
        return AugmentResult(rgb=image, points=points.astype(np.float32), valid=valid.copy(), mask=new_mask)


def _moved_points(out: dict, count: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Scatter the surviving keypoints back to their slots (corr3d convention); lost or outside ones invalid, 0."""
    points = np.zeros((count, 2), dtype=np.float32)
    valid = np.zeros(count, dtype=bool)
    kept = np.asarray(out["point_index"], dtype=np.int64)
    if len(kept):
        moved = np.asarray(out["keypoints"], dtype=np.float64)[:, :2] + 0.5
        inside = _inside(moved, width, height)
        points[kept[inside]] = moved[inside]
        valid[kept[inside]] = True
    return points, valid


def _inside(points: np.ndarray, width: int, height: int, margin: float = 0.0) -> np.ndarray:
    """Points inside the image; ``margin`` keeps them >= margin from the left/top edge (albumentations' index
    coordinates must be >= 0 after the 0.5 shift)."""
    x, y = points[:, 0], points[:, 1]
    return (x >= margin) & (y >= margin) & (x < width) & (y < height)
