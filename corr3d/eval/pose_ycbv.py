"""One-shot object pose on YCB-Video in the BOP format (paper Table 8; protocol adapted from OnePose, eval/pose.py).

The paper gives no protocol for YCB-V, so corr3d fixes one, as close to its OnePose
protocol as the data allow:

- **Reference views -> templates.** In every scene, every ``ref_step``-th image (in image-id order) is a reference
  view. For each annotated instance with ``visib_fract >= min_visib_fract`` in a reference view, features are
  sampled on a ``template_step``-px grid of pixel centres inside its visible mask where depth is valid; each
  point is lifted with the depth and the ground-truth pose to object coordinates (mm). Templates are pooled per
  object over all scenes and subsampled to ``max_templates`` (stable seed per object).
- **Queries.** Every ``query_step``-th of the remaining images; each instance with ``visib_fract >=
  min_visib_fract`` (and, when present, listed in ``test_targets_bop19.json``) is one query. Query descriptors lie
  on a ``grid_step``-px grid over its ``bbox_visib`` grown by ``bbox_margin`` (the ground-truth detection; the
  paper's OnePose protocol uses the whole image because it has one object per image).
- **Matching and pose.** Mutual nearest neighbours to the object's templates, then the OnePose PnP-RANSAC
  (:func:`corr3d.eval.pose.solve_pnp`: EPnP, 8 px, 10k iterations, >= 4 matches and >= 6 inliers, else identity).
- **Metrics** (percent): k cm-k deg accuracy (paper thresholds 1/3/5), the PoseCNN/BOP-standard ADD(-S) AUC
  (accuracy-vs-threshold curve integrated up to ``auc_max_mm`` = 10 cm; ADD-S for objects with
  ``symmetries_discrete``/``symmetries_continuous`` in models_info.json) and ADD(-S) < 0.1 diameter. Each is
  computed per object and averaged over objects (items carry weight 1/queries of their object).
- **BOP19 AR** (``bop_ar``; the paper's Table 8 metric, corr3d/eval/metrics/bop.py): ``ar_vsd`` (model depth
  rendered in both poses vs the test depth), ``ar_mssd``, ``ar_mspd`` (symmetry-aware, over the model points) and
  ``ar`` = their mean, per object then over objects like the other keys; ``ar_bop`` (and ``ar_bop_vsd`` ...) pool
  all queries as bop_toolkit does (no per-object step), which is the number comparable to the paper's 44.4 / 49.4.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy.spatial import cKDTree
from tqdm.auto import tqdm

from corr3d.eval.datasets.bop import list_scenes, load_models_info, load_object_model, read_targets
from corr3d.eval.features import extract_maps, input_size_for_feature_px, sample
from corr3d.eval.metrics import bop as bop_metrics
from corr3d.eval.metrics.pose import pose_errors, threshold_key
from corr3d.eval.matching import mutual_nearest_neighbors
from corr3d.eval.pose import grid_points, solve_pnp
from corr3d.utils.seeding import stable_seed
from corr3d.utils.torch_utils import eval_mode

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------- metrics
def transform(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    return points @ pose[:3, :3].T + pose[:3, 3]


def add_distance(pose_pred: np.ndarray, pose_gt: np.ndarray, points: np.ndarray) -> float:
    """ADD: mean distance between model points under the two poses (units of the points / translations)."""
    return float(np.linalg.norm(transform(points, pose_pred) - transform(points, pose_gt), axis=1).mean())


def adds_distance(pose_pred: np.ndarray, pose_gt: np.ndarray, points: np.ndarray) -> float:
    """ADD-S: mean distance from each ground-truth-posed point to the closest predicted-posed point."""
    dist, _ = cKDTree(transform(points, pose_pred)).query(transform(points, pose_gt), k=1)
    return float(np.mean(dist))


def add_s_distance(pose_pred, pose_gt, points, symmetric: bool) -> float:
    return adds_distance(pose_pred, pose_gt, points) if symmetric else add_distance(pose_pred, pose_gt, points)


def auc_score(distance: float, max_distance: float) -> float:
    """One query's share (percent) of the area under the accuracy-vs-threshold curve on [0, max_distance].

    AUC = (1/M) * integral_0^M P(d < t) dt = mean over queries of (1 - min(d, M) / M): the PoseCNN VOC-style
    ``VOCap`` area of the step curve, normalised, so the weighted mean of the items is the AUC.
    """
    if not np.isfinite(distance):
        return 0.0
    return 100.0 * (1.0 - min(float(distance), max_distance) / max_distance)


# --------------------------------------------------------------------------------------------------- protocol
def split_frames(scene, ref_step: int, query_step: int) -> tuple[list[int], list[int]]:
    """(reference image ids, query image ids) of a scene: every ``ref_step``-th image is a reference, every
    ``query_step``-th of the others a query."""
    ids = scene.image_ids
    refs = ids[::ref_step] if ref_step > 0 else []
    ref_set = set(refs)
    rest = [i for i in ids if i not in ref_set]
    return refs, rest[::query_step]


def backproject(points_xy: np.ndarray, depth_mm: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Continuous pixel points (N, 2) with depths (N,) -> camera coordinates (N, 3)."""
    ones = np.ones((len(points_xy), 1))
    rays = np.concatenate([points_xy, ones], 1) @ np.linalg.inv(K).T
    return rays * depth_mm[:, None]


