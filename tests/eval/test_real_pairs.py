"""real_pairs: ground truth of the stereo pair and the homographies, the oracle ceiling, items -> metrics."""
from __future__ import annotations

import numpy as np
import pytest

from corr3d.eval.equivariance import OracleModel
from corr3d.eval.real_pairs import (
    apply_homography,
    build_pairs,
    evaluate_pairs,
    homography_pairs,
    pair_item,
    random_homography,
    stereo_pair,
    warp_image,
)
from corr3d.eval.stats import weighted_mean
from tests.helpers.config import config_section

SMALL = config_section("eval.real_pairs", homography_images=["astronaut", "coins"], homographies_per_image=2,
                       num_points=300)


def _at(image, xy):
    """Nearest-pixel colour at continuous pixel-centre coordinates."""
    cols = np.clip(np.floor(xy[:, 0]).astype(int), 0, image.shape[1] - 1)
    rows = np.clip(np.floor(xy[:, 1]).astype(int), 0, image.shape[0] - 1)
    return image[rows, cols].astype(np.float64)


def test_homography_ground_truth_lands_on_the_same_content():
    pair = homography_pairs(SMALL, seed=0)[0]
    # bilinear warp: colours at the true match agree with the source (up to resampling), far better than a shift
    err = np.abs(_at(pair.target, pair.gt_xy) - _at(pair.source, pair.src_xy)).mean()
    shifted = np.abs(_at(pair.target, pair.gt_xy + 6) - _at(pair.source, pair.src_xy)).mean()
    assert err < 12 and shifted > 2 * err
    h, w = pair.target.shape[:2]
    assert (pair.gt_xy >= 1).all() and (pair.gt_xy[:, 0] < w - 1).all() and (pair.gt_xy[:, 1] < h - 1).all()


def test_homography_is_seeded_and_maps_corners_within_strength():
    from corr3d.eval.real_pairs import homography_from_points

    src = np.array([[0, 0], [5, 0], [5, 3], [0, 3]], np.float64)
    dst = np.array([[1, 1], [6, 0], [7, 4], [0, 5]], np.float64)
    np.testing.assert_allclose(apply_homography(homography_from_points(src, dst), src), dst, atol=1e-5)
    a = random_homography(100, 200, 0.15, np.random.default_rng(3))
    b = random_homography(100, 200, 0.15, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    corners = np.array([[0, 0], [200, 0], [200, 100], [0, 100]], np.float32)
    moved = apply_homography(a, corners) - corners
    assert (np.abs(moved[:, 0]) <= 30 + 1e-3).all() and (np.abs(moved[:, 1]) <= 15 + 1e-3).all()
    identity = warp_image(np.arange(12, dtype=np.uint8).reshape(3, 4, 1).repeat(3, 2), np.eye(3))
    np.testing.assert_array_equal(identity[0][..., 0], np.arange(12).reshape(3, 4))
    assert identity[1].all()


def test_stereo_ground_truth_is_x_minus_disparity():
    from skimage import data as skdata

    pair = stereo_pair(config_section("eval.real_pairs", num_points=500), seed=0)
    _, _, disp = skdata.stereo_motorcycle()
    rows, cols = np.floor(pair.src_xy[:, 1]).astype(int), np.floor(pair.src_xy[:, 0]).astype(int)
    np.testing.assert_allclose(pair.gt_xy[:, 0], pair.src_xy[:, 0] - disp[rows, cols], rtol=0, atol=1e-4)
    np.testing.assert_array_equal(pair.gt_xy[:, 1], pair.src_xy[:, 1])
    right_match = np.abs(_at(pair.target, pair.gt_xy) - _at(pair.source, pair.src_xy)).mean()
    no_shift = np.abs(_at(pair.target, pair.src_xy) - _at(pair.source, pair.src_xy)).mean()
    assert right_match < 0.5 * no_shift   # the disparity sign is right: x_right = x_left - d


def test_pair_item_hand_computed():
    pair = homography_pairs(config_section("eval.real_pairs", homography_images=["coins"], homographies_per_image=1,
                                           num_points=4), seed=0)[0]
    side = min(pair.target.shape[:2])           # 303 (coins is 303 x 384)
    # errors 0, 4.545, 12.12 and 5 px; thresholds 3.03, 6.06 and 15.15 px
    pred = pair.gt_xy + np.array([[0, 0], [0.015 * side, 0], [0, 0.04 * side], [3.0, 4.0]], np.float32)
    item = pair_item(pair, pred, (0.01, 0.02, 0.05))
    assert item["real_pairs/pck@0.01"] == pytest.approx(25.0)
    assert item["real_pairs/pck@0.02"] == pytest.approx(75.0)
    assert item["real_pairs/pck@0.05"] == pytest.approx(100.0)
    assert item["real_pairs/median_px"] == pytest.approx((5.0 + 0.015 * side) / 2, rel=1e-5)
    assert item["real_pairs/homography/pck@0.05"] == item["real_pairs/pck@0.05"]
    assert item["unit"] == "homography/coins" and item["weight"] == 1.0
    assert "rotation_deg" not in item     # a homography warp has no camera pose: in no rotation bin


def test_oracle_is_perfect_and_items_average_to_metrics():
    pairs = build_pairs(SMALL, seed=0)
    assert [p.id for p in pairs][:2] == ["stereo/motorcycle", "homography/astronaut/0"] and len(pairs) == 5
    metrics, items = evaluate_pairs(OracleModel(), pairs, SMALL.thresholds)
    assert metrics["real_pairs/pck@0.01"] == pytest.approx(100.0)
    assert metrics["real_pairs/median_px"] < 1.0          # half the stride-2 lattice at most
    for key, value in metrics.items():
        if key != "real_pairs/num_pairs":
            assert weighted_mean(items, key) == pytest.approx(value), key
    assert metrics["real_pairs/stereo/pck@0.05"] == pytest.approx(100.0)
    # the rectified stereo pair shares one camera orientation; the warps have none
    assert [it.get("rotation_deg") for it in items] == [0.0, None, None, None, None]
    assert "real_pairs/num_pairs" in metrics and "rotation_deg" not in metrics


def test_tiny_model_runs_at_its_own_resolution_and_scores_below_the_oracle():
    import torch

    from tests.helpers.models import tiny_model

    torch.manual_seed(0)
    model = tiny_model(16, target_res=64, lora={"blocks": 0, "rank": 4, "alpha": None})
    settings = config_section("eval.real_pairs", stereo=True, homography_images=["coins"], homographies_per_image=1,
                              num_points=100, target_stride=4)
    metrics, items = evaluate_pairs(model, build_pairs(settings, seed=0), settings.thresholds)
    assert [it["id"] for it in items] == ["stereo/motorcycle", "homography/coins/0"]
    assert 0 <= metrics["real_pairs/pck@0.05"] < 100 and metrics["real_pairs/median_px"] > 1
