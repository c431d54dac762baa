"""One training step (LoRA + conv head + SmoothAP, 3000 points per view) against the authors' step, interleaved; and
GPU estimates of the paper recipe and the large evaluation from FLOPs counted by ``torch.utils.flop_counter``.

Steps compared on the same model (DINOv2-S/14, LoRA on the last 4 blocks, one 3x3 head conv, 512² pair, 448-px
input as the main job; AdamW):
- ``authors``: as qq456cvb/3DCorrEnhance ``finetune_timm.py`` structures it: one backbone call per view, then their
  loss formulation (``corr3d.perf.loss.authors_smooth_ap``);
- ``corr3d``: ``MultiviewFinetuneModule.pair_features`` (both views in one backbone call) + ``smooth_ap_loss``;
- ``corr3d_cached``: the same with ``cache_frozen_prefix`` (augmentation off): the frozen first blocks' tokens come
  from the per-view cache (a warm cache, i.e. every view seen before; the first visit costs a normal forward).
Memory: autograd's saved activations per step (bytes of the tensors kept for backward), the part of the peak that
differs between the steps (weights and optimizer state are the same); on CUDA the allocator's peak as well.

Estimates (method): FLOPs of one step / one view / one pair are counted on the meta device (no compute), divided by
an assumed sustained H100 bf16 throughput ``H100_TFLOPS_SUSTAINED`` (989 TFLOPS dense peak at ~40 % MFU, typical
for ViT-B with fused attention at 6400 tokens); data loading is assumed to keep up (ISONoise ~21 ms/view on one
core: 10 loader workers give ~240 pairs/s). These are estimates, not measurements, until a GPU runs ``make bench``.
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from corr3d.losses import smooth_ap_loss
from corr3d.models import WeightsUnavailableError, create_model
from corr3d.models.backbones import create_backbone
from corr3d.models.features import fused_attention_status
from corr3d.models.model import Corr3DModel
from corr3d.perf.loss import authors_smooth_ap, make_inputs
from corr3d.training.module import MultiviewFinetuneModule

H100_TFLOPS_SUSTAINED = 400.0


def _model(backbone="dinov2_s14", target_res=256, device="cpu", meta=False, weights="auto"):
    cfg = {"backbone": backbone, "target_res": target_res, "lora": {"blocks": 4, "rank": 4, "alpha": None},
           "head": {"num_layers": 1, "init": "default"}}
    if meta:
        with torch.device("meta"):
            net, spec = create_backbone(backbone, {})
            return Corr3DModel(net, spec, cfg)
    try:
        model = create_model(backbone, weights=weights, target_res=target_res, lora=cfg["lora"], head=cfg["head"])
    except (WeightsUnavailableError, RuntimeError):
        model = create_model(backbone, weights="random", target_res=target_res, lora=cfg["lora"], head=cfg["head"])
    return model.to(device)


def _batch(points=3000, size=512, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    _, _, x0, x1 = make_inputs("realistic", points, seed=seed)
    b = {"image0": torch.rand(1, 3, size, size, generator=gen), "image1": torch.rand(1, 3, size, size, generator=gen),
         "points0": torch.rand(1, points, 2, generator=gen) * size, "points1": torch.rand(1, points, 2, generator=gen) * size,
         "xyz0": x0, "xyz1": x1, "object_id": ["bench"], "view0": torch.tensor([0]), "view1": torch.tensor([1])}
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()}


class _SavedBytes:
    """Sum of the bytes autograd saves for backward inside the context (activation memory of a step)."""

    def __init__(self):
        self.bytes = 0
        self._seen: set = set()

    def __enter__(self):
        def pack(t):
            key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) if t.device.type != "meta" else id(t)
            if key not in self._seen:
                self._seen.add(key)
                self.bytes += t.untyped_storage().nbytes() if t.device.type != "meta" else t.numel() * t.element_size()
            return t
        self._ctx = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def step_functions(model, batch):
    """{name: fn() -> loss} for the three steps (each: forward, loss, backward, optimizer step)."""
    module = MultiviewFinetuneModule(model, smooth_ap_loss)
    cached = MultiviewFinetuneModule(model, smooth_ap_loss, cache_frozen_prefix=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, weight_decay=1e-4)
    size = tuple(batch["image0"].shape[-2:])

    def authors():
        f0 = F.normalize(model.sample_points(model(batch["image0"]), batch["points0"], size), dim=-1)
        f1 = F.normalize(model.sample_points(model(batch["image1"]), batch["points1"], size), dim=-1)
        loss = authors_smooth_ap(f0, f1, batch["xyz0"], batch["xyz1"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    def ours(mod):
        def fn():
            _, f0, f1 = mod.pair_features(batch)
            loss, _ = smooth_ap_loss(f0, f1, batch["xyz0"], batch["xyz1"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss
        return fn

    return {"authors": authors, "corr3d": ours(module), "corr3d_cached": ours(cached)}


def time_steps(model, batch, reps=3, device="cpu") -> dict[str, float]:
    fns = step_functions(model, batch)
    times: dict[str, list] = {k: [] for k in fns}
    saved: dict[str, float] = {}
    names = list(fns)
    for rep in range(reps + 1):  # round 0: warm-up (and fills the prefix cache)
        for name in (names if rep % 2 else names[::-1]):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            if rep == 0:
                with _SavedBytes() as sb:
                    fns[name]()
                saved[name] = sb.bytes / 2**20
            else:
                fns[name]()
            if device == "cuda":
                torch.cuda.synchronize()
            if rep:
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {}
    for k in names:
        out[f"step_{k}_s"] = round(med[k], 3)
        out[f"step_{k}_saved_activations_mb"] = round(saved[k], 1)
    out["step_speedup_vs_authors_x"] = round(med["authors"] / med["corr3d"], 2)
    out["step_cached_speedup_vs_authors_x"] = round(med["authors"] / med["corr3d_cached"], 2)
    out["steps_per_s"] = round(1.0 / med["corr3d"], 3)
    return out


def count_flops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def estimates() -> dict[str, float]:
    """Paper recipe (DINOv2-B/14, 1120-px input, 10k steps, 3000 points) and the 1,000-object x 42-view evaluation
    (main-job protocol: 800 source points x every 2nd target foreground pixel, ~16k; 428 pairs per object) on
    one H100, from FLOPs counted on the meta device."""
    model = _model("dinov2_b14", target_res=640, meta=True)
    x = torch.rand(2, 3, 512, 512, device="meta")

    def step():
        maps = model(x)
        pts = torch.rand(1, 3000, 2, device="meta") * 512
        f0 = F.normalize(model.sample_points(maps[:1], pts, (512, 512)), dim=-1)
        f1 = F.normalize(model.sample_points(maps[1:], pts, (512, 512)), dim=-1)
        sim = f0 @ f1.transpose(1, 2)             # the loss's GEMM (the rest is elementwise)
        sim.sum().backward()

    step_flops = count_flops(step)
    with torch.no_grad():
        view_flops = count_flops(lambda: model(x[:1]))
    pair_fast = 2.0 * 800 * 16384 * 768           # matching GEMM per pair, main-job protocol
    pair_paper = 2.0 * 50000 * 60000 * 768        # every visible pixel x every target pixel (~50k x 60k at 512²)
    tf = H100_TFLOPS_SUSTAINED * 1e12
    views, pairs = 1000 * 42, 1000 * 428
    return {"paper_recipe_step_tflop": round(step_flops / 1e12, 2),
            "paper_recipe_10k_steps_h100_min_est": round(10_000 * step_flops / tf / 60, 1),
            "eval_view_forward_tflop_1120px_vitb": round(view_flops / 1e12, 3),
            "eval_1000x42_backbone_h100_min_est": round(views * view_flops / tf / 60, 1),
            "eval_1000x42_matching_fast_h100_min_est": round(pairs * pair_fast / tf / 60, 2),
            "eval_1000x42_matching_paper_dense_h100_min_est": round(pairs * pair_paper / tf / 60, 1),
            "h100_tflops_assumed": H100_TFLOPS_SUSTAINED}


def run(quick: bool = False) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = _model(device=device, weights="random" if quick else "auto")
    out: dict[str, float | str] = {"device": device, "torch_threads": torch.get_num_threads(),
                                   "input_px": "x".join(map(str, model.input_size(512, 512)))}
    out.update({f"sdpa_{k}": v for k, v in fused_attention_status(model.backbone).items()})
    out.update(time_steps(model, _batch(1000 if quick else 3000, device=device), reps=1 if quick else 3,
                          device=device))
    out.update(estimates())
    return out
