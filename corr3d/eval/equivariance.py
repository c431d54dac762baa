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

from corr3d.assets.experiment import evaluation_objects
from corr3d.eval.metrics.equivariance import EquivarianceMetric, normalized_pixel_error
from corr3d.geometry import project
from corr3d.geometry.pixels import foreground_centres as pixel_centers  # the name callers import from here
from corr3d.geometry.rotations import relative_rotation_matrix_deg

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
    max_views_per_object: int = 0

    @classmethod
    def from_config(cls, cfg) -> "EquivarianceSettings":
        eq = cfg.equivariance
        return cls(max_pairs_per_object=int(eq.max_pairs_per_object), max_rotation_deg=float(eq.max_rotation_deg),
                   num_source_points=int(eq.num_source_points), target_stride=int(eq.target_stride),
                   thresholds=tuple(eq.thresholds), visibility_tol=float(eq.visibility_tol), seed=int(cfg.seed),
                   batch_size=int(eq.batch_size), max_views_per_object=int(eq.max_views_per_object))


def _local_metric(settings: EquivarianceSettings, prefix: str = "equivariance/") -> EquivarianceMetric:
    """This evaluation runs on one process (rank 0 during training): never wait for other ranks."""
    return EquivarianceMetric(settings.thresholds, prefix=prefix, sync_on_compute=False)


def sample_view_pairs(poses: np.ndarray, max_rotation_deg: float, max_pairs: int, rng: np.random.Generator,
                      max_views: int = 0) -> list[tuple[int, int]]:
    """Ordered pairs (i != j) within the rotation limit, a random subset of at most ``max_pairs``; with
    ``max_views`` > 0 only among that many random views (features are extracted once per view used)."""
    angles = relative_rotation_matrix_deg(np.asarray(poses))
    allowed = np.ones(len(poses), dtype=bool)
    if 0 < max_views < len(poses):
        allowed[:] = False
        allowed[rng.choice(len(poses), size=max_views, replace=False)] = True
    ok = (angles <= max_rotation_deg) & allowed[:, None] & allowed[None, :]
    pairs = [(int(i), int(j)) for i, j in zip(*np.nonzero(ok)) if i != j]
    if max_pairs and len(pairs) > max_pairs:
        keep = rng.choice(len(pairs), size=max_pairs, replace=False)
        pairs = [pairs[k] for k in sorted(keep)]
    return pairs


