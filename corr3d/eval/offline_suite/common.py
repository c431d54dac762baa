"""Shared pieces of the synthetic benchmark generators: the held-out real objects, cameras on orbits, rendering,
visibility, backgrounds."""
from __future__ import annotations

import difflib
import io

import numpy as np
from PIL import Image

from corr3d.assets import sh3d
from corr3d.assets.experiment import SPLIT_PREFIX, expand_split
from corr3d.assets.objects import parse_spec
from corr3d.errors import UnknownNameError
from corr3d.geometry import project
from corr3d.geometry.icosphere import look_at_pose
from corr3d.render import render_views


# the committed SweetHome3D splits that no training run may use (corr3d.assets.experiment refuses them): a suite
# renders only these; val is for model selection and untextured is the shape-only control, so neither is here
SUITE_SPLITS = ("test", "test_unseen_categories")


def held_out_objects(split: str, count: int) -> list[str]:
    """``count`` real textured objects of the held-out sh3d ``split`` (:data:`SUITE_SPLITS`), evenly spaced over the
    split file's order (``sh3d_split:<split>@<count>``, :func:`corr3d.assets.experiment.expand_split`; the file is
    sorted by library then item, so every library keeps its share). The choice is a rule over the committed file,
    never over a measured score. No model is skipped: every model of both splits loads, textured
    (``data_prep/sh3d_splits.py --check-meshes``; the unreadable ones are in ``sh3d.DEGENERATE``, outside the
    splits), and one that stops loading raises ``MeshLoadError`` when the suite is generated rather than being
    silently replaced."""
    if split not in SUITE_SPLITS:
        close = difflib.get_close_matches(split, SUITE_SPLITS, 1) or SUITE_SPLITS[:1]
        raise UnknownNameError(f"offline suite objects must come from a held-out sh3d split, not {split!r}; "
                               f"known: {', '.join(SUITE_SPLITS)}", fix=f"use {close[0]!r}")
    return expand_split(f"{SPLIT_PREFIX}{split}@{count}")


def object_slug(spec: str) -> str:
    """The item of ``sh3d:<library>/<item>`` (``sh3d:Scopia/wine-bottle`` -> ``wine-bottle``): the object's name in
    the ids of the suites."""
    kind, value, _ = parse_spec(spec)
    if kind != "sh3d":
        raise UnknownNameError(f"offline suite object {spec!r} is not a SweetHome3D spec",
                               fix=f"use {sh3d.SPEC_PREFIX}<library>/<item> from a held-out split: "
                                   f"{', '.join(SUITE_SPLITS)}")
    return value.split("/", 1)[1]


def orbit_position(azimuth_deg: float, elevation_deg: float, distance: float) -> np.ndarray:
    """Camera centre on a y-up orbit around the origin."""
    az, el = np.radians(azimuth_deg), np.radians(elevation_deg)
    return distance * np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])


def orbit_pose(azimuth_deg: float, elevation_deg: float, distance: float, target=(0.0, 0.0, 0.0)) -> np.ndarray:
    return look_at_pose(orbit_position(azimuth_deg, elevation_deg, distance) + np.asarray(target), target)


def render(mesh, K: np.ndarray, poses: np.ndarray, width: int, height: int, lighting=None) -> dict[str, np.ndarray]:
    return render_views(mesh, K, np.asarray(poses), width, height, lighting=lighting)


