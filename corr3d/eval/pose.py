"""One-shot object pose on OnePose-LowTexture (the 3DCorrEnhance protocol, paper.md §4.2).

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
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from corr3d.eval.features import extract_maps, input_size_for_feature_px, sample
from corr3d.eval.metrics.pose import PoseAccuracyMetric, pose_errors, threshold_key

log = logging.getLogger(__name__)


@dataclass
class PoseSettings:
    feature_px: float = 8.0
    max_templates: int = 120000
    query_step: int = 10
    grid_step: int = 4
    ransac_reproj_px: float = 8.0
    ransac_iters: int = 10000
    min_matches: int = 4
    min_inliers: int = 6
    points_scale: float = 1000.0
    thresholds: Sequence[float] = (1, 3, 5)
    unit: str = "m"
    seed: int = 0
    batch_size: int = 4
    match_chunk: int = 8192

    @classmethod
    def from_config(cls, cfg) -> "PoseSettings":
        p = cfg.eval.pose
        return cls(feature_px=float(p.feature_px), max_templates=int(p.max_templates), query_step=int(p.query_step),
                   grid_step=int(p.grid_step), ransac_reproj_px=float(p.ransac_reproj_px),
                   ransac_iters=int(p.ransac_iters), min_matches=int(p.min_matches), min_inliers=int(p.min_inliers),
                   points_scale=float(p.points_scale), thresholds=tuple(float(t) for t in p.thresholds),
                   unit=str(p.unit), seed=int(cfg.eval.seed), batch_size=int(cfg.eval.batch_size))


def grid_points(height: int, width: int, step: int) -> np.ndarray:
    """(N, 2) pixel centres (x, y) on a ``step``-px lattice starting at the first pixel."""
    xs = np.arange(0, width, step) + 0.5
    ys = np.arange(0, height, step) + 0.5
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], 1)


@torch.no_grad()
def mutual_nearest_neighbours(a: torch.Tensor, b: torch.Tensor, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Indices (i, j) with a[i]'s best match b[j] and b[j]'s best match a[i] (dot product of unit features)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    nn_ab = torch.cat([(a[s:s + chunk] @ b.T).argmax(1) for s in range(0, len(a), chunk)])
    nn_ba = torch.cat([(b[s:s + chunk] @ a.T).argmax(1) for s in range(0, len(b), chunk)])
    i = torch.arange(len(a), device=a.device)
    mutual = nn_ba[nn_ab] == i
    return i[mutual].cpu().numpy(), nn_ab[mutual].cpu().numpy()


def solve_pnp(points3d: np.ndarray, points2d: np.ndarray, K: np.ndarray, settings: PoseSettings
              ) -> tuple[np.ndarray, int, bool]:
    """EPnP-RANSAC -> (4x4 object->camera pose (identity on failure), number of inliers, success)."""
    if len(points3d) < settings.min_matches:
        return np.eye(4), 0, False
    ok, rvec, tvec, inliers = cv2.solvePnPRansac(
        np.ascontiguousarray(points3d * settings.points_scale, dtype=np.float64),
        np.ascontiguousarray(points2d, dtype=np.float64), np.asarray(K, dtype=np.float64), None,
        reprojectionError=settings.ransac_reproj_px, iterationsCount=settings.ransac_iters,
        flags=cv2.SOLVEPNP_EPNP)
    n_in = 0 if inliers is None else len(inliers)
    if not ok or inliers is None or n_in < settings.min_inliers:
        return np.eye(4), n_in, False
    R, _ = cv2.Rodrigues(rvec)
    pose = np.eye(4)
    pose[:3, :3] = R
    pose[:3, 3] = tvec.reshape(3) / settings.points_scale
    return pose, n_in, True


class TemplateBank:
    """Pooled template descriptors (M, C) and their 3D points (M, 3) of one object."""

    def __init__(self, descriptors: torch.Tensor, points3d: np.ndarray):
        self.descriptors = descriptors
        self.points3d = points3d


def build_templates(model, obj, settings: PoseSettings, rng: np.random.Generator) -> TemplateBank:
    seq = obj.ref
    descs, pts = [], []
    kp3d = obj.keypoints3d
    for fid in tqdm(seq.anno_ids, desc=f"templates {obj.name}", leave=False):
        kps, idx3d = seq.anno(fid)
        if len(kps) == 0:
            continue
        image = seq.image(fid)
        size = image.shape[:2]
        input_size = input_size_for_feature_px(size, model.patch_size, settings.feature_px)
        fmap = extract_maps(model, [image], input_size, batch_size=1)[0]
        descs.append(sample(model, fmap, kps, size, input_size))
        pts.append(kp3d[idx3d])
    if not descs:
        raise ValueError(f"{obj.name}: no annotated reference frames")
    desc = torch.cat(descs)
    points = np.concatenate(pts)
    if len(desc) > settings.max_templates:
        keep = np.sort(rng.choice(len(desc), settings.max_templates, replace=False))
        desc, points = desc[torch.from_numpy(keep).to(desc.device)], points[keep]
    return TemplateBank(desc, points)


def query_frames(obj, settings: PoseSettings) -> list[str]:
    return obj.test.frame_ids[::settings.query_step]


def evaluate_objects(model, objects: list, settings: PoseSettings, prefix: str = "pose/",
                     desc: str = "pose") -> tuple[dict[str, float], dict[str, list]]:
    """k cm-k deg accuracy per object and averaged; per-frame and per-object rows for the CSVs."""
    metric = PoseAccuracyMetric(settings.thresholds, [o.name for o in objects])
    frame_rows = []
    was_training = model.training
    model.eval()
    for obj in tqdm(objects, desc=desc, leave=False):
        rng = np.random.default_rng([settings.seed, sum(obj.name.encode())])
        bank = build_templates(model, obj, settings, rng)
        for fid in tqdm(query_frames(obj, settings), desc=f"queries {obj.name}", leave=False):
            image = obj.test.image(fid)
            size = image.shape[:2]
            input_size = input_size_for_feature_px(size, model.patch_size, settings.feature_px)
            fmap = extract_maps(model, [image], input_size, batch_size=1)[0]
            grid = grid_points(size[0], size[1], settings.grid_step)
            feats = sample(model, fmap, grid, size, input_size)
            qi, ti = mutual_nearest_neighbours(feats, bank.descriptors.to(feats.device), settings.match_chunk)
            pose, n_in, ok = solve_pnp(bank.points3d[ti], grid[qi], obj.test.K(fid), settings)
            r_err, t_err = pose_errors(pose, obj.test.pose(fid), settings.unit)
            metric.update(r_err, t_err, obj.name)
            row = {"object": obj.name, "frame": fid, "matches": int(len(qi)), "inliers": int(n_in),
                   "success": bool(ok), "rot_err_deg": r_err, "trans_err_cm": t_err}
            for k in settings.thresholds:
                row[threshold_key(k)] = bool(r_err < k and t_err < k)
            frame_rows.append(row)
    model.train(was_training)
    values = {f"{prefix}{k}": float(v) for k, v in metric.compute().items()}
    return values, {"pose_objects": metric.per_group(), "pose_frames": frame_rows}
