"""Multiview-equivariance evaluation (APE / PCDP), which the authors never released.

Protocol (paper §4.1, made explicit here):
- per evaluation object, ordered view pairs (i, j) with relative rotation <= ``max_rotation_deg``, subsampled to
  ``max_pairs_per_object``; dense features are extracted ONCE per view used (never per pair);
- source points: foreground pixels of view i whose 3D point is visible in view j (ground truth from the exact xyz
  maps: the point projects inside view j onto the foreground and view j's xyz there is the same surface point);
- prediction: cosine nearest neighbour among the target view's foreground pixels (every ``target_stride``-th pixel);
- error: distance to the true projection / shortest image edge; APE = mean (%), PCDP@t = fraction under t (%).
The same code path serves every backbone, pretrained or with an adapter, the validation callback and ``make eval``.

Sampling is a pure function of (``seed``, object id, view pair) through ``corr3d.utils.seeding.stable_seed``, so
every process, model and resumed run scores the same pairs and points. Per-item results (item = view pair, unit =
object, weight = number of points; see ``pair_item``) feed the bootstrap CIs of ``corr3d.eval.stats``.

Protocols (``equivariance.protocol``): ``fast`` uses the sampling knobs of the config section (CPU default);
``paper`` evaluates every ordered view pair within the rotation limit and every visible foreground pixel against
every target foreground pixel (the paper's dense protocol; GPU work).

``OracleModel`` is the ceiling: its features are the true object coordinates of each pixel (from the xyz maps),
matched by the same cosine nearest neighbour; it must score near-zero APE or the protocol itself is broken.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from corr3d.assets.experiment import evaluation_objects, listed_specs
from corr3d.data.mvimgnet import discover_objects, open_objects
from corr3d.errors import EmptySelectionError, UnknownNameError
from corr3d.eval.features import model_device, to_tensor
from corr3d.eval.matching import ViewCache, match_points, nearest_neighbors_grouped, sample_normalized, visible_points
from corr3d.eval.photometric import change_view, normals_from_xyz
from corr3d.eval.metrics.equivariance import EquivarianceMetric, normalized_pixel_error
from corr3d.geometry.pixels import foreground_centres
from corr3d.geometry.rotations import relative_rotation_deg, relative_rotation_matrix_deg
from corr3d.models.features import autocast_context, sample_feature_map
from corr3d.render.batch import ensure_rendered
from corr3d.render.store import RenderedObject
from corr3d.utils.seeding import stable_seed
from corr3d.utils.torch_utils import eval_mode

log = logging.getLogger(__name__)


PROTOCOLS = ("fast", "paper")
# the ``paper`` protocol as the authors' project page describes it: every ordered pair of the 42 views (42 x 41 =
# 1,722 per object, rotations up to 180 deg, pairs without a visible point drop out), about 1,000 sampled visible
# source points per pair (seeded), every target foreground pixel as candidate
PAPER_SAMPLING = {"max_pairs_per_object": 0, "num_source_points": 1000, "max_views_per_object": 0, "target_stride": 1,
                  "max_rotation_deg": 180.0}


def protocol_sampling(eq):
    """The ``equivariance`` section as its ``protocol`` samples: ``fast`` as written, ``paper`` with PAPER_SAMPLING."""
    if eq.protocol not in PROTOCOLS:
        raise ValueError(f"equivariance.protocol must be one of {PROTOCOLS}, not {eq.protocol!r}")
    return OmegaConf.merge(eq, PAPER_SAMPLING) if eq.protocol == "paper" else eq


def _local_metric(thresholds: Sequence[float], prefix: str = "equivariance/") -> EquivarianceMetric:
    """This evaluation runs on one process (rank 0 during training): never wait for other ranks."""
    return EquivarianceMetric(thresholds, prefix=prefix, sync_on_compute=False)


def object_rng(seed: int, *parts) -> np.random.Generator:
    """The generator for one sampling decision of one object (same in every process: no salted ``hash()``)."""
    return np.random.default_rng(stable_seed(int(seed), *parts))


def pair_item(object_id: str, i: int, j: int, errors: torch.Tensor, thresholds: Sequence[float],
              prefix: str = "equivariance/", poses: np.ndarray | None = None) -> dict:
    """Per-item result of one view pair: APE and PCDP over its points (%), weighted by its number of points, so
    the points-weighted mean over items equals the pooled metric of ``EquivarianceMetric``. With the object's
    camera ``poses`` the item also carries ``rotation_deg``, the pair's relative camera rotation (degrees), which
    ``corr3d.eval.stats.binned_table`` breaks metrics down by (Probe3D's 0-15 / 15-30 / 30-60 / 60-180 bins)."""
    e = errors.reshape(-1).double()
    item = {"id": f"{object_id}/{i}-{j}", "unit": str(object_id), "weight": float(e.numel()),
            f"{prefix}ape": 100.0 * float(e.mean())}
    if poses is not None:
        item["rotation_deg"] = relative_rotation_deg(poses[i], poses[j])
    for t in thresholds:
        item[f"{prefix}pcdp@{float(t):g}"] = 100.0 * float((e < float(t)).double().mean())
    return item


class OracleModel(torch.nn.Module):
    """Ground-truth features: each pixel's true object-space point (the rendered xyz map), Fourier-encoded.

    ``[sin(w x_d), cos(w x_d)]`` over the 3 coordinates and frequencies ``w`` has constant norm, so the cosine
    normalisation every model goes through changes nothing, and the dot product ``sum cos(w (x_d - y_d))`` is
    largest exactly at the same surface point (frequencies <= pi keep it monotone over a unit-extent object).
    Matching then uses the same code as any model; the remaining error is the target-pixel lattice and the
    visibility tolerance, i.e. the ceiling of the protocol."""

    is_oracle = True
    frequencies = (torch.pi / 4, torch.pi / 2, torch.pi)

    def describe(self) -> str:
        return "oracle: true 3D object coordinates of every pixel as features (rendered xyz maps)"

    def forward(self, images):  # pragma: no cover - the oracle reads ground truth, never pixels
        raise TypeError("the oracle has no image features; it is evaluated from ground truth only")

    def view_features(self, xyz: np.ndarray, mask: np.ndarray) -> torch.Tensor:
        """(6F, H, W) features of an (H, W, 3) xyz map; background pixels get zeros (never candidates)."""
        x = torch.from_numpy(np.ascontiguousarray(xyz, dtype=np.float32)).permute(2, 0, 1)  # (3, H, W)
        w = torch.tensor(self.frequencies, dtype=torch.float32).view(-1, 1, 1, 1)
        angles = (w * x[None]).flatten(0, 1)
        feats = torch.cat([angles.sin(), angles.cos()], 0)
        return feats * torch.from_numpy(np.asarray(mask, dtype=bool))[None]

    def sample_points(self, fmap, points_xy, image_size, input_size=None, stride=None, normalize=True):
        return sample_feature_map(fmap, points_xy, tuple(image_size), normalize=normalize)


def is_oracle(model) -> bool:
    return bool(getattr(model, "is_oracle", False))


def sample_view_pairs(poses: np.ndarray, max_rotation_deg: float, max_pairs: int, rng: np.random.Generator,
                      max_views: int = 0) -> list[tuple[int, int]]:
    """Ordered pairs (i != j) within the rotation limit, a random subset of at most ``max_pairs``; with
    ``max_views`` > 0 only among that many views (features are extracted once per view used): a random anchor view
    and ``max_views - 1`` random views within the rotation limit of it, so every object has pairs (independent
    random views of a 42-view sphere are often all farther apart than the limit)."""
    angles = relative_rotation_matrix_deg(np.asarray(poses))
    allowed = np.ones(len(poses), dtype=bool)
    if 0 < max_views < len(poses):
        allowed[:] = False
        anchor = int(rng.integers(len(poses)))
        near = np.flatnonzero((angles[anchor] <= max_rotation_deg) & (np.arange(len(poses)) != anchor))
        allowed[anchor] = True
        allowed[rng.choice(near, size=min(max_views - 1, len(near)), replace=False)] = True
    ok = (angles <= max_rotation_deg) & allowed[:, None] & allowed[None, :]
    pairs = [(int(i), int(j)) for i, j in zip(*np.nonzero(ok)) if i != j]
    if max_pairs and len(pairs) > max_pairs:
        keep = rng.choice(len(pairs), size=max_pairs, replace=False)
        pairs = [pairs[k] for k in sorted(keep)]
    return pairs


def visible_correspondences(obj, i: int, j: int, num_points: int, tol: float,
                            rng: np.random.Generator, views=None) -> tuple[np.ndarray, np.ndarray]:
    """Source pixels of view i visible in view j and their true (continuous) location in view j.

    Visible: the point projects in front of camera j, inside the image, onto a foreground pixel whose own surface
    point lies within ``tol`` (+ two pixel footprints) of it, i.e. no other surface occludes it (a pixel spans z/f
    object units: two of them on top of ``tol`` keep visible points at low resolutions). ``views``: a
    ``corr3d.eval.matching.ViewCache`` of ``obj`` so that each view is decoded once across pairs."""
    src, gt = visible_points(views if views is not None else ViewCache(obj, max_views=2), i, j, tol)
    if num_points and len(src) > num_points:
        pick = rng.choice(len(src), size=num_points, replace=False)
        src, gt = src[pick], gt[pick]
    return src, gt


@torch.no_grad()
def extract_view_features(model, images: Sequence[np.ndarray], batch_size: int = 4,
                          precision: str = "fp32") -> list[torch.Tensor]:
    """Raw (not normalised, as in training) dense fp32 maps (C, h, w) for each uint8 HxWx3 image, in batches, left
    on the model's device; ``precision`` (``eval.precision``): ``corr3d.models.features.autocast_context`` (fp32:
    the paper's; auto: bf16 on CUDA)."""
    device = model_device(model)
    maps: list[torch.Tensor] = []
    for start in range(0, len(images), batch_size):
        batch = to_tensor(images[start:start + batch_size], device)
        with autocast_context(device, precision):
            out = model(batch)
        maps.extend(out.float())
    return maps


@torch.no_grad()
def nearest_neighbor_matches(model, fmap_src: torch.Tensor, fmap_tgt: torch.Tensor, src_xy: np.ndarray,
                             tgt_xy: np.ndarray, image_size: tuple[int, int],
                             target_size: tuple[int, int] | None = None, chunk: int = 1024) -> np.ndarray:
    """For each source point the target candidate with the highest cosine similarity; returns its (x, y).
    Blocked GEMM + argmax (corr3d/eval/matching.py); ``chunk`` is kept for callers and ignored."""
    return match_points(model, fmap_src, fmap_tgt, src_xy, tgt_xy, image_size, target_size)


def object_pair_matches(model, obj, maps: dict, pairs: Sequence[tuple[int, int]], eq, seed: int,
                        views=None) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """(predicted, true) target locations of every pair's source points, {(i, j): (pred (N, 2), gt (N, 2))}.

    Same result as ``visible_correspondences`` + ``nearest_neighbor_matches`` per pair, but each view is decoded
    once (``ViewCache``), each target view's candidate features are sampled once, and all pairs that share a target
    view are matched in one blocked GEMM (``corr3d.eval.matching.nearest_neighbors_grouped``)."""
    views = views if views is not None else ViewCache(obj)
    size = (obj.height, obj.width)
    found, queries, groups = [], [], []
    for i, j in pairs:
        src, gt = visible_correspondences(obj, i, j, eq.num_source_points, eq.visibility_tol,
                                          object_rng(seed, "points", obj.object_id, i, j), views=views)
        if len(src) == 0:
            continue
        found.append((i, j, gt))
        queries.append(sample_normalized(model, maps[i], src, size))
        groups.append(j)
    candidates = {j: views.candidates(j, eq.target_stride) for j in set(groups)}
    features = {j: sample_normalized(model, maps[j], xy, size) for j, xy in candidates.items()}
    results = nearest_neighbors_grouped(queries, groups, features)
    return {(i, j): (candidates[j][res.index.cpu().numpy()], gt) for (i, j, gt), res in zip(found, results)}


def object_view_features(model, obj, views: Sequence[int], batch_size: int, photometric=None,
                         seed: int = 0, precision: str = "fp32") -> dict[int, torch.Tensor]:
    """Feature maps of the object's views, each view once (the oracle reads the xyz maps instead of pixels);
    ``photometric`` (the ``equivariance.photometric`` section): each view under its own seeded exposure, white
    balance and light direction (corr3d/eval/photometric.py)."""
    if is_oracle(model):
        return {v: model.view_features(obj.xyz(v), obj.mask(v)) for v in views}
    return dict(zip(views, extract_view_features(model, [view_image(obj, v, photometric, seed) for v in views],
                                                 batch_size, precision)))


def view_image(obj, view: int, photometric=None, seed: int = 0) -> np.ndarray:
    """The rendered RGB of ``view``, photometrically changed when ``photometric.enabled``."""
    image = obj.rgb(view)
    if photometric is None or not photometric.enabled:
        return image
    mask = obj.mask(view)
    normals = normals_from_xyz(obj.xyz(view), mask, np.asarray(obj.poses[view])[:3, :3])
    return change_view(image, photometric, seed, obj.object_id, view, normals=normals, mask=mask)


def evaluate_objects(model, objects: Iterable, eq, *, seed: int, desc: str = "equivariance",
                     per_object: dict | None = None, items: list | None = None,
                     skipped: list | None = None, prefix: str = "equivariance/",
                     precision: str = "fp32") -> dict[str, float]:
    """APE/PCDP over all objects under ``eq`` (the ``equivariance`` section, sampled as its ``protocol``);
    ``per_object`` (if given) receives each object's own metrics, ``items`` (if given) one ``pair_item`` per
    evaluated view pair, ``skipped`` (if given) ``(object, reason)`` for each object without a measured pair.

    Pairs are drawn from (``seed``, object id) and each pair's source points from (seed, object id, i, j): the items
    do not depend on the process, the model or which other objects are evaluated."""
    eq = protocol_sampling(eq)
    total = _local_metric(eq.thresholds, prefix)
    with eval_mode(model):
        objects = list(objects)
        for obj in tqdm(objects, desc=desc, leave=False):
            pairs = sample_view_pairs(obj.poses, eq.max_rotation_deg, eq.max_pairs_per_object,
                                      object_rng(seed, "pairs", obj.object_id), eq.max_views_per_object)
            if not pairs:
                log.warning("object %s has no view pair within %.0f deg; skipped", obj.object_id,
                            eq.max_rotation_deg)
                if skipped is not None:
                    skipped.append((obj.object_id, f"no view pair within {eq.max_rotation_deg:g} deg"))
                continue
            views = sorted({v for pair in pairs for v in pair})
            maps = object_view_features(model, obj, views, eq.batch_size, eq.photometric, seed, precision)
            size = (obj.height, obj.width)
            metric = _local_metric(eq.thresholds, prefix)
            matches = object_pair_matches(model, obj, maps, pairs, eq, seed)
            for i, j in pairs:
                if (i, j) not in matches:
                    continue
                pred, gt = matches[i, j]
                errors = normalized_pixel_error(torch.from_numpy(pred), torch.from_numpy(gt), size)
                metric.update(errors)
                total.update(errors)
                if items is not None:
                    items.append(pair_item(obj.object_id, i, j, errors, eq.thresholds, prefix, obj.poses))
            if per_object is not None and int(metric.count) > 0:
                per_object[obj.object_id] = _to_floats(metric.compute())
            if skipped is not None and int(metric.count) == 0:
                skipped.append((obj.object_id, "no source point of any sampled pair is visible in its target view"))
            del maps
    return _to_floats(total.compute())


def _to_floats(values: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()}


def open_rendered_objects(paths: Iterable[Path]):
    return [RenderedObject.open(p) for p in paths]


def evaluation_object_specs(cfg) -> list[str]:
    """The held-out evaluation objects of the experiment (``corr3d.assets.experiment``)."""
    return evaluation_objects(cfg.equivariance)


def render_evaluation_objects(cfg) -> list[Path]:
    """Directories of the held-out evaluation objects, rendering the missing ones; the returned list's ``skipped``
    holds ``(spec, reason)`` of those that could not be rendered (corrupt or empty meshes)."""
    specs = evaluation_object_specs(cfg)
    if not specs:
        raise EmptySelectionError("no equivariance evaluation objects",
                                  fix="set equivariance.objects or equivariance.object_list")
    return ensure_rendered(specs, Path(cfg.data.rendered_dir), cfg.data.render)


def control_sets(eq) -> list[str]:
    """The secondary object sets ``make eval`` measures (``equivariance.control_sets``, names of
    ``equivariance.controls``); an unknown name is a user error naming the known ones."""
    unknown = [str(n) for n in eq.control_sets if n not in eq.controls]
    if unknown:
        raise UnknownNameError(f"equivariance.control_sets: unknown set(s) {unknown}",
                               fix=f"use names of equivariance.controls: {', '.join(eq.controls)}")
    return [str(n) for n in eq.control_sets]


def evaluate_equivariance(model, cfg, object_dirs: Sequence[Path] | None = None,
                          per_object: dict | None = None, items: list | None = None,
                          skipped: list | None = None, controls: bool = False) -> dict[str, float]:
    """The full equivariance evaluation of ``cfg.equivariance`` for ``model`` (any backbone, with or without adapter,
    or the ``OracleModel``); ``items`` (if given) receives the per-pair results (see ``evaluate_objects``).
    Real photographs are the ``real_pairs`` task (corr3d/eval/real_pairs.py)."""
    if object_dirs is None:
        object_dirs = render_evaluation_objects(cfg)
    if skipped is not None:
        skipped.extend(getattr(object_dirs, "skipped", []))
    results = evaluate_objects(model, open_rendered_objects(object_dirs), cfg.equivariance, seed=cfg.eval.seed,
                               per_object=per_object, items=items, skipped=skipped, precision=cfg.eval.precision)
    for name in (control_sets(cfg.equivariance) if controls else ()):
        section = cfg.equivariance.controls[name]
        # a secondary set (equivariance.controls): same protocol, keys equivariance/<name>/...
        dirs = ensure_rendered(listed_specs(section.objects, section.object_list), Path(cfg.data.rendered_dir),
                               cfg.data.render)
        found: list = []
        results.update(evaluate_objects(model, open_rendered_objects(dirs), cfg.equivariance, seed=cfg.eval.seed,
                                        items=items, skipped=found, prefix=f"equivariance/{name}/",
                                        desc=f"equivariance/{name}", precision=cfg.eval.precision))
        if skipped is not None:
            skipped.extend((f"{name}: {spec}", reason) for spec, reason in [*getattr(dirs, "skipped", []), *found])
    if cfg.equivariance.mvimgnet and not is_oracle(model):  # sparse COLMAP points: no dense ground truth
        results.update(evaluate_mvimgnet(model, cfg, items=items))
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


def evaluate_mvimgnet(model, cfg, items: list | None = None) -> dict[str, float]:
    """APE/PCDP on MVImgNet's sparse COLMAP correspondences: source keypoints of frame i, nearest neighbour over
    every ``target_stride``-th pixel of frame j (no mask), error to the keypoint of the same 3D point."""
    eq, seed = protocol_sampling(cfg.equivariance), cfg.eval.seed
    root = Path(cfg.data.mvimgnet_dir)
    dirs = discover_objects(root)[: eq.mvimgnet_objects or None]
    if not dirs:
        raise FileNotFoundError(f"no MVImgNet objects under {root} (expected <category>/<object>/images and "
                                f"sparse/0/*.bin; download MVImgNet and set data.mvimgnet_dir)")
    objects, skipped = open_objects(dirs, cfg.data.mvimgnet_extent_percentile)
    for path, reason in skipped.items():
        log.warning("MVImgNet object %s skipped: %s", path, reason)
    metric = _local_metric(eq.thresholds, "mvimgnet/")
    with eval_mode(model):
        for obj in tqdm(objects, desc="mvimgnet", leave=False):
            pairs = mvimgnet_pairs(obj, cfg.data.mvimgnet_min_matches, eq.max_pairs_per_object,
                                   object_rng(seed, "mvimgnet_pairs", obj.object_id))
            frames = sorted({f for pair in pairs for f in pair})
            images = {f: obj.rgb(f) for f in frames}
            maps = dict(zip(frames, extract_view_features(model, [images[f] for f in frames], 1,
                                                          cfg.eval.precision)))
            for i, j in pairs:
                src, gt, _ = obj.correspondences(i, j)
                src, gt = src * _frame_scale(obj, i, images[i]), gt * _frame_scale(obj, j, images[j])
                if eq.num_source_points and len(src) > eq.num_source_points:
                    rng = object_rng(seed, "mvimgnet_points", obj.object_id, i, j)
                    pick = rng.choice(len(src), size=eq.num_source_points, replace=False)
                    src, gt = src[pick], gt[pick]
                size = images[j].shape[:2]
                candidates = foreground_centres(np.ones(size, dtype=bool), eq.target_stride)
                pred = nearest_neighbor_matches(model, maps[i], maps[j], src, candidates, images[i].shape[:2], size)
                errors = normalized_pixel_error(torch.from_numpy(pred), torch.from_numpy(gt), size)
                metric.update(errors)
                if items is not None:
                    items.append(pair_item(f"mvimgnet:{obj.object_id}", i, j, errors, eq.thresholds, "mvimgnet/",
                                           obj.poses))   # COLMAP's registered camera rotations
    return _to_floats(metric.compute())
