"""One-shot object pose on OnePose-LowTexture (the 3DCorrEnhance protocol).

Templates: every annotated frame of the reference sequence ``<name>-1``; features sampled at its ``anno_loftr`` 2D
keypoints, each paired with its SfM 3D point (``assign_matrix``); pooled and randomly subsampled to at most
``max_templates`` (120k). The ViT input makes each token cover ``feature_px`` (8) image pixels.
Queries: every ``query_step``-th (10th) frame of the test sequence ``<name>-2``, features on a ``grid_step`` (4 px)
grid of pixel centres over the whole image. Mutual nearest neighbours (cosine) -> ``cv2.solvePnPRansac`` (EPnP,
``ransac_reproj_px`` 8 px, ``ransac_iters`` 10k, 3D points scaled by ``points_scale`` 1000 for numerical stability).
A pose needs >= ``min_matches`` (4) matches and >= ``min_inliers`` inliers (released code: more than 5, i.e. 6);
otherwise the identity pose is used (a failure). Accuracy at k cm-k deg per object, averaged over objects.
"""
from __future__ import annotations

import logging

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from corr3d.eval.features import extract_maps, input_size_for_feature_px, sample
from corr3d.eval.matching import mutual_nearest_neighbors
from corr3d.eval.metrics.pose import PoseAccuracyMetric, pose_errors, threshold_key
from corr3d.geometry.pixels import pixel_grid
from corr3d.utils.seeding import stable_seed
from corr3d.utils.torch_utils import eval_mode

log = logging.getLogger(__name__)




def grid_points(height: int, width: int, step: int) -> np.ndarray:
    """(N, 2) pixel centres (x, y) on a ``step``-px lattice starting at the first pixel."""
    return pixel_grid(width, height, step).reshape(-1, 2)


RANSAC_MODES = ("paper", "fast")   # config_schema: eval.pose.ransac / eval.pose_ycbv.ransac
RANSAC_CONFIDENCE = 0.99           # OpenCV's default, which the authors' call keeps


def usac_params(pnp) -> "cv2.UsacParams":
    """The ``fast`` RANSAC: OpenCV's USAC with the protocol's threshold, iteration cap and confidence.

    Why it is faster on the same matches: its minimal sample is 3 points (P3P) instead of EPnP's 5 (at 10 %
    inliers a clean sample is 0.1**3 instead of 0.1**5 likely, so the confidence-based stop comes ~100x sooner when
    there is a pose to find), and when there is none (random features) each of its hypotheses is cheaper; the best
    model is refined by local optimisation on its inliers. ``randomGeneratorState`` fixes its sampler, so results are
    the same in every process (the classic ``paper`` RANSAC seeds its own RNG with a constant on every call, so it
    is deterministic without ``cv2.setRNGSeed`` too)."""
    params = cv2.UsacParams()
    params.threshold = float(pnp.ransac_reproj_px)
    params.maxIterations = int(pnp.ransac_iters)
    params.confidence = RANSAC_CONFIDENCE
    params.randomGeneratorState = 0
    params.isParallel = False            # parallel USAC draws in thread order: not reproducible
    return params


