"""Semantic evaluation: per-pair items reproduce the (class-weighted / pooled / per-image) PCKs, the ground-truth
oracle is perfect, raw vs normalised maps; similarity upsampling equals feature upsampling, letterboxing."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from corr3d.eval.semantic import (
    SemanticMatcher,
    evaluate_oracle_pfpascal,
    evaluate_oracle_spair,
    evaluate_pfpascal,
    evaluate_spair,
)
from tests.helpers.config import config_section


def _semantic(**values):
    """``eval.semantic`` of the real config at the tests' 64-px image size."""
    return config_section("eval.semantic", image_size=64, **values)


def _weighted(items, key):
    have = [i for i in items if key in i]
    w = np.array([i["weight"] for i in have])
    return float((w * np.array([i[key] for i in have])).sum() / w.sum())


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """PF-PASCAL (2 classes, unequal pairs and keypoints, both view lists) and SPair fixtures with random images."""
    from corr3d.eval.datasets.pfpascal import write_pairs_csv

    tmp = tmp_path_factory.mktemp("semantic")
    rng = np.random.default_rng(0)
    pf = tmp / "PF-dataset-PASCAL"
    (pf / "JPEGImages").mkdir(parents=True)
    (pf / "class_names.txt").write_text("cat\ndog\n")
    sizes = [(40, 56), (56, 40), (48, 48)]
    for i in range(6):
        h, w = sizes[i % 3]
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(pf / "JPEGImages" / f"im{i}.jpg")
    rows = {"different": [], "same": []}
    for views in rows:
        for k, (a, b, cls, n) in enumerate([(0, 1, 1, 3), (2, 3, 1, 7), (4, 5, 2, 2), (1, 4, 2, 5), (3, 0, 2, 4)]):
            ha, wa = sizes[a % 3]
            hb, wb = sizes[b % 3]
            src = rng.uniform(1, [wa - 1, ha - 1], (n, 2))
            trg = rng.uniform(1, [wb - 1, hb - 1], (n, 2))
            if views == "same":
                trg = np.clip(src * [wb / wa, hb / ha] + rng.normal(0, 1, src.shape), 1, [wb - 1, hb - 1])
            rows[views].append((f"PF-dataset-PASCAL/JPEGImages/im{a}.jpg", f"PF-dataset-PASCAL/JPEGImages/im{b}.jpg",
                                cls, src, trg))
        write_pairs_csv(pf / f"test_pairs_pf_{views}_views.csv", rows[views])
    sp = tmp / "SPair-71k"
    (sp / "PairAnnotation" / "test").mkdir(parents=True)
    (sp / "JPEGImages" / "dog").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(sp / "JPEGImages" / "dog" / f"s{i}.jpg")
    names = []
    for k, (a, b, n, vp) in enumerate([(0, 1, 3, 0), (1, 2, 6, 1), (2, 3, 1, 2), (3, 0, 4, 2)]):
        ann = {"src_imname": f"s{a}.jpg", "trg_imname": f"s{b}.jpg", "category": "dog",
               "src_kps": rng.uniform(1, 40, (n, 2)).round(1).tolist(), "trg_kps": rng.uniform(1, 40, (n, 2)).round(1).tolist(),
               "src_bndbox": [0, 0, 50, 40], "trg_bndbox": [2, 3, 40, 30], "viewpoint_variation": vp,
               "kps_ids": [str(j) for j in range(n)]}
        name = f"{k:06d}-s{a}-s{b}:dog"
        (sp / "PairAnnotation" / "test" / f"{name}.json").write_text(json.dumps(ann))
        names.append(name)
    (sp / "Layout" / "large").mkdir(parents=True)
    (sp / "Layout" / "large" / "test.txt").write_text("\n".join(names) + "\n")
    return pf, sp


@pytest.fixture(scope="module")
def model():
    from tests.helpers.models import tiny_model

    return tiny_model(16).eval()


@pytest.mark.parametrize("normalize_maps", [False, True])
def test_pfpascal_items_reproduce_headline(roots, model, normalize_maps):
    semantic = _semantic(alphas=[0.05, 0.10, 0.15], normalize_maps=normalize_maps)
    metrics, tables = evaluate_pfpascal(SemanticMatcher(model, semantic, cache_size=256), roots[0],
                                        ["different", "same"], "s/")
    items = tables["items"]
    assert len(items) == 10 and len({i["id"] for i in items}) == 10
    for p in ("s/", "s/same/"):
        for a in ("0.05", "0.10", "0.15"):
            assert _weighted(items, f"{p}pck@{a}") == pytest.approx(metrics[f"{p}pck@{a}"])
            assert _weighted(items, f"{p}pck_bbox@{a}") == pytest.approx(metrics[f"{p}pck_bbox@{a}"])
    assert any(0 < v < 100 for k, v in metrics.items() if "pck" in k)   # not a degenerate check


