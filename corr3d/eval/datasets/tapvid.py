"""TAP-Vid DAVIS readers: the official ``tapvid_davis.pkl`` and DINO-Tracker's ``tapvid_davis_data_strided.pkl``.

Official format (DeepMind tapnet): a dict ``{video_name: {"video": uint8 [T, H, W, 3] (or a list of JPEG bytes),
"points": float [N, T, 2] normalised (x, y) in [0, 1], "occluded": bool [N, T]}}``. Normalised coordinates times
(W, H) are continuous pixel coordinates (corr3d convention; tapnet scales them by 256 the same way).

DINO-Tracker format: ``{"videos": [{"video_idx", "h", "w", "query_points": {frame: [[x, y], ...]},
"target_points": {frame: [n, T, 2] pixels}, "occluded": {frame: [n, T]}}, ...]}`` (strided queries already chosen),
with the frames as ``<frames_dir>/<video_idx>/video/*.jpg`` (DINO-Tracker's ``davis_480`` layout).

Query modes follow tapnet exactly: ``"strided"`` takes every point visible at frames 0, s, 2s, ... (s = 5) as a query
at that frame; ``"first"`` one query per point at its first visible frame.

Get the data: ``https://storage.googleapis.com/dm-tapnet/tapvid_davis.zip`` (tapnet README) -> ``tapvid_davis.pkl``.
"""
from __future__ import annotations

import io
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from corr3d.errors import DataFileError
from corr3d.utils.io import atomic_write
from corr3d.utils.safe_load import restricted_pickle_load

log = logging.getLogger(__name__)

DOWNLOAD_HINT = ("TAP-Vid DAVIS: download https://storage.googleapis.com/dm-tapnet/tapvid_davis.zip (see "
                 "github.com/google-deepmind/tapnet), unzip, and put tapvid_davis.pkl at {path} "
                 "(or point eval.tracking.data at it; DINO-Tracker's tapvid_davis_data_strided.pkl with "
                 "<frames_dir>/<id>/video/*.jpg also works)")


@dataclass
class TapVidVideo:
    """One video with its queries. Coordinates are continuous pixels of ``frames``."""

    name: str
    frames: np.ndarray            # (T, H, W, 3) uint8
    query_t: np.ndarray           # (Q,) int query frame
    query_xy: np.ndarray          # (Q, 2) float (x, y)
    target_xy: np.ndarray         # (Q, T, 2) float ground-truth track
    occluded: np.ndarray          # (Q, T) bool ground-truth occlusion
    query_mode: str = "strided"
    meta: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    def query_points_256(self, resolution: int = 256) -> np.ndarray:
        """(Q, 3) tapnet query points (t, y, x) in ``resolution`` x ``resolution`` raster coordinates."""
        h, w = self.size
        return np.stack([self.query_t.astype(np.float64), self.query_xy[:, 1] * resolution / h,
                         self.query_xy[:, 0] * resolution / w], axis=1)

    def target_256(self, resolution: int = 256) -> np.ndarray:
        h, w = self.size
        return self.target_xy * np.array([resolution / w, resolution / h])


def sample_queries_strided(points: np.ndarray, occluded: np.ndarray, stride: int = 5):
    """tapnet's strided sampling: (query_t, query_xy, target, occluded) for points visible at frames 0, s, 2s..."""
    qt, qxy, tracks, occs = [], [], [], []
    for i in range(0, occluded.shape[1], stride):
        mask = ~occluded[:, i]
        qt.append(np.full(int(mask.sum()), i, dtype=np.int64))
        qxy.append(points[mask, i])
        tracks.append(points[mask])
        occs.append(occluded[mask])
    return (np.concatenate(qt), np.concatenate(qxy).reshape(-1, 2), np.concatenate(tracks).reshape(-1, *points.shape[1:]),
            np.concatenate(occs).reshape(-1, occluded.shape[1]))


def sample_queries_first(points: np.ndarray, occluded: np.ndarray):
    """tapnet's "first" sampling: one query per point at its first visible frame (never-visible points dropped)."""
    valid = (~occluded).sum(1) > 0
    points, occluded = points[valid], occluded[valid]
    first = np.argmax(~occluded, axis=1)
    qxy = points[np.arange(len(points)), first]
    return first.astype(np.int64), qxy.reshape(-1, 2), points, occluded


def _decode_frames(video) -> np.ndarray:
    if isinstance(video, np.ndarray) and video.dtype == np.uint8 and video.ndim == 4:
        return video
    frames = [np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) if isinstance(f, (bytes, bytearray)) else np.asarray(f)
              for f in video]
    return np.stack(frames).astype(np.uint8)


def detect_format(data) -> str:
    if isinstance(data, dict) and "videos" in data and isinstance(data["videos"], list):
        return "dinotracker"
    return "tapvid"


def load_pickle(path: str | Path):
    """The dataset pickle through corr3d's restricted unpickler (numpy arrays and builtin containers only: a crafted
    file cannot run code, utils/safe_load.py); errors name the file."""
    data = restricted_pickle_load(path, "TAP-Vid pickle")
    if not isinstance(data, dict) or not data:
        raise DataFileError(f"expected a non-empty dict of videos, got {type(data).__name__}", path=path,
                            fix=DOWNLOAD_HINT.format(path=path))
    return data


