"""``make bench-gpu``: the prepared GPU check (at most ~8 minutes on one H100), one table to paste into the README.

Measures, on a CUDA device:
1. the paper recipe's training step: DINOv2-B/14, 1120-px inputs (target_res 640 / 8 = 80x80 grid as
   ``experiments/dinov2_b14_objaverse.yaml``), LoRA on the last 4 blocks + one 3x3 conv, SmoothAP over 3,000 points
   per view in fp32 (the loss always runs in fp32, corr3d/losses/precision.py), under the trainer's bf16 autocast
   and in fp32; median step time and the allocator's peak memory;
2. equivariance throughput: the main-job protocol (4 views x 6 pairs x 400 points per object, 448 px) on rendered
   procedural objects, timed on a subset and extrapolated to 1,000 objects;
3. ``make eval``'s offline suite for the pretrained DINOv2-S: seconds per task (pose, tracking, semantic, pose_ycbv).

Without CUDA it prints why and measures nothing (exit status 0: the CPU numbers are ``make bench``'s). Not a group
of ``make bench`` (the leading underscore): it would take the CPU machine hours.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

BUDGET_S = 8 * 60


def _cuda_ms(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def paper_step(reps: int = 5) -> dict[str, float | str]:
    from corr3d.perf.training import _batch, _model, step_functions

    out: dict[str, float | str] = {}
    model = _model("dinov2_b14", target_res=640, device="cuda")
    batch = _batch(3000, size=1120, device="cuda")
    step = step_functions(model, batch)["corr3d"]
    for label, autocast in (("bf16_autocast", True), ("fp32", False)):
        def run():
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                return step()
        run()   # warm-up: kernels, allocator
        torch.cuda.reset_peak_memory_stats()
        out[f"paper_step_{label}_ms"] = round(_cuda_ms(run, reps), 1)
        out[f"paper_step_{label}_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    out["paper_step_10k_steps_h"] = round(out["paper_step_bf16_autocast_ms"] * 10_000 / 3.6e6, 2)
    return out


def equivariance_throughput(objects: int = 8) -> dict[str, float]:
    from corr3d.config import load_config
    from corr3d.eval.equivariance import evaluate_objects, open_rendered_objects
    from corr3d.models import compared_model
    from corr3d.render.batch import ensure_rendered

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config("dinov2_single_object", [f"data_root={tmp}"])
        specs = [f"procedural:sphere_astronaut:{k}" for k in range(objects)]
        dirs = ensure_rendered(specs, Path(tmp) / "rendered", cfg.data.render)
        model = compared_model("pretrained", cfg.model).cuda().eval()
        objs = open_rendered_objects(dirs)
        with torch.no_grad():
            evaluate_objects(model, objs[:1], cfg.equivariance, seed=0)   # warm-up
            torch.cuda.synchronize()
            start = time.perf_counter()
            evaluate_objects(model, objs, cfg.equivariance, seed=0)
            torch.cuda.synchronize()
        per_object = (time.perf_counter() - start) / len(objs)
    return {"equivariance_s_per_object": round(per_object, 3),
            "equivariance_1000_objects_min": round(per_object * 1000 / 60, 1)}


def offline_eval() -> dict[str, float]:
    from corr3d.config import load_config
    from corr3d.eval.run import run_eval_part

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config("dinov2_single_object", [f"data_root={tmp}/none", "eval.real_data=false",
                                                   "eval.device=cuda", f"output_dir={tmp}/runs"])
        for task in ("pose", "tracking", "semantic", "pose_ycbv"):
            start = time.perf_counter()
            run_eval_part(cfg, task, "pretrained", adapter=None)
            out[f"offline_{task}_s"] = round(time.perf_counter() - start, 1)
    return out


def run_gpu_check() -> dict[str, float | str]:
    if not torch.cuda.is_available():
        print("bench-gpu: no CUDA device here; nothing measured (the CPU numbers are `make bench`'s)")
        return {}
    started = time.perf_counter()
    results: dict[str, float | str] = {"device": torch.cuda.get_device_name(0)}
    for name, fn in (("paper step", paper_step), ("equivariance", equivariance_throughput),
                     ("offline eval", offline_eval)):
        if time.perf_counter() - started > BUDGET_S:
            results[f"{name}_skipped"] = "time budget spent"
            continue
        try:
            results.update(fn())
        except Exception as err:  # noqa: BLE001 - one failed measurement must not cost the others
            results[f"{name}_error"] = f"{type(err).__name__}: {err}"[:200]
    results["bench_gpu_wall_s"] = round(time.perf_counter() - started, 1)
    print("\n| measurement | value |\n|---|---|")
    for key, value in results.items():
        print(f"| {key} | {value} |")
    return results