def mask_grid(mask: np.ndarray, depth: np.ndarray, step: int) -> np.ndarray:
    """Pixel centres (N, 2) on a ``step``-px lattice inside ``mask`` with a depth measurement."""
    pts = grid_points(mask.shape[0], mask.shape[1], step)
    r, c = pts[:, 1].astype(int), pts[:, 0].astype(int)
    keep = mask[r, c] & (depth[r, c] > 0)
    return pts[keep]


def box_grid(bbox: Sequence[int], image_hw: tuple[int, int], step: int, margin: float) -> np.ndarray:
    """``step``-px lattice of pixel centres inside ``bbox`` (x, y, w, h) grown by ``margin`` x its size."""
    h, w = image_hw
    x, y, bw, bh = (float(v) for v in bbox)
    if bw <= 0 or bh <= 0:
        return grid_points(h, w, step)
    x0, y0 = max(0.0, x - margin * bw), max(0.0, y - margin * bh)
    x1, y1 = min(float(w), x + bw * (1 + margin)), min(float(h), y + bh * (1 + margin))
    pts = grid_points(h, w, step)
    keep = (pts[:, 0] >= x0) & (pts[:, 0] < x1) & (pts[:, 1] >= y0) & (pts[:, 1] < y1)
    return pts[keep]


def _features(model, image: np.ndarray, feature_px: int):
    size = image.shape[:2]
    input_size = input_size_for_feature_px(size, model.patch_size, feature_px)
    return extract_maps(model, [image], input_size, batch_size=1)[0], size, input_size


def build_templates(model, scenes, ycbv, *, seed: int, ref_step: int
                    ) -> dict[int, tuple[torch.Tensor | None, np.ndarray]]:
    """{obj_id: (descriptors (M, C), object points (M, 3) mm)} from every scene's reference views (``model=None``:
    points only, for the oracle); ``ycbv``: the ``eval.pose_ycbv`` section."""
    descs: dict[int, list] = {}
    points: dict[int, list] = {}
    for scene in scenes:
        refs, _ = split_frames(scene, ref_step, ycbv.query_step)
        for im_id in tqdm(refs, desc=f"templates {scene.scene_id:06d}", leave=False):
            insts = [i for i in scene.instances(im_id) if i.visib_fract >= ycbv.min_visib_fract]
            if not insts:
                continue
            depth, K = scene.depth(im_id), scene.K(im_id)
            if model is not None:
                fmap, size, input_size = _features(model, scene.image(im_id), ycbv.feature_px)
            for inst in insts:
                pts = mask_grid(scene.mask_visib(im_id, inst.gt_idx), depth, ycbv.template_step)
                if len(pts) == 0:
                    continue
                r, c = pts[:, 1].astype(int), pts[:, 0].astype(int)
                cam = backproject(pts, depth[r, c], K)
                obj = (cam - inst.pose[:3, 3]) @ inst.pose[:3, :3]       # R^T (X - t)
                descs.setdefault(inst.obj_id, []).append(
                    sample(model, fmap, pts, size, input_size) if model is not None else torch.zeros(len(pts), 0))
                points.setdefault(inst.obj_id, []).append(obj)
    banks = {}
    for obj_id in sorted(descs):
        d, p = torch.cat(descs[obj_id]), np.concatenate(points[obj_id])
        if len(d) > ycbv.max_templates:
            rng = np.random.default_rng(stable_seed("ycbv-templates", seed, obj_id))
            keep = np.sort(rng.choice(len(d), ycbv.max_templates, replace=False))
            d, p = d[torch.from_numpy(keep).to(d.device)], p[keep]
        banks[obj_id] = (d if model is not None else None, p)
    return banks


