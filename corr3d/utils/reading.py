"""Reading dataset files so that every error names its file, field and fix, and nothing is dropped silently (issue 21).

- :func:`reading`: a context manager that turns ``KeyError`` / ``IndexError`` / ``ValueError`` / ``TypeError`` /
  ``AttributeError`` raised while parsing a file into :class:`corr3d.errors.DatasetFormatError` naming the file
  (a ``KeyError`` becomes "missing field 'x'"). Errors corr3d already explains (``Corr3dUserError``) pass through.
- :func:`fail` and the ``check_*`` validators (points inside the image, boxes, intrinsics, rigid poses) and
  :func:`image_size`: a field that breaks the documented format raises
  ``DatasetFormatError("<file>: <field>: <problem>", fix=...)``.
- :class:`ItemList` / :class:`ItemIterator`: what a reader returns: the items plus ``skipped``, a list of
  ``(item, reason)`` for requested items that could not be read, so the evaluation can report them.
- :func:`apply_filter`: a name filter (objects, scenes, videos, categories); names that match nothing raise
  :class:`corr3d.errors.UnknownNameError` listing the available values, unknown names among known ones are skipped
  with a reason.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from corr3d.errors import Corr3dUserError, DatasetFormatError, UnknownNameError

PARSE_ERRORS = (KeyError, IndexError, ValueError, TypeError, AttributeError)


def describe(err: BaseException) -> str:
    """A one-line account of a parsing error: ``missing field 'x'`` for a KeyError, else ``<Type>: <message>``."""
    if isinstance(err, KeyError) and err.args and not (isinstance(err.args[0], str) and " " in err.args[0]):
        return f"missing field {err.args[0]!r}"
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


@contextmanager
def reading(path: str | os.PathLike, what: str = "file", fix: str | None = None,
            errors: tuple[type[BaseException], ...] = PARSE_ERRORS) -> Iterator[None]:
    """Convert ``errors`` raised in the block into ``DatasetFormatError("<path>: malformed <what> (<cause>)")``."""
    try:
        yield
    except Corr3dUserError:
        raise
    except errors as err:
        raise DatasetFormatError(f"malformed {what} ({describe(err)})", path=path, fix=fix) from None


def fail(path: str | os.PathLike, field: str, problem: str, fix: str | None = None):
    """Raise ``DatasetFormatError("<path>: <field>: <problem>")``."""
    raise DatasetFormatError(f"{field}: {problem}" if field else problem, path=path, fix=fix)


def preview(values: Iterable, limit: int = 12) -> str:
    """``a, b, c, ... (+N more)``, or ``(none)``."""
    values = [str(v) for v in values]
    if not values:
        return "(none)"
    more = f", ... (+{len(values) - limit} more)" if len(values) > limit else ""
    return ", ".join(values[:limit]) + more


# ------------------------------------------------------------------------------------------------ validators
def as_array(path, field: str, value, shape: tuple, fix: str | None = None, dtype=np.float64) -> np.ndarray:
    """``value`` as a finite float array of ``shape`` (-1: any length), else a named error."""
    try:
        array = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as err:
        fail(path, field, f"not a numeric array ({describe(err)})", fix)
    if array.ndim != len(shape) or any(s not in (-1, a) for s, a in zip(shape, array.shape)):
        want = "x".join("N" if s == -1 else str(s) for s in shape)
        fail(path, field, f"shape {tuple(array.shape)}, expected {want}", fix)
    return array


def check_finite(path, field: str, array: np.ndarray, fix: str | None = None) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    if not np.isfinite(array).all():
        fail(path, field, f"{int((~np.isfinite(array)).sum())} non-finite value(s) (NaN/inf)", fix)
    return array


def check_points(path, field: str, points: np.ndarray, width: float, height: float, fix: str | None = None,
                 margin: float = 1.0, convention: str = "", file_offset: float = 0.0) -> None:
    """Every row of ``points`` (N, 2) (x, y, continuous pixel coordinates) finite and inside ``[-margin, width +
    margin] x [-margin, height + margin]``. The message shows the offending point as written in the file
    (``point - file_offset``, e.g. -0.5 for 1-based pixels) followed by ``convention``."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    bad = ~np.isfinite(points).all(1)
    bad |= (points[:, 0] < -margin) | (points[:, 0] > width + margin)
    bad |= (points[:, 1] < -margin) | (points[:, 1] > height + margin)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        x, y = points[i] - file_offset
        fail(path, field, f"{int(bad.sum())} of {len(points)} points outside the {width:g}x{height:g} image "
                          f"(e.g. #{i} at ({x:g}, {y:g})){convention}", fix)


def check_box(path, field: str, box, width: float | None = None, height: float | None = None,
              fix: str | None = None, margin: float = 1.0) -> np.ndarray:
    """A finite, non-empty ``[x1, y1, x2, y2]`` box, inside the image when its size is known."""
    box = check_finite(path, field, as_array(path, field, box, (4,), fix), fix)
    x1, y1, x2, y2 = box
    if not (x2 > x1 and y2 > y1):
        fail(path, field, f"empty box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] (expected x1 < x2, y1 < y2)", fix)
    if width is not None and height is not None and (
            x1 < -margin or y1 < -margin or x2 > width + margin or y2 > height + margin):
        fail(path, field, f"box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] extends outside the {width:g}x{height:g} image",
             fix)
    return box


