"""Object pose errors and k cm-k deg accuracy (OnePose / OnePose++ protocol).

Rotation error is the geodesic angle between the rotations (degrees); translation error the Euclidean distance between
the translations, in cm (poses given in metres, as in OnePose). A frame is correct at level k when both errors are
strictly below k. Accuracy is computed per object (group) and then averaged over objects.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torchmetrics import Metric

_UNIT_TO_CM = {"m": 100.0, "cm": 1.0, "mm": 0.1}


def rotation_error_deg(R_pred: np.ndarray, R_gt: np.ndarray) -> float:
    """Geodesic distance between two rotation matrices in degrees."""
    R_pred, R_gt = np.asarray(R_pred, dtype=np.float64), np.asarray(R_gt, dtype=np.float64)
    cos = (np.trace(R_pred @ R_gt.T) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def translation_error(t_pred: np.ndarray, t_gt: np.ndarray, unit: str = "m") -> float:
    """Translation error in cm for poses whose translations are in ``unit``."""
    diff = np.asarray(t_pred, dtype=np.float64).reshape(3) - np.asarray(t_gt, dtype=np.float64).reshape(3)
    return float(np.linalg.norm(diff) * _UNIT_TO_CM[unit])


def pose_errors(T_pred: np.ndarray, T_gt: np.ndarray, unit: str = "m") -> tuple[float, float]:
    """(rotation error deg, translation error cm) of two 4x4 (or 3x4) object->camera poses."""
    T_pred, T_gt = np.asarray(T_pred), np.asarray(T_gt)
    return rotation_error_deg(T_pred[:3, :3], T_gt[:3, :3]), translation_error(T_pred[:3, 3], T_gt[:3, 3], unit)


def threshold_key(k: float) -> str:
    return f"acc@{k:g}cm{k:g}deg"


class PoseAccuracyMetric(Metric):
    """k cm-k deg accuracy (%) per group (object) and averaged over groups; also pooled over all frames."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, thresholds: Sequence[float] = (1, 3, 5), groups: Sequence[str] | None = None,
                 prefix: str = "", **kwargs):
        super().__init__(**kwargs)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.groups = list(groups) if groups else ["all"]
        self.prefix = prefix
        g, k = len(self.groups), len(self.thresholds)
        self.add_state("hits", default=torch.zeros(g, k, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(g, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("rot_err_sum", default=torch.zeros(g, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("trans_err_sum", default=torch.zeros(g, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, rot_err_deg, trans_err_cm, group: str | int | None = None) -> None:
        g = 0 if group is None else (group if isinstance(group, int) else self.groups.index(group))
        r = torch.as_tensor(rot_err_deg, dtype=torch.float64).reshape(-1).to(self.hits.device)
        t = torch.as_tensor(trans_err_cm, dtype=torch.float64).reshape(-1).to(self.hits.device)
        limits = torch.as_tensor(self.thresholds, dtype=torch.float64, device=self.hits.device)
        ok = (r[:, None] < limits[None]) & (t[:, None] < limits[None])
        self.hits[g] += ok.sum(0).to(torch.float64)
        self.count[g] += r.numel()
        self.rot_err_sum[g] += torch.nan_to_num(r, nan=180.0).clamp(max=180.0).sum()
        self.trans_err_sum[g] += torch.nan_to_num(t, nan=0.0).sum()

    def compute(self) -> dict[str, torch.Tensor]:
        has = self.count > 0
        acc = 100.0 * self.hits / self.count.clamp(min=1)[:, None]
        out = {}
        for i, k in enumerate(self.thresholds):
            out[f"{self.prefix}{threshold_key(k)}"] = acc[has, i].mean() if has.any() else acc[:, i].sum() * 0
            out[f"{self.prefix}frames_{threshold_key(k)}"] = 100.0 * self.hits[:, i].sum() / self.count.sum().clamp(min=1)
        out[f"{self.prefix}num_frames"] = self.count.sum()
        return out

    def per_group(self) -> list[dict[str, float]]:
        rows = []
        for g, name in enumerate(self.groups):
            n = float(self.count[g])
            if n == 0:
                continue
            row: dict[str, float | str] = {"object": name, "frames": int(n),
                                           "mean_rot_err_deg": float(self.rot_err_sum[g]) / n,
                                           "mean_trans_err_cm": float(self.trans_err_sum[g]) / n}
            for i, k in enumerate(self.thresholds):
                row[threshold_key(k)] = float(100.0 * self.hits[g, i] / n)
            rows.append(row)
        return rows
