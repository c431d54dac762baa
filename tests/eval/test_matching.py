"""Blocked GEMM nearest neighbours against brute force, and the equivariance evaluation against a per-pair reference.

The references here are the straightforward formulations: the full (N x M) similarity matrix in float64 with its
argmax, and the per-pair loop of the original evaluation (decode both views, project, look up, sample, argmax).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from corr3d.eval.matching import (
    ViewCache,
    block_rows,
    mutual_nearest_neighbors,
    nearest_neighbors,
    nearest_neighbors_grouped,
    resolve_precision,
    visible_points,
)


def brute_force(q: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None = None):
    s = q.double() @ c.double().T
    if mask is not None:
        s[:, ~mask] = -float("inf")
    return s


def assert_is_argmax(q, c, index, mask=None, atol=1e-6):
    """The returned candidate scores the maximum (ties: any candidate within ``atol`` of the maximum is right)."""
    s = brute_force(q, c, mask)
    best = s.max(dim=1).values
    got = s.gather(1, index.view(-1, 1))[:, 0]
    assert torch.all(got >= best - atol), (got - best).min()


def random_unit(n, d, seed):
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=gen), dim=-1)


@pytest.mark.parametrize("budget_mb", [64.0, 1e-4])  # 1e-4 MB: one query row per block
def test_matches_brute_force(budget_mb):
    q, c = random_unit(137, 24, 0), random_unit(503, 24, 1)
    res = nearest_neighbors(q, c, memory_budget_mb=budget_mb, precision="fp32")
    expected = brute_force(q, c).argmax(dim=1)
    assert torch.equal(res.index, expected)
    torch.testing.assert_close(res.score, brute_force(q, c).max(dim=1).values.float(), atol=1e-6, rtol=0)


def test_ties_pick_the_lowest_index():
    c = random_unit(50, 8, 2)
    c = torch.cat([c, c])                      # every candidate twice: exact ties at k and k + 50
    q = c[torch.tensor([3, 60, 17])]
    res = nearest_neighbors(q, c, precision="fp32", memory_budget_mb=1e-4)
    assert res.index.tolist() == [3, 10, 17]
    assert_is_argmax(q, c, res.index)


def test_batched_with_mask_and_normalize():
    q = torch.randn(3, 40, 16)
    c = torch.randn(3, 90, 16)
    mask = torch.rand(3, 90, generator=torch.Generator().manual_seed(3)) > 0.4
    res = nearest_neighbors(q, c, candidate_mask=mask, normalize=True, memory_budget_mb=0.001)
    for b in range(3):
        qn, cn = F.normalize(q[b], dim=-1), F.normalize(c[b], dim=-1)
        assert mask[b, res.index[b]].all()
        assert torch.equal(res.index[b], brute_force(qn, cn, mask[b]).argmax(dim=1))


def test_low_precision_screen_reranks_in_fp32():
    # bf16 screening (the CUDA default) on CPU: the fp32 re-scoring of the top-k restores the exact argmax
    q, c = random_unit(64, 32, 4), random_unit(700, 32, 5)
    exact = nearest_neighbors(q, c, precision="fp32")
    low = nearest_neighbors(q, c, precision="bf16", rerank=16)
    assert torch.equal(low.index, exact.index)
    torch.testing.assert_close(low.score, exact.score, atol=1e-6, rtol=0)
    mask = torch.zeros(700, dtype=torch.bool)
    mask[::3] = True
    low_masked = nearest_neighbors(q, c, candidate_mask=mask, precision="fp16", rerank=16)
    assert torch.equal(low_masked.index, brute_force(q, c, mask).argmax(dim=1))


def test_grouped_equals_separate_calls():
    cands = {"a": random_unit(80, 12, 6), "b": random_unit(55, 12, 7)}
    queries = [random_unit(n, 12, 10 + n) for n in (5, 9, 1, 30)]
    groups = ["a", "b", "a", "b"]
    results = nearest_neighbors_grouped(queries, groups, cands, memory_budget_mb=0.002)
    for qs, key, res in zip(queries, groups, results):
        assert torch.equal(res.index, brute_force(qs, cands[key]).argmax(dim=1))


def test_precision_and_blocks():
    assert resolve_precision("auto", "cpu") == torch.float32
    assert resolve_precision("auto", "cuda") == torch.bfloat16
    with pytest.raises(ValueError):
        resolve_precision("int8", "cpu")
    assert block_rows(1 << 20, 4.0) == 1 and block_rows(1000, 4.0) == (4 << 20) // 4000
    empty = nearest_neighbors(torch.zeros(0, 4), torch.randn(5, 4))
    assert empty.index.shape == (0,)


# -- ground truth and the whole evaluation --------------------------------------------------------------------
SIZE = 64


class InMemoryObject:
    """The RenderedObject interface over rendered arrays (rgb from the object's xyz, so a tiny model sees shape)."""

    def __init__(self, views, K, poses, object_id="obj"):
        self.views, self.K, self.poses, self.object_id = views, K, poses, object_id
        self.height, self.width = views["mask"].shape[1:3]
        self.decodes = 0

    def mask(self, i):
        self.decodes += 1
        return self.views["mask"][i]

    def xyz(self, i):
        self.decodes += 1
        return self.views["xyz"][i]

    def rgb(self, i):
        colour = np.clip((self.views["xyz"][i] + 0.5) * 255, 0, 255).astype(np.uint8)
        return np.where(self.views["mask"][i][..., None], colour, 0).astype(np.uint8)


@pytest.fixture(scope="module")
def rendered_object():
    from corr3d.assets.objects import load_object
    from corr3d.geometry import icosphere_poses, intrinsics
    from corr3d.render import render_views

    mesh = load_object("procedural:torus_checker")
    poses = icosphere_poses(1, 2.0)[:12]
    K = intrinsics(70.0, SIZE, SIZE)
    return InMemoryObject(render_views(mesh, K, poses, SIZE, SIZE), K, poses)


def reference_visible(obj, i, j, tol):
    """The original per-pair ground truth, literally: decode both views, project, look up."""
    from corr3d.geometry import project

    mask_i, xyz_i = obj.mask(i), obj.xyz(i)
    rows, cols = np.nonzero(mask_i)
    src = np.stack([cols + 0.5, rows + 0.5], axis=1).astype(np.float32)
    points = xyz_i[mask_i]
    uv, z = project(points, obj.K, obj.poses[j])
    c, r = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    keep = np.zeros(len(points), dtype=bool)
    for k in range(len(points)):
        if z[k] <= 0 or not (0 <= c[k] < obj.width and 0 <= r[k] < obj.height) or not obj.mask(j)[r[k], c[k]]:
            continue
        footprint = z[k] / float(obj.K[0, 0])
        keep[k] = np.linalg.norm(obj.xyz(j)[r[k], c[k]] - points[k]) < tol + 2.0 * footprint
    return src[keep], uv[keep].astype(np.float32)


def test_visible_points_equal_the_per_pair_reference(rendered_object):
    cache = ViewCache(rendered_object)
    for i, j in [(0, 1), (2, 5), (7, 3)]:
        src, gt = visible_points(cache, i, j, 0.02)
        ref_src, ref_gt = reference_visible(rendered_object, i, j, 0.02)
        np.testing.assert_array_equal(src, ref_src)
        np.testing.assert_array_equal(gt, ref_gt)
    decodes = rendered_object.decodes
    visible_points(cache, 0, 1, 0.02)
    assert rendered_object.decodes == decodes        # decoded once per view


def test_candidates_equal_pixel_centers(rendered_object):
    from corr3d.geometry.pixels import foreground_centres

    cache = ViewCache(rendered_object)
    for stride in (1, 2, 3):
        np.testing.assert_array_equal(cache.candidates(4, stride), foreground_centres(rendered_object.mask(4), stride))


def test_evaluate_objects_equals_per_pair_reference(rendered_object):
    """evaluate_objects (grouped GEMM, cached views) against the plain per-pair loop with brute-force argmax."""
    from corr3d.eval.equivariance import (
        evaluate_objects,
        object_rng,
        sample_view_pairs,
    )
    from corr3d.eval.metrics.equivariance import normalized_pixel_error
    from corr3d.models.features import sample_feature_map
    from tests.helpers.config import config_section
    from tests.helpers.models import tiny_model

    torch.manual_seed(0)
    model = tiny_model(14, target_res=SIZE).eval()
    settings = config_section("equivariance", max_pairs_per_object=5, num_source_points=60, target_stride=2)
    seed = 0
    items: list = []
    results = evaluate_objects(model, [rendered_object], settings, seed=seed, items=items)
    obj = rendered_object
    pairs = sample_view_pairs(obj.poses, settings.max_rotation_deg, settings.max_pairs_per_object,
                              object_rng(seed, "pairs", obj.object_id), settings.max_views_per_object)
    size = (obj.height, obj.width)
    errors_all = []
    with torch.no_grad():
        for (i, j), item in zip(pairs, items):
            assert item["id"].endswith(f"/{i}-{j}")
            src, gt = reference_visible(obj, i, j, settings.visibility_tol)
            rng = object_rng(seed, "points", obj.object_id, i, j)
            if len(src) > settings.num_source_points:
                pick = rng.choice(len(src), size=settings.num_source_points, replace=False)
                src, gt = src[pick], gt[pick]
            rows, cols = np.nonzero(obj.mask(j)[::2, ::2])
            cand = np.stack([cols * 2 + 0.5, rows * 2 + 0.5], axis=1).astype(np.float32)
            maps = model(torch.from_numpy(np.stack([obj.rgb(i), obj.rgb(j)])).permute(0, 3, 1, 2).float() / 255)
            inp = model.input_size(*size)
            f_s = sample_feature_map(maps[:1], torch.from_numpy(src)[None], size, inp, model.patch_size)[0]
            f_t = sample_feature_map(maps[1:], torch.from_numpy(cand)[None], size, inp, model.patch_size)[0]
            s = brute_force(f_s, f_t)
            pred_idx = s.argmax(dim=1)
            errors = normalized_pixel_error(torch.from_numpy(cand[pred_idx.numpy()]), torch.from_numpy(gt), size)
            errors_all.append(errors)
            assert item["weight"] == len(src)
            assert item["equivariance/ape"] == pytest.approx(100 * float(errors.mean()), abs=1e-9)
    assert len(items) == len(pairs)
    assert results["equivariance/ape"] == pytest.approx(100 * float(torch.cat(errors_all).mean()), abs=1e-9)


@pytest.mark.parametrize("block", [1, 7, 64, 1000])
def test_blocked_argmax_matches_full_row_argmax_with_ties(block):
    """Lazily scored candidates, any block size: the full (N x M) matrix's max and its FIRST index on exact ties
    (duplicated candidates across and within blocks), as torch.max on the whole row."""
    from corr3d.eval.matching import blocked_argmax

    q, c = random_unit(9, 12, 5), random_unit(40, 12, 6)
    c = torch.cat([c, c[:30]])                         # candidate k + 40 ties with k
    q[:4] = c[torch.tensor([3, 35, 20, 0])]
    full = q @ c.T                                     # scored per candidate block below: the same numbers
    res = blocked_argmax(lambda s, e: full[:, s:e], len(q), len(c), block)
    best, idx = full.max(dim=1)
    assert torch.equal(res.index, idx) and torch.equal(res.score, best)
    assert res.index[:4].tolist() == [3, 35, 20, 0]
    # brute force in float64 (independent of torch.max's tie rule): the lowest index among the maxima
    s = brute_force(q, c).numpy()
    assert res.index.tolist() == [int(np.flatnonzero(row == row.max())[0]) for row in s.round(6)]


def test_blocked_argmax_rejects_bad_input():
    from corr3d.eval.matching import blocked_argmax

    with pytest.raises(ValueError, match="block"):
        blocked_argmax(lambda s, e: torch.zeros(2, e - s), 2, 5, 0)
    with pytest.raises(ValueError, match="returned"):
        blocked_argmax(lambda s, e: torch.zeros(3, e - s), 2, 5, 2)
    empty = blocked_argmax(lambda s, e: torch.zeros(2, e - s), 2, 0, 4)
    assert empty.index.tolist() == [0, 0] and torch.isinf(empty.score).all()


def mutual_reference(a: torch.Tensor, b: torch.Tensor):
    """The authors' formulation: both directions scored separately (a @ b.T and b @ a.T), argmax each, keep i with
    nn_ba[nn_ab[i]] == i."""
    nn_ab = (a @ b.T).argmax(1)
    nn_ba = (b @ a.T).argmax(1)
    i = torch.arange(len(a))
    keep = nn_ba[nn_ab] == i
    return i[keep].numpy(), nn_ab[keep].numpy()


@pytest.mark.parametrize("budget_mb", [64.0, 0.01, 1e-9])   # one block, several, one column per block
def test_mutual_matches_equal_both_directions_scored_separately(budget_mb):
    gen = torch.Generator().manual_seed(3)
    a = F.normalize(torch.randn(300, 32, generator=gen), dim=1)
    b = F.normalize(torch.randn(1000, 32, generator=gen), dim=1)
    b[500:520] = a[:20]                                     # planted exact pairs: must all be mutual
    i, j = mutual_nearest_neighbors(a, b, memory_budget_mb=budget_mb)
    want_i, want_j = mutual_reference(a, b)
    np.testing.assert_array_equal(i, want_i)
    np.testing.assert_array_equal(j, want_j)
    assert set(zip(range(20), range(500, 520))) <= set(zip(i.tolist(), j.tolist()))
    assert i.dtype == j.dtype == np.int64


def test_mutual_ties_take_the_lowest_index_in_every_block():
    # b[0] and b[3] are equal: a[0]'s best is b[0] (first), b[3]'s best is a[0] but a[0] points to b[0], so only
    # (0, 0) is mutual; hand-checked, with the duplicate in another block than the original
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [1.0, 0.0]])
    for budget in (64.0, 1e-9):
        i, j = mutual_nearest_neighbors(a, b, memory_budget_mb=budget)
        assert list(zip(i.tolist(), j.tolist())) == [(0, 0), (1, 1)]


def test_mutual_with_an_empty_side():
    empty, one = torch.zeros(0, 4), torch.ones(1, 4)
    for a, b in ((empty, one), (one, empty)):
        i, j = mutual_nearest_neighbors(a, b)
        assert len(i) == len(j) == 0
