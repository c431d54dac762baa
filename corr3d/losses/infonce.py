"""Dense InfoNCE over exactly the positives and negatives the SmoothAP loss uses (paper Table 4, "Contrastive").

With s the cosine similarity, tau the temperature, P the positive pairs (||X_i - Y_j|| < pos_radius) and N_i the
negatives of anchor i (||X_i - Y_k|| > neg_radius; points between the radii are ignored, as in SmoothAP):

    l_ij = -log( exp(s_ij / tau) / (exp(s_ij / tau) + sum_{k in N_i} exp(s_ik / tau)) )
    L    = mean over (i, j) in P of l_ij          (symmetric: the average of both anchor directions)

Each positive is contrasted against the anchor's negatives only (not against its other positives), so the loss sees
the same pairs as ``smooth_ap_loss``; only the per-pair objective differs. Unlike SmoothAP's clamped sigmoids, the
softmax never saturates to zero gradient, which is why it is a candidate for the short CPU recipe.
"""
from __future__ import annotations

import torch

from corr3d.losses.precision import full_precision_loss
from corr3d.losses.smooth_ap import DEFAULT_BLOCK_ELEMENTS, _check_shapes, _pair_masks


def _directional(feat_a, feat_b, xyz_a, xyz_b, valid_a, valid_b, pos_radius, neg_radius, temperature,
                 block_elements):
    n, m = feat_a.shape[1], feat_b.shape[1]
    step = max(1, block_elements // max(m, 1))
    terms = []
    num_neg = feat_a.new_zeros(())
    anchors_with_pos = torch.zeros((), dtype=torch.long, device=feat_a.device)
    for start in range(0, n, step):  # anchor blocks bound the (anchors x points) memory
        stop = start + step
        pos, neg = _pair_masks(xyz_a[:, start:stop], xyz_b, valid_a[:, start:stop], valid_b, pos_radius, neg_radius)
        logits = (feat_a[:, start:stop] @ feat_b.transpose(1, 2)) / temperature
        neg_lse = torch.logsumexp(logits.masked_fill(~neg, float("-inf")), dim=-1)  # (B, n); -inf: no negatives
        b, i, j = pos.nonzero(as_tuple=True)
        s = logits[b, i, j]
        terms.append(torch.logaddexp(s, neg_lse[b, i]) - s)
        num_neg = num_neg + neg.sum()
        anchors_with_pos = anchors_with_pos + pos.any(-1).sum()
    stats = {"num_anchors_with_positive": anchors_with_pos,
             "mean_negatives_per_anchor": num_neg / valid_a.sum().clamp(min=1)}
    all_terms = torch.cat(terms) if terms else feat_a.new_zeros(0)
    if all_terms.numel() == 0:
        stats["num_positives"] = torch.zeros((), dtype=torch.long, device=feat_a.device)
        return (feat_a.sum() + feat_b.sum()) * 0.0, stats  # keeps the graph (DDP gradient sync)
    stats["num_positives"] = torch.tensor(all_terms.numel(), device=feat_a.device)
    return all_terms.mean(), stats


@full_precision_loss
def infonce_loss(feat0: torch.Tensor, feat1: torch.Tensor, xyz0: torch.Tensor, xyz1: torch.Tensor,
                 valid0: torch.Tensor | None = None, valid1: torch.Tensor | None = None,
                 pos_radius: float = 0.005, neg_radius: float = 0.1, temperature: float = 0.07,
                 symmetric: bool = False, block_elements: int = DEFAULT_BLOCK_ELEMENTS
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Same arguments and stats convention as ``corr3d.losses.smooth_ap.smooth_ap_loss``."""
    _check_shapes(feat0, feat1, xyz0, xyz1)
    xyz0, xyz1 = xyz0.to(feat0.dtype), xyz1.to(feat0.dtype)
    valid0 = torch.ones(feat0.shape[:2], dtype=torch.bool, device=feat0.device) if valid0 is None else valid0.bool()
    valid1 = torch.ones(feat1.shape[:2], dtype=torch.bool, device=feat1.device) if valid1 is None else valid1.bool()
    args = (pos_radius, neg_radius, temperature, block_elements)
    loss, stats = _directional(feat0, feat1, xyz0, xyz1, valid0, valid1, *args)
    if symmetric:
        loss_10, _ = _directional(feat1, feat0, xyz1, xyz0, valid1, valid0, *args)
        stats.update(loss_01=loss.detach(), loss_10=loss_10.detach())
        loss = (loss + loss_10) / 2.0
    stats["loss"] = loss.detach()
    return loss, stats
