"""The paper's SmoothAP variant (as the authors' released code computes it), vectorised over batch, anchors and points.

For anchor i (view 0) and a positive j (view 1, ||X_i - Y_j|| < pos_radius), with N_i the negatives of i
(||X_i - Y_k|| > neg_radius), s the cosine similarity and sigma_tau(x) = 1 / (1 + exp(clamp(-x / tau, -50, 50))):

    AP1_ij = (1 + sigma(s_ij - 1)) / (1 + sigma(s_ij - 1) + sum_{k in N_i} sigma(s_ik - 1))
    AP2_ij = (1 + sigma(1 - s_ij)) / (1 + sigma(1 - s_ij) + sum_{k in N_i} sigma(s_ik - s_ij))
    L      = mean over all positive pairs (i, j) in the batch of 1 - (AP1_ij + AP2_ij) / 2

Points between the two radii are ignored. The clamp also zeroes gradients where |x| / tau > 50, exactly as the
authors' code; with tau = 0.01 the loss saturates and gradients are sparse: log ``num_positives``.
"""
from __future__ import annotations

import torch

# Elements per (anchors x points) block: bounds memory (a 3000 x 3000 pair needs ~3 blocks) without Python loops
# over individual points.
DEFAULT_BLOCK_ELEMENTS = 1 << 22


