"""Training pairs: two views of one object with corresponding points and their object-space 3D positions.

Every sample is a pure function of its key ``(rank, epoch, index)`` and the seed: its generator is
``np.random.default_rng([seed, stream, rank, epoch, index])``. So the stream is reproducible, independent of the
number of dataloader workers (workers receive different indices, hence different samples), different on every DDP
rank (the authors' code drew identical pairs on all ranks), and a run resumed at epoch e continues exactly where an
uninterrupted run would be. ``PairSampler`` produces the keys; plain integer indices mean rank 0, epoch 0.

Output (pixel convention: corr3d/geometry/pixels.py): ``image0/1`` float32 (3,H,W) in [0,1]; ``points0/1`` float32 (N,2) continuous pixel
coordinates; ``xyz0/1`` float32 (N,3); ``valid0/1`` bool (N,); ``object_id``; ``view0/1``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from corr3d.data.augment import ViewAugmenter
from corr3d.data.mvimgnet import MVImgNetObject, MVImgNetSkip
from corr3d.geometry import project, relative_rotation_matrix_deg
from corr3d.geometry.pixels import pixel_centres, visible_pixels
from corr3d.render.store import RenderedObject

log = logging.getLogger(__name__)
TRAIN_STREAM, VAL_STREAM = 0, 1
MAX_DRAWS = 50  # redraws when an object/pair yields nothing usable, before giving up loudly
# data.pairs.point_sampling: how num_points foreground pixels are drawn per view (sample_pixels)
POINT_SAMPLING = ("distinct", "paper_era", "authors_fixed")


class TooFewPixels(ValueError):
    """A view with fewer foreground pixels than points under ``paper_era`` sampling: the pair is redrawn."""


def sample_rng(seed: int, stream: int, rank: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(stream), int(rank), int(epoch), int(index)])


def decode_key(key) -> tuple[int, int, int]:
    """(rank, epoch, index) from a sampler key or a plain integer index."""
    if isinstance(key, (tuple, list)):
        rank, epoch, index = (int(k) for k in key)
        return rank, epoch, index
    return 0, 0, int(key)


def sample_pixels(mask: np.ndarray, num_points: int, rng: np.random.Generator, mode: str = "distinct"):
    """``num_points`` foreground pixels (rows, cols) and a valid flag, drawn as ``mode`` says:

    - ``distinct`` (corr3d): without replacement; too few foreground pixels are padded with invalid points.
      Duplicated points would create duplicate positives in the loss (the authors' bug).
    - ``paper_era``: the authors' code the paper's models were trained with (commit b96beb4,
      ``replace = len(pixels) > 3000``): WITH replacement when there are more foreground pixels than points, all
      of them when exactly as many, and :class:`TooFewPixels` when fewer (their ``np.random.choice`` raised and
      ``__getitem__`` silently drew another pair; ``RenderedPairDataset`` redraws the same way).
    - ``authors_fixed``: their fix (commit 5022511, ``replace = len(pixels) < 3000``): without replacement when
      there are enough pixels, with replacement (duplicates, all valid) when too few.
    """
    foreground = np.flatnonzero(mask.ravel())
    if mode != "distinct":
        return _sample_pixels_authors(mask, foreground, num_points, rng, mode)
    take = min(num_points, len(foreground))
    chosen = foreground[rng.choice(len(foreground), size=take, replace=False)] if take else foreground[:0]
    flat = np.zeros(num_points, dtype=np.int64)
    flat[:take] = chosen
    valid = np.zeros(num_points, dtype=bool)
    valid[:take] = True
    rows, cols = np.divmod(flat, mask.shape[1])
    return rows, cols, valid


def _sample_pixels_authors(mask, foreground, num_points: int, rng: np.random.Generator, mode: str):
    if mode not in POINT_SAMPLING:
        raise ValueError(f"point sampling must be one of {POINT_SAMPLING}, got {mode!r}")
    n = len(foreground)
    if mode == "paper_era":
        if n < num_points:
            raise TooFewPixels(f"{n} foreground pixels < {num_points} points")
        replace = n > num_points
    else:
        if n == 0:
            raise TooFewPixels("no foreground pixels")
        replace = n < num_points
    rows, cols = np.divmod(foreground[rng.choice(n, size=num_points, replace=replace)], mask.shape[1])
    return rows, cols, np.ones(num_points, dtype=bool)


def true_correspondence_pixels(obj, j: int, xyz: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of view j's pixels that see the 3D points ``xyz`` (N,3), in the order of ``xyz``, for the
    points visible there, without repeats (two points can land on one pixel).

    Visible as in the evaluation (corr3d/eval/equivariance.py ``visible_correspondences``): in front of camera j,
    inside the image, on the foreground, and view j's own surface point at that pixel within ``tol`` + two pixel
    footprints of the point (nothing occludes it).
    """
    if len(xyz) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    uv, z = project(np.asarray(xyz, dtype=np.float64), obj.K, obj.poses[j])
    _, r, c = visible_pixels(uv, z, xyz, obj.mask(j), obj.xyz(j), float(obj.K[0, 0]), tol)
    _, first = np.unique(r * obj.width + c, return_index=True)
    first = np.sort(first)
    return r[first], c[first]


def sample_pixels_with(mask: np.ndarray, num_points: int, rng: np.random.Generator, fixed_rows: np.ndarray,
                       fixed_cols: np.ndarray):
    """Like ``sample_pixels`` but the given (distinct, foreground) pixels come first; the rest are drawn without
    replacement from the other foreground pixels."""
    fixed = (np.asarray(fixed_rows, dtype=np.int64) * mask.shape[1] + np.asarray(fixed_cols, dtype=np.int64))
    fixed = fixed[:num_points]
    foreground = np.setdiff1d(np.flatnonzero(mask.ravel()), fixed, assume_unique=False)
    take = min(num_points - len(fixed), len(foreground))
    chosen = foreground[rng.choice(len(foreground), size=take, replace=False)] if take > 0 else foreground[:0]
    flat = np.zeros(num_points, dtype=np.int64)
    flat[:len(fixed)] = fixed
    flat[len(fixed):len(fixed) + take] = chosen
    valid = np.zeros(num_points, dtype=bool)
    valid[:len(fixed) + take] = True
    rows, cols = np.divmod(flat, mask.shape[1])
    return rows, cols, valid


def allowed_view_pairs(poses: np.ndarray, max_rotation_deg: float) -> np.ndarray:
    """(P,2) ordered view pairs i != j whose relative camera rotation is at most ``max_rotation_deg``."""
    angles = relative_rotation_matrix_deg(poses)
    ok = (angles <= max_rotation_deg + 1e-6) & ~np.eye(len(poses), dtype=bool)
    return np.argwhere(ok)


def to_tensor_image(rgb: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> float32 (3,H,W) in [0,1]. In numpy: multi-threaded torch elementwise ops on a busy machine
    (dataloader main process) were measured 50x slower than this."""
    chw = np.ascontiguousarray(rgb.transpose(2, 0, 1))
    return torch.from_numpy(np.multiply(chw, np.float32(1.0 / 255.0), dtype=np.float32))


def view_sample(rgb, points, xyz, valid, suffix: str) -> dict:
    xyz = np.where(valid[:, None], xyz, 0.0).astype(np.float32)
    points = np.where(valid[:, None], points, 0.0).astype(np.float32)
    return {f"image{suffix}": to_tensor_image(rgb), f"points{suffix}": torch.from_numpy(points),
            f"xyz{suffix}": torch.from_numpy(xyz), f"valid{suffix}": torch.from_numpy(valid.copy())}


class PairDataset(Dataset):
    """Base: ``num_samples`` keys per epoch, each sample drawn with its own generator (see module docstring)."""

    def __init__(self, num_samples: int, seed: int = 0, stream: int = TRAIN_STREAM):
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.stream = int(stream)
        self.skipped: dict[str, str] = {}  # object -> reason (per process; also logged)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, key) -> dict:
        rank, epoch, index = decode_key(key)
        return self.sample(sample_rng(self.seed, self.stream, rank, epoch, index))

    def sample(self, rng: np.random.Generator) -> dict:
        raise NotImplementedError

    def _skip(self, name: str, reason: str) -> None:
        if name not in self.skipped:
            log.warning("skipping %s: %s", name, reason)
        self.skipped[name] = reason


class RenderedPairDataset(PairDataset):
    """Pairs of rendered views (``RenderedObject`` directories) with dense exact correspondences.

    An object is drawn uniformly, then an ordered view pair uniformly among those within ``max_rotation_deg``
    (the authors' rejection sampling has the same distribution), then ``num_points`` foreground pixels per view.
    """

    def __init__(self, objects: Sequence, num_points: int = 3000, max_rotation_deg: float = 120.0,
                 augmenter: ViewAugmenter | None = None, num_samples: int = 100, seed: int = 0,
                 stream: int = TRAIN_STREAM, true_fraction: float = 0.0, visibility_tol: float = 0.02,
                 point_sampling: str = "distinct"):
        """``objects``: render directories, or objects with the ``RenderedObject`` interface (in-memory).

        ``true_fraction`` > 0 ("denser positives", ``data.pairs.true_fraction``): that fraction of view 1's points is
        placed at the pixels where view 0's sampled points are visible in view 1 (see ``true_correspondence_pixels``),
        the rest drawn at random as usual. With 3000 random points per view only a few dozen pairs fall within the
        0.005 positive radius; this guarantees positives. 0 keeps the paper's independent sampling.
        ``point_sampling`` (``data.pairs.point_sampling``): see ``sample_pixels``; ``paper_era`` redraws the pair
        when a view has fewer foreground pixels than ``num_points``.
        """
        super().__init__(num_samples, seed, stream)
        if not 0.0 <= float(true_fraction) <= 1.0:
            raise ValueError(f"true_fraction must be in [0, 1], got {true_fraction}")
        if point_sampling not in POINT_SAMPLING:
            raise ValueError(f"point_sampling must be one of {POINT_SAMPLING}, got {point_sampling!r}")
        if point_sampling != "distinct" and true_fraction > 0:
            raise ValueError(f"true_fraction > 0 (corr3d's denser positives) needs point_sampling='distinct', got "
                             f"{point_sampling!r}: the authors' sampling has no true correspondences")
        self.point_sampling = point_sampling
        self.true_fraction = float(true_fraction)
        self.visibility_tol = float(visibility_tol)
        if not len(objects):
            raise ValueError("RenderedPairDataset needs at least one rendered object")
        self.objects = [Path(o) if isinstance(o, str) else o for o in objects]
        self.num_points = int(num_points)
        self.max_rotation_deg = float(max_rotation_deg)
        self.augmenter = augmenter
        self._objects: dict[int, tuple[object, np.ndarray]] = {}

    def _object(self, k: int):
        """The opened object and its allowed view pairs (cached per worker process)."""
        if k not in self._objects:
            source = self.objects[k]
            obj = RenderedObject.open(source) if isinstance(source, Path) else source
            self._objects[k] = (obj, allowed_view_pairs(np.asarray(obj.poses), self.max_rotation_deg))
        return self._objects[k]

    def sample(self, rng: np.random.Generator) -> dict:
        for _ in range(MAX_DRAWS):
            k = int(rng.integers(len(self.objects)))
            obj, pairs = self._object(k)
            if len(pairs) == 0:
                self._skip(str(obj.object_id), f"no view pair within {self.max_rotation_deg} deg")
                continue
            i, j = (int(v) for v in pairs[rng.integers(len(pairs))])
            if self.true_fraction > 0:
                view0, view1 = self._dense_pair(obj, i, j, rng)
            else:
                try:
                    view0, view1 = self._view(obj, i, rng, "0"), self._view(obj, j, rng, "1")
                except TooFewPixels:
                    continue  # paper_era: the authors' except-and-move-on drew a new object and pair
            if view0["valid0"].any() and view1["valid1"].any():
                return {**view0, **view1, "object_id": str(obj.object_id), "view0": i, "view1": j}
        raise RuntimeError(f"no usable pair after {MAX_DRAWS} draws (empty masks, or fewer than {self.num_points} "
                           f"foreground pixels with point_sampling={self.point_sampling!r}?) in {self.objects[:3]}...")

    def _dense_pair(self, obj, i: int, j: int, rng: np.random.Generator) -> tuple[dict, dict]:
        """View 0 sampled as usual; view 1 gets ``true_fraction`` of its points at view 0's true correspondences."""
        mask0 = np.asarray(obj.mask(i), dtype=bool)
        rows0, cols0, valid0 = sample_pixels(mask0, self.num_points, rng)
        xyz0 = np.asarray(obj.xyz(i))[rows0, cols0]
        mask1 = np.asarray(obj.mask(j), dtype=bool)
        true_rows, true_cols = true_correspondence_pixels(obj, j, xyz0[valid0], self.visibility_tol)
        take = min(len(true_rows), int(round(self.true_fraction * self.num_points)))
        rows1, cols1, valid1 = sample_pixels_with(mask1, self.num_points, rng, true_rows[:take], true_cols[:take])
        view0 = self._finish_view(obj, i, rows0, cols0, valid0, mask0, rng, "0")
        return view0, self._finish_view(obj, j, rows1, cols1, valid1, mask1, rng, "1")

    def _view(self, obj, i: int, rng: np.random.Generator, suffix: str) -> dict:
        mask = np.asarray(obj.mask(i), dtype=bool)
        rows, cols, valid = sample_pixels(mask, self.num_points, rng, self.point_sampling)
        return self._finish_view(obj, i, rows, cols, valid, mask, rng, suffix)

    def _finish_view(self, obj, i, rows, cols, valid, mask, rng, suffix: str) -> dict:
        xyz = np.asarray(obj.xyz(i))[rows, cols]
        points = pixel_centres(rows, cols)
        rgb = np.asarray(obj.rgb(i))
        if self.augmenter is not None:
            out = self.augmenter(rgb, points, valid, rng, mask=mask)
            rgb, points, valid = out.rgb, out.points, out.valid
        return view_sample(rgb, points, xyz, valid, suffix)


class MVImgNetPairDataset(PairDataset):
    """Pairs of MVImgNet frames with sparse correspondences from shared COLMAP tracks.

    Both views get the same ``num_points`` matches (drawn without replacement), so point k of view 0 corresponds
    to point k of view 1 and ``xyz0 == xyz1`` (normalised to the object's unit extent). Frames are resized so the
    long side is ``long_side`` (None: camera resolution). Unusable objects are skipped with a recorded reason.
    """

    def __init__(self, object_dirs: Sequence[str | Path], num_points: int = 3000, max_rotation_deg: float = 120.0,
                 min_matches: int = 16, long_side: int | None = 512, extent_percentile: float = 1.0,
                 augmenter: ViewAugmenter | None = None, num_samples: int = 100, seed: int = 0,
                 stream: int = TRAIN_STREAM):
        super().__init__(num_samples, seed, stream)
        if not object_dirs:
            raise ValueError("MVImgNetPairDataset needs at least one object directory")
        self.object_dirs = [Path(d) for d in object_dirs]
        self.num_points = int(num_points)
        self.max_rotation_deg = float(max_rotation_deg)
        self.min_matches = int(min_matches)
        self.long_side = long_side
        self.extent_percentile = float(extent_percentile)
        self.augmenter = augmenter
        self._objects: dict[int, tuple[object, np.ndarray] | None] = {}

    def _object(self, k: int):
        """(object, allowed pairs) or None when the object is unusable (reason recorded)."""
        if k not in self._objects:
            try:
                obj = MVImgNetObject.open(self.object_dirs[k], self.extent_percentile)
            except MVImgNetSkip as exc:
                self._skip(str(self.object_dirs[k]), str(exc))
                self._objects[k] = None
                return None
            pairs = allowed_view_pairs(obj.poses, self.max_rotation_deg)
            pairs = pairs[obj.shared_counts()[pairs[:, 0], pairs[:, 1]] >= self.min_matches]
            if len(pairs) == 0:
                self._skip(str(self.object_dirs[k]), f"no frame pair with >= {self.min_matches} shared 3D points "
                                                     f"within {self.max_rotation_deg} deg")
            self._objects[k] = (obj, pairs) if len(pairs) else None
        return self._objects[k]

    def sample(self, rng: np.random.Generator) -> dict:
        for _ in range(MAX_DRAWS):
            entry = self._object(int(rng.integers(len(self.object_dirs))))
            if entry is None:
                continue
            obj, pairs = entry
            i, j = (int(v) for v in pairs[rng.integers(len(pairs))])
            uv0, uv1, xyz = obj.correspondences(i, j)
            take = min(self.num_points, len(xyz))
            chosen = rng.choice(len(xyz), size=take, replace=False)
            valid = np.zeros(self.num_points, dtype=bool)
            valid[:take] = True
            points_xyz = _pad(xyz[chosen], self.num_points)
            view0 = self._view(obj, i, _pad(uv0[chosen], self.num_points), valid, points_xyz, rng, "0")
            view1 = self._view(obj, j, _pad(uv1[chosen], self.num_points), valid, points_xyz, rng, "1")
            return {**view0, **view1, "object_id": obj.object_id, "view0": i, "view1": j}
        raise RuntimeError(f"no usable MVImgNet object after {MAX_DRAWS} draws; skipped: {self.skipped}")

    def _view(self, obj, i, points, valid, xyz, rng, suffix) -> dict:
        rgb = obj.rgb(i)
        cam_w, cam_h = obj.sizes[i]
        # keypoints live at the camera's resolution; the stored frame may be a rescaled copy
        points = points * np.array([rgb.shape[1] / cam_w, rgb.shape[0] / cam_h], dtype=np.float32)
        rgb, points = _resize_long_side(rgb, points, self.long_side)
        if self.augmenter is not None:
            out = self.augmenter(rgb, points, valid, rng, mask=None)
            rgb, points, valid = out.rgb, out.points, out.valid
        return view_sample(rgb, points, xyz, valid, suffix)


def _pad(values: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, values.shape[1]), dtype=np.float32)
    out[: len(values)] = values
    return out


def _resize_long_side(rgb: np.ndarray, points: np.ndarray, long_side: int | None):
    """Resize so max(H, W) == long_side; points scale exactly under the corner-at-0 pixel convention."""
    if not long_side or max(rgb.shape[:2]) == long_side:
        return rgb, points
    import cv2  # free here: corr3d.data.augment (albumentations) has already loaded cv2

    h, w = rgb.shape[:2]
    factor = long_side / max(h, w)
    new_w, new_h = max(1, round(w * factor)), max(1, round(h * factor))
    resized = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
    return resized, points * np.array([new_w / w, new_h / h], dtype=np.float32)


class PairSampler(DistributedSampler):
    """Yields ``(rank, epoch, index)`` keys, ``num_samples`` per epoch on every rank.

    A ``DistributedSampler`` subclass so Lightning keeps it under DDP instead of wrapping it, and calls
    ``set_epoch`` on it at every epoch start (with the restored epoch after a resume).
    """

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1, fixed_epoch: int | None = None):
        # deliberately not calling DistributedSampler.__init__: it needs a dataset and an initialised process group
        self.num_samples = int(num_samples)
        self.rank = int(rank)
        self.num_replicas = int(world_size)
        self.epoch = 0
        self.fixed_epoch = fixed_epoch  # validation: the same pairs at every evaluation
        self.shuffle = False
        self.drop_last = False
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume_within_epoch(self, epoch: int, consumed: int) -> None:
        """After a mid-epoch checkpoint: the next pass over ``epoch`` starts after its first ``consumed`` keys."""
        self._resume = (int(epoch), int(consumed))

    def __iter__(self):
        epoch = self.epoch if self.fixed_epoch is None else self.fixed_epoch
        start = 0
        if self._resume is not None and self._resume[0] == epoch:
            start, self._resume = self._resume[1], None
        return iter([(self.rank, epoch, i) for i in range(start, self.num_samples)])

    def __len__(self) -> int:
        return self.num_samples
