"""``real_pairs``: dense matching on real photographs with exact ground truth, all shipped with scikit-image.

- **stereo**: the Middlebury 2014 motorcycle pair (``skimage.data.stereo_motorcycle()``): for a left pixel x with
  finite disparity d, the right-image match is x − d on the same row (invalid pixels are ``+inf``).
- **homography**: each photograph of ``eval.real_pairs.homography_images`` warped by seeded random homographies
  (every corner moved by up to ``homography_strength`` of the image side); the match of x is H(x).

Protocol (one code path for every model): dense maps at the model's own resolution (``model.input_size`` of each
image, exactly as every other task), ``num_points`` random source pixels with a valid ground truth, cosine nearest
neighbour over every ``target_stride``-th pixel of the target image that has a source pre-image (the whole right
image for stereo), error = pixel distance to the ground truth.

Metrics (``real_pairs/...``): ``pck@t`` = % of points with error < t · shortest side of the target image (the same
normalisation as the equivariance APE/PCDP) for t in ``thresholds``; ``median_px`` = median error in pixels.
They are computed per image pair and macro-averaged over pairs (each pair one item of weight 1; the unit of the
bootstrap is the photograph, since the warps of one photograph share its content). ``real_pairs/stereo/...`` and
``real_pairs/homography/...`` break the headline down; the stereo pair is one unit, so it has no CI.

Relative rotation (``rotation_deg`` of an item, for ``corr3d.eval.stats.binned_table``): the stereo pair is
rectified, i.e. both images are re-projected onto parallel image planes of one orientation, so its ground-truth
relative rotation is exactly 0 degrees. A homography warp has no camera pose (a generic homography is not a camera
rotation), so homography items carry no ``rotation_deg`` and fall in no rotation bin.

The ``OracleModel`` (corr3d/eval/equivariance.py) predicts the candidate pixel nearest to the ground truth: the best
any matcher over these candidates can do (~zero error), the ceiling next to the random-init floor.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch
from scipy.spatial import cKDTree
from skimage import data as skdata
from skimage.transform import warp

from corr3d.eval.equivariance import extract_view_features, is_oracle, nearest_neighbor_matches
from corr3d.geometry.pixels import foreground_centres
from corr3d.eval.photometric import change_view
from corr3d.eval.stats import metric_keys, weighted_mean
from corr3d.utils.seeding import stable_seed
from corr3d.utils.torch_utils import eval_mode

log = logging.getLogger(__name__)

PREFIX = "real_pairs/"


@dataclass
class ImagePair:
    """Source / target images, source points with valid ground truth, their true target positions, and the target
    pixels the matcher may choose from. ``unit``: the independent unit (photograph) for the bootstrap."""

    id: str
    unit: str
    kind: str
    source: np.ndarray
    target: np.ndarray
    src_xy: np.ndarray
    gt_xy: np.ndarray
    candidates: np.ndarray
    rotation_deg: float | None = None   # ground-truth relative camera rotation; None without a camera pose


def _rgb(image: np.ndarray) -> np.ndarray:
    """uint8 H x W x 3 from gray / RGBA / bool images."""
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def _subsample(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n, size=k, replace=False)) if k and n > k else np.arange(n)


# ------------------------------------------------------------------------------------------------ stereo
def stereo_pair(real_pairs, seed: int) -> ImagePair:
    """The Middlebury motorcycle pair: left pixel centre (x, y) -> right (x − d, y)."""
    left, right, disp = skdata.stereo_motorcycle()
    h, w = disp.shape
    valid = np.isfinite(disp) & (disp > 0)
    src = foreground_centres(valid)
    d = disp[valid].astype(np.float32)
    gt = src - np.stack([d, np.zeros_like(d)], axis=1)
    inside = (gt[:, 0] >= 0) & (gt[:, 0] < w)
    src, gt = src[inside], gt[inside]
    pick = _subsample(len(src), real_pairs.num_points, np.random.default_rng(stable_seed(seed, "stereo")))
    candidates = foreground_centres(np.ones((h, w), dtype=bool), real_pairs.target_stride)
    return ImagePair("stereo/motorcycle", "stereo/motorcycle", "stereo", _rgb(left), _rgb(right), src[pick],
                     gt[pick], candidates, rotation_deg=0.0)   # rectified: both views share one orientation


# ------------------------------------------------------------------------------------------------ homography
def random_homography(height: int, width: int, strength: float, rng: np.random.Generator) -> np.ndarray:
    """3x3 H (pixel-centre coordinates, x right / y down) moving each image corner by up to ``strength`` of the
    image side in x and y, uniformly; corners stay in order, so H is orientation-preserving and invertible."""
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float64)
    moved = corners + rng.uniform(-strength, strength, size=(4, 2)) * np.array([width, height])
    return homography_from_points(corners, moved)


def homography_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The H (h33 = 1) mapping 4 points ``src`` exactly onto ``dst`` (the 8x8 direct linear system)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    h = np.linalg.solve(np.asarray(rows, dtype=np.float64), np.asarray(rhs, dtype=np.float64))
    return np.append(h, 1.0).reshape(3, 3)


def apply_homography(H: np.ndarray, xy: np.ndarray) -> np.ndarray:
    pts = np.concatenate([xy.astype(np.float64), np.ones((len(xy), 1))], axis=1) @ H.T
    return (pts[:, :2] / pts[:, 2:3]).astype(np.float32)


def warp_image(image: np.ndarray, H: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(warped uint8 image, mask of target pixels whose pre-image lies inside the source) for target = H(source).

    Our coordinates put pixel (r, c)'s centre at (c + 0.5, r + 0.5); scikit-image's at (c, r): shift by 0.5."""
    h, w = image.shape[:2]
    H_inv = np.linalg.inv(H)

    def inverse_map(xy):
        return apply_homography(H_inv, xy + 0.5).astype(np.float64) - 0.5

    warped = warp(image, inverse_map, output_shape=(h, w), order=1, mode="constant", cval=0.0,
                  preserve_range=True)
    centres = foreground_centres(np.ones((h, w), dtype=bool))
    pre = apply_homography(H_inv, centres)
    inside = (pre[:, 0] >= 0.5) & (pre[:, 0] <= w - 0.5) & (pre[:, 1] >= 0.5) & (pre[:, 1] <= h - 0.5)
    return np.clip(np.rint(warped), 0, 255).astype(np.uint8), inside.reshape(h, w)


