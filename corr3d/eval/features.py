"""Feature extraction shared by every downstream task: one code path for any backbone.

Images are uint8 HxWx3 numpy arrays; maps are computed with ``model.dense_features`` (L2-normalised) in batches of
equal-sized images and kept on the model's device (or moved to CPU). :class:`FeatureCache` memoises maps per image key
so that each image's features are computed once per model and task (LRU-bounded).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Hashable, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


def to_tensor(images: Sequence[np.ndarray] | np.ndarray, device=None) -> torch.Tensor:
    """uint8 (B,)H,W,3 -> float (B, 3, H, W) in [0, 1]."""
    arr = np.stack(list(images)) if not isinstance(images, np.ndarray) or images.ndim == 3 else images
    if arr.ndim == 3:
        arr = arr[None]
    return torch.from_numpy(np.ascontiguousarray(arr)).to(device).permute(0, 3, 1, 2).float() / 255.0


def snap_to_patch(size: int, patch: int) -> int:
    """Largest multiple of ``patch`` <= ``size`` (at least one patch)."""
    return max(patch, (int(size) // patch) * patch)


def input_size_for_feature_px(image_size: tuple[int, int], patch: int, feature_px: float) -> tuple[int, int]:
    """ViT input so that each token covers ``feature_px`` pixels of the image: (H // px * patch, W // px * patch).

    The authors' OnePose protocol (feature_px = 8: a 512x512 frame -> 64x64 tokens -> 896x896 input for /14).
    """
    h, w = image_size
    return (max(1, int(h // feature_px)) * patch, max(1, int(w // feature_px)) * patch)


@torch.no_grad()
def extract_maps(model, images: Sequence[np.ndarray], input_size: tuple[int, int] | None = None,
                 stride: int | None = None, batch_size: int = 4, to_cpu: bool = False,
                 dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Normalised (C, h, w) maps for each image; images of equal size are batched together."""
    device = model_device(model)
    out: list[torch.Tensor | None] = [None] * len(images)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        by_size.setdefault(tuple(img.shape[:2]), []).append(i)
    for idxs in by_size.values():
        for s in range(0, len(idxs), batch_size):
            chunk = idxs[s:s + batch_size]
            batch = to_tensor([images[i] for i in chunk], device)
            maps = model.dense_features(batch, input_size=input_size, stride=stride).to(dtype)
            if to_cpu:
                maps = maps.cpu()
            for i, m in zip(chunk, maps):
                out[i] = m
    return out  # type: ignore[return-value]


def sample(model, fmap: torch.Tensor, points_xy, image_size: tuple[int, int], input_size=None, stride=None,
           normalize: bool = True) -> torch.Tensor:
    """(N, C) features of one (C, h, w) map at pixel points (N, 2) (patch-centre aligned bilinear)."""
    pts = torch.as_tensor(np.asarray(points_xy, dtype=np.float32) if not isinstance(points_xy, torch.Tensor)
                          else points_xy, dtype=torch.float32, device=fmap.device).reshape(1, -1, 2)
    if pts.shape[1] == 0:
        return fmap.new_zeros(0, fmap.shape[0])
    feats = model.sample_points(fmap[None].float(), pts, tuple(image_size), input_size=input_size, stride=stride,
                                normalize=False)[0]
    return F.normalize(feats, dim=-1) if normalize else feats


def token_centres(model, grid_hw: tuple[int, int], image_size: tuple[int, int], input_size: tuple[int, int],
                  stride: int | None = None, device=None) -> torch.Tensor:
    """(h*w, 2) pixel coordinates (x, y) of the token centres of a map, row-major (j*stride + patch/2 in input px)."""
    stride = stride or model.patch_size
    h, w = grid_hw
    H, W = image_size
    H_in, W_in = input_size
    xs = (torch.arange(w, device=device, dtype=torch.float32) * stride + model.patch_size / 2.0) * (W / W_in)
    ys = (torch.arange(h, device=device, dtype=torch.float32) * stride + model.patch_size / 2.0) * (H / H_in)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)


class FeatureCache:
    """LRU memo of feature maps keyed by image id: ``cache.get(key, compute)``; counts hits and misses."""

    def __init__(self, max_items: int = 256):
        self.max_items = max(1, int(max_items))
        self._items: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key in self._items:
            self.hits += 1
            self._items.move_to_end(key)
            return self._items[key]
        self.misses += 1
        value = compute()
        self._items[key] = value
        if len(self._items) > self.max_items:
            self._items.popitem(last=False)
        return value

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)
