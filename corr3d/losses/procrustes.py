"""A differentiable-Procrustes correspondence loss ("DiffProc" of paper Table 4; the paper gives no definition, so
this is corr3d's own, documented here).

Both views' points carry object-space positions, so the true rigid motion between matched points is the identity.
For every anchor i of view 0 that has a positive in view 1 (||X_i - Y_j|| < pos_radius, i.e. it is visible there):

    p_ik   = softmax_k(s_ik / tau) over all valid view-1 points k      (soft nearest neighbour)
    Yhat_i = sum_k p_ik Y_k                                              (soft-matched 3D point)
    (R, t) = argmin_{R in SO(3), t} sum_i ||R X_i + t - Yhat_i||^2       (Kabsch, differentiable through the SVD)

    L = mean_i ||Yhat_i - X_i||  +  mean_i ||R X_i + t - X_i||

The first term is the soft-argmax 3D matching error (it alone is zero only for exact matches); the second is the
error of the rigid motion the soft matches imply, measured on the anchors themselves (zero iff (R, t) = identity on
them). Both are in object units (objects have unit extent). ``neg_radius`` is unused (every point competes in the
softmax). With fewer than 3 anchors the Procrustes term is skipped (the motion is undetermined).
"""
from __future__ import annotations

import torch

from corr3d.losses.precision import full_precision_loss
from corr3d.losses.smooth_ap import _check_shapes, _pair_masks


def kabsch(src: torch.Tensor, dst: torch.Tensor, weights: torch.Tensor | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation R (3,3) and translation t (3,) minimising sum_i w_i ||R src_i + t - dst_i||^2, det R = +1."""
    w = torch.ones(len(src), dtype=src.dtype, device=src.device) if weights is None else weights.to(src.dtype)
    w = w / w.sum().clamp(min=1e-12)
    mu_s, mu_d = (w[:, None] * src).sum(0), (w[:, None] * dst).sum(0)
    cov = ((dst - mu_d) * w[:, None]).T @ (src - mu_s)  # sum_i w_i (d_i)(s_i)^T
    u, _, vh = torch.linalg.svd(cov)
    sign = torch.sign(torch.linalg.det(u @ vh)).detach()
    d = torch.diag(torch.stack([torch.ones_like(sign), torch.ones_like(sign), sign]))
    rot = u @ d @ vh
    return rot, mu_d - rot @ mu_s


@full_precision_loss
def diff_procrustes_loss(feat0: torch.Tensor, feat1: torch.Tensor, xyz0: torch.Tensor, xyz1: torch.Tensor,
                         valid0: torch.Tensor | None = None, valid1: torch.Tensor | None = None,
                         pos_radius: float = 0.005, neg_radius: float = 0.1, temperature: float = 0.01,
                         symmetric: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Same arguments and stats convention as ``corr3d.losses.smooth_ap.smooth_ap_loss`` (see module doc)."""
    _check_shapes(feat0, feat1, xyz0, xyz1)
    xyz0, xyz1 = xyz0.to(feat0.dtype), xyz1.to(feat0.dtype)
    valid0 = torch.ones(feat0.shape[:2], dtype=torch.bool, device=feat0.device) if valid0 is None else valid0.bool()
    valid1 = torch.ones(feat1.shape[:2], dtype=torch.bool, device=feat1.device) if valid1 is None else valid1.bool()
    loss, stats = _directional(feat0, feat1, xyz0, xyz1, valid0, valid1, pos_radius, neg_radius, temperature)
    if symmetric:
        loss_10, _ = _directional(feat1, feat0, xyz1, xyz0, valid1, valid0, pos_radius, neg_radius, temperature)
        stats.update(loss_01=loss.detach(), loss_10=loss_10.detach())
        loss = (loss + loss_10) / 2.0
    stats["loss"] = loss.detach()
    return loss, stats


def _directional(feat_a, feat_b, xyz_a, xyz_b, valid_a, valid_b, pos_radius, neg_radius, temperature):
    losses, match_err, rigid_err, anchors = [], [], [], 0
    for b in range(feat_a.shape[0]):
        pos, _ = _pair_masks(xyz_a[b:b + 1], xyz_b[b:b + 1], valid_a[b:b + 1], valid_b[b:b + 1], pos_radius,
                             neg_radius)
        idx = torch.nonzero(pos[0].any(-1)).flatten()
        if len(idx) == 0:
            continue
        logits = (feat_a[b, idx] @ feat_b[b].T) / temperature
        probs = torch.softmax(logits.masked_fill(~valid_b[b][None], float("-inf")), dim=-1)
        y_hat = probs @ xyz_b[b]
        x = xyz_a[b, idx]
        res = (y_hat - x).norm(dim=-1).mean()
        total = res
        if len(idx) >= 3:
            rot, t = kabsch(x.double(), y_hat.double())
            rigid = ((x.double() @ rot.T + t) - x.double()).norm(dim=-1).mean().to(res.dtype)
            total = total + rigid
            rigid_err.append(rigid.detach())
        losses.append(total)
        match_err.append(res.detach())
        anchors += len(idx)
    stats = {"num_anchors_with_positive": torch.tensor(anchors, device=feat_a.device)}
    if not losses:
        return (feat_a.sum() + feat_b.sum()) * 0.0, stats
    stats["soft_match_error"] = torch.stack(match_err).mean()
    if rigid_err:
        stats["rigid_error"] = torch.stack(rigid_err).mean()
    return torch.stack(losses).mean(), stats
