"""Zero-training point tracking on TAP-Vid DAVIS: DINO-Tracker's inference procedure on a model's dense features.

Per video (the authors' protocol): frames resized to ``frame_size`` (854x476 wide, LANCZOS); features with an overlapping
patch embedding of ``stride`` 7 (position embeddings interpolated to the 67x121 grid by the model); for each query,
the L2-normalised feature sampled at the query point is correlated (cosine) with every frame's map -> ReLU ->
softmax over the map -> soft-argmax restricted to an ``argmax_radius`` (35 px) disc around the argmax token.

Occlusion (DINO-Tracker ``ModelInference``): cosine of the tracked feature in frame t to the tracked feature in the
query frame; frames with cosine >= ``anchor_cos`` (0.7) are anchors. Every tracked point is tracked back into every
anchor frame ("cycle"); d[a, t] = distance of that cycle prediction to the track's position in anchor frame a. The
threshold is the largest over anchor frames t of median_a d[a, t]; a frame is occluded if median_a d[a, t] exceeds it
or its cosine is < ``occlusion_cos`` (0.6). Medians are torch's lower medians, as in the original.

Everything is batched over queries and frames (chunks of ``query_chunk`` queries).

Features: ``final_norm`` (``eval.tracking.final_norm``) picks the ViT tokens before (false: DINOv2's ``x_prenorm``,
what the authors' tracking code feeds its head) or after the final LayerNorm (true: the tokens the model
uses everywhere else); every compared model is evaluated with the same choice.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from corr3d.eval.features import extract_maps, model_device, to_tensor, token_centres
from corr3d.eval.metrics.tracking import TapVidMetric, compute_tapvid_metrics
from corr3d.utils.torch_utils import eval_mode

log = logging.getLogger(__name__)


@contextlib.contextmanager
def token_norm(model, final_norm: bool | None):
    """Temporarily run ``model`` with ``final_norm`` (None: unchanged); restores the model's setting on exit."""
    config = getattr(model, "config", None)
    if final_norm is None or config is None or "final_norm" not in config:
        yield model
        return
    before = config["final_norm"]
    config["final_norm"] = bool(final_norm)
    try:
        yield model
    finally:
        config["final_norm"] = before


# eval.tracking.normalize: where the L2 normalisation sits relative to the bilinear sampling of query/track features
NORMALIZE = ("before_sampling", "after_sampling")


@torch.no_grad()
def raw_maps(model, frames: Sequence[np.ndarray], input_size, stride, batch_size: int) -> list[torch.Tensor]:
    """Un-normalised (C, h, w) maps (``model(images)``; ``extract_maps`` returns them L2-normalised)."""
    device, out = model_device(model), []
    for s in range(0, len(frames), batch_size):
        out.extend(model(to_tensor(frames[s:s + batch_size], device), input_size=input_size, stride=stride).float())
    return out


def sampling_maps(model, frames: Sequence[np.ndarray], unit_maps: torch.Tensor, tracking, input_size,
                  batch_size: int) -> torch.Tensor:
    """The (T, C, h, w) maps query and track features are bilinearly sampled from (``eval.tracking.normalize``):
    ``before_sampling`` (corr3d): the unit maps, the sample renormalised; ``after_sampling`` (the authors'
    tracking code): the raw maps, the sample normalised afterwards. The correlation maps use unit maps in both."""
    mode = getattr(tracking, "normalize", "before_sampling")
    if mode not in NORMALIZE:
        raise ValueError(f"eval.tracking.normalize must be one of {NORMALIZE}, got {mode!r}")
    if mode == "before_sampling":
        return unit_maps
    with token_norm(model, tracking.final_norm):
        return torch.stack(raw_maps(model, list(frames), input_size, tracking.stride, batch_size))


# largest (N, N) bool table of "token farther than the argmax radius" kept per video (N = tokens per frame;
# TAP-Vid DAVIS at 476x854, stride 7: 8107 tokens, 63 MiB)
RADIUS_TABLE_MB = 64.0


