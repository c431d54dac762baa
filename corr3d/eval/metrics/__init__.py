"""Metrics (torchmetrics ``Metric`` subclasses whose sum states reduce across DDP ranks).

- :mod:`corr3d.eval.metrics.semantic`: PCK for semantic correspondence (per keypoint, per image, per category).
- :mod:`corr3d.eval.metrics.tracking`: TAP-Vid occlusion accuracy, delta^x_avg and average Jaccard.
- :mod:`corr3d.eval.metrics.pose`: rotation/translation errors and k cm-k deg accuracy.
- :mod:`corr3d.eval.metrics.equivariance`: APE/PCDP (multiview equivariance).

All reported values are percentages (0-100), as in the paper's tables.
"""
from corr3d.eval.metrics.pose import PoseAccuracyMetric, pose_errors, rotation_error_deg, translation_error
from corr3d.eval.metrics.semantic import PCKMetric, pck_hits
from corr3d.eval.metrics.tracking import TAPVID_THRESHOLDS, TapVidMetric, compute_tapvid_metrics

__all__ = [
    "PCKMetric", "pck_hits", "PoseAccuracyMetric", "pose_errors", "rotation_error_deg", "translation_error",
    "TAPVID_THRESHOLDS", "TapVidMetric", "compute_tapvid_metrics",
]
