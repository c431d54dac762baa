"""BOP19 pose errors and Average Recall (VSD, MSSD, MSPD), as pure functions.

Definitions follow the BOP Challenge 2019 protocol (Hodan et al., "BOP Challenge 2020 on 6D Object Localization",
and bop_toolkit's ``pose_error.py`` / ``visibility.py`` / ``misc.get_symmetry_transformations`` /
``scripts/eval_bop19_pose.py``); bop_toolkit itself is not on PyPI, so corr3d re-implements them:

- **VSD** (Visible Surface Discrepancy): distance images (distance from the camera centre, not z) of the model
  rendered in the estimated and the ground-truth pose are compared with the test depth. Visibility masks use the
  ``bop19`` mode (a pixel with no measured depth counts as visible): ``visib_gt = gt > 0 & (gt - test <= delta or
  test == 0)``; ``visib_est`` is the same test for the estimate, OR-ed with ``visib_gt & est > 0``. With the step
  cost, ``e = (#{inter: |gt - est| / diameter >= tau} + #(union - inter)) / #union`` (1 when the union is empty),
  for each tau in 0.05..0.5 (``delta`` = 15 mm for YCB-V).
- **MSSD**: ``min over symmetries S of max over model points x of |P_est x - P_gt S x|`` (mm).
- **MSPD**: the same with projected points (px).
- **Symmetries**: identity, ``symmetries_discrete`` (4x4 row-major), and each ``symmetries_continuous`` axis
  discretised so that the point farthest from the axis moves at most ``max_sym_disc_step`` (0.01) of the diameter
  per step: ``ceil(pi / step)`` rotations about the axis through ``offset``; discrete x continuous combinations.
- **Recall**: an estimate is correct when its error is strictly below the threshold. Thresholds: VSD 0.05..0.5
  (for each tau: 10 x 10 settings), MSSD 0.05..0.5 x diameter, MSPD 5..50 x r px with r = image width / 640 (BOP:
  "5r, ..., 50r, r = w/640"; YCB-V is 640 px wide, so r = 1). AR_X = recall averaged over X's settings, AR = mean of
  AR_VSD, AR_MSSD, AR_MSPD.

Because every recall is a mean over instances, AR_X equals the mean over instances of each instance's fraction of
passed settings (:func:`instance_recalls`): that per-instance value is what the items carry, so the bootstrap CI
machinery covers AR.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

# BOP19 settings (bop_toolkit scripts/eval_bop19_pose.py)
VSD_DELTA_MM = 15.0
VSD_TAUS = tuple(float(t) for t in np.round(np.arange(0.05, 0.51, 0.05), 2))
VSD_THRESHOLDS = VSD_TAUS
MSSD_THRESHOLDS = VSD_TAUS                   # x object diameter
MSPD_THRESHOLDS_PX = tuple(float(t) for t in range(5, 51, 5))    # x image width / 640
MAX_SYM_DISC_STEP = 0.01


def _rt(pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pose = np.asarray(pose, dtype=np.float64)
    if pose.shape not in ((4, 4), (3, 4)):
        raise ValueError(f"a pose must be a 4x4 or 3x4 matrix, got shape {pose.shape}")
    return pose[:3, :3], pose[:3, 3]


def _axis_rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' rotation about the unit ``axis`` by ``angle`` radians."""
    x, y, z = axis
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + np.sin(angle) * k + (1.0 - np.cos(angle)) * (k @ k)


def symmetry_transformations(info: Mapping, max_sym_disc_step: float = MAX_SYM_DISC_STEP
                             ) -> tuple[np.ndarray, np.ndarray]:
    """(S, 3, 3) rotations and (S, 3) translations of an object's symmetries (identity first) from its
    models_info.json entry (``symmetries_discrete``: 4x4 row-major lists; ``symmetries_continuous``: ``axis`` and
    ``offset``), with continuous symmetries discretised as bop_toolkit does."""
    if not max_sym_disc_step > 0:
        raise ValueError(f"max_sym_disc_step must be positive, got {max_sym_disc_step}")
    disc = [(np.eye(3), np.zeros(3))]
    for k, sym in enumerate(info.get("symmetries_discrete", []) or []):
        m = np.asarray(sym, dtype=np.float64)
        if m.size != 16:
            raise ValueError(f"symmetries_discrete[{k}] must have 16 numbers (a row-major 4x4), got {m.size}")
        m = m.reshape(4, 4)
        disc.append((m[:3, :3], m[:3, 3]))
    cont = []
    for k, sym in enumerate(info.get("symmetries_continuous", []) or []):
        axis = np.asarray(sym["axis"], dtype=np.float64).reshape(3)
        offset = np.asarray(sym.get("offset", (0, 0, 0)), dtype=np.float64).reshape(3)
        norm = np.linalg.norm(axis)
        if not norm > 0:
            raise ValueError(f"symmetries_continuous[{k}] has a zero axis")
        steps = int(np.ceil(np.pi / max_sym_disc_step))
        for i in range(steps):
            R = _axis_rotation(axis / norm, i * 2.0 * np.pi / steps)
            cont.append((R, offset - R @ offset))     # rotation about the axis through ``offset``
    if cont:   # every discrete symmetry combined with every continuous one (continuous applied second)
        pairs = [(Rc @ Rd, Rc @ td + tc) for Rd, td in disc for Rc, tc in cont]
    else:
        pairs = disc
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _gt_under_symmetries(pose_gt, points, syms) -> np.ndarray:
    """(S, N, 3) model points in the camera frame under the ground-truth pose composed with each symmetry."""
    R_gt, t_gt = _rt(pose_gt)
    Rs, ts = syms
    # P_gt S x = (R_gt R_s) x + (R_gt t_s + t_gt), as one batched GEMM (S, N, 3)
    return np.matmul(points[None], np.transpose(R_gt @ Rs, (0, 2, 1))) + (ts @ R_gt.T + t_gt)[:, None, :]


