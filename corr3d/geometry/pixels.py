"""The pixel convention and the visibility test, each written once.

Continuous image coordinates put the top-left corner of pixel (row r, col c) at (c, r), so its centre is
(c + 0.5, r + 0.5) and a continuous point (x, y) lies in pixel (floor(y), floor(x)). The renderer casts its rays
through these centres, features are sampled at them, and ground-truth correspondences are expressed in them.
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

CENTRE = 0.5  # offset of a pixel's centre from its top-left corner, in pixels


def torch_of(x):
    """The torch module if ``x`` is a torch tensor, else None; never imports torch.

    A tensor can only exist once torch is imported, so ``sys.modules`` answers the question: ``import
    corr3d.geometry`` (every render worker, every numpy-only caller) does not pay torch's import (~2 s CPU per process).
    """
    torch = sys.modules.get("torch")
    return torch if torch is not None and isinstance(x, torch.Tensor) else None


def pixel_centres(rows, cols, dtype=np.float32):
    """(N, 2) continuous (x, y) centres of the pixels (rows[k], cols[k]); torch tensors in -> float32 tensor out."""
    torch = torch_of(rows)
    if torch is not None:
        return torch.stack([cols.float() + CENTRE, rows.float() + CENTRE], dim=-1)
    return np.stack([np.asarray(cols) + CENTRE, np.asarray(rows) + CENTRE], axis=1).astype(dtype)


def foreground_centres(mask: np.ndarray, stride: int = 1) -> np.ndarray:
    """(N, 2) float32 centres of the foreground pixels on a ``stride`` lattice, row-major."""
    sub = np.zeros_like(mask, dtype=bool)
    sub[::stride, ::stride] = True
    rows, cols = np.nonzero(mask & sub)
    return pixel_centres(rows, cols)


def pixel_grid(width: int, height: int, step: int = 1) -> np.ndarray:
    """(H', W', 2) float64 centres (x, y) of every ``step``-th pixel, starting at the first."""
    xs = np.arange(0, width, step, dtype=np.float64) + CENTRE
    ys = np.arange(0, height, step, dtype=np.float64) + CENTRE
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx, gy], axis=-1)


def pixel_grid_tensor(image_size: tuple[int, int], device=None, step: int = 1) -> torch.Tensor:
    """(H'*W', 2) float32 tensor of the centres (x, y) of every ``step``-th pixel of an (H, W) image, row-major."""
    import torch  # deferred: import cost (~2 s CPU), only the tensor grid needs it (see torch_of)

    h, w = image_size
    ys = torch.arange(0, h, step, device=device, dtype=torch.float32) + CENTRE
    xs = torch.arange(0, w, step, device=device, dtype=torch.float32) + CENTRE
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=-1)


def containing_pixel(uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) int64 of the pixels that contain the continuous points ``uv`` (N, 2)."""
    return np.floor(uv[:, 1]).astype(np.int64), np.floor(uv[:, 0]).astype(np.int64)


def visible_pixels(uv: np.ndarray, z: np.ndarray, points: np.ndarray, mask: np.ndarray, xyz_map: np.ndarray,
                   focal: float, tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which of ``points`` (N, 3), projected into a view at ``uv`` (N, 2) with depth ``z`` (N,), the view sees.

    Visible: in front of the camera, inside the image, on a foreground pixel of ``mask`` (H, W) whose own surface
    point ``xyz_map`` (H, W, 3) lies within ``tol`` + two pixel footprints (z / focal) of the point, i.e. nothing
    occludes it (the footprints keep visible points at low resolutions, where a pixel spans more than ``tol``).
    Returns (indices into ``points``, rows, cols) of the visible points, in the order of ``points``.
    """
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    rows, cols = containing_pixel(uv)
    inside = (z > 0) & (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
    idx = np.nonzero(inside)[0]
    r, c = rows[idx], cols[idx]
    footprint = z[idx] / float(focal)
    ok = mask[r, c] & (np.linalg.norm(np.asarray(xyz_map)[r, c] - points[idx], axis=1) < tol + 2.0 * footprint)
    return idx[ok], r[ok], c[ok]