def visible_correspondences(obj, i: int, j: int, num_points: int, tol: float,
                            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Source pixels of view i visible in view j and their true (continuous) location in view j.

    Visible: the point projects in front of camera j, inside the image, onto a foreground pixel whose own surface
    point lies within ``tol`` (+ two pixel footprints) of it, i.e. no other surface occludes it."""
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
    # a pixel spans z/f object units: allow two of them on top of ``tol`` so low resolutions keep visible points
    footprint = z[idx] / float(obj.K[0, 0])
    same_point = np.linalg.norm(xyz_j[rows[idx], cols[idx]] - points[idx], axis=1) < tol + 2.0 * footprint
    keep[idx[on_fg & same_point]] = True
    src, gt = src[keep], uv[keep].astype(np.float32)
    if num_points and len(src) > num_points:
        pick = rng.choice(len(src), size=num_points, replace=False)
        src, gt = src[pick], gt[pick]
    return src, gt


@torch.no_grad()
def extract_view_features(model, images: Sequence[np.ndarray], batch_size: int = 4) -> list[torch.Tensor]:
    """Raw (not normalised, as in training) dense maps (C, h, w) for each uint8 HxWx3 image, in batches."""
    from corr3d.eval.features import model_device, to_tensor

    maps: list[torch.Tensor] = []
    for start in range(0, len(images), batch_size):
        batch = to_tensor(images[start:start + batch_size], model_device(model))
        maps.extend(model(batch).float().cpu())
    return maps


@torch.no_grad()
def nearest_neighbor_matches(model, fmap_src: torch.Tensor, fmap_tgt: torch.Tensor, src_xy: np.ndarray,
                             tgt_xy: np.ndarray, image_size: tuple[int, int],
                             target_size: tuple[int, int] | None = None, chunk: int = 1024) -> np.ndarray:
    """For each source point the target candidate with the highest cosine similarity; returns its (x, y)."""
    target_size = target_size or image_size
    f_src = F.normalize(model.sample_points(fmap_src[None], torch.from_numpy(src_xy)[None], image_size)[0], dim=-1)
    f_tgt = F.normalize(model.sample_points(fmap_tgt[None], torch.from_numpy(tgt_xy)[None], target_size)[0], dim=-1)
    best = torch.cat([(f_src[s:s + chunk] @ f_tgt.T).argmax(dim=1) for s in range(0, len(f_src), chunk)])
    return tgt_xy[best.numpy()]


def evaluate_objects(model, objects: Iterable, settings: EquivarianceSettings, desc: str = "equivariance",
                     per_object: dict | None = None) -> dict[str, float]:
    """APE/PCDP over all objects; ``per_object`` (if given) receives each object's own metrics."""
    total = _local_metric(settings)
    was_training = model.training
    model.eval()
    objects = list(objects)
    for obj in tqdm(objects, desc=desc, leave=False):
        rng = np.random.default_rng([settings.seed, abs(hash(obj.object_id)) % (2**31)])
        pairs = sample_view_pairs(obj.poses, settings.max_rotation_deg, settings.max_pairs_per_object, rng,
                                  settings.max_views_per_object)
        if not pairs:
            log.warning("object %s has no view pair within %.0f deg; skipped", obj.object_id,
                        settings.max_rotation_deg)
            continue
        views = sorted({v for pair in pairs for v in pair})
        maps = dict(zip(views, extract_view_features(model, [obj.rgb(v) for v in views], settings.batch_size)))
        size = (obj.height, obj.width)
        metric = _local_metric(settings)
        for i, j in pairs:
            src, gt = visible_correspondences(obj, i, j, settings.num_source_points, settings.visibility_tol, rng)
            if len(src) == 0:
                continue
            candidates = pixel_centers(obj.mask(j), settings.target_stride)
            pred = nearest_neighbor_matches(model, maps[i], maps[j], src, candidates, size)
            errors = normalized_pixel_error(torch.from_numpy(pred), torch.from_numpy(gt), size)
            metric.update(errors)
            total.update(errors)
        if per_object is not None and int(metric.count) > 0:
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
    metric = _local_metric(settings, "stereo/")
    metric.add_points(torch.from_numpy(pred), torch.from_numpy(gt), (h, w))
    return _to_floats(metric.compute())


def open_rendered_objects(paths: Iterable[Path]):
    from corr3d.render.store import RenderedObject

    return [RenderedObject.open(p) for p in paths]


def evaluation_object_specs(cfg) -> list[str]:
    """The held-out evaluation objects of the experiment (``corr3d.assets.experiment``)."""
    return evaluation_objects(cfg.equivariance)


def render_evaluation_objects(cfg) -> list[Path]:
    """Directories of the held-out evaluation objects, rendering the missing ones."""
    from corr3d.render.batch import ensure_rendered

    specs = evaluation_object_specs(cfg)
    if not specs:
        raise ValueError("no equivariance evaluation objects: set equivariance.objects or equivariance.object_list")
    return ensure_rendered(specs, Path(cfg.data.rendered_dir), cfg.data.render)


def evaluate_equivariance(model, cfg, object_dirs: Sequence[Path] | None = None,
                          per_object: dict | None = None) -> dict[str, float]:
    """The full equivariance evaluation of ``cfg.equivariance`` for ``model`` (any backbone, with or without adapter)."""
    settings = EquivarianceSettings.from_config(cfg)
    if object_dirs is None:
        object_dirs = render_evaluation_objects(cfg)
    results = evaluate_objects(model, open_rendered_objects(object_dirs), settings, per_object=per_object)
    if cfg.equivariance.stereo_check:
        results.update(stereo_motorcycle_check(model, settings))
    if cfg.equivariance.mvimgnet:
        results.update(evaluate_mvimgnet(model, cfg, settings))
    return results


def mvimgnet_pairs(obj, min_matches: int, max_pairs: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Ordered frame pairs sharing at least ``min_matches`` COLMAP points, a random subset of ``max_pairs``."""
    shared = obj.shared_counts()
    np.fill_diagonal(shared, 0)
    pairs = [(int(i), int(j)) for i, j in zip(*np.nonzero(shared >= min_matches))]
    if max_pairs and len(pairs) > max_pairs:
        pairs = [pairs[k] for k in sorted(rng.choice(len(pairs), size=max_pairs, replace=False))]
    return pairs


def _frame_scale(obj, frame: int, image: np.ndarray) -> np.ndarray:
    """COLMAP keypoints live at the camera resolution; images on disk may be resized."""
    width, height = obj.sizes[frame]
    return np.array([image.shape[1] / width, image.shape[0] / height], dtype=np.float32)


def evaluate_mvimgnet(model, cfg, settings: EquivarianceSettings) -> dict[str, float]:
    """APE/PCDP on MVImgNet's sparse COLMAP correspondences: source keypoints of frame i, nearest neighbour over
    every ``target_stride``-th pixel of frame j (no mask), error to the keypoint of the same 3D point."""
    from corr3d.data.mvimgnet import discover_objects, open_objects

    root = Path(cfg.data.mvimgnet_dir)
    dirs = discover_objects(root)[: int(cfg.equivariance.mvimgnet_objects) or None]
    if not dirs:
        raise FileNotFoundError(f"no MVImgNet objects under {root} (expected <category>/<object>/images and "
                                f"sparse/0/*.bin; download MVImgNet and set data.mvimgnet_dir)")
    objects, skipped = open_objects(dirs, float(cfg.data.mvimgnet_extent_percentile))
    for path, reason in skipped.items():
        log.warning("MVImgNet object %s skipped: %s", path, reason)
    metric = _local_metric(settings, "mvimgnet/")
    was_training = model.training
    model.eval()
    for obj in tqdm(objects, desc="mvimgnet", leave=False):
        rng = np.random.default_rng([settings.seed, abs(hash(obj.object_id)) % (2**31)])
        pairs = mvimgnet_pairs(obj, int(cfg.data.mvimgnet_min_matches), settings.max_pairs_per_object, rng)
        frames = sorted({f for pair in pairs for f in pair})
        images = {f: obj.rgb(f) for f in frames}
        maps = dict(zip(frames, extract_view_features(model, [images[f] for f in frames], 1)))
        for i, j in pairs:
            src, gt, _ = obj.correspondences(i, j)
            src, gt = src * _frame_scale(obj, i, images[i]), gt * _frame_scale(obj, j, images[j])
            if settings.num_source_points and len(src) > settings.num_source_points:
                pick = rng.choice(len(src), size=settings.num_source_points, replace=False)
                src, gt = src[pick], gt[pick]
            size = images[j].shape[:2]
            candidates = pixel_centers(np.ones(size, dtype=bool), settings.target_stride)
            pred = nearest_neighbor_matches(model, maps[i], maps[j], src, candidates, images[i].shape[:2], size)
            metric.add_points(torch.from_numpy(pred), torch.from_numpy(gt), size)
    model.train(was_training)
    return _to_floats(metric.compute())
