"""Pair-loading throughput on 512x512 renders: pairs/s with and without the paper's augmentation.

Objects are rendered once into a temporary directory (not timed here; ``bench/render`` times rendering), then
``RenderedPairDataset`` is read as in training (PNG + depth decoding, 3000 points per view, xyz lookup).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from corr3d.config import load_config
from corr3d.data.augment import ViewAugmenter
from corr3d.data.pairs import PairSampler, RenderedPairDataset
from corr3d.render import ensure_rendered

OBJECTS = ["procedural:sphere_checker", "procedural:torus_coffee", "procedural:mug_cat"]


def _throughput(dataset, count: int, workers: int = 0, epoch: int = 0) -> float:
    """Pairs per second for ``count`` samples, in-process or through a DataLoader with ``workers``."""

    sampler = PairSampler(count)
    sampler.set_epoch(epoch)
    start = time.perf_counter()
    if workers == 0:
        for key in sampler:
            dataset[key]
    else:
        loader = torch.utils.data.DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=workers)
        for _ in loader:
            pass
    return count / (time.perf_counter() - start)


def run(quick: bool = False) -> dict:
    objects = OBJECTS[:1] if quick else OBJECTS
    # the base config's 512x512 renders (f = 560, 42 views; quick: 12) and the paper's augmentation
    data = load_config("base", [f"data.render.icosphere_subdivisions={0 if quick else 1}"]).data
    count = 8 if quick else 40
    with tempfile.TemporaryDirectory(prefix="corr3d_bench_data_") as tmp:
        dirs = ensure_rendered(objects, Path(tmp), data.render)
        plain = RenderedPairDataset(dirs, num_points=3000, num_samples=count, seed=0)
        augmented = RenderedPairDataset(dirs, num_points=3000, augmenter=ViewAugmenter(data.augment),
                                        num_samples=count, seed=0)
        _throughput(plain, 2, epoch=99)  # warm-up: opening objects, imports
        _throughput(augmented, 2, epoch=99)
        results = {
            "objects": len(dirs),
            "image_size": "512x512",
            "points_per_view": 3000,
            "pairs_per_s_no_aug": round(_throughput(plain, count), 2),
            "pairs_per_s_aug": round(_throughput(augmented, count, epoch=1), 2),
        }
        if not quick:
            results["pairs_per_s_aug_2_workers"] = round(_throughput(augmented, count, workers=2, epoch=2), 2)
    return results