def resize_frames(frames: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None or tuple(frames.shape[1:3]) == tuple(size):
        return frames
    h, w = size
    return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.Resampling.LANCZOS)) for f in frames])


class DinoTracker:
    """Feature volume of one video + DINO-Tracker's untrained soft-argmax head and occlusion rule.

    ``tracking``: the ``eval.tracking`` section; ``frame_size`` (H, W; None keeps the video's size) and
    ``argmax_radius`` (px of the resized frame) are passed on their own because the offline suite replaces them;
    ``batch_size``: frames per feature-extraction batch (``eval.batch_size``)."""

    def __init__(self, model, frames: np.ndarray, tracking, *, frame_size: Sequence[int] | None,
                 argmax_radius: float, batch_size: int):
        self.model = model
        self.tracking = tracking
        self.argmax_radius = argmax_radius
        self.frames = resize_frames(frames, frame_size)
        self.image_size = tuple(self.frames.shape[1:3])
        self.input_size = self.image_size
        with token_norm(model, tracking.final_norm):
            maps = extract_maps(model, list(self.frames), self.input_size, tracking.stride, batch_size)
        self.fmaps = torch.stack(maps)                                       # (T, C, h, w), unit norm
        self.sample_maps = sampling_maps(model, self.frames, self.fmaps, tracking, self.input_size, batch_size)
        self.T, self.C, self.h, self.w = self.fmaps.shape
        self.flat = self.fmaps.flatten(2)                                    # (T, C, N)
        self.centres = token_centres(model, (self.h, self.w), self.image_size, self.input_size, tracking.stride,
                                     device=self.fmaps.device)               # (N, 2)

    # -- primitives -------------------------------------------------------------------------------------------------
    def sample_at(self, frame_idx: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
        """Unit features (M, C) at points xy (M, 2) of frames ``frame_idx`` (M,)."""
        out = torch.empty(len(xy), self.C, device=self.fmaps.device, dtype=self.fmaps.dtype)
        for t in torch.unique(frame_idx).tolist():
            sel = frame_idx == t
            out[sel] = self.model.sample_points(self.sample_maps[t:t + 1], xy[sel][None].to(self.fmaps.dtype),
                                                self.image_size, self.input_size, self.tracking.stride,
                                                normalize=False)[0]
        return F.normalize(out, dim=-1)

    def _outside(self, idx: torch.Tensor) -> torch.Tensor:
        """(M, N) bool: token n lies farther than the radius from token idx[m]. The (N, N) table is computed once
        per video when it fits ``RADIUS_TABLE_MB`` (rows looked up, not recomputed for every map); distances use
        cdist's matmul form in both cases, as every map of more than 25 tokens always did, so the disc is the
        same to the last bit (tested)."""
        n = len(self.centres)
        if n * n <= RADIUS_TABLE_MB * 2**20:
            if getattr(self, "_outside_table", None) is None:
                self._outside_table = torch.cdist(self.centres, self.centres, compute_mode="use_mm_for_euclid_dist"
                                                  ) > self.argmax_radius
            return self._outside_table[idx]
        return torch.cdist(self.centres[idx], self.centres, compute_mode="use_mm_for_euclid_dist") > self.argmax_radius

    def soft_argmax(self, corr: torch.Tensor) -> torch.Tensor:
        """corr (..., N) cosine maps -> (..., 2) positions: ReLU, softmax within the radius disc of the argmax."""
        shape = corr.shape[:-1]
        corr = corr.reshape(-1, corr.shape[-1]).clamp(min=0)
        idx = corr.argmax(dim=-1)
        logits = (corr / self.tracking.softmax_temperature).masked_fill(self._outside(idx), float("-inf"))
        weights = torch.softmax(logits, dim=-1)
        return (weights @ self.centres).reshape(*shape, 2)

    # -- tracking ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def track(self, query_t: np.ndarray, query_xy: np.ndarray, with_occlusion: bool = True
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tracks (Q, T, 2) in resized-frame pixels, predicted occlusion (Q, T) bool, cosine (Q, T)."""
        device = self.fmaps.device
        qt = torch.as_tensor(query_t, dtype=torch.long, device=device)
        qxy = torch.as_tensor(query_xy, dtype=torch.float32, device=device)
        Q = len(qt)
        tracks = torch.empty(Q, self.T, 2, device=device)
        chunk = max(1, self.tracking.query_chunk)
        src = self.sample_at(qt, qxy)                                        # (Q, C)
        for s in range(0, Q, chunk):
            corr = torch.einsum("qc,tcn->qtn", src[s:s + chunk], self.flat)
            tracks[s:s + chunk] = self.soft_argmax(corr)
        # features along the tracks and their cosine to the track's feature in the query frame
        frame_ids = torch.arange(self.T, device=device).expand(Q, -1)
        feats = self.sample_at(frame_ids.reshape(-1), tracks.reshape(-1, 2)).reshape(Q, self.T, self.C)
        ref = feats[torch.arange(Q, device=device), qt]                      # (Q, C)
        cos = torch.einsum("qtc,qc->qt", feats, ref)
        occ = torch.zeros(Q, self.T, dtype=torch.bool, device=device)
        if with_occlusion:
            for s in range(0, Q, chunk):
                occ[s:s + chunk] = self._occlusion(tracks[s:s + chunk], feats[s:s + chunk], cos[s:s + chunk])
        return tracks.cpu().numpy(), occ.cpu().numpy(), cos.cpu().numpy()

    def _occlusion(self, tracks: torch.Tensor, feats: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
        """:meth:`_occlusion_one` of a chunk of queries at once: tracks (Q, T, 2), feats (Q, T, C), cos (Q, T).

        Queries have different anchor sets, so the cycle maps are computed per anchor frame a for every query
        anchored there (one GEMM (Q_a T, C) x (C, N)), and the medians over each query's anchors are nanmedians
        over a (Q, A=T, T) distance table that is NaN at non-anchors (torch's lower median of the same values)."""
        Q, T = cos.shape
        is_anchor = cos >= self.tracking.anchor_cos                          # (Q, T)
        dists = torch.full((Q, T, T), float("nan"), device=cos.device)       # [q, anchor a, frame t]
        for a in torch.nonzero(is_anchor.any(0)).flatten().tolist():
            qs = torch.nonzero(is_anchor[:, a]).flatten()
            corr = torch.einsum("qtc,cn->qtn", feats[qs], self.flat[a])      # (Q_a, T, N)
            cycle = self.soft_argmax(corr)                                   # (Q_a, T, 2)
            dists[qs, a] = torch.linalg.norm(cycle - tracks[qs, a][:, None, :], dim=-1)
        median = torch.nanmedian(dists, dim=1).values                        # (Q, T): over each query's anchors
        # threshold: the largest over anchor frames t of the median over anchors a of d[a, t]
        threshold = median.masked_fill(~is_anchor, -float("inf")).max(dim=1).values
        occ = (median > threshold[:, None]) | (cos < self.tracking.occlusion_cos)
        none = ~is_anchor.any(1)   # cannot happen for the query frame itself (cos = 1), kept for safety
        return torch.where(none[:, None], cos < self.tracking.occlusion_cos, occ)

    def _occlusion_one(self, track: torch.Tensor, feats: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
        """One query's occlusion (DINO-Tracker's rule, see the module docstring); :meth:`_occlusion` batches it."""
        anchors = torch.nonzero(cos >= self.tracking.anchor_cos).flatten()
        if len(anchors) == 0:   # cannot happen for the query frame itself (cos = 1), kept for safety
            return cos < self.tracking.occlusion_cos
        corr = torch.einsum("tc,acn->atn", feats, self.flat[anchors])        # (A, T, N)
        cycle = self.soft_argmax(corr)                                       # (A, T, 2)
        dists = torch.linalg.norm(cycle - track[anchors][:, None, :], dim=-1)   # (A, T)
        anchor_median = torch.median(dists[:, anchors], dim=0).values        # (A,)
        threshold = anchor_median.max()
        median = torch.median(dists, dim=0).values                           # (T,)
        return (median > threshold) | (cos < self.tracking.occlusion_cos)


def _evaluate_tracks(videos: Iterable, res: int, prefix: str, desc: str, predict
                     ) -> tuple[dict[str, float], dict[str, list]]:
    """Shared loop: ``predict(video)`` -> (tracks (Q, T, 2) in ``res``-raster px, predicted occlusion (Q, T))."""
    metric = None
    rows, items = [], []
    for video in tqdm(list(videos) if not isinstance(videos, list) else videos, desc=desc, leave=False):
        if metric is None:
            metric = TapVidMetric(video.query_mode, prefix=prefix)
        pred_256, occ = predict(video)
        args = (video.query_points_256(res)[None], video.occluded[None], video.target_256(res)[None], occ[None],
                pred_256[None])
        metric.update(*args)
        values = compute_tapvid_metrics(*args, query_mode=video.query_mode)
        row = {"video": video.name, "queries": int(len(video.query_t)), "frames": video.num_frames}
        # one item per video (the unit TAP-Vid averages over): the headline is the plain mean of the items
        item = {"id": video.name, "unit": video.name, "weight": 1.0}
        for key, short in (("average_jaccard", "aj"), ("average_pts_within_thresh", "delta_avg"),
                           ("occlusion_accuracy", "oa")):
            row[short] = float(100 * np.asarray(values[key]).reshape(-1)[0])
            if np.isfinite(row[short]):   # TapVidMetric leaves a video with an undefined value out of that mean
                item[f"{prefix}{short}"] = row[short]
        for t in (1, 2, 4, 8, 16):
            row[f"jaccard_{t}"] = float(100 * np.asarray(values[f"jaccard_{t}"]).reshape(-1)[0])
            row[f"pts_within_{t}"] = float(100 * np.asarray(values[f"pts_within_{t}"]).reshape(-1)[0])
        rows.append(row)
        items.append(item)
    if metric is None:  # no video with a visible query: every metric is n/a (NaN -> None), not absent or 0
        metric = TapVidMetric(prefix=prefix)
    return {k: float(v) for k, v in metric.compute().items()}, {"tracking_videos": rows, "items": items}


def evaluate_videos(model, videos: Iterable, tracking, *, frame_size: Sequence[int] | None, argmax_radius: float,
                    batch_size: int, prefix: str = "tracking/", desc: str = "tracking"
                    ) -> tuple[dict[str, float], dict[str, list]]:
    """TAP-Vid metrics (mean over videos, percent), one row per video, and ``items`` (one per video);
    ``tracking`` and the keywords as for :class:`DinoTracker`."""
    res = tracking.resolution

    def predict(video):
        tracker = DinoTracker(model, video.frames, tracking, frame_size=frame_size, argmax_radius=argmax_radius,
                              batch_size=batch_size)
        h0, w0 = video.size
        h1, w1 = tracker.image_size
        tracks, occ, _ = tracker.track(video.query_t, video.query_xy * np.array([w1 / w0, h1 / h0]))
        return tracks * np.array([res / w1, res / h1]), occ

    with eval_mode(model):
        return _evaluate_tracks(videos, res, prefix, desc, predict)


def evaluate_oracle_tracking(videos: Iterable, tracking, prefix: str = "tracking/",
                             desc: str = "tracking oracle") -> tuple[dict[str, float], dict[str, list]]:
    """The ceiling: ground-truth tracks and occlusion as the prediction (AJ = delta_avg = OA = 100 when the metric
    code and the data agree)."""
    res = tracking.resolution
    return _evaluate_tracks(videos, res, prefix, desc,
                            lambda v: (v.target_256(res), np.asarray(v.occluded, dtype=bool)))