def oracle_matches(bank_pts: np.ndarray, grid: np.ndarray, K: np.ndarray, pose_gt: np.ndarray,
                   visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Perfect matching: template points that project (true pose) onto the instance's visible mask, each paired with
    its nearest query-grid point (the protocol's grid quantisation is kept)."""
    if len(grid) == 0 or len(bank_pts) == 0:
        return np.zeros((0, 3)), np.zeros((0, 2))
    cam = transform(bank_pts, pose_gt)
    uv = (cam @ K.T)[:, :2] / np.maximum(cam[:, 2:3], 1e-9)
    h, w = visible.shape
    cols, rows = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    keep = (cam[:, 2] > 0) & (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
    keep[keep] = visible[rows[keep], cols[keep]]
    if not keep.any():
        return np.zeros((0, 3)), np.zeros((0, 2))
    _, nearest = cKDTree(grid).query(uv[keep])
    return bank_pts[keep], grid[nearest]


def query_instances(scenes, ycbv, ref_step: int, targets=None) -> list:
    """[(scene, im_id, [instances])] of the query images, in a stable order."""
    out = []
    for scene in scenes:
        _, queries = split_frames(scene, ref_step, ycbv.query_step)
        for im_id in queries:
            insts = [i for i in scene.instances(im_id) if i.visib_fract >= ycbv.min_visib_fract
                     and (targets is None or (scene.scene_id, im_id, i.obj_id) in targets)]
            if insts:
                out.append((scene, im_id, insts))
    return out


def load_meshes(models_dir, obj_ids) -> dict:
    """{obj_id: trimesh mesh (mm)} of ``obj_<id>.ply``: VSD renders the whole surface, not the point subsample."""
    import trimesh  # deferred: import cost (~0.4 s), only YCB-V meshes need it

    out = {}
    for obj_id in obj_ids:
        path = Path(models_dir) / f"obj_{obj_id:06d}.ply"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the models folder has no mesh for object {obj_id}")
        out[obj_id] = trimesh.load(path, process=False, force="mesh")
    return out


class DepthRenderer:
    """Depth (mm) of object meshes under a pose, by the project's ray caster (one open3d scene per object)."""

    def __init__(self, meshes: dict):
        self.meshes = meshes
        self._casters: dict = {}

    def __call__(self, obj_id: int, K: np.ndarray, pose: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
        from corr3d.render.raycast import RaycastRenderer  # deferred: open3d import is slow, needed only here

        if obj_id not in self._casters:
            self._casters[obj_id] = RaycastRenderer(self.meshes[obj_id])
        caster = self._casters[obj_id]
        h, w = hw
        hit, faces, bary, _, _ = caster.cast(K, pose, w, h)
        weights = np.concatenate([1.0 - bary.sum(1, keepdims=True), bary], axis=1)[:, :, None]
        xyz = (caster.vertices[caster.faces[faces]] * weights).sum(1)
        depth = np.zeros((h, w))
        depth[hit] = xyz @ pose[2, :3] + pose[2, 3]
        return depth


def bop_errors(render: DepthRenderer | None, obj_id: int, model_pts, pose: np.ndarray, pose_gt: np.ndarray,
               K: np.ndarray, depth: np.ndarray | None, syms) -> dict:
    """One query's BOP19 errors: VSD per tau (None without meshes or depth), MSSD (mm), MSPD (px)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):   # failed poses may put points at z = 0
        out = {"mssd_mm": bop_metrics.mssd(pose, pose_gt, model_pts.points, syms),
               "mspd_px": bop_metrics.mspd(pose, pose_gt, K, model_pts.points, syms), "vsd": None}
    if render is not None and depth is not None:
        hw = depth.shape
        out["vsd"] = [float(e) for e in bop_metrics.vsd(render(obj_id, K, pose, hw), render(obj_id, K, pose_gt, hw),
                                                        depth, K, model_pts.diameter)]
    return out


def evaluate_ycbv(model, scenes, object_models: dict, ycbv, *, seed: int, ref_step: int | None = None,
                  prefix: str = "pose_ycbv/", desc: str = "pose_ycbv", targets=None, meshes: dict | None = None
                  ) -> tuple[dict[str, float], dict[str, list]]:
    """Metrics (per-object means averaged over objects) and tables: per-instance rows, per-object rows and
    ``items`` (one per query instance; unit = object) whose weighted means are the headline metrics.
    ``ycbv``: the ``eval.pose_ycbv`` section; ``ref_step`` replaces its ``ref_step`` (the offline suite's).
    ``meshes`` ({obj_id: mesh}, :func:`load_meshes`): needed for VSD; without them (or ``bop_ar`` false) the AR keys
    that need them are not reported.

    ``model=None`` is the oracle (the protocol's ceiling): ground-truth matches (:func:`oracle_matches`) instead of
    feature matching, then the same PnP and metrics."""
    bop_ar = bool(getattr(ycbv, "bop_ar", False))
    render = DepthRenderer(meshes) if (bop_ar and meshes) else None
    syms = {o: bop_metrics.symmetry_transformations({"symmetries_discrete": m.symmetries_discrete,
                                                     "symmetries_continuous": m.symmetries_continuous})
            for o, m in object_models.items()} if bop_ar else {}
    with eval_mode(model):
        ref_step = ycbv.ref_step if ref_step is None else ref_step
        banks = build_templates(model, scenes, ycbv, seed=seed, ref_step=ref_step)
        queries = query_instances(scenes, ycbv, ref_step, targets)
        rows = []
        for scene, im_id, insts in tqdm(queries, desc=desc, leave=False):
            K = scene.K(im_id)
            if model is not None:
                fmap, size, input_size = _features(model, scene.image(im_id), ycbv.feature_px)
            else:
                size = scene.mask_visib(im_id, insts[0].gt_idx).shape
            depth = scene.depth(im_id) if render is not None else None
            for inst in insts:
                model_pts = object_models[inst.obj_id]
                pts2d = box_grid(inst.bbox_visib, size, ycbv.grid_step, ycbv.bbox_margin)
                n_match, n_in, ok, pose = 0, 0, False, np.eye(4)
                if inst.obj_id in banks and len(pts2d):
                    bank_desc, bank_pts = banks[inst.obj_id]
                    if model is None:
                        pts3d, matched2d = oracle_matches(bank_pts, pts2d, K, inst.pose,
                                                          scene.mask_visib(im_id, inst.gt_idx))
                    else:
                        feats = sample(model, fmap, pts2d, size, input_size)
                        qi, ti = mutual_nearest_neighbors(feats, bank_desc.to(feats.device))
                        pts3d, matched2d = bank_pts[ti], pts2d[qi]
                    n_match = len(pts3d)
                    # the OnePose PnP; BOP points are already in mm, so no extra scaling
                    pose, n_in, ok = solve_pnp(pts3d, matched2d, K, ycbv)
                r_err, t_err = pose_errors(pose, inst.pose, "mm")
                dist = add_s_distance(pose, inst.pose, model_pts.points, model_pts.symmetric)
                row = {"id": inst.id, "scene": scene.scene_id, "image": im_id, "object": inst.obj_id,
                       "symmetric": model_pts.symmetric, "visib_fract": inst.visib_fract,
                       "templates": int(len(banks[inst.obj_id][1])) if inst.obj_id in banks else 0,
                       "matches": int(n_match), "inliers": int(n_in), "success": bool(ok),
                       "rot_err_deg": r_err, "trans_err_cm": t_err, "add_s_mm": dist,
                       "diameter_mm": model_pts.diameter}
                if bop_ar:
                    row.update(bop_errors(render, inst.obj_id, model_pts, pose, inst.pose, K, depth,
                                          syms[inst.obj_id]), image_width=int(size[1]))
                rows.append(row)
    return summarise(rows, ycbv, prefix)


def summarise(rows: list[dict], ycbv, prefix: str) -> tuple[dict[str, float], dict[str, list]]:
    """Per-instance rows -> items, per-object table and the headline metrics (per-object mean, then over objects)."""
    counts: dict[int, int] = {}
    for row in rows:
        counts[row["object"]] = counts.get(row["object"], 0) + 1
    items = []
    for row in rows:
        item = {"id": row["id"], "unit": f"obj_{row['object']:06d}", "weight": 1.0 / counts[row["object"]]}
        for k in ycbv.thresholds:
            item[f"{prefix}{threshold_key(k)}"] = 100.0 if (row["rot_err_deg"] < k and row["trans_err_cm"] < k) else 0.0
        item[f"{prefix}add_s_auc"] = auc_score(row["add_s_mm"], ycbv.auc_max_mm)
        item[f"{prefix}add_s@0.1d"] = 100.0 if row["add_s_mm"] < ycbv.add_diameter_frac * row["diameter_mm"] \
            else 0.0
        item.update(_ar_values(row, prefix))
        items.append(item)
    keys = [k for k in (items[0] if items else {}) if k.startswith(prefix)]
    per_object = []
    for obj_id in sorted(counts):
        mine = [it for it, row in zip(items, rows) if row["object"] == obj_id]
        per_object.append({"object": obj_id, "queries": len(mine),
                           **{k[len(prefix):]: float(np.mean([it[k] for it in mine])) for k in keys}})
    metrics = {k: float(np.mean([o[k[len(prefix):]] for o in per_object])) for k in keys}
    for key in ("ar", "ar_vsd", "ar_mssd", "ar_mspd"):
        if items and f"{prefix}{key}" in items[0]:   # BOP's own aggregation: pooled over all queries
            pooled = float(np.mean([it[f"{prefix}{key}"] for it in items]))
            metrics[f"{prefix}{key.replace('ar', 'ar_bop', 1)}"] = pooled
    metrics[f"{prefix}num_queries"] = float(len(rows))
    metrics[f"{prefix}num_objects"] = float(len(per_object))
    return metrics, {"pose_ycbv_instances": rows, "pose_ycbv_objects": per_object, "items": items}


def _ar_values(row: dict, prefix: str) -> dict[str, float]:
    """A query's BOP19 recall shares (percent) from its errors in ``row`` (none when they were not computed;
    ``ar_vsd`` and ``ar`` need the VSD errors)."""
    if "mssd_mm" not in row:
        return {}
    vsd = row.get("vsd")
    rec = bop_metrics.instance_recalls(vsd if vsd is not None else [np.nan] * len(bop_metrics.VSD_TAUS),
                                       row["mssd_mm"], row["mspd_px"], row["diameter_mm"], row["image_width"])
    out = {f"{prefix}ar_mssd": 100.0 * rec["mssd"], f"{prefix}ar_mspd": 100.0 * rec["mspd"]}
    if vsd is not None:
        out.update({f"{prefix}ar_vsd": 100.0 * rec["vsd"], f"{prefix}ar": 100.0 * rec["ar"]})
    return out


def load_object_models(models_dir, obj_ids, max_points: int, seed: int) -> dict:
    info = load_models_info(models_dir)
    return {o: load_object_model(models_dir, o, max_points, seed, info[o]) for o in obj_ids}


def evaluate_bop_dataset(model, test_dir, models_dir, ycbv, *, seed: int, ref_step: int | None = None,
                         scene_ids=None, targets_file=None, prefix: str = "pose_ycbv/", desc: str = "pose_ycbv"
                         ) -> tuple[dict[str, float], dict]:
    """Read a BOP test split + models and run :func:`evaluate_ycbv` (``ycbv``: the ``eval.pose_ycbv`` section)."""
    scenes = list_scenes(test_dir, scene_ids)
    obj_ids = sorted({i.obj_id for s in scenes for im in s.image_ids for i in s.instances(im)})
    targets = read_targets(targets_file) if (ycbv.use_targets and targets_file) else None
    object_models = load_object_models(models_dir, obj_ids, ycbv.max_model_points, seed)
    meshes = load_meshes(models_dir, obj_ids) if getattr(ycbv, "bop_ar", False) else None
    metrics, tables = evaluate_ycbv(model, scenes, object_models, ycbv, seed=seed, ref_step=ref_step, prefix=prefix,
                                    desc=desc, targets=targets, meshes=meshes)
    return metrics, {**tables, "skipped": list(getattr(scenes, "skipped", []))}   # named in the report