def test_spair_items_reproduce_headline(roots, model):
    semantic = _semantic(spair_alphas=[0.10, 0.2])
    metrics, tables = evaluate_spair(SemanticMatcher(model, semantic, cache_size=256), roots[1], "test", "sp/")
    items = tables["items"]
    for a in ("0.10", "0.20"):
        assert _weighted(items, f"sp/pck@{a}") == pytest.approx(metrics[f"sp/pck@{a}"])
        assert _weighted(items, f"sp/pck_img@{a}") == pytest.approx(metrics[f"sp/pck_img@{a}"])
    assert {i["unit"] for i in items} == {i["id"] for i in items if not i["id"].endswith("#kp")}


def test_oracles_are_perfect(roots):
    metrics, _ = evaluate_oracle_pfpascal(roots[0], _semantic(), ["different", "same"], "s/")
    assert all(metrics[f"{p}pck@{a}"] == 100.0 for p in ("s/", "s/same/") for a in ("0.05", "0.10", "0.15"))
    metrics, _ = evaluate_oracle_spair(roots[1], _semantic(), "test", "sp/")
    assert metrics["sp/pck@0.10"] == 100.0 and metrics["sp/pck_img@0.10"] == 100.0


def test_raw_and_normalised_maps(roots, model):
    from corr3d.eval.features import to_tensor
    from corr3d.eval.semantic import letterbox

    path = roots[0] / "JPEGImages" / "im0.jpg"
    raw = SemanticMatcher(model, _semantic(normalize_maps=False), cache_size=256).prepare(path)[0]
    unit = SemanticMatcher(model, _semantic(normalize_maps=True), cache_size=256).prepare(path)[0]
    square = letterbox(np.asarray(Image.open(path).convert("RGB")), 64)[0]
    with torch.no_grad():
        expected = model(to_tensor([square]), input_size=(64, 64))[0]
    assert torch.allclose(raw, expected, atol=1e-5)
    assert torch.allclose(unit, torch.nn.functional.normalize(expected, dim=0), atol=1e-5)


# -- the planned, batched transfer against the original per-pair computation ----------------------------------------
def _reference_transfer(model, pair, size):
    """The original path: letterbox, one forward per image, sample, similarity at feature resolution, bilinear
    upsampling of the whole (N, H*W) similarity and its argmax (first maximum)."""
    from corr3d.eval.features import sample, snap_to_patch, to_tensor
    from corr3d.eval.semantic import letterbox
    from corr3d.geometry.pixels import pixel_centres, pixel_grid_tensor

    side = snap_to_patch(size, model.patch_size)
    maps = []
    for path in (pair.src_path, pair.trg_path):
        square, scale, offset = letterbox(np.asarray(Image.open(path).convert("RGB")), size)
        with torch.no_grad():
            maps.append((model(to_tensor([square]), input_size=(side, side))[0].float(), scale, offset))
    (fs, ss, os_), (ft, st, ot) = maps
    feats = sample(model, fs, pair.src_kps * ss + os_, (size, size), (side, side))
    sim_lr = torch.einsum("nc,chw->nhw", feats, ft)
    sim = sample(model, sim_lr, pixel_grid_tensor((size, size)), (size, size), (side, side), normalize=False).T
    idx = sim.max(dim=1).indices
    return pixel_centres(torch.div(idx, size, rounding_mode="floor"), idx % size).numpy().astype(np.float64)


@pytest.mark.parametrize("cache_size,batch_size", [(2, 1), (3, 3), (256, 4)])
def test_transfer_all_is_bit_identical_and_extracts_each_image_once(roots, model, cache_size, batch_size):
    from corr3d.eval.datasets import pfpascal

    pairs = pfpascal.load_pairs(roots[0], "different") + pfpascal.load_pairs(roots[0], "same")
    matcher = SemanticMatcher(model, _semantic(), cache_size=cache_size, image_size=64, batch_size=batch_size)
    outs = list(matcher.transfer_all(pairs))
    assert len(outs) == len(pairs)
    for pair, out in zip(pairs, outs):
        np.testing.assert_array_equal(out["pred"], _reference_transfer(model, pair, 64))
    images = {str(p) for pair in pairs for p in (pair.src_path, pair.trg_path)}
    if cache_size >= len(images):
        assert matcher.extracted == len(images)
    else:   # a small cache recomputes, but never more than twice per pair
        assert len(images) < matcher.extracted <= 2 * len(pairs)


