"""Multiview-equivariance evaluation (APE / PCDP), which the authors never released.

Protocol (paper §4.1, made explicit here):
- per evaluation object, ordered view pairs (i, j) with relative rotation <= ``max_rotation_deg``, subsampled to
  ``max_pairs_per_object``; dense features are extracted ONCE per view used (never per pair);
- source points: foreground pixels of view i whose 3D point is visible in view j (ground truth from the exact xyz
  maps: the point projects inside view j onto the foreground and view j's xyz there is the same surface point);
- prediction: cosine nearest neighbour among the target view's foreground pixels (every ``target_stride``-th pixel);
- error: distance to the true projection / shortest image edge; APE = mean (%), PCDP@t = fraction under t (%).
The same code path serves every backbone, pretrained or with an adapter, the validation callback and ``make eval``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from corr3d.geometry import project, relative_rotation_deg
from corr3d.metrics.equivariance import EquivarianceMetric, normalized_pixel_error

log = logging.getLogger(__name__)


@dataclass
class EquivarianceSettings:
    max_pairs_per_object: int = 20
    max_rotation_deg: float = 70.0
    num_source_points: int = 800
    target_stride: int = 2
    thresholds: Sequence[float] = (0.05, 0.1, 0.2)
    visibility_tol: float = 0.02   # object units: the target pixel must see the same surface point
    seed: int = 0
    batch_size: int = 4

    @classmethod
    def from_config(cls, cfg) -> "EquivarianceSettings":
        eq = cfg.equivariance
        return cls(max_pairs_per_object=int(eq.max_pairs_per_object), max_rotation_deg=float(eq.max_rotation_deg),
                   num_source_points=int(eq.num_source_points), target_stride=int(eq.target_stride),
                   thresholds=tuple(eq.thresholds), visibility_tol=float(eq.visibility_tol), seed=int(cfg.seed),
                   batch_size=int(eq.batch_size))


def sample_view_pairs(poses: np.ndarray, max_rotation_deg: float, max_pairs: int,
                      rng: np.random.Generator) -> list[tuple[int, int]]:
    """Ordered pairs (i != j) within the rotation limit, a random subset of at most ``max_pairs``."""
    n = len(poses)
    pairs = [(i, j) for i in range(n) for j in range(n)
             if i != j and relative_rotation_deg(poses[i], poses[j]) <= max_rotation_deg]
    if max_pairs and len(pairs) > max_pairs:
        keep = rng.choice(len(pairs), size=max_pairs, replace=False)
        pairs = [pairs[k] for k in sorted(keep)]
    return pairs


def pixel_centers(mask: np.ndarray, stride: int = 1) -> np.ndarray:
    """(N, 2) continuous (x, y) centres of the foreground pixels on a ``stride`` lattice."""
    sub = np.zeros_like(mask, dtype=bool)
    sub[::stride, ::stride] = True
    rows, cols = np.nonzero(mask & sub)
    return np.stack([cols + 0.5, rows + 0.5], axis=1).astype(np.float32)


def visible_correspondences(obj, i: int, j: int, num_points: int, tol: float,
                            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Source pixels of view i visible in view j and their true (continuous) location in view j."""
    mask_i, xyz_i = obj.mask(i), obj.xyz(i)
    src = pixel_centers(mask_i)
    points = xyz_i[mask_i]  # row-major, same order as pixel_centers(mask_i)
    uv, z = project(points, obj.K, obj.poses[j])
    h, w = obj.height, obj.width
    cols, rows = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    inside = (z > 0) & (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
    keep = np.zeros(len(points), dtype=bool)
    idx = np.nonzero(inside)[0]
    mask_j, xyz_j = obj.mask(j), obj.xyz(j)
    on_fg = mask_j[rows[idx], cols[idx]]
    same_point = np.linalg.norm(xyz_j[rows[idx], cols[idx]] - points[idx], axis=1) < tol
    keep[idx[on_fg & same_point]] = True
    src, gt = src[keep], uv[keep].astype(np.float32)
    if num_points and len(src) > num_points:
        pick = rng.choice(len(src), size=num_points, replace=False)
        src, gt = src[pick], gt[pick]
    return src, gt


@torch.no_grad()
def extract_view_features(model, images: Sequence[np.ndarray], batch_size: int = 4) -> list[torch.Tensor]:
    """Raw dense feature maps (C, h, w) for each uint8 HxWx3 image, computed in batches."""
    device = next(model.parameters()).device
    maps: list[torch.Tensor] = []
    for start in range(0, len(images), batch_size):
        chunk = np.stack(images[start:start + batch_size])
        batch = torch.from_numpy(chunk).to(device).permute(0, 3, 1, 2).float() / 255.0
        maps.extend(model(batch).float().cpu())
    return maps


@torch.no_grad()
def nearest_neighbor_matches(model, fmap_src: torch.Tensor, fmap_tgt: torch.Tensor, src_xy: np.ndarray,
                             tgt_xy: np.ndarray, image_size: tuple[int, int], chunk: int = 1024) -> np.ndarray:
    """For each source point the target candidate with the highest cosine similarity; returns its (x, y)."""
    f_src = F.normalize(model.sample_points(fmap_src[None], torch.from_numpy(src_xy)[None], image_size)[0], dim=-1)
    f_tgt = F.normalize(model.sample_points(fmap_tgt[None], torch.from_numpy(tgt_xy)[None], image_size)[0], dim=-1)
    best = torch.cat([(f_src[s:s + chunk] @ f_tgt.T).argmax(dim=1) for s in range(0, len(f_src), chunk)])
    return tgt_xy[best.numpy()]


def evaluate_objects(model, objects: Iterable, settings: EquivarianceSettings, desc: str = "equivariance",
                     per_object: dict | None = None) -> dict[str, float]:
    """APE/PCDP over all objects; ``per_object`` (if given) receives each object's own metrics."""
    total = EquivarianceMetric(settings.thresholds)
    was_training = model.training
    model.eval()
    objects = list(objects)
    for obj in tqdm(objects, desc=desc, leave=False):
        rng = np.random.default_rng([settings.seed, abs(hash(obj.object_id)) % (2**31)])
        pairs = sample_view_pairs(obj.poses, settings.max_rotation_deg, settings.max_pairs_per_object, rng)
        if not pairs:
            log.warning("object %s has no view pair within %.0f deg; skipped", obj.object_id,
                        settings.max_rotation_deg)
            continue
        views = sorted({v for pair in pairs for v in pair})
        maps = dict(zip(views, extract_view_features(model, [obj.rgb(v) for v in views], settings.batch_size)))
        size = (obj.height, obj.width)
        metric = EquivarianceMetric(settings.thresholds)
        for i, j in pairs:
            src, gt = visible_correspondences(obj, i, j, settings.num_source_points, settings.visibility_tol, rng)
            if len(src) == 0:
                continue
            candidates = pixel_centers(obj.mask(j), settings.target_stride)
            pred = nearest_neighbor_matches(model, maps[i], maps[j], src, candidates, size)
            errors = normalized_pixel_error(torch.from_numpy(pred), torch.from_numpy(gt), size)
            metric.update_errors(errors)
            total.update_errors(errors)
        if per_object is not None:
            per_object[obj.object_id] = _to_floats(metric.compute())
    model.train(was_training)
    return _to_floats(total.compute())


def _to_floats(values: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()}


def stereo_motorcycle_check(model, settings: EquivarianceSettings, num_points: int = 2000) -> dict[str, float]:
    """APE/PCDP on the real Middlebury motorcycle pair shipped by scikit-image (x_right = x_left - disparity)."""
    from skimage import data as skdata

    left, right, disp = skdata.stereo_motorcycle()
    h, w = disp.shape
    valid = np.isfinite(disp) & (disp > 0)
    src = pixel_centers(valid)
    d = disp[valid].astype(np.float32)
    gt = src - np.stack([d, np.zeros_like(d)], axis=1)
    inside = (gt[:, 0] >= 0) & (gt[:, 0] < w)
    src, gt = src[inside], gt[inside]
    rng = np.random.default_rng(settings.seed)
    pick = rng.choice(len(src), size=min(num_points, len(src)), replace=False)
    src, gt = src[pick], gt[pick]
    was_training = model.training
    model.eval()
    f_left, f_right = extract_view_features(model, [left, right], 2)
    candidates = pixel_centers(np.ones((h, w), dtype=bool), settings.target_stride)
    pred = nearest_neighbor_matches(model, f_left, f_right, src, candidates, (h, w))
    model.train(was_training)
    metric = EquivarianceMetric(settings.thresholds, prefix="stereo/")
    metric.update(torch.from_numpy(pred), torch.from_numpy(gt), (h, w))
    return _to_floats(metric.compute())


def open_rendered_objects(paths: Iterable[Path]):
    from corr3d.data.rendered import RenderedObject

    return [RenderedObject.open(p) for p in paths]


def evaluate_equivariance(model, cfg, object_dirs: Sequence[Path] | None = None,
                          per_object: dict | None = None) -> dict[str, float]:
    """The full equivariance evaluation of ``cfg.equivariance`` for ``model`` (any backbone, with or without adapter)."""
    settings = EquivarianceSettings.from_config(cfg)
    if object_dirs is None:
        from corr3d.render.batch import ensure_rendered

        object_dirs = ensure_rendered(list(cfg.equivariance.objects), Path(cfg.data.rendered_dir), cfg.data.render)
    results = evaluate_objects(model, open_rendered_objects(object_dirs), settings, per_object=per_object)
    if cfg.equivariance.stereo_check:
        results.update(stereo_motorcycle_check(model, settings))
    if cfg.equivariance.mvimgnet:
        results.update(evaluate_mvimgnet(model, cfg, settings))
    return results


def evaluate_mvimgnet(model, cfg, settings: EquivarianceSettings) -> dict[str, float]:
    """APE/PCDP on MVImgNet's sparse COLMAP correspondences (NN over every ``target_stride``-th target pixel)."""
    from corr3d.data.mvimgnet import iter_eval_pairs

    metric = EquivarianceMetric(settings.thresholds, prefix="mvimgnet/")
    was_training = model.training
    model.eval()
    for pair in tqdm(iter_eval_pairs(cfg, settings), desc="mvimgnet", leave=False):
        f0, f1 = extract_view_features(model, [pair["image0"], pair["image1"]], 2)
        h, w = pair["image1"].shape[:2]
        candidates = pixel_centers(np.ones((h, w), dtype=bool), settings.target_stride)
        size = (h, w)
        pred = nearest_neighbor_matches(model, f0, f1, pair["points0"], candidates, size)
        metric.update(torch.from_numpy(pred), torch.from_numpy(pair["points1"]), size)
    model.train(was_training)
    return _to_floats(metric.compute())
