"""Nearest-neighbour matching at the speed of a matrix multiply: the one home of cosine NN in corr3d.

Every task that asks "which target candidate has the highest cosine similarity to this source feature" (multiview
equivariance in corr3d/eval/equivariance.py, the real-pairs task in corr3d/eval/real_pairs.py, semantic keypoint
transfer in corr3d/eval/semantic.py, whose candidates are scored lazily: ``blocked_argmax``) goes through
``nearest_neighbors``; mutual matches (one-shot pose, corr3d/eval/pose.py and pose_ycbv.py) through
``mutual_nearest_neighbors``:

- blocked GEMM + argmax: the (N x M) score matrix is never materialised whole; query rows are processed in blocks
  whose score block fits ``memory_budget_mb`` (``block_rows``), so memory is O(block x M), not O(N x M);
- batched: ``queries`` (B, N, C) against ``candidates`` (B, M, C) with an optional ``candidate_mask`` (B, M) for
  padded candidate sets; ``nearest_neighbors_grouped`` matches many query sets that share target candidate sets
  (e.g. all view pairs (i, j) with the same target view j) with one GEMM per target;
- precision: fp32 on CPU (``precision="auto"``); on CUDA ``auto`` screens with bf16 GEMMs and re-scores the
  ``rerank`` best candidates of every query in fp32, so the returned index is the fp32 argmax unless the true best
  candidate is not among the bf16 top-``rerank`` (then the result is one of them, within bf16 rounding of the max);
- ties: the first (lowest) index among exactly equal fp32 scores, as ``torch.argmax``.

Ground truth for rendered view pairs (``ViewCache``, ``visible_points``): each view's mask, foreground pixel
centres and object-space points are decoded ONCE per object and view (``RenderedObject.mask``/``xyz`` decode PNG and
npz on every call), and visibility of all source pixels in the target view is one vectorised projection + lookup.

API (used by corr3d/eval/real_pairs.py; all functions take and return torch tensors unless noted):

    nearest_neighbors(queries, candidates, candidate_mask=None, normalize=False, precision="auto",
                      memory_budget_mb=64.0, rerank=8) -> NNResult(index (…, N) long, score (…, N) float32)
    nearest_neighbors_grouped(queries: list[(N_k, C)], groups: list[key], candidates: {key: (M, C)}, **kw)
        -> list[NNResult]                      # one per query set, in input order; one GEMM pass per key
    sample_normalized(model, fmap (C, h, w), points_xy (N, 2) np/tensor, image_size, input_size=None)
        -> (N, C) float32 L2-normalised features (patch-centre aligned bilinear, ``model.sample_points``)
    match_points(model, fmap_src, fmap_tgt, src_xy, tgt_xy, image_size, target_size=None, **kw) -> (N, 2) np
        # the target candidate location (x, y) best matching each source point
    mutual_nearest_neighbors(a (N, C), b (M, C), memory_budget_mb=64.0) -> (i (K,), j (K,)) np int64
        # mutual best matches, one blocked GEMM for both directions (one-shot pose: query grid vs templates)
    block_rows(num_candidates, memory_budget_mb, element_bytes=4) -> int
    blocked_argmax(score_block(s, e) -> (N, e - s) scores, num_queries, num_candidates, block) -> NNResult
        # argmax over candidates scored lazily block by block (semantic transfer: every pixel, upsampled)
    resolve_precision(precision, device) -> torch.dtype   # "auto" | "fp32" | "bf16" | "fp16"
    ViewCache(obj, max_views=64): .mask(i), .xyz(i), .foreground(i) -> (centres (P, 2), points (P, 3)),
        .candidates(i, stride) -> (M, 2) pixel centres on a stride lattice
    visible_points(cache, i, j, tol) -> (source centres (V, 2), true location in view j (V, 2)), before sampling
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from corr3d.geometry import project
from corr3d.geometry.pixels import containing_pixel, pixel_centres, visible_pixels

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class NNResult:
    index: torch.Tensor   # (..., N) long: index of the best candidate
    score: torch.Tensor   # (..., N) float32: its cosine similarity (fp32)


def resolve_precision(precision: str, device) -> torch.dtype:
    """GEMM dtype: ``auto`` is fp32 on CPU (bf16 GEMMs are slower than fp32 on CPUs without AMX) and bf16 on CUDA."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return _DTYPES[precision]


