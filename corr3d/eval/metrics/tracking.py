"""TAP-Vid metrics exactly as defined by ``tapnet.tapvid.evaluation_datasets.compute_tapvid_metrics``.

Inputs are in 256x256 raster coordinates: ``query_points`` [b, n, 3] as (t, y, x), ``gt_occluded`` / ``pred_occluded``
[b, n, T] bool, ``gt_tracks`` / ``pred_tracks`` [b, n, T, 2] as (x, y). Query mode ``"first"`` evaluates the frames
after the query frame, ``"strided"`` every frame except the query frame. Per video: occlusion accuracy (OA),
``pts_within_d`` (fraction of GT-visible points within d px, ignoring predicted occlusion), ``jaccard_d``
(TP / (GT-visible + FP), FP = predicted visible but GT occluded or farther than d), their means over d in
{1, 2, 4, 8, 16}: ``average_pts_within_thresh`` (delta^x_avg) and ``average_jaccard`` (AJ). The benchmark number is the
mean over videos. :class:`TapVidMetric` accumulates per-video values (x100) and averages them.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from torchmetrics import Metric

TAPVID_THRESHOLDS = (1, 2, 4, 8, 16)


def compute_tapvid_metrics(query_points: np.ndarray, gt_occluded: np.ndarray, gt_tracks: np.ndarray,
                           pred_occluded: np.ndarray, pred_tracks: np.ndarray, query_mode: str,
                           get_trackwise_metrics: bool = False,
                           thresholds: Sequence[float] = TAPVID_THRESHOLDS) -> Mapping[str, np.ndarray]:
    """Per-video (or per-track) TAP-Vid metrics as fractions in [0, 1]; see the module docstring."""
    gt_occluded = np.asarray(gt_occluded, dtype=bool)
    pred_occluded = np.asarray(pred_occluded, dtype=bool)
    gt_tracks = np.asarray(gt_tracks, dtype=np.float64)
    pred_tracks = np.asarray(pred_tracks, dtype=np.float64)
    summing_axis = (2,) if get_trackwise_metrics else (1, 2)
    num_frames = gt_tracks.shape[2]
    eye = np.eye(num_frames, dtype=np.int32)
    if query_mode == "first":
        query_frame_to_eval_frames = np.cumsum(eye, axis=1) - eye
    elif query_mode == "strided":
        query_frame_to_eval_frames = 1 - eye
    else:
        raise ValueError(f"unknown query mode {query_mode!r} (expected 'first' or 'strided')")
    query_frame = np.round(np.asarray(query_points)[..., 0]).astype(np.int32)
    evaluation_points = query_frame_to_eval_frames[query_frame] > 0

    metrics: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        metrics["occlusion_accuracy"] = (np.sum((pred_occluded == gt_occluded) & evaluation_points, axis=summing_axis)
                                         / np.sum(evaluation_points, axis=summing_axis))
        visible = ~gt_occluded
        pred_visible = ~pred_occluded
        all_frac, all_jac = [], []
        for thresh in thresholds:
            within_dist = np.sum(np.square(pred_tracks - gt_tracks), axis=-1) < np.square(thresh)
            is_correct = within_dist & visible
            count_correct = np.sum(is_correct & evaluation_points, axis=summing_axis)
            count_visible = np.sum(visible & evaluation_points, axis=summing_axis)
            frac = count_correct / count_visible
            metrics[f"pts_within_{thresh:g}"] = frac
            all_frac.append(frac)
            true_positives = np.sum(is_correct & pred_visible & evaluation_points, axis=summing_axis)
            gt_positives = np.sum(visible & evaluation_points, axis=summing_axis)
            false_positives = ((~visible) & pred_visible) | ((~within_dist) & pred_visible)
            false_positives = np.sum(false_positives & evaluation_points, axis=summing_axis)
            jac = true_positives / (gt_positives + false_positives)
            metrics[f"jaccard_{thresh:g}"] = jac
            all_jac.append(jac)
        metrics["average_jaccard"] = np.mean(np.stack(all_jac, axis=1), axis=1)
        metrics["average_pts_within_thresh"] = np.mean(np.stack(all_frac, axis=1), axis=1)
    return metrics


# short names used in corr3d's flat metric keys
SHORT_NAMES = {"average_jaccard": "aj", "average_pts_within_thresh": "delta_avg", "occlusion_accuracy": "oa"}


def metric_names(thresholds: Sequence[float] = TAPVID_THRESHOLDS) -> list[str]:
    names = ["average_jaccard", "average_pts_within_thresh", "occlusion_accuracy"]
    names += [f"jaccard_{t:g}" for t in thresholds] + [f"pts_within_{t:g}" for t in thresholds]
    return names


class TapVidMetric(Metric):
    """Mean over videos of the TAP-Vid metrics (percent). ``update`` takes one or a batch of videos.

    A video whose metric is undefined (e.g. no visible evaluation point, so tapnet's division gives NaN) is left out
    of that metric's mean only.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, query_mode: str = "strided", thresholds: Sequence[float] = TAPVID_THRESHOLDS,
                 prefix: str = "", **kwargs):
        super().__init__(**kwargs)
        self.query_mode = query_mode
        self.thresholds = tuple(thresholds)
        self.names = metric_names(self.thresholds)
        self.prefix = prefix
        self.add_state("sums", default=torch.zeros(len(self.names), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("counts", default=torch.zeros(len(self.names), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_videos", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, query_points, gt_occluded, gt_tracks, pred_occluded, pred_tracks) -> None:
        """Arrays for one video ([n, ...]) or a batch ([b, n, ...]) in 256x256 raster coordinates."""
        arrays = [np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)
                  for x in (query_points, gt_occluded, gt_tracks, pred_occluded, pred_tracks)]
        if arrays[0].ndim == 2:
            arrays = [a[None] for a in arrays]
        values = compute_tapvid_metrics(*arrays, query_mode=self.query_mode, thresholds=self.thresholds)
        stacked = np.stack([np.asarray(values[n], dtype=np.float64) for n in self.names], axis=0)  # [K, b]
        finite = np.isfinite(stacked)
        device = self.sums.device
        self.sums += torch.from_numpy(np.where(finite, stacked, 0.0).sum(1) * 100.0).to(device)
        self.counts += torch.from_numpy(finite.sum(1).astype(np.float64)).to(device)
        self.num_videos += stacked.shape[1]

    def compute(self) -> dict[str, torch.Tensor]:
        # a metric no video defines (all points occluded, no video) is n/a (NaN), never 0 (issue 14)
        means = torch.where(self.counts > 0, self.sums / self.counts.clamp(min=1),
                            torch.full_like(self.sums, float("nan")))
        out = {f"{self.prefix}{SHORT_NAMES.get(n, n)}": means[i] for i, n in enumerate(self.names)}
        out[f"{self.prefix}num_videos"] = self.num_videos
        return out
