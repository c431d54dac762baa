"""The paper's SmoothAP variant (as the authors' released code computes it), vectorised over batch, anchors and points.

For anchor i (view 0) and a positive j (view 1, ||X_i - Y_j|| < pos_radius), with N_i the negatives of i
(||X_i - Y_k|| > neg_radius), s the cosine similarity and sigma_tau(x) = 1 / (1 + exp(clamp(-x / tau, -50, 50))):

    AP1_ij = (1 + sigma(s_ij - 1)) / (1 + sigma(s_ij - 1) + sum_{k in N_i} sigma(s_ik - 1))
    AP2_ij = (1 + sigma(1 - s_ij)) / (1 + sigma(1 - s_ij) + sum_{k in N_i} sigma(s_ik - s_ij))
    L      = mean over all positive pairs (i, j) in the batch of 1 - (AP1_ij + AP2_ij) / 2

Points between the two radii are ignored. The clamp also zeroes gradients where |x| / tau > 50, exactly as the
authors' code; with tau = 0.01 the loss saturates and gradients are sparse: log ``num_positives``.

Speed (issue 13; ``make bench`` group ``loss`` times it against the authors' formulation):
- only anchors WITH a positive enter the similarity GEMM, the negative masks and the AP1 sums (a few hundred of
  3000 on real pairs); the AP1 negative sum is computed once per such anchor, not once per positive pair;
- sigma_tau is ``sigmoid(clamp(x / tau, -50, 50))``: the same function (and the same zero gradient outside the
  clamp) in two elementwise kernels instead of five, with a cheap backward;
- positive pairs are processed in blocks of at most ``block_elements`` (pairs x points) elements, so memory stays
  bounded on dense-positive inputs.
"""
from __future__ import annotations

import torch

from corr3d.losses.precision import full_precision_loss

# Elements per (rows x points) block: bounds memory (a dense 3000 x 3000 pair needs ~3 blocks) without Python loops
# over individual points.
DEFAULT_BLOCK_ELEMENTS = 1 << 22


