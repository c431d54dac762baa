"""Photometric change between views: exposure, white balance and light direction (issue: what DINOv2 is trained to
ignore and raw patches are not).

Each view of an evaluation gets its own seeded draw, so any two views of a pair differ photometrically while every
view's features are still extracted once. A draw is a function of (seed, object or photograph id, view): the same in
every process.

- exposure: the linear radiance is scaled by ``2**e``, ``e ~ U(-exposure_stops, +exposure_stops)``;
- white balance: per-channel gains ``exp(N(0, white_balance))``, normalised to keep the mean gain at 1 (a colour
  cast, not a brightness change);
- light direction: a directional light from a random direction of the camera's front hemisphere multiplies the
  shading by ``(1 - light) + light * 2 * max(0, n . l)`` (mean 1 over the lit hemisphere). ``n`` are the surface
  normals estimated from the view's object-space xyz map (rendered views). Photographs have no normals: a linear
  ramp of the same strength across the image in the light's image-plane direction stands in for it.

Work is in linear light (sRGB decoded, changed, re-encoded), as a camera's exposure and white balance act.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from corr3d.utils.seeding import stable_seed


@dataclass(frozen=True)
class PhotometricDraw:
    exposure: float            # stops
    gains: tuple               # (r, g, b) white-balance gains
    light: tuple               # unit direction from the surface to the light, OpenCV camera frame (z < 0: the
                               # camera's side)


def draw(rng: np.random.Generator, exposure_stops: float, white_balance: float) -> PhotometricDraw:
    """One view's photometric change (exposure, white balance, light direction) from ``rng``."""
    exposure = float(rng.uniform(-exposure_stops, exposure_stops)) if exposure_stops > 0 else 0.0
    gains = np.exp(rng.normal(0.0, white_balance, size=3)) if white_balance > 0 else np.ones(3)
    gains = gains / gains.mean()
    d = rng.normal(size=3)
    d[2] = -abs(d[2])          # from the camera's side of the object: the object stays lit
    d /= np.linalg.norm(d)
    return PhotometricDraw(exposure, tuple(float(g) for g in gains), tuple(float(x) for x in d))


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1.0 / 2.4) - 0.055)


def normals_from_xyz(xyz: np.ndarray, mask: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """(H,W,3) unit normals in the camera frame (facing the camera) from an object-space xyz map and the view's
    object->camera ``rotation``; zero where the mask (or a neighbour needed for the difference) is empty."""
    cam = xyz.astype(np.float64) @ np.asarray(rotation, dtype=np.float64).T
    dx = np.zeros_like(cam)
    dy = np.zeros_like(cam)
    dx[:, 1:-1] = cam[:, 2:] - cam[:, :-2]
    dy[1:-1] = cam[2:] - cam[:-2]
    ok = mask.astype(bool).copy()
    ok[:, 1:-1] &= mask[:, 2:] & mask[:, :-2]
    ok[1:-1] &= mask[2:] & mask[:-2]
    ok[[0, -1]] = False
    ok[:, [0, -1]] = False
    n = np.cross(dx, dy)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    n = np.where(norm > 0, n / np.maximum(norm, 1e-12), 0.0)
    n = np.where(n[..., 2:3] > 0, -n, n)                    # two-sided: face the camera (z towards it is negative)
    return np.where(ok[..., None], n, 0.0)


def shading_gain(draw_: PhotometricDraw, light: float, shape: tuple, normals: np.ndarray | None = None) -> np.ndarray:
    """(H,W) multiplicative shading of the changed light: from normals when given, else an image-plane ramp."""
    if light <= 0:
        return np.ones(shape[:2])
    d = np.asarray(draw_.light)
    if normals is not None:
        lambert = np.clip(normals @ d, 0.0, None)
        has = np.abs(normals).sum(-1) > 0
        gain = (1.0 - light) + light * 2.0 * lambert
        return np.where(has, gain, 1.0)
    h, w = shape[:2]
    ys, xs = np.mgrid[0:h, 0:w]
    # the ramp runs along the light's image-plane direction, from 1 - light to 1 + light
    dir2 = d[:2] / max(np.linalg.norm(d[:2]), 1e-9)
    t = ((xs + 0.5 - w / 2) * dir2[0] + (ys + 0.5 - h / 2) * dir2[1]) / (0.5 * np.hypot(w, h))
    return 1.0 - light * t


def apply(image: np.ndarray, draw_: PhotometricDraw, light: float = 0.0, normals: np.ndarray | None = None,
          mask: np.ndarray | None = None) -> np.ndarray:
    """``image`` (H,W,3 uint8, sRGB) under the draw's exposure, white balance and light; the background (outside
    ``mask``, when given) is left as it was rendered."""
    lin = srgb_to_linear(image.astype(np.float64) / 255.0)
    lin = lin * (2.0 ** draw_.exposure) * np.asarray(draw_.gains)[None, None, :]
    lin = lin * shading_gain(draw_, light, image.shape, normals)[..., None]
    out = np.round(linear_to_srgb(lin) * 255.0).astype(np.uint8)
    if mask is not None:
        out = np.where(mask.astype(bool)[..., None], out, image)
    return out


def change_view(image: np.ndarray, section, seed: int, *ids, normals: np.ndarray | None = None,
                mask: np.ndarray | None = None) -> np.ndarray:
    """``image`` under the photometric change of ``section`` (``equivariance.photometric`` or
    ``eval.real_pairs.photometric``) drawn for (seed, ids); unchanged when the section is disabled."""
    if section is None or not section.enabled:
        return image
    change = draw(np.random.default_rng(stable_seed(int(seed), "photometric", *ids)), float(section.exposure_stops),
                  float(section.white_balance))
    return apply(image, change, float(section.light), normals, mask)


__all__ = ["change_view", "PhotometricDraw", "draw", "apply", "normals_from_xyz", "shading_gain", "srgb_to_linear",
           "linear_to_srgb"]
