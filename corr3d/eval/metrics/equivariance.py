"""Multiview-equivariance metrics of the paper (§4.1): APE and PCDP.

For a predicted correspondence p and ground truth g in an image of size H x W the normalised error is
``||p - g|| / min(H, W)``. APE is its mean in percent; PCDP@t is the percentage of points with error below t.
Sum states reduce correctly across DDP ranks.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torchmetrics import Metric


def normalized_pixel_error(pred_xy: torch.Tensor, gt_xy: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Euclidean pixel error divided by the shortest image edge."""
    return torch.linalg.norm(pred_xy.double() - gt_xy.double(), dim=-1) / float(min(image_size))


class EquivarianceMetric(Metric):
    """APE (%) and PCDP@thresholds (%) accumulated over any number of point correspondences."""

    full_state_update = False
    higher_is_better = None

    def __init__(self, thresholds: Sequence[float] = (0.05, 0.1, 0.2), prefix: str = "equivariance/", **kwargs):
        super().__init__(**kwargs)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.prefix = prefix
        self.add_state("error_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("hits", default=torch.zeros(len(self.thresholds), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, errors: torch.Tensor) -> None:
        """Add normalised errors (see ``normalized_pixel_error``); ``add_points`` takes pixel positions."""
        errors = errors.reshape(-1).to(torch.float64)
        if not bool(torch.isfinite(errors).all()):  # NaN geometry/features would silently skew APE (issue 14)
            raise ValueError(f"{int((~torch.isfinite(errors)).sum())} non-finite point errors (NaN/inf in the "
                             "predictions or the ground-truth geometry)")
        self.error_sum += errors.sum()
        self.count += errors.numel()
        limits = torch.tensor(self.thresholds, dtype=torch.float64, device=errors.device)
        self.hits += (errors[:, None] < limits[None, :]).sum(0)

    def add_points(self, pred_xy: torch.Tensor, gt_xy: torch.Tensor, image_size: tuple[int, int]) -> None:
        self.update(normalized_pixel_error(pred_xy.reshape(-1, 2), gt_xy.reshape(-1, 2), image_size))

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.clamp(min=1).to(torch.float64)
        out = {f"{self.prefix}ape": 100.0 * self.error_sum / n}
        for t, h in zip(self.thresholds, self.hits):
            out[f"{self.prefix}pcdp@{t:g}"] = 100.0 * h.to(torch.float64) / n
        if int(self.count) == 0:  # no point at all: n/a, never 0 (issue 14)
            out = {k: torch.tensor(float("nan"), dtype=torch.float64) for k in out}
        out[f"{self.prefix}num_points"] = self.count.to(torch.float64)
        return out
