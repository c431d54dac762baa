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

from corr3d.errors import DataFileError, DatasetFormatError
from corr3d.utils.io import atomic_write
from corr3d.utils.reading import ItemIterator, apply_filter, describe
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
    if isinstance(video, np.ndarray) and video.dtype != object:
        if not np.issubdtype(video.dtype, np.integer) or (video.size and (video.min() < 0 or video.max() > 255)):
            raise _Bad(f"video: frames of dtype {video.dtype} with values in [{video.min()}, {video.max()}]; expected "
                       "uint8 [T, H, W, 3] in 0..255 (or a list of JPEG bytes)",
                       "store the frames as uint8 0..255 (e.g. (frames * 255).round().astype(np.uint8))")
        return video.astype(np.uint8)
    frames = [np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) if isinstance(f, (bytes, bytearray)) else np.asarray(f)
              for f in video]
    return np.stack(frames).astype(np.uint8)


class _Bad(ValueError):
    """A field that breaks the documented format, with the fix for it."""

    def __init__(self, message: str, fix: str | None = None):
        super().__init__(message)
        self.fix = fix


POINTS_MARGIN = 0.01  # visible points may lie this far (fraction of the frame) outside it (annotation on the border)
UNITS_FIX = ("TAP-Vid points are normalised (x, y) in [0, 1] (pixel x / width, y / height): rescale them, or check "
             "that x and y are not swapped and that the file is the official tapvid_davis.pkl")


def _check_points(field: str, points: np.ndarray, occluded: np.ndarray, size=(1.0, 1.0), units: str = "") -> None:
    """Visible points (N, T, 2) finite and inside the frame: ``points / size`` in [0, 1] x [0, 1] (``size`` (w, h)
    of the frame the points refer to; 1 for normalised points); ``units`` names the convention in the message."""
    visible = points[~occluded]
    if not np.isfinite(visible).all():
        raise _Bad(f"{field}: non-finite coordinates at visible points")
    normalised = visible / np.asarray(size, dtype=np.float64)
    bad = ((normalised < -POINTS_MARGIN) | (normalised > 1 + POINTS_MARGIN)).any(-1)
    if bad.any():
        n, t = np.argwhere(~occluded)[int(np.flatnonzero(bad)[0])]
        raise _Bad(f"{field}: {int(bad.sum())} of {len(visible)} visible points outside the frame (e.g. point {n} "
                   f"at frame {t}: ({visible[bad][0][0]:g}, {visible[bad][0][1]:g}) {units})", UNITS_FIX)


def _occlusion(value, field: str = "occluded") -> np.ndarray:
    """The occlusion flags as bool; anything but bool or 0/1 (e.g. visibility scores) is refused."""
    raw = np.asarray(value)
    if raw.dtype != bool:
        values = np.unique(raw)
        if raw.dtype == object or not np.isin(values, [0, 1]).all():
            raise _Bad(f"{field}: values {values[:5].tolist()} of dtype {raw.dtype}; expected bool (True = occluded)",
                       "store the occlusion flags as a bool array [N, T] (True where the point is occluded)")
    return raw.astype(bool)


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