def handheld_pose(azimuth_deg: float, elevation_deg: float, distance: float, target=(0.0, 0.0, 0.0),
                  roll_deg: float = 0.0) -> np.ndarray:
    """An orbit camera aimed at ``target`` (so the object sits off-centre) and rolled about its optical axis."""
    pose = orbit_pose(azimuth_deg, elevation_deg, distance, target)
    a = np.radians(roll_deg)
    roll = np.eye(4)
    roll[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return roll @ pose


def visibility(points: np.ndarray, K: np.ndarray, pose: np.ndarray, xyz_map: np.ndarray, mask: np.ndarray,
               tol: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """Project object points; visible = in front, inside the image, and the pixel sees the same surface point."""
    uv, z = project(np.asarray(points, dtype=np.float64), K, pose)
    h, w = mask.shape
    cols, rows = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    inside = (z > 0) & (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
    vis = np.zeros(len(points), dtype=bool)
    idx = np.nonzero(inside)[0]
    r, c = rows[idx], cols[idx]
    same = mask[r, c] & (np.linalg.norm(xyz_map[r, c] - points[idx], axis=1) < tol)
    vis[idx[same]] = True
    return uv, vis


BACKGROUNDS = ("grass", "gravel", "brick", "coffee", "chelsea", "rocket")


def background(height: int, width: int, seed: int, exclude: tuple[str, ...] = ()) -> np.ndarray:
    """A deterministic textured background from scikit-image's bundled photos (random crop, resized).

    ``exclude``: photos not to use (e.g. the object's own texture, which would camouflage it).
    """
    from skimage import data as skdata  # cheap (~0.05 s): skimage loads lazily

    names = tuple(n for n in BACKGROUNDS if n not in exclude) or BACKGROUNDS
    rng = np.random.default_rng(seed)
    img = getattr(skdata, names[int(rng.integers(len(names)))])()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    H, W = img.shape[:2]
    ch, cw = int(H * rng.uniform(0.5, 0.9)), int(W * rng.uniform(0.5, 0.9))
    y0, x0 = int(rng.integers(0, H - ch + 1)), int(rng.integers(0, W - cw + 1))
    crop = Image.fromarray(np.ascontiguousarray(img[y0:y0 + ch, x0:x0 + cw]).astype(np.uint8))
    out = np.asarray(crop.resize((width, height), Image.Resampling.BILINEAR)).astype(np.float32)
    return (0.6 * out + 0.4 * out.mean()).astype(np.uint8)  # lower contrast than the objects


def texture_photos(spec: str) -> tuple[str, ...]:
    """Background photos that a procedural object's name says it is textured with (``mug_cat`` -> chelsea). Any
    other object (a real model is textured with its own images, not these photos) excludes none."""
    kind, name, _ = parse_spec(spec)
    if kind != "procedural":
        return ()
    aliases = {"cat": "chelsea", "chelsea": "chelsea", "coffee": "coffee", "rocket": "rocket", "gravel": "gravel"}
    return tuple(sorted({photo for word, photo in aliases.items() if word in name.split("_")}))


def composite(rgb: np.ndarray, mask: np.ndarray, bg: np.ndarray) -> np.ndarray:
    return np.where(mask[..., None], rgb, bg).astype(np.uint8)


def camera_effects(frames: np.ndarray, seed: int, gains=None, colour_cast=(1.0, 1.0, 1.0), noise_std: float = 2.0,
                   jpeg_quality: int | None = 85) -> np.ndarray:
    """Real-camera nuisances on rendered frames (deterministic): per-frame exposure ``gains``, a white-balance
    ``colour_cast`` (RGB gains), sensor noise and a JPEG round trip. (N, H, W, 3) uint8 -> same."""

    rng = np.random.default_rng(seed)
    gains = np.ones(len(frames)) if gains is None else np.asarray(gains, dtype=np.float64)
    cast = np.asarray(colour_cast, dtype=np.float32)
    out = []
    for frame, gain in zip(frames, gains):
        img = frame.astype(np.float32) * (gain * cast) + rng.normal(0.0, noise_std, frame.shape)
        img = np.clip(img, 0, 255).round().astype(np.uint8)
        if jpeg_quality:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=jpeg_quality)
            img = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        out.append(img)
    return np.stack(out)


def save_image(path, image: np.ndarray, quality: int = 95) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(image)
    if str(path).lower().endswith((".jpg", ".jpeg")):
        img.save(path, quality=quality)
    else:
        img.save(path)