def block_rows(num_candidates: int, memory_budget_mb: float = 64.0, element_bytes: int = 4) -> int:
    """Query rows per block so that one (rows x num_candidates) score block fits the budget (at least 1 row)."""
    budget = float(memory_budget_mb) * 2**20
    return max(1, int(budget // max(1, num_candidates * element_bytes)))


def _masked(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return scores
    return scores.masked_fill(~mask, float("-inf"))


@torch.no_grad()
def nearest_neighbors(queries: torch.Tensor, candidates: torch.Tensor, candidate_mask: torch.Tensor | None = None,
                      normalize: bool = False, precision: str = "auto", memory_budget_mb: float = 64.0,
                      rerank: int = 8) -> NNResult:
    """Cosine nearest neighbour of every query among the candidates (inputs L2-normalised unless ``normalize``).

    queries (N, C) or (B, N, C); candidates (M, C) or (B, M, C); candidate_mask (M,)/(B, M) bool, False = never
    matched (padding). A query with no valid candidate gets index 0 and score -inf.
    """
    batched = queries.ndim == 3
    q = queries if batched else queries[None]
    c = candidates if candidates.ndim == 3 else candidates[None]
    if c.shape[0] != q.shape[0]:
        c = c.expand(q.shape[0], -1, -1)
    mask = None
    if candidate_mask is not None:
        mask = candidate_mask if candidate_mask.ndim == 2 else candidate_mask[None]
        mask = mask.to(device=q.device, dtype=torch.bool).expand(q.shape[0], -1)
    q, c = q.float(), c.float()
    if normalize:
        q, c = F.normalize(q, dim=-1), F.normalize(c, dim=-1)
    b, n, _ = q.shape
    m = c.shape[1]
    index = torch.zeros(b, n, dtype=torch.long, device=q.device)
    score = torch.full((b, n), float("-inf"), dtype=torch.float32, device=q.device)
    if m == 0 or n == 0:
        return NNResult(index if batched else index[0], score if batched else score[0])
    dtype = resolve_precision(precision, q.device)
    low = dtype != torch.float32
    c_t = c.transpose(1, 2).to(dtype).contiguous() if low else c.transpose(1, 2)
    rows = block_rows(m, memory_budget_mb, 2 if low else 4)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        q_blk = q[:, start:stop]
        if not low:
            s = _masked(torch.bmm(q_blk, c_t), None if mask is None else mask[:, None, :])
            best, arg = s.max(dim=-1)
        else:
            # screen in bf16/fp16, re-score the top candidates in fp32 (see module docstring)
            s = _masked(torch.bmm(q_blk.to(dtype), c_t), None if mask is None else mask[:, None, :])
            k = min(int(rerank), m)
            top = s.topk(k, dim=-1).indices                                   # (b, rows, k)
            picked = torch.gather(c[:, None].expand(-1, stop - start, -1, -1), 2,
                                  top[..., None].expand(-1, -1, -1, c.shape[-1]))  # (b, rows, k, C)
            exact = (picked * q_blk[:, :, None]).sum(-1)
            if mask is not None:
                exact = exact.masked_fill(~torch.gather(mask[:, None].expand(-1, stop - start, -1), 2, top),
                                          float("-inf"))
            # equal fp32 scores: lowest index first, as torch.argmax on the full row
            order = torch.argsort(top, dim=-1)
            exact, top = torch.gather(exact, 2, order), torch.gather(top, 2, order)
            best, pos = exact.max(dim=-1)
            arg = torch.gather(top, 2, pos[..., None])[..., 0]
        index[:, start:stop] = arg
        score[:, start:stop] = best.float()
    return NNResult(index if batched else index[0], score if batched else score[0])


@torch.no_grad()
def blocked_argmax(score_block: Callable[[int, int], torch.Tensor], num_queries: int, num_candidates: int,
                   block: int) -> NNResult:
    """Argmax over candidates whose (N, M) scores are produced lazily, ``block`` candidates at a time:
    ``score_block(s, e)`` -> (N, e - s) scores of candidates s..e-1. Memory is O(N x block) plus whatever
    ``score_block`` makes, never O(N x M) (e.g. semantic transfer: the candidates are every pixel of an 840 px
    square, each scored through bilinear upsampling). Ties: the lowest candidate index, as ``torch.max`` on the
    whole row (a later block replaces the running best only when strictly better). No candidate: index 0, -inf."""
    if block < 1:
        raise ValueError(f"block must be >= 1 candidate, got {block}")
    index = score = None
    for s in range(0, num_candidates, block):
        e = min(num_candidates, s + block)
        scores = score_block(s, e)
        if scores.shape != (num_queries, e - s):
            raise ValueError(f"score_block({s}, {e}) returned {tuple(scores.shape)}, expected {(num_queries, e - s)}")
        best, arg = scores.max(dim=1)
        if index is None:
            index, score = arg, best
        else:
            better = best > score
            index, score = torch.where(better, arg + s, index), torch.where(better, best, score)
    if index is None:
        return NNResult(torch.zeros(num_queries, dtype=torch.long), torch.full((num_queries,), float("-inf")))
    return NNResult(index, score)


@torch.no_grad()
def mutual_nearest_neighbors(a: torch.Tensor, b: torch.Tensor, memory_budget_mb: float = 64.0
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (i, j) where ``b[j]`` is ``a[i]``'s best match and ``a[i]`` is ``b[j]``'s (dot product; unit
    features give cosine), in increasing ``i``. Ties: the lowest index, as ``torch.argmax``.

    One GEMM serves both directions: ``b`` is taken in column blocks whose (len(a) x block) score block fits
    ``memory_budget_mb``; each block gives its columns' argmax over ``a`` outright and updates the rows' running
    best (replaced only when strictly better, so the first maximum wins). Scoring ``b @ a.T`` again for the reverse
    direction, as the authors' code does, doubles the cost of the step that dominates one-shot pose matching."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    a, b = a.float(), b.float()
    cols = block_rows(len(a), memory_budget_mb)
    nn_ba = torch.empty(len(b), dtype=torch.long, device=a.device)
    best_ab = torch.full((len(a),), float("-inf"), device=a.device)
    nn_ab = torch.zeros(len(a), dtype=torch.long, device=a.device)
    for start in range(0, len(b), cols):
        scores = a @ b[start:start + cols].T                     # (len(a), block)
        nn_ba[start:start + cols] = scores.argmax(0)
        top, arg = scores.max(1)
        better = top > best_ab
        best_ab = torch.where(better, top, best_ab)
        nn_ab = torch.where(better, arg + start, nn_ab)
    i = torch.arange(len(a), device=a.device)
    mutual = nn_ba[nn_ab] == i
    return i[mutual].cpu().numpy(), nn_ab[mutual].cpu().numpy()


@torch.no_grad()
def nearest_neighbors_grouped(queries: Sequence[torch.Tensor], groups: Sequence[Hashable],
                              candidates: Mapping[Hashable, torch.Tensor], **kwargs) -> list[NNResult]:
    """Match query sets (N_k, C) against the candidate set ``candidates[groups[k]]`` (M_g, C): all query sets of
    one group are stacked into one blocked GEMM. Returns one ``NNResult`` per query set, in input order."""
    if len(queries) != len(groups):
        raise ValueError("one group key per query set")
    results: list[NNResult | None] = [None] * len(queries)
    order: dict[Hashable, list[int]] = {}
    for k, key in enumerate(groups):
        order.setdefault(key, []).append(k)
    for key, members in order.items():
        stacked = torch.cat([queries[k] for k in members]) if len(members) > 1 else queries[members[0]]
        res = nearest_neighbors(stacked, candidates[key], **kwargs)
        sizes = [len(queries[k]) for k in members]
        for k, idx, sc in zip(members, res.index.split(sizes), res.score.split(sizes)):
            results[k] = NNResult(idx, sc)
    return results  # type: ignore[return-value]


def sample_normalized(model, fmap: torch.Tensor, points_xy, image_size: tuple[int, int],
                      input_size: tuple[int, int] | None = None) -> torch.Tensor:
    """(N, C) L2-normalised fp32 features of one (C, h, w) map at pixel points (N, 2) of an image of ``image_size``
    (``model.sample_points``: patch-centre aligned bilinear). ``input_size`` is passed on only when given."""
    pts = torch.as_tensor(np.asarray(points_xy, dtype=np.float32) if not isinstance(points_xy, torch.Tensor)
                          else points_xy, dtype=torch.float32, device=fmap.device).reshape(1, -1, 2)
    if pts.shape[1] == 0:
        return fmap.new_zeros(0, fmap.shape[0], dtype=torch.float32)
    extra = {} if input_size is None else {"input_size": input_size}
    feats = model.sample_points(fmap[None].float(), pts, tuple(image_size), **extra)[0]
    return F.normalize(feats.float(), dim=-1)


@torch.no_grad()
def match_points(model, fmap_src: torch.Tensor, fmap_tgt: torch.Tensor, src_xy, tgt_xy,
                 image_size: tuple[int, int], target_size: tuple[int, int] | None = None, **kwargs) -> np.ndarray:
    """For each source point (N, 2) the target candidate (M, 2) with the highest cosine similarity; its (x, y)."""
    f_src = sample_normalized(model, fmap_src, src_xy, image_size)
    f_tgt = sample_normalized(model, fmap_tgt, tgt_xy, target_size or image_size)
    res = nearest_neighbors(f_src, f_tgt, **kwargs)
    return np.asarray(tgt_xy)[res.index.cpu().numpy()]


# -- ground truth for rendered view pairs ---------------------------------------------------------------------
class ViewCache:
    """Per-object memo of what matching needs from each view, decoded once (LRU over ``max_views`` views)."""

    def __init__(self, obj, max_views: int = 64):
        self.obj = obj
        self.max_views = max(1, int(max_views))
        self._views: OrderedDict[int, dict] = OrderedDict()

    def _view(self, i: int) -> dict:
        if i in self._views:
            self._views.move_to_end(i)
            return self._views[i]
        mask = np.asarray(self.obj.mask(i), dtype=bool)
        xyz = np.asarray(self.obj.xyz(i), dtype=np.float32)
        rows, cols = np.nonzero(mask)
        entry = {"mask": mask, "xyz": xyz, "centres": pixel_centres(rows, cols),
                 "points": xyz[rows, cols], "candidates": {}}
        self._views[i] = entry
        if len(self._views) > self.max_views:
            self._views.popitem(last=False)
        return entry

    def mask(self, i: int) -> np.ndarray:
        return self._view(i)["mask"]

    def xyz(self, i: int) -> np.ndarray:
        return self._view(i)["xyz"]

    def foreground(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Foreground pixel centres (P, 2) in row-major order and their object-space points (P, 3)."""
        view = self._view(i)
        return view["centres"], view["points"]

    def candidates(self, i: int, stride: int = 1) -> np.ndarray:
        """Foreground pixel centres on a ``stride`` lattice (rows and columns multiple of it), row-major."""
        view = self._view(i)
        if stride not in view["candidates"]:
            if stride == 1:
                view["candidates"][stride] = view["centres"]
            else:
                c = view["centres"]
                rows, cols = containing_pixel(c)
                on = (rows % stride == 0) & (cols % stride == 0)
                view["candidates"][stride] = np.ascontiguousarray(c[on])
        return view["candidates"][stride]


def visible_points(cache: ViewCache, i: int, j: int, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Foreground pixels of view i whose surface point is visible in view j, and its true location in view j.

    Visible: in front of camera j, inside the image, on a foreground pixel of j whose own surface point lies within
    ``tol`` + two pixel footprints (z / f) of it (no other surface occludes it). Row-major source order."""
    obj = cache.obj
    src, points = cache.foreground(i)
    if len(points) == 0:
        return src[:0], src[:0]
    uv, z = project(points, obj.K, obj.poses[j])
    keep, _, _ = visible_pixels(uv, z, points, cache.mask(j), cache.xyz(j), float(obj.K[0, 0]), tol)
    return src[keep], uv[keep].astype(np.float32)