def check_intrinsics(path, field: str, K, fix: str | None = None) -> np.ndarray:
    """A finite pinhole ``K`` (9 values): fx, fy > 0, principal point > 0, last row ``[0, 0, 1]``."""
    try:
        K = np.asarray(K, dtype=np.float64)
    except (TypeError, ValueError) as err:
        fail(path, field, f"not a numeric array ({describe(err)})", fix)
    if K.size != 9:
        fail(path, field, f"{K.size} values of shape {tuple(K.shape)}, expected 9 (a 3x3 matrix)", fix)
    K = check_finite(path, field, K.reshape(3, 3), fix)
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        fail(path, field, f"focal lengths fx={K[0, 0]:g}, fy={K[1, 1]:g} must be positive", fix)
    if not (K[0, 2] > 0 and K[1, 2] > 0):
        fail(path, field, f"principal point ({K[0, 2]:g}, {K[1, 2]:g}) must be positive", fix)
    if not np.allclose(K[2], [0, 0, 1], atol=1e-6) or abs(K[1, 0]) > 1e-6:
        fail(path, field, f"not an intrinsics matrix {K.tolist()} (expected [[fx, s, cx], [0, fy, cy], [0, 0, 1]])",
             fix)
    return K


def check_rotation(path, field: str, R: np.ndarray, fix: str | None = None, atol: float = 1e-2) -> None:
    """``R`` (3, 3) a rotation: orthonormal (within ``atol``) with determinant +1."""
    err = np.abs(R @ R.T - np.eye(3)).max()
    if err > atol or np.linalg.det(R) <= 0:
        fail(path, field, f"not a rotation (|R R^T - I| = {err:.3g}, det = {np.linalg.det(R):.3g})", fix)


def check_pose(path, field: str, value, fix: str | None = None) -> np.ndarray:
    """A finite rigid 3x4 or 4x4 pose (12 or 16 values) -> 4x4."""
    try:
        T = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        fail(path, field, f"not a numeric array ({describe(err)})", fix)
    if T.size not in (12, 16):
        fail(path, field, f"{T.size} values of shape {tuple(T.shape)}, expected a 3x4 or 4x4 pose", fix)
    T = check_finite(path, field, T.reshape(-1, 4), fix)
    if len(T) == 4 and not np.allclose(T[3], [0, 0, 0, 1], atol=1e-6):
        fail(path, field, f"last row {T[3].tolist()} of a 4x4 pose must be [0, 0, 0, 1]", fix)
    check_rotation(path, field, T[:3, :3], fix)
    return np.vstack([T[:3], [0.0, 0.0, 0.0, 1.0]])


def image_size(path: str | os.PathLike, fix: str | None = None) -> tuple[int, int]:
    """(width, height) from an image's header (no decoding); an unreadable image names itself."""
    from PIL import Image  # deferred: only readers that check image bounds need it

    try:
        with Image.open(path) as img:
            return img.size
    except OSError as err:
        raise DatasetFormatError(f"unreadable image ({err})", path=path,
                                 fix=fix or "the image is truncated or not an image: copy the dataset again") \
            from None


# ------------------------------------------------------------------------------------------------ selections
class ItemList(list):
    """The items a reader could read, plus ``skipped``: ``[(item, reason)]`` for requested items it could not."""

    def __init__(self, items: Iterable = (), skipped: Iterable[tuple[str, str]] = ()):
        super().__init__(items)
        self.skipped: list[tuple[str, str]] = list(skipped)


class ItemIterator:
    """An iterator over a reader's items whose ``skipped`` (``[(item, reason)]``) fills while it is consumed."""

    def __init__(self, make: Callable[[list], Iterator], skipped: Iterable[tuple[str, str]] = ()):
        self.skipped: list[tuple[str, str]] = list(skipped)
        self._items = make(self.skipped)

    def __iter__(self) -> "ItemIterator":
        return self

    def __next__(self):
        return next(self._items)


def apply_filter(available: Sequence, requested, *, what: str, source, key: Callable = str,
                 fix: str | None = None) -> tuple[list, list[tuple[str, str]]]:
    """The ``available`` items (in their order) whose ``key`` is in ``requested``, and ``[(name, reason)]`` for the
    requested names that are not available. No filter (``requested`` empty/None): everything, nothing skipped. A
    filter none of whose names is available raises :class:`UnknownNameError` naming it and the available values."""
    if not requested:
        return list(available), []
    wanted = list(dict.fromkeys(str(r) for r in requested))
    names = [str(key(a)) for a in available]
    known = set(names)
    missing = [w for w in wanted if w not in known]
    if len(missing) == len(wanted):
        raise UnknownNameError(f"the {what} filter [{', '.join(wanted)}] matches nothing in {source}; available: "
                               f"{preview(names, 30)}", path=source,
                               fix=fix or f"choose {what}s among the available ones, or leave the filter empty")
    selected = [a for a, n in zip(available, names) if n in set(wanted)]
    return selected, [(w, f"no {what} {w!r} in {source}") for w in missing]


__all__ = ["reading", "fail", "describe", "preview", "as_array", "check_finite", "check_points", "check_box",
           "check_intrinsics", "check_rotation", "check_pose", "image_size", "ItemList", "ItemIterator", "apply_filter",
           "PARSE_ERRORS"]