def photo(name: str) -> np.ndarray:
    if not hasattr(skdata, name):
        raise ValueError(f"eval.real_pairs.homography_images: scikit-image has no image {name!r}")
    return _rgb(getattr(skdata, name)())


def homography_pairs(real_pairs, seed: int) -> list[ImagePair]:
    """``homographies_per_image`` seeded warps of each photograph; source points whose image stays inside."""
    pairs = []
    for name in real_pairs.homography_images:
        image = photo(name)
        h, w = image.shape[:2]
        for k in range(real_pairs.homographies_per_image):
            rng = np.random.default_rng(stable_seed(seed, "homography", name, k))
            H = random_homography(h, w, real_pairs.homography_strength, rng)
            warped, valid = warp_image(image, H)
            src = foreground_centres(np.ones((h, w), dtype=bool))
            gt = apply_homography(H, src)
            # one pixel of margin: the warp's bilinear border blends into the black background
            inside = (gt[:, 0] >= 1) & (gt[:, 0] < w - 1) & (gt[:, 1] >= 1) & (gt[:, 1] < h - 1)
            src, gt = src[inside], gt[inside]
            pick = _subsample(len(src), real_pairs.num_points, rng)
            pairs.append(ImagePair(f"homography/{name}/{k}", f"homography/{name}", "homography", image, warped,
                                   src[pick], gt[pick], foreground_centres(valid, real_pairs.target_stride)))
    return pairs


def build_pairs(real_pairs, seed: int) -> list[ImagePair]:
    """The image pairs of the ``eval.real_pairs`` section, sampled from ``seed``."""
    pairs = ([stereo_pair(real_pairs, seed)] if real_pairs.stereo else []) + homography_pairs(real_pairs, seed)
    if real_pairs.photometric.enabled:   # the target photographed under another exposure, white balance and light
        pairs = [replace(p, target=change_view(p.target, real_pairs.photometric, seed, p.id)) for p in pairs]
    return pairs


# ------------------------------------------------------------------------------------------------ evaluation
def snap_to_candidates(gt_xy: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """The oracle's prediction: the candidate nearest to each ground-truth point."""
    _, idx = cKDTree(candidates).query(gt_xy)
    return candidates[idx]


def pair_item(pair: ImagePair, pred: np.ndarray, thresholds: Sequence[float]) -> dict:
    """Per-pair result (weight 1: the headline is the mean over image pairs)."""
    errors = np.linalg.norm(pred.astype(np.float64) - pair.gt_xy.astype(np.float64), axis=1)
    side = float(min(pair.target.shape[:2]))
    item: dict = {"id": pair.id, "unit": pair.unit, "weight": 1.0, "num_points": int(len(errors))}
    if pair.rotation_deg is not None:
        item["rotation_deg"] = float(pair.rotation_deg)
    for scope in (PREFIX, f"{PREFIX}{pair.kind}/"):
        for t in thresholds:
            item[f"{scope}pck@{float(t):g}"] = 100.0 * float((errors < float(t) * side).mean())
        item[f"{scope}median_px"] = float(np.median(errors))
    return item


def metrics_from_items(items: Sequence[dict]) -> dict[str, float]:
    """Headline = weighted (here: plain) mean over the items carrying each key."""
    keys = [k for k in metric_keys(items) if k.startswith(PREFIX)]
    out = {k: weighted_mean(items, k) for k in keys}
    out[f"{PREFIX}num_pairs"] = float(len(items))
    return out


@torch.no_grad()
def evaluate_pairs(model, pairs: Sequence[ImagePair], thresholds: Sequence[float],
                   precision: str = "fp32") -> tuple[dict, list[dict]]:
    """(metrics, items) of ``model`` on ``pairs``; each distinct image's features are extracted once
    (``precision``: ``eval.precision``)."""
    cache: dict[int, torch.Tensor] = {}

    def features(image: np.ndarray) -> torch.Tensor:
        if id(image) not in cache:
            cache[id(image)] = extract_view_features(model, [image], 1, precision)[0]
        return cache[id(image)]

    items = []
    with eval_mode(model):
        for pair in pairs:
            if is_oracle(model):
                pred = snap_to_candidates(pair.gt_xy, pair.candidates)
            else:
                pred = nearest_neighbor_matches(model, features(pair.source), features(pair.target), pair.src_xy,
                                                pair.candidates, pair.source.shape[:2], pair.target.shape[:2])
            items.append(pair_item(pair, pred, thresholds))
    return metrics_from_items(items), items


def evaluate_real_pairs(model, cfg, items: list | None = None) -> dict[str, float]:
    """The ``real_pairs`` task for ``model`` under ``cfg.eval.real_pairs``; ``items`` receives the per-pair items."""
    real_pairs = cfg.eval.real_pairs
    metrics, found = evaluate_pairs(model, build_pairs(real_pairs, cfg.eval.seed), real_pairs.thresholds,
                                    cfg.eval.precision)
    if items is not None:
        items.extend(found)
    return metrics