@pytest.mark.parametrize("method", ["upsample_similarity", "upsample_features"])
def test_blocked_similarity_argmax_does_not_depend_on_blocks(model, method):
    """Tiny blocks (one pixel; a 1e-6 MB budget) give the index and score of the unblocked computation; exact ties
    (a duplicated map column) resolve to the lowest pixel."""
    from corr3d.eval.semantic import similarity_argmax

    gen = torch.Generator().manual_seed(0)
    fmap = torch.randn(32, 4, 4, generator=gen)
    fmap[:, :, 2] = fmap[:, :, 1]                       # equal scores in two places
    src = torch.nn.functional.normalize(torch.randn(6, fmap.shape[0], generator=gen), dim=-1)
    src[0] = torch.nn.functional.normalize(fmap[:, 0, 1], dim=0)
    args = (model, src, fmap, (64, 64), (64, 64), method)
    full_xy, full_best = similarity_argmax(*args, chunk=64 * 64)
    for chunk, budget in ((1, 64.0), (100, 64.0), (64 * 64, 1e-6)):
        xy, best = similarity_argmax(*args, chunk=chunk, memory_budget_mb=budget)
        if method == "upsample_similarity":   # per-pixel bilinear sampling: the same numbers in any block
            assert torch.equal(xy, full_xy) and torch.equal(best, full_best)
        else:   # a (N, C) x (C, block) GEMM rounds differently per block shape (as the old pixel_chunk did)
            torch.testing.assert_close(best, full_best, atol=1e-5, rtol=0)
            assert (xy == full_xy).all(dim=1).float().mean() >= 0.5
    assert torch.equal(full_xy[0], torch.tensor([24.5, 0.5]))   # the tie at columns 1 and 2: column 1's pixel


def test_spair_items_carry_viewpoint_and_bad_viewpoint_is_rejected(roots, model, tmp_path):
    import shutil

    from corr3d.errors import DatasetFormatError
    from corr3d.eval.datasets import spair

    _, tables = evaluate_spair(SemanticMatcher(model, _semantic(), cache_size=256), roots[1], "test", "sp/")
    expected = {f"{p.pair_id}:{p.src_path.name}>{p.trg_path.name}": p.meta["viewpoint_variation"]
                for p in spair.load_pairs(roots[1], "test")}
    assert sorted(set(expected.values())) == [0, 1, 2] and len(tables["items"]) == 2 * len(expected)
    for item in tables["items"]:
        assert item["viewpoint"] == expected[item["id"].removesuffix("#kp")]
    bad = tmp_path / "SPair-71k"
    shutil.copytree(roots[1], bad)
    ann = next((bad / "PairAnnotation" / "test").glob("*.json"))
    data = json.loads(ann.read_text())
    data["viewpoint_variation"] = 3
    ann.write_text(json.dumps(data))
    with pytest.raises(DatasetFormatError, match="viewpoint_variation"):
        spair.load_pairs(bad, "test")


def test_similarity_upsampling_equals_feature_upsampling(tiny_model):
    from corr3d.eval.features import sample
    from corr3d.eval.semantic import similarity_argmax, upsample_to_pixels

    torch.manual_seed(1)
    img = torch.rand(1, 3, 96, 96)
    size, inp = (96, 96), (96, 96)
    with torch.no_grad():
        fmap_t = tiny_model.dense_features(torch.rand(1, 3, 96, 96), input_size=inp)[0]
        fmap_s = tiny_model.dense_features(img, input_size=inp)[0]
    src = sample(tiny_model, fmap_s, np.array([[10.5, 20.5], [50.2, 70.9], [90.0, 3.0]]), size, inp)
    sim_a = upsample_to_pixels(tiny_model, torch.einsum("nc,chw->nhw", src, fmap_t), size, inp)
    feats = upsample_to_pixels(tiny_model, fmap_t, size, inp)           # (C, H*W): the authors' order
    sim_b = src @ feats
    assert torch.allclose(sim_a, sim_b, atol=1e-5)
    xy_a, best_a = similarity_argmax(tiny_model, src, fmap_t, size, inp, "upsample_similarity")
    xy_b, best_b = similarity_argmax(tiny_model, src, fmap_t, size, inp, "upsample_features", chunk=1000)
    assert torch.allclose(best_a, best_b, atol=1e-5)
    assert torch.equal(xy_a, xy_b)
    assert ((xy_a - 0.5) % 1 == 0).all()


def test_letterbox_maps_points():
    from corr3d.eval.semantic import letterbox

    img = np.zeros((50, 100, 3), dtype=np.uint8)
    img[10:20, 30:40] = 255
    square, scale, offset = letterbox(img, 200)
    assert square.shape == (200, 200, 3) and np.allclose(scale, [2, 2]) and np.allclose(offset, [0, 50])
    centre = np.array([35.0, 15.0]) * scale + offset                       # block centre
    assert square[int(centre[1]), int(centre[0])].mean() > 200
    assert square[:50].max() == 0 and square[150:].max() == 0              # zero padding
