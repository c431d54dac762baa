"""PCK (percentage of correct keypoints) for semantic correspondence.

A transferred keypoint is correct at level alpha when ``||pred - gt|| < alpha * ref`` where ``ref`` is, depending on
the protocol, the (padded) image size (3DCorrEnhance's PF-PASCAL protocol: alpha * 840) or the longer side of the
target bounding box (PF-PASCAL/SPair literature). The metric keeps, per category, the keypoint hits (for per-keypoint
PCK, pooled) and the sum of per-image PCKs (for per-image PCK), so it supports every average in use:

- ``pck@a``: pooled over all keypoints of all pairs (per-keypoint PCK);
- ``pck_img@a``: mean over image pairs of the pair's PCK (per-image PCK; pairs with no valid keypoint are skipped);
- ``pck_classmean@a``: unweighted mean over categories of the category's per-keypoint PCK;
- ``pck_weighted@a``: mean over categories weighted by the number of pairs (3DCorrEnhance's "Weighted PCK").
"""
from __future__ import annotations

from typing import Sequence

import torch
from torchmetrics import Metric


def pck_hits(pred_xy: torch.Tensor, gt_xy: torch.Tensor, ref: torch.Tensor | float,
             alphas: Sequence[float]) -> torch.Tensor:
    """(N, A) bool: keypoint n within ``alpha_a * ref_n`` (``ref`` scalar or (N,)) of its ground truth."""
    err = torch.linalg.norm(torch.as_tensor(pred_xy, dtype=torch.float64) - torch.as_tensor(gt_xy, dtype=torch.float64),
                            dim=-1)
    ref = torch.as_tensor(ref, dtype=torch.float64, device=err.device)
    ref = ref.expand(err.shape) if ref.ndim == 0 else ref.reshape(err.shape)
    limits = torch.as_tensor(list(alphas), dtype=torch.float64, device=err.device)
    return err[:, None] < ref[:, None] * limits[None, :]


class PCKMetric(Metric):
    """PCK@alphas per keypoint, per image, per category; one ``update`` per image pair."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, alphas: Sequence[float] = (0.05, 0.10, 0.15), categories: Sequence[str] | None = None,
                 prefix: str = "", **kwargs):
        super().__init__(**kwargs)
        self.alphas = tuple(float(a) for a in alphas)
        self.categories = list(categories) if categories else ["all"]
        self.prefix = prefix
        g, a = len(self.categories), len(self.alphas)
        self.add_state("kp_hits", default=torch.zeros(g, a, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("kp_count", default=torch.zeros(g, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("img_pck_sum", default=torch.zeros(g, a, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("img_count", default=torch.zeros(g, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pair_count", default=torch.zeros(g, dtype=torch.float64), dist_reduce_fx="sum")

    def category_index(self, category: str | int | None) -> int:
        if category is None:
            return 0
        if isinstance(category, int):
            return category
        return self.categories.index(category)

    def update(self, pred_xy: torch.Tensor, gt_xy: torch.Tensor, ref: torch.Tensor | float,
               category: str | int | None = None, valid: torch.Tensor | None = None) -> None:
        """One image pair: predicted and true target keypoints (N, 2), threshold reference, validity (N,)."""
        g = self.category_index(category)
        pred_xy = torch.as_tensor(pred_xy).reshape(-1, 2)
        gt_xy = torch.as_tensor(gt_xy).reshape(-1, 2)
        ref_t = torch.as_tensor(ref, dtype=torch.float64)
        if valid is not None:
            valid = torch.as_tensor(valid, dtype=torch.bool).reshape(-1).cpu()
            pred_xy, gt_xy = pred_xy[valid], gt_xy[valid]
            if ref_t.ndim > 0:
                ref_t = ref_t.reshape(-1)[valid]
        self.pair_count[g] += 1
        if len(gt_xy) == 0:
            return
        hits = pck_hits(pred_xy.cpu(), gt_xy.cpu(), ref_t, self.alphas).to(self.kp_hits.device)
        self.kp_hits[g] += hits.sum(0).to(torch.float64)
        self.kp_count[g] += hits.shape[0]
        self.img_pck_sum[g] += hits.to(torch.float64).mean(0)
        self.img_count[g] += 1

    def compute(self) -> dict[str, torch.Tensor]:
        p = self.prefix
        out: dict[str, torch.Tensor] = {}
        has = self.kp_count > 0
        per_class = 100.0 * self.kp_hits / self.kp_count.clamp(min=1)[:, None]
        for i, a in enumerate(self.alphas):
            out[f"{p}pck@{a:.2f}"] = 100.0 * self.kp_hits[:, i].sum() / self.kp_count.sum().clamp(min=1)
            out[f"{p}pck_img@{a:.2f}"] = 100.0 * self.img_pck_sum[:, i].sum() / self.img_count.sum().clamp(min=1)
            if len(self.categories) > 1:
                out[f"{p}pck_classmean@{a:.2f}"] = per_class[has, i].mean() if has.any() else per_class[:, i].sum() * 0
                w = self.pair_count * has
                out[f"{p}pck_weighted@{a:.2f}"] = (per_class[:, i] * w).sum() / w.sum().clamp(min=1)
        if self.kp_count.sum() == 0:  # no keypoint at all (e.g. an empty pair list): PCK is n/a, never 0 (issue 14)
            out = {k: torch.tensor(float("nan"), dtype=torch.float64) for k in out}
        out[f"{p}num_keypoints"] = self.kp_count.sum()
        out[f"{p}num_pairs"] = self.pair_count.sum()
        return out

    def per_category(self) -> list[dict[str, float]]:
        """Rows ``{category, pairs, keypoints, pck@a, pck_img@a}`` for every category seen."""
        rows = []
        for g, name in enumerate(self.categories):
            if self.pair_count[g] == 0:
                continue
            row: dict[str, float | str] = {"category": name, "pairs": int(self.pair_count[g]),
                                           "keypoints": int(self.kp_count[g])}
            for i, a in enumerate(self.alphas):
                row[f"pck@{a:.2f}"] = float(100.0 * self.kp_hits[g, i] / max(float(self.kp_count[g]), 1.0))
                row[f"pck_img@{a:.2f}"] = float(100.0 * self.img_pck_sum[g, i] / max(float(self.img_count[g]), 1.0))
            rows.append(row)
        return rows