def _malformed(path: Path, video, err: Exception) -> DatasetFormatError:
    return DatasetFormatError(f"video {video!r} is malformed ({describe(err) if not isinstance(err, _Bad) else err})",
                              path=path, fix=getattr(err, "fix", None) or
                              "expected {name: {'video', 'points', 'occluded'}} (official format) or DINO-Tracker's "
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


def _has_queries(path: Path, name: str, query_t: np.ndarray, skipped: list) -> bool:
    """Videos without a single visible query point (every point occluded) give no metric: skipped with a reason."""
    if len(query_t):
        return True
    reason = "no visible query point (all points occluded at every query frame)"
    log.warning("%s: video %s skipped: %s", path, name, reason)
    skipped.append((name, reason))
    return False


def iter_videos(path: str | Path, query_mode: str = "strided", query_stride: int = 5, fmt: str = "auto",
                frames_dir: str | Path | None = None, max_videos: int | None = None,
                videos=None) -> ItemIterator:
    """An iterator of :class:`TapVidVideo`, one per video of a TAP-Vid (or DINO-Tracker) pickle, in name order.

    ``videos``: only these video names (DINO-Tracker: ``video_idx``); a filter none of whose names is in the file
    raises :class:`corr3d.errors.UnknownNameError` listing the names present. The iterator's ``skipped``
    (``[(video, reason)]``, complete once the iterator is exhausted) lists requested videos that are not in the
    file and videos without a visible query point. Each video is checked (points normalised to the frame,
    ``occluded`` bool [N, T], T equal to the number of frames); a violation raises
    :class:`corr3d.errors.DatasetFormatError` naming the file, the video and the field."""
    path = Path(path)
    return ItemIterator(lambda skipped: _iter_videos(path, query_mode, query_stride, fmt, frames_dir, max_videos,
                                                     videos, skipped))


def _iter_videos(path: Path, query_mode: str, query_stride: int, fmt: str, frames_dir, max_videos, videos,
                 skipped: list) -> Iterator[TapVidVideo]:
    data = load_pickle(path)
    fmt = detect_format(data) if fmt == "auto" else fmt
    count = 0
    if fmt == "dinotracker":
        frames_root = Path(frames_dir) if frames_dir else path.parent / "tapvid-davis"
        entries = [(str(cfg.get("video_idx") if isinstance(cfg, dict) else cfg), cfg) for cfg in data["videos"]]
        entries, missing = apply_filter(entries, videos, what="TAP-Vid video", source=path, key=lambda e: e[0])
        skipped.extend(missing)
        for name, cfg in entries:
            if max_videos is not None and count >= max_videos:
                return
            vid = cfg.get("video_idx") if isinstance(cfg, dict) else cfg
            try:
                frames = _load_frames_dir(frames_root / str(vid) / "video")
                video = _dinotracker_video(cfg, frames, fmt)
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
                raise _malformed(path, vid, err) from None
            if _has_queries(path, video.name, video.query_t, skipped):
                yield video
                count += 1
        return
    if query_mode not in ("strided", "first"):
        raise ValueError(f"unknown query mode {query_mode!r}")
    names, missing = apply_filter(sorted(data, key=str), videos, what="TAP-Vid video", source=path)
    skipped.extend(missing)
    for name in names:
        if max_videos is not None and count >= max_videos:
            return
        try:
            item = data[name]
            frames = _decode_frames(item["video"])
            if frames.ndim != 4 or frames.shape[-1] != 3:
                raise ValueError(f"frames of shape {frames.shape}, expected (T, H, W, 3)")
            h, w = frames.shape[1:3]
            normalised = np.asarray(item["points"], dtype=np.float64)
            occluded = _occlusion(item["occluded"])
            if normalised.ndim != 3 or normalised.shape[-1] != 2 or occluded.shape != normalised.shape[:2] \
                    or normalised.shape[1] != frames.shape[0]:
                raise ValueError(f"points {normalised.shape} / occluded {occluded.shape} do not fit {frames.shape[0]} "
                                 "frames (expected [N, T, 2] and [N, T])")
            _check_points("points", normalised, occluded, units="(normalised x, y)")
            points = normalised * np.array([w, h], dtype=np.float64)
            if query_mode == "strided":
                qt, qxy, tr, oc = sample_queries_strided(points, occluded, query_stride)
            else:
                qt, qxy, tr, oc = sample_queries_first(points, occluded)
        except DataFileError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, OSError) as err:
            raise _malformed(path, name, err) from None
        if _has_queries(path, str(name), qt, skipped):
            yield TapVidVideo(str(name), frames, qt, qxy, tr, oc, query_mode, {"format": fmt})
            count += 1


def _dinotracker_video(cfg: dict, frames: np.ndarray, fmt: str) -> TapVidVideo:
    """One DINO-Tracker entry: queries and targets in pixels of (h, w), rescaled to the frames on disk."""
    vid = cfg.get("video_idx")
    num_frames, (fh, fw) = frames.shape[0], frames.shape[1:3]
    h, w = float(cfg["h"]), float(cfg["w"])
    if not (h > 0 and w > 0):
        raise _Bad(f"h, w: {h:g} x {w:g}, expected the positive frame size the points refer to")
    sx, sy = fw / w, fh / h
    qt, qxy, tr, oc = [], [], [], []
    for frame_idx in sorted(cfg["query_points"]):
        q = np.asarray(cfg["query_points"][frame_idx], dtype=np.float64).reshape(-1, 2)
        if not 0 <= int(frame_idx) < num_frames:
            raise _Bad(f"query_points: query frame {frame_idx} outside the {num_frames} frames of video {vid}")
        target = np.asarray(cfg["target_points"][frame_idx], dtype=np.float64)
        occluded = _occlusion(cfg["occluded"][frame_idx], f"occluded[{frame_idx}]")
        if target.size != len(q) * num_frames * 2 or occluded.size != len(q) * num_frames:
            raise _Bad(f"target_points[{frame_idx}] {target.shape} / occluded[{frame_idx}] {occluded.shape} do not fit "
                       f"{len(q)} queries x {num_frames} frames on disk (expected [n, T, 2] and [n, T])",
                       "the frame folder and the pickle must hold the same video (every frame, same order)")
        target, occluded = target.reshape(len(q), num_frames, 2), occluded.reshape(len(q), num_frames)
        units = f"(pixels of the {w:g} x {h:g} frame)"
        _check_points(f"target_points[{frame_idx}]", target, occluded, (w, h), units)
        _check_points(f"query_points[{frame_idx}]", q[:, None], np.zeros((len(q), 1), bool), (w, h), units)
        qt.append(np.full(len(q), int(frame_idx)))
        qxy.append(q * [sx, sy])
        tr.append(target * [sx, sy])
        oc.append(occluded)
    if not qt:
        return TapVidVideo(str(vid), frames, np.zeros(0, np.int64), np.zeros((0, 2)), np.zeros((0, num_frames, 2)),
                           np.zeros((0, num_frames), bool), "strided", {"format": fmt})
    return TapVidVideo(str(vid), frames, np.concatenate(qt).astype(np.int64), np.concatenate(qxy),
                       np.concatenate(tr), np.concatenate(oc), "strided", {"format": fmt})


def write_tapvid_pickle(path: str | Path, videos: dict[str, dict]) -> Path:
    """Write ``{name: {"video", "points" (normalised), "occluded"}}`` in the official format (atomic)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(pickle.dumps(videos, protocol=4)))
