"""SmoothAP forward + backward: corr3d's ``smooth_ap_loss`` against the authors' formulation, interleaved.

``authors_smooth_ap`` restates the authors' training-step loss (qq456cvb/3DCorrEnhance ``finetune_timm.py``, the
formula of corr3d/losses/smooth_ap.py) for timing only: full 3D distance matrix (``torch.cdist`` default mode), full similarity
matrix, then the similarity and negative-mask rows gathered once per positive pair, sigma written as
1 / (1 + exp(clamp(-x / tau))). corr3d's loss equals it (tests/losses/test_smooth_ap.py checks the loss against a
plain loop; here the two values are compared as a sanity check).

Inputs (3000 x 3000 points, dim 384 like DINOv2-S):
- ``realistic``: both views sample 3000 points of a sphere of radius 0.4 independently (as two renders of one
  object do): ~350 positive pairs at the paper's 0.005 radius, like the issue's measured 353;
- ``dense``: view 1's points are view 0's moved by 0.003 N(0, 1) per axis: most points have a positive (~1/2).
Timings are medians of interleaved repetitions in one process (robust to a shared, busy machine).
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from corr3d.losses import smooth_ap_loss


def _sig(x: torch.Tensor, tau: float) -> torch.Tensor:
    return 1.0 / (1.0 + torch.exp(torch.clamp(-x / tau, min=-50.0, max=50.0)))


def authors_smooth_ap(f0, f1, x0, x1, pos_radius=0.005, neg_radius=0.1, tau=0.01) -> torch.Tensor:
    """The authors' formulation (see module docstring); f0/f1 L2-normalised (B, N, C)/(B, M, C)."""
    dist = torch.cdist(x0, x1)
    sim = torch.bmm(f0, f1.transpose(1, 2))
    b, i, j = torch.nonzero(dist < pos_radius, as_tuple=True)
    s_pos = sim[b, i, j]
    rows = sim[b, i]
    neg = (dist[b, i] > neg_radius).float()
    r1 = _sig(s_pos - 1.0, tau) + 1.0
    ap1 = r1 / (r1 + torch.sum(_sig(rows - 1.0, tau) * neg, -1))
    r2 = _sig(1.0 - s_pos, tau) + 1.0
    ap2 = r2 / (r2 + torch.sum(_sig(rows - s_pos[:, None], tau) * neg, -1))
    return torch.mean(1.0 - (ap1 + ap2) / 2.0)


def make_inputs(kind: str, points: int = 3000, dim: int = 384, device="cpu", seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    if kind == "realistic":
        x0 = F.normalize(torch.randn(1, points, 3, generator=gen), dim=-1) * 0.4
        x1 = F.normalize(torch.randn(1, points, 3, generator=gen), dim=-1) * 0.4
    elif kind == "dense":
        x0 = torch.rand(1, points, 3, generator=gen) - 0.5
        x1 = x0 + 0.003 * torch.randn(1, points, 3, generator=gen)
    else:
        raise ValueError(kind)
    # features: nearby 3D points get correlated features (a smooth random field), plus noise
    w = torch.randn(3, dim, generator=gen) * 4.0
    f0 = torch.cos(x0 @ w) + 0.5 * torch.randn(1, points, dim, generator=gen)
    f1 = torch.cos(x1 @ w) + 0.5 * torch.randn(1, points, dim, generator=gen)
    return [t.to(device) for t in (f0, f1, x0, x1)]


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_losses(kind: str, reps: int = 5, device="cpu", points: int = 3000) -> dict[str, float]:
    f0, f1, x0, x1 = make_inputs(kind, points, device=device)
    raw0 = f0.clone().requires_grad_(True)

    def ours():
        loss, stats = smooth_ap_loss(F.normalize(raw0, dim=-1), F.normalize(f1, dim=-1), x0, x1)
        loss.backward()
        return loss, int(stats["num_positives"])

    def authors():
        loss = authors_smooth_ap(F.normalize(raw0, dim=-1), F.normalize(f1, dim=-1), x0, x1)
        loss.backward()
        return loss, None

    times = {"ours": [], "authors": []}
    values = {}
    for rep in range(reps + 1):  # round 0 is warm-up; then alternate the order each round
        order = (("ours", ours), ("authors", authors)) if rep % 2 else (("authors", authors), ("ours", ours))
        for name, fn in order:
            raw0.grad = None
            _sync(device)
            start = time.perf_counter()
            values[name] = tuple(v.detach() if isinstance(v, torch.Tensor) else v for v in fn())
            _sync(device)
            if rep:
                times[name].append(time.perf_counter() - start)
    t_ours, t_auth = statistics.median(times["ours"]), statistics.median(times["authors"])
    return {f"loss_{kind}_positives": values["ours"][1],
            f"loss_{kind}_corr3d_fwd_bwd_s": round(t_ours, 4), f"loss_{kind}_authors_fwd_bwd_s": round(t_auth, 4),
            f"loss_{kind}_speedup_x": round(t_auth / t_ours, 2),
            f"loss_{kind}_rel_diff": float(abs(values["ours"][0] - values["authors"][0]) / abs(values["authors"][0]))}


def run(quick: bool = False) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out: dict[str, float | str] = {"device": device, "points": 1000 if quick else 3000,
                                   "torch_threads": torch.get_num_threads()}
    for kind in ("realistic", "dense"):
        out.update(time_losses(kind, reps=2 if quick else 5, device=device, points=1000 if quick else 3000))
    return out
