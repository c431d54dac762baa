"""Semantic evaluation: per-pair items reproduce the (class-weighted / pooled / per-image) PCKs, the ground-truth
oracle is perfect, raw vs normalised maps."""
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
