"""Model benchmarks: ViT-S feature-extraction throughput at 448 and 1120 px, SmoothAP on 3000 x 3000 points.

CPU peak memory is the process's maximum resident set size (torch allocations are invisible to tracemalloc), so it
only ever grows across measurements; on GPU, torch.cuda's peak allocated memory is reset per measurement.
"""
from __future__ import annotations

import resource
import sys
import time

import torch
import torch.nn.functional as F

from corr3d.losses import smooth_ap_loss
from corr3d.models import WeightsUnavailableError, load_model


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)


def _feature_model(device: torch.device):
    """ViT-S/14 without LoRA/head; real weights when obtainable (speed does not depend on them)."""
    options = dict(lora_blocks=0, head_layers=0)
    try:
        model = load_model("dinov2_s14", weights="auto", **options)
    except (WeightsUnavailableError, RuntimeError):
        model = load_model("dinov2_s14", weights="random", **options)
    return model.to(device).eval()


def _throughput(model, size: int, batch: int, reps: int, device: torch.device) -> dict[str, float]:
    images = torch.rand(batch, 3, size, size, device=device)
    with torch.inference_mode():
        model.dense_features(images, input_size=(size, size))  # warm-up (allocator, kernels)
        _sync(device)
        _reset_peak(device)
        start = time.perf_counter()
        for _ in range(reps):
            model.dense_features(images, input_size=(size, size))
        _sync(device)
    seconds = (time.perf_counter() - start) / reps
    return {f"features_{size}px_images_per_s": round(batch / seconds, 3),
            f"features_{size}px_s_per_batch{batch}": round(seconds, 4),
            f"features_{size}px_peak_mb": _peak_mb(device)}


def _loss_time(points: int, dim: int, reps: int, device: torch.device) -> dict[str, float]:
    """Forward + backward of SmoothAP on one view pair with the paper's 3000 points per view."""
    gen = torch.Generator().manual_seed(0)
    xyz0 = torch.rand(1, points, 3, generator=gen) - 0.5
    xyz1 = xyz0 + 0.003 * torch.randn(1, points, 3, generator=gen)  # every point has a positive partner nearby
    feat0 = torch.randn(1, points, dim, generator=gen)
    feat1 = feat0 + 0.5 * torch.randn(1, points, dim, generator=gen)
    xyz0, xyz1, feat0, feat1 = (t.to(device) for t in (xyz0, xyz1, feat0, feat1))
    feat0.requires_grad_(True)
    _reset_peak(device)
    times, positives = [], 0
    for _ in range(reps + 1):  # first round is warm-up
        _sync(device)
        start = time.perf_counter()
        loss, stats = smooth_ap_loss(F.normalize(feat0, dim=-1), F.normalize(feat1, dim=-1), xyz0, xyz1)
        loss.backward()
        _sync(device)
        times.append(time.perf_counter() - start)
        positives = int(stats["num_positives"])
    return {f"smooth_ap_{points}x{points}_fwd_bwd_s": round(min(times[1:]), 4),
            f"smooth_ap_{points}x{points}_positives": positives,
            f"smooth_ap_{points}x{points}_peak_mb": _peak_mb(device)}


def run(quick: bool = False) -> dict[str, float | str]:
    device = _device()
    model = _feature_model(device)
    results: dict[str, float | str] = {"device": str(device), "backbone": "dinov2_s14",
                                       "weights": model.weights_info.source, "torch_threads": torch.get_num_threads()}
    results.update(_throughput(model, 448, batch=1, reps=1 if quick else 3, device=device))
    if not quick:  # ~7 s per image on 2 CPU threads
        results.update(_throughput(model, 1120, batch=1, reps=2, device=device))
    results.update(_loss_time(1000 if quick else 3000, model.embed_dim, reps=1 if quick else 3, device=device))
    return results