def smooth_sigmoid(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """sigma_tau(x) = 1 / (1 + exp(clamp(-x / tau, -50, 50))) (as in the authors' code), as a clamped sigmoid."""
    return torch.sigmoid((x * (1.0 / temperature)).clamp_(min=-50.0, max=50.0))


def _distances(xyz_a, xyz_b):
    # Direct differences, not the matmul expansion: at a 0.005 radius the expansion's rounding flips pairs.
    return torch.cdist(xyz_a, xyz_b, compute_mode="donot_use_mm_for_euclid_dist")


def _pair_masks(xyz_a, xyz_b, valid_a, valid_b, pos_radius, neg_radius):
    """(positive, negative) masks (B, n, M) of an anchor block (used by corr3d/losses/infonce.py)."""
    dist = _distances(xyz_a, xyz_b)
    both = valid_a[:, :, None] & valid_b[:, None, :]
    return (dist < pos_radius) & both, (dist > neg_radius) & both


def _directional_loss(feat_a, feat_b, xyz_a, xyz_b, valid_a, valid_b, pos_radius, neg_radius, temperature,
                      block_elements):
    """Loss with view-a points as anchors; returns (loss, stats)."""
    n, m = feat_a.shape[1], feat_b.shape[1]
    step = max(1, block_elements // max(m, 1))
    # 1) positives: all (anchor, point) pairs closer than pos_radius, found block by block over anchors. With all
    #    points valid (the usual case) no (n x M) validity mask is built: each full-size pass costs as much as
    #    the GEMM of the rows that matter.
    all_valid = bool(valid_a.all()) and bool(valid_b.all())
    pos_b, pos_i, pos_j, num_neg = [], [], [], feat_a.new_zeros((), dtype=torch.long)
    for start in range(0, n, step):
        stop = min(n, start + step)
        dist = _distances(xyz_a[:, start:stop], xyz_b)
        if all_valid:
            b, i, j = (dist < pos_radius).nonzero(as_tuple=True)
            num_neg = num_neg + torch.count_nonzero(dist > neg_radius)
        else:
            both = valid_a[:, start:stop, None] & valid_b[:, None, :]
            b, i, j = ((dist < pos_radius) & both).nonzero(as_tuple=True)
            num_neg = num_neg + torch.count_nonzero((dist > neg_radius) & both)
        pos_b.append(b)
        pos_i.append(i + start)
        pos_j.append(j)
    b, i, j = torch.cat(pos_b), torch.cat(pos_i), torch.cat(pos_j)
    num_anchors = valid_a.sum().clamp(min=1)
    stats = {"mean_negatives_per_anchor": num_neg / num_anchors}
    if b.numel() == 0:
        # No positives: a zero that keeps the graph, so backward() and DDP gradient sync still work.
        zero = (feat_a.sum() + feat_b.sum()) * 0.0
        stats.update(num_positives=torch.zeros((), dtype=torch.long, device=feat_a.device),
                     num_anchors_with_positive=torch.zeros((), dtype=torch.long, device=feat_a.device),
                     ap1=feat_a.new_zeros(()), ap2=feat_a.new_zeros(()))
        return zero, stats
    # 2) anchors with at least one positive ("rows"); each positive pair points at its row
    flat = b * n + i
    rows, row_of_pair = torch.unique(flat, return_inverse=True)  # sorted: same pair order as the nonzero scan
    row_b, row_i = rows // n, rows % n
    ap1_parts, ap2_parts = [], []
    # 3) per batch element and block of its rows: similarities to all points, negative masks, AP1 sums once per
    #    anchor; then AP2 for the positive pairs of those rows
    bounds = torch.searchsorted(row_b, torch.arange(feat_a.shape[0] + 1, device=row_b.device)).tolist()
    for batch in range(feat_a.shape[0]):
        for start in range(bounds[batch], bounds[batch + 1], step):
            stop = min(bounds[batch + 1], start + step)
            ri = row_i[start:stop]
            sim = feat_a[batch, ri] @ feat_b[batch].T                                       # (r, M)
            neg = (_distances(xyz_a[batch, ri][None], xyz_b[batch][None])[0] > neg_radius) & valid_b[batch]
            negf = neg.to(sim.dtype)
            neg_sum1 = (smooth_sigmoid(sim - 1.0, temperature) * negf).sum(-1)          # (r,) once per anchor
            pairs = ((row_of_pair >= start) & (row_of_pair < stop)).nonzero(as_tuple=True)[0]
            local = row_of_pair[pairs] - start
            s_ij = sim[local, j[pairs]]
            p1 = smooth_sigmoid(s_ij - 1.0, temperature)
            p2 = smooth_sigmoid(1.0 - s_ij, temperature)
            ap1_parts.append((1.0 + p1) / (1.0 + p1 + neg_sum1[local]))
            # AP2 sums: the first positive of every row aligned with the rows (no (pairs x M) gather, no scatter
            # in backward: dense-positive inputs have about one positive per anchor); further positives gathered
            first = torch.ones_like(local, dtype=torch.bool)
            first[1:] = local[1:] != local[:-1]            # pairs are sorted by row (row-major nonzero scan)
            s_first = s_ij[first]                          # every row has a positive: one first per row, in order
            rows_sum = (smooth_sigmoid(sim - s_first[:, None], temperature) * negf).sum(-1)
            neg_sum2 = torch.zeros_like(s_ij).index_put((first.nonzero(as_tuple=True)[0],), rows_sum)
            extra = (~first).nonzero(as_tuple=True)[0]
            for p0 in range(0, extra.numel(), step):  # blocks of further positive pairs: (pairs, M) rows
                e = extra[p0:p0 + step]
                loc = local[e]
                sums = (smooth_sigmoid(sim[loc] - s_ij[e][:, None], temperature) * negf[loc]).sum(-1)
                neg_sum2 = neg_sum2.index_put((e,), sums)
            ap2_parts.append((1.0 + p2) / (1.0 + p2 + neg_sum2))
    ap1_t = torch.cat(ap1_parts)
    ap2_t = torch.cat(ap2_parts)
    loss = (1.0 - (ap1_t + ap2_t) / 2.0).mean()
    stats.update(num_positives=torch.tensor(b.numel(), device=feat_a.device),
                 num_anchors_with_positive=torch.tensor(rows.numel(), device=feat_a.device),
                 ap1=ap1_t.detach().mean(), ap2=ap2_t.detach().mean())
    return loss, stats


def _check_shapes(feat0, feat1, xyz0, xyz1):
    if feat0.ndim != 3 or feat1.ndim != 3 or feat0.shape[0] != feat1.shape[0] or feat0.shape[2] != feat1.shape[2]:
        raise ValueError(f"features must be (B, N, C) and (B, M, C), got {tuple(feat0.shape)} {tuple(feat1.shape)}")
    if xyz0.shape[:2] != feat0.shape[:2] or xyz1.shape[:2] != feat1.shape[:2]:
        raise ValueError("xyz0/xyz1 must be (B, N, 3)/(B, M, 3) matching the features")


@full_precision_loss
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