def _malformed(path: Path, video, err: Exception) -> DataFileError:
    return DataFileError(f"video {video!r} is malformed ({type(err).__name__}: {err})", path=path,
                         fix="expected {name: {'video', 'points', 'occluded'}} (official format) or DINO-Tracker's "
                             "{'videos': [...]}; download the file again")


def _load_frames_dir(directory: Path) -> np.ndarray:
    if not directory.is_dir():
        raise FileNotFoundError(f"no frame directory {directory}")
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise FileNotFoundError(f"no frames in {directory}")
    frames = []
    for p in files:
        try:
            with Image.open(p) as img:
                frames.append(np.asarray(img.convert("RGB")))
        except OSError as err:
            raise DataFileError(f"unreadable frame ({err})", path=p, fix="the image is truncated: copy it again") \
                from None
    return np.stack(frames)


def _has_queries(path: Path, name: str, query_t: np.ndarray) -> bool:
    """Videos without a single visible query point (every point occluded) give no metric: skipped with a reason."""
    if len(query_t):
        return True
    log.warning("%s: video %s skipped: no visible query point (all points occluded at every query frame)", path, name)
    return False


def iter_videos(path: str | Path, query_mode: str = "strided", query_stride: int = 5, fmt: str = "auto",
                frames_dir: str | Path | None = None, max_videos: int | None = None) -> Iterator[TapVidVideo]:
    """Yield :class:`TapVidVideo` for each video of a TAP-Vid (or DINO-Tracker) pickle."""
    path = Path(path)
    data = load_pickle(path)
    fmt = detect_format(data) if fmt == "auto" else fmt
    count = 0
    if fmt == "dinotracker":
        frames_root = Path(frames_dir) if frames_dir else path.parent / "tapvid-davis"
        for cfg in data["videos"]:
            if max_videos is not None and count >= max_videos:
                return
            vid = cfg.get("video_idx") if isinstance(cfg, dict) else cfg
            try:
                frames = _load_frames_dir(frames_root / str(vid) / "video")
                fh, fw = frames.shape[1:3]
                sx, sy = fw / float(cfg["w"]), fh / float(cfg["h"])
                qt, qxy, tr, oc = [], [], [], []
                for frame_idx in sorted(cfg["query_points"]):
                    q = np.asarray(cfg["query_points"][frame_idx], dtype=np.float64).reshape(-1, 2)
                    qt.append(np.full(len(q), int(frame_idx)))
                    qxy.append(q * [sx, sy])
                    tr.append(np.asarray(cfg["target_points"][frame_idx], dtype=np.float64).reshape(len(q), -1, 2)
                              * [sx, sy])
                    oc.append(np.asarray(cfg["occluded"][frame_idx], dtype=bool).reshape(len(q), -1))
                video = TapVidVideo(str(vid), frames, np.concatenate(qt).astype(np.int64), np.concatenate(qxy),
                                    np.concatenate(tr), np.concatenate(oc), "strided", {"format": fmt})
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
                raise _malformed(path, vid, err) from None
            if _has_queries(path, video.name, video.query_t):
                yield video
                count += 1
        return
    if query_mode not in ("strided", "first"):
        raise ValueError(f"unknown query mode {query_mode!r}")
    for name in sorted(data, key=str):
        if max_videos is not None and count >= max_videos:
            return
        try:
            item = data[name]
            frames = _decode_frames(item["video"])
            if frames.ndim != 4 or frames.shape[-1] != 3:
                raise ValueError(f"frames of shape {frames.shape}, expected (T, H, W, 3)")
            h, w = frames.shape[1:3]
            points = np.asarray(item["points"], dtype=np.float64) * np.array([w, h], dtype=np.float64)
            occluded = np.asarray(item["occluded"], dtype=bool)
            if points.ndim != 3 or occluded.shape != points.shape[:2] or points.shape[1] != frames.shape[0]:
                raise ValueError(f"points {points.shape} / occluded {occluded.shape} do not fit {frames.shape[0]} "
                                 "frames (expected [N, T, 2] and [N, T])")
            if not np.isfinite(points[~occluded]).all():
                raise ValueError("non-finite coordinates at visible points")
            if query_mode == "strided":
                qt, qxy, tr, oc = sample_queries_strided(points, occluded, query_stride)
            else:
                qt, qxy, tr, oc = sample_queries_first(points, occluded)
        except DataFileError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, OSError) as err:
            raise _malformed(path, name, err) from None
        if _has_queries(path, str(name), qt):
            yield TapVidVideo(str(name), frames, qt, qxy, tr, oc, query_mode, {"format": fmt})
            count += 1


def write_tapvid_pickle(path: str | Path, videos: dict[str, dict]) -> Path:
    """Write ``{name: {"video", "points" (normalised), "occluded"}}`` in the official format (atomic)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(pickle.dumps(videos, protocol=4)))