def solve_pnp(points3d: np.ndarray, points2d: np.ndarray, K: np.ndarray, pnp, points_scale: float = 1.0
              ) -> tuple[np.ndarray, int, bool]:
    """PnP-RANSAC -> (4x4 object->camera pose (identity on failure), number of inliers, success).

    ``pnp``: a pose section (``eval.pose`` or ``eval.pose_ycbv``: ``min_matches``, ``min_inliers``,
    ``ransac_reproj_px``, ``ransac_iters``, ``ransac``); 3D points are multiplied by ``points_scale`` for the solver.
    ``ransac``: ``paper`` = the authors' ``cv2.solvePnPRansac`` (EPnP, confidence 0.99; it runs all
    ``ransac_iters`` when the inlier ratio is low), ``fast`` = OpenCV USAC (:func:`usac_params`)."""
    mode = getattr(pnp, "ransac", "paper")   # sections written before the key existed mean the authors' call
    if mode not in RANSAC_MODES:
        raise ValueError(f"ransac must be one of {RANSAC_MODES}, not {mode!r}")
    if len(points3d) < pnp.min_matches:
        return np.eye(4), 0, False
    obj = np.ascontiguousarray(points3d * points_scale, dtype=np.float64)
    img = np.ascontiguousarray(points2d, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    if mode == "paper":
        ok, rvec, tvec, inliers = cv2.solvePnPRansac(
            obj, img, K, None, reprojectionError=pnp.ransac_reproj_px, iterationsCount=pnp.ransac_iters,
            flags=cv2.SOLVEPNP_EPNP)
    else:
        try:
            ok, _, rvec, tvec, inliers = cv2.solvePnPRansac(obj, img, K, None, params=usac_params(pnp))
        except cv2.error:   # USAC raises on degenerate input (e.g. all points collinear) where RANSAC fails
            return np.eye(4), 0, False
    n_in = 0 if inliers is None else len(inliers)
    if not ok or inliers is None or n_in < pnp.min_inliers:
        return np.eye(4), n_in, False
    R, _ = cv2.Rodrigues(rvec)
    pose = np.eye(4)
    pose[:3, :3] = R
    pose[:3, 3] = tvec.reshape(3) / points_scale
    return pose, n_in, True


class TemplateBank:
    """Pooled template descriptors (M, C) and their 3D points (M, 3) of one object."""

    def __init__(self, descriptors: torch.Tensor, points3d: np.ndarray):
        self.descriptors = descriptors
        self.points3d = points3d


def build_templates(model, obj, pose, rng: np.random.Generator) -> TemplateBank:
    seq = obj.ref
    descs, pts = [], []
    kp3d = obj.keypoints3d
    for fid in tqdm(seq.anno_ids, desc=f"templates {obj.name}", leave=False):
        kps, idx3d = seq.anno(fid)
        if len(kps) == 0:
            continue
        image = seq.image(fid)
        size = image.shape[:2]
        input_size = input_size_for_feature_px(size, model.patch_size, pose.feature_px)
        fmap = extract_maps(model, [image], input_size, batch_size=1)[0]
        descs.append(sample(model, fmap, kps, size, input_size))
        pts.append(kp3d[idx3d])
    if not descs:
        raise ValueError(f"{obj.name}: no annotated reference frames")
    desc = torch.cat(descs)
    points = np.concatenate(pts)
    if len(desc) > pose.max_templates:
        keep = np.sort(rng.choice(len(desc), pose.max_templates, replace=False))
        desc, points = desc[torch.from_numpy(keep).to(desc.device)], points[keep]
    return TemplateBank(desc, points)


def query_frames(obj, pose) -> list[str]:
    """Every ``query_step``-th test frame, in ``frame_order``: ``lexicographic`` (the authors' ``sorted(glob)`` of
    ``color/<i>.png``: 0, 1, 10, 100, 101, ...) or ``numeric`` (0, 1, 2, ...)."""
    ids = list(obj.test.frame_ids)
    if pose.frame_order == "lexicographic":
        ids = sorted(ids)
    elif pose.frame_order != "numeric":
        raise ValueError(f"eval.pose.frame_order must be lexicographic or numeric, not {pose.frame_order!r}")
    return ids[::pose.query_step]


def project(points3d: np.ndarray, K: np.ndarray, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) continuous pixel coordinates and (N,) depths of object points under a 4x4 object->camera pose."""
    cam = points3d @ pose[:3, :3].T + pose[:3, 3]
    z = cam[:, 2]
    uv = (cam @ np.asarray(K, dtype=np.float64).T)[:, :2] / np.where(np.abs(z) > 1e-12, z, 1e-12)[:, None]
    return uv, z


def match_precision(points3d: np.ndarray, points2d: np.ndarray, K: np.ndarray, pose_gt: np.ndarray,
                    radius_px: float) -> float:
    """Fraction of 2D-3D matches whose 3D point projects (true pose) within ``radius_px`` of its 2D point
    (a diagnostic of match quality independent of RANSAC; NaN without matches)."""
    if len(points3d) == 0:
        return float("nan")
    uv, z = project(points3d, K, pose_gt)
    return float(np.mean((z > 0) & (np.linalg.norm(uv - points2d, axis=1) < radius_px)))


def _evaluate_pose(objects: list, pose_cfg, prefix: str, desc: str, correspondences
                   ) -> tuple[dict[str, float], dict[str, list]]:
    """Shared loop: ``correspondences(obj)`` returns a function ``fid -> (points3d (M, 3), points2d (M, 2))`` for
    that object's query frames; PnP, errors, accuracy and the per-frame items are common to models and oracle."""
    metric = PoseAccuracyMetric(pose_cfg.thresholds, [o.name for o in objects])
    frame_rows, items = [], []
    for obj in tqdm(objects, desc=desc, leave=False):
        match = correspondences(obj)
        frames = query_frames(obj, pose_cfg)
        for fid in tqdm(frames, desc=f"queries {obj.name}", leave=False):
            pts3d, pts2d = match(fid)
            K, pose_gt = obj.test.K(fid), obj.test.pose(fid)
            pose, n_in, ok = solve_pnp(pts3d, pts2d, K, pose_cfg, pose_cfg.points_scale)
            r_err, t_err = pose_errors(pose, pose_gt, pose_cfg.unit)
            metric.update(r_err, t_err, obj.name)
            row = {"object": obj.name, "frame": fid, "matches": int(len(pts3d)), "inliers": int(n_in),
                   "success": bool(ok), "rot_err_deg": r_err, "trans_err_cm": t_err,
                   "match_precision": match_precision(pts3d, pts2d, K, pose_gt, pose_cfg.ransac_reproj_px)}
            # one item per query frame; weight 1/frames of its object, so the weighted item mean is the
            # per-object accuracy averaged over objects (the headline)
            item = {"id": f"{obj.name}/{fid}", "unit": obj.name, "weight": 1.0 / len(frames)}
            for k in pose_cfg.thresholds:
                hit = bool(r_err < k and t_err < k)
                row[threshold_key(k)] = hit
                item[f"{prefix}{threshold_key(k)}"] = 100.0 if hit else 0.0
            frame_rows.append(row)
            items.append(item)
    values = {f"{prefix}{k}": float(v) for k, v in metric.compute().items()}
    return values, {"pose_objects": metric.per_group(), "pose_frames": frame_rows, "items": items}


def evaluate_objects(model, objects: list, pose, *, seed: int, prefix: str = "pose/",
                     desc: str = "pose") -> tuple[dict[str, float], dict[str, list]]:
    """k cm-k deg accuracy per object and averaged under ``pose`` (the ``eval.pose`` section); per-frame and
    per-object rows, and ``items`` (one per query frame, unit = object) whose weighted mean is each headline
    accuracy. Templates are subsampled from (``seed``, object)."""
    def correspondences(obj):
        rng = np.random.default_rng(stable_seed("pose-templates", seed, obj.name))
        bank = build_templates(model, obj, pose, rng)

        def match(fid):
            image = obj.test.image(fid)
            size = image.shape[:2]
            input_size = input_size_for_feature_px(size, model.patch_size, pose.feature_px)
            fmap = extract_maps(model, [image], input_size, batch_size=1)[0]
            grid = grid_points(size[0], size[1], pose.grid_step)
            feats = sample(model, fmap, grid, size, input_size)
            qi, ti = mutual_nearest_neighbors(feats, bank.descriptors.to(feats.device))
            return bank.points3d[ti], grid[qi]
        return match

    with eval_mode(model):
        return _evaluate_pose(objects, pose, prefix, desc, correspondences)


def evaluate_oracle_pose(objects: list, pose, *, seed: int, prefix: str = "pose/",
                         desc: str = "pose oracle") -> tuple[dict[str, float], dict[str, list]]:
    """The ceiling of the protocol: perfect matching. Each SfM point (up to ``max_templates``) that projects into
    the query frame under the true pose is matched to its nearest query-grid point (so the oracle keeps the
    protocol's ``grid_step`` quantisation), then the same PnP-RANSAC and accuracy as :func:`evaluate_objects`."""
    def correspondences(obj):
        rng = np.random.default_rng(stable_seed("pose-oracle", seed, obj.name))
        points = obj.keypoints3d
        if len(points) > pose.max_templates:
            points = points[np.sort(rng.choice(len(points), pose.max_templates, replace=False))]

        def match(fid):
            image = obj.test.image(fid)
            h, w = image.shape[:2]
            uv, z = project(points, obj.test.K(fid), obj.test.pose(fid))
            inside = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
            step = pose.grid_step
            # nearest point of grid_points' lattice (x = 0.5, 0.5 + step, ...; last one <= w - 0.5)
            cells = np.round((uv[inside] - 0.5) / step)
            cells = np.clip(cells, 0, [(w - 1) // step, (h - 1) // step])
            return points[inside], cells * step + 0.5
        return match

    return _evaluate_pose(objects, pose, prefix, desc, correspondences)