def mssd(pose_est, pose_gt, points, syms) -> float:
    """Maximum Symmetry-aware Surface Distance (units of ``points``): min over symmetries of the max point
    distance. ``syms``: :func:`symmetry_transformations`."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    R_e, t_e = _rt(pose_est)
    est = points @ R_e.T + t_e
    gt = _gt_under_symmetries(pose_gt, points, syms)
    return _max_min(gt - est[None])


def _max_min(diff: np.ndarray) -> float:
    """min over symmetries (axis 0) of the max over points of the vector norm (last axis)."""
    return float(np.sqrt(np.einsum("snk,snk->sn", diff, diff).max(axis=1).min()))


def _project(cam: np.ndarray, K: np.ndarray) -> np.ndarray:
    uvw = cam @ np.asarray(K, dtype=np.float64).T
    return uvw[..., :2] / uvw[..., 2:3]


def mspd(pose_est, pose_gt, K, points, syms) -> float:
    """Maximum Symmetry-aware Projection Distance (px): min over symmetries of the max distance between the
    projections of the model points."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    R_e, t_e = _rt(pose_est)
    est = _project(points @ R_e.T + t_e, K)
    gt = _project(_gt_under_symmetries(pose_gt, points, syms), K)
    return _max_min(gt - est[None])


def distance_image(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Depth (z) image -> distance from the camera centre per pixel (0 stays 0). ``K`` in corr3d's continuous
    convention (pixel (x, y) has its centre at (x + 0.5, y + 0.5)); bop_toolkit's integer-pixel K gives the same
    rays."""
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2:
        raise ValueError(f"a depth image must be 2-D, got shape {depth.shape}")
    K = np.asarray(K, dtype=np.float64)
    h, w = depth.shape
    xs = (np.arange(w) + 0.5 - K[0, 2]) / K[0, 0]
    ys = (np.arange(h) + 0.5 - K[1, 2]) / K[1, 1]
    return depth * np.sqrt(xs[None, :] ** 2 + ys[:, None] ** 2 + 1.0)


def vsd(depth_est: np.ndarray, depth_gt: np.ndarray, depth_test: np.ndarray, K: np.ndarray, diameter: float,
        delta: float = VSD_DELTA_MM, taus: Sequence[float] = VSD_TAUS) -> np.ndarray:
    """VSD errors (one per tau; step cost, ``bop19`` visibility, distances normalised by ``diameter``) from the
    model's depth rendered in the estimated and the ground-truth pose and the test depth (all in the same unit as
    ``delta`` and ``diameter``; 0 = no depth)."""
    shapes = {np.shape(depth_est), np.shape(depth_gt), np.shape(depth_test)}
    if len(shapes) != 1:
        raise ValueError(f"depth images must share one shape, got {sorted(shapes)}")
    if not diameter > 0:
        raise ValueError(f"diameter must be positive, got {diameter}")
    d_est, d_gt, d_test = (distance_image(d, K) for d in (depth_est, depth_gt, depth_test))
    visib_gt = (d_gt > 0) & ((d_gt - d_test <= delta) | (d_test == 0))
    visib_est = ((d_est > 0) & ((d_est - d_test <= delta) | (d_test == 0))) | (visib_gt & (d_est > 0))
    inter = visib_gt & visib_est
    union = int((visib_gt | visib_est).sum())
    taus = np.asarray(taus, dtype=np.float64)
    if union == 0:
        return np.ones(len(taus))
    outside = union - int(inter.sum())
    dists = np.abs(d_gt[inter] - d_est[inter]) / diameter
    return ((dists[None, :] >= taus[:, None]).sum(1) + outside) / union


def instance_recalls(vsd_errors: Sequence[float], mssd_error: float, mspd_error: float, diameter: float,
                     image_width: int) -> dict[str, float]:
    """One instance's share (fraction 0..1) of the BOP19 settings it passes: ``vsd`` over the 10 taus x 10
    thresholds, ``mssd`` over 0.05..0.5 x diameter, ``mspd`` over 5..50 x width/640 px, and ``ar`` their mean.
    A non-finite error passes nothing."""
    if len(vsd_errors) != len(VSD_TAUS):
        raise ValueError(f"expected {len(VSD_TAUS)} VSD errors (one per tau), got {len(vsd_errors)}")
    if not (diameter > 0 and image_width > 0):
        raise ValueError(f"diameter and image_width must be positive, got {diameter}, {image_width}")
    v = np.nan_to_num(np.asarray(vsd_errors, dtype=np.float64), nan=np.inf)
    vsd_r = float((v[:, None] < np.asarray(VSD_THRESHOLDS)[None, :]).mean())
    mssd_e = mssd_error if np.isfinite(mssd_error) else np.inf
    mspd_e = mspd_error if np.isfinite(mspd_error) else np.inf
    mssd_r = float((mssd_e < np.asarray(MSSD_THRESHOLDS) * diameter).mean())
    mspd_r = float((mspd_e < np.asarray(MSPD_THRESHOLDS_PX) * (image_width / 640.0)).mean())
    return {"vsd": vsd_r, "mssd": mssd_r, "mspd": mspd_r, "ar": (vsd_r + mssd_r + mspd_r) / 3.0}