def smooth_sigmoid(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """sigma_tau(x) with the exponent clamped to [-50, 50] (as in the authors' code)."""
    return 1.0 / (1.0 + torch.exp(torch.clamp(-x / temperature, min=-50.0, max=50.0)))


def _pair_masks(xyz_a, xyz_b, valid_a, valid_b, pos_radius, neg_radius):
    # Direct differences, not the matmul expansion: at a 0.005 radius the expansion's rounding flips pairs.
    dist = torch.cdist(xyz_a, xyz_b, compute_mode="donot_use_mm_for_euclid_dist")
    both = valid_a[:, :, None] & valid_b[:, None, :]
    return (dist < pos_radius) & both, (dist > neg_radius) & both


def _positive_terms(sim, neg, pos, temperature, block_elements):
    """AP1/AP2 for every positive pair of one anchor block: sim, neg, pos are (B, n, M)."""
    zero = sim.new_zeros(())
    neg_sum1 = torch.where(neg, smooth_sigmoid(sim - 1.0, temperature), zero).sum(-1)  # (B, n) per anchor
    b, i, j = pos.nonzero(as_tuple=True)
    ap1_all, ap2_all = [], []
    step = max(1, block_elements // max(sim.shape[-1], 1))
    for start in range(0, b.numel(), step):  # blocks of positive pairs; rows are (pairs, M)
        bb, ii, jj = b[start:start + step], i[start:start + step], j[start:start + step]
        s_ij = sim[bb, ii, jj]
        rows = smooth_sigmoid(sim[bb, ii] - s_ij[:, None], temperature)
        neg_sum2 = torch.where(neg[bb, ii], rows, zero).sum(-1)
        p1 = smooth_sigmoid(s_ij - 1.0, temperature)
        p2 = smooth_sigmoid(1.0 - s_ij, temperature)
        ap1_all.append((1.0 + p1) / (1.0 + p1 + neg_sum1[bb, ii]))
        ap2_all.append((1.0 + p2) / (1.0 + p2 + neg_sum2))
    return ap1_all, ap2_all


def _directional_loss(feat_a, feat_b, xyz_a, xyz_b, valid_a, valid_b, pos_radius, neg_radius, temperature,
                      block_elements):
    """Loss with view-a points as anchors; returns (loss, stats)."""
    n, m = feat_a.shape[1], feat_b.shape[1]
    step = max(1, block_elements // max(m, 1))
    ap1, ap2 = [], []
    num_neg = feat_a.new_zeros(())
    anchors_with_pos = torch.zeros((), dtype=torch.long, device=feat_a.device)
    for start in range(0, n, step):  # anchor blocks
        stop = start + step
        pos, neg = _pair_masks(xyz_a[:, start:stop], xyz_b, valid_a[:, start:stop], valid_b, pos_radius, neg_radius)
        sim = feat_a[:, start:stop] @ feat_b.transpose(1, 2)
        block_ap1, block_ap2 = _positive_terms(sim, neg, pos, temperature, block_elements)
        ap1 += block_ap1
        ap2 += block_ap2
        num_neg = num_neg + neg.sum()
        anchors_with_pos = anchors_with_pos + pos.any(-1).sum()
    num_anchors = valid_a.sum().clamp(min=1)
    stats = {"num_anchors_with_positive": anchors_with_pos, "mean_negatives_per_anchor": num_neg / num_anchors}
    if not ap1 or sum(t.numel() for t in ap1) == 0:
        # No positives: a zero that keeps the graph, so backward() and DDP gradient sync still work.
        zero = (feat_a.sum() + feat_b.sum()) * 0.0
        stats.update(num_positives=torch.zeros((), dtype=torch.long, device=feat_a.device),
                     ap1=feat_a.new_zeros(()), ap2=feat_a.new_zeros(()))
        return zero, stats
    ap1_t, ap2_t = torch.cat(ap1), torch.cat(ap2)
    loss = (1.0 - (ap1_t + ap2_t) / 2.0).mean()
    stats.update(num_positives=torch.tensor(ap1_t.numel(), device=feat_a.device),
                 ap1=ap1_t.detach().mean(), ap2=ap2_t.detach().mean())
    return loss, stats


def _check_shapes(feat0, feat1, xyz0, xyz1):
    if feat0.ndim != 3 or feat1.ndim != 3 or feat0.shape[0] != feat1.shape[0] or feat0.shape[2] != feat1.shape[2]:
        raise ValueError(f"features must be (B, N, C) and (B, M, C), got {tuple(feat0.shape)} {tuple(feat1.shape)}")
    if xyz0.shape[:2] != feat0.shape[:2] or xyz1.shape[:2] != feat1.shape[:2]:
        raise ValueError("xyz0/xyz1 must be (B, N, 3)/(B, M, 3) matching the features")


def smooth_ap_loss(feat0: torch.Tensor, feat1: torch.Tensor, xyz0: torch.Tensor, xyz1: torch.Tensor,
                   valid0: torch.Tensor | None = None, valid1: torch.Tensor | None = None,
                   pos_radius: float = 0.005, neg_radius: float = 0.1, temperature: float = 0.01,
                   symmetric: bool = False, block_elements: int = DEFAULT_BLOCK_ELEMENTS
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SmoothAP between L2-normalised point features feat0 (B, N, C) and feat1 (B, M, C) with object-space
    positions xyz0 (B, N, 3), xyz1 (B, M, 3); valid0/valid1 (B, N)/(B, M) bool mark real points (padding False).

    Returns (scalar loss, stats) with detached tensors: num_positives, num_anchors_with_positive,
    mean_negatives_per_anchor, ap1, ap2 (means over positive pairs); with ``symmetric`` also loss_01/loss_10,
    whose average is the loss (both views serve as anchors).
    """
    _check_shapes(feat0, feat1, xyz0, xyz1)
    xyz0, xyz1 = xyz0.to(feat0.dtype), xyz1.to(feat0.dtype)
    if valid0 is None:
        valid0 = torch.ones(feat0.shape[:2], dtype=torch.bool, device=feat0.device)
    if valid1 is None:
        valid1 = torch.ones(feat1.shape[:2], dtype=torch.bool, device=feat1.device)
    args = (pos_radius, neg_radius, temperature, block_elements)
    loss, stats = _directional_loss(feat0, feat1, xyz0, xyz1, valid0.bool(), valid1.bool(), *args)
    if symmetric:
        loss_10, _ = _directional_loss(feat1, feat0, xyz1, xyz0, valid1.bool(), valid0.bool(), *args)
        stats.update(loss_01=loss.detach(), loss_10=loss_10.detach())
        loss = (loss + loss_10) / 2.0
    stats["loss"] = loss.detach()
    return loss, stats
