"""The APE/PCDP protocol on real renders: an oracle feature (true 3D position) scores ~0 error, a constant one fails."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from corr3d.assets.objects import load_object
from corr3d.eval.equivariance import (
    EquivarianceSettings,
    evaluate_objects,
    pixel_centers,
    sample_view_pairs,
    visible_correspondences,
)
from corr3d.geometry import icosphere_poses, intrinsics, project, relative_rotation_deg
from corr3d.models.features import sample_feature_map
from corr3d.render import render_views

SIZE = 64


class InMemoryObject:
    """The RenderedObject interface over arrays; rgb encodes the object-space position (the oracle's input)."""

    def __init__(self, views: dict, K: np.ndarray, poses: np.ndarray, object_id: str = "obj"):
        self.views, self.K, self.poses, self.object_id = views, K, poses, object_id
        self.height, self.width = views["mask"].shape[1:3]

    def mask(self, i):
        return self.views["mask"][i]

    def xyz(self, i):
        return self.views["xyz"][i]

    def rgb(self, i):
        colour = np.clip((self.views["xyz"][i] + 0.5) * 255, 0, 255).astype(np.uint8)
        return np.where(self.views["mask"][i][..., None], colour, 0).astype(np.uint8)


class PixelFeatureModel(nn.Module):
    """Per-pixel features from colour; ``oracle`` encodes it with sinusoids (unit norm), else a constant."""

    def __init__(self, oracle: bool = True):
        super().__init__()
        self.oracle = oracle
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, images):
        if not self.oracle:
            return torch.ones(images.shape[0], 4, *images.shape[-2:])
        freqs = torch.tensor([1.0, 2.0, 4.0]).view(1, 1, 3, 1, 1) * torch.pi
        angles = images[:, :, None] * freqs
        return torch.cat([angles.sin(), angles.cos()], 2).flatten(1, 2)

    def sample_points(self, fmap, points_xy, image_size):
        return sample_feature_map(fmap, points_xy, image_size, normalize=False)


@pytest.fixture(scope="module")
def rendered_object():
    mesh = load_object("procedural:torus_checker")
    poses = icosphere_poses(1, 2.0)[:12]
    K = intrinsics(70.0, SIZE, SIZE)
    views = render_views(mesh, K, poses, SIZE, SIZE)
    return InMemoryObject(views, K, poses)


def test_visible_correspondences_land_on_the_same_surface_point(rendered_object):
    obj = rendered_object
    rng = np.random.default_rng(0)
    i, j = sample_view_pairs(obj.poses, 70.0, 1, rng)[0]
    src, gt = visible_correspondences(obj, i, j, 0, tol=0.02, rng=rng)
    assert len(src) > 50
    rows, cols = np.floor(src[:, 1]).astype(int), np.floor(src[:, 0]).astype(int)
    uv, _ = project(obj.xyz(i)[rows, cols], obj.K, obj.poses[j])
    np.testing.assert_allclose(gt, uv, atol=1e-4)
    r2, c2 = np.floor(gt[:, 1]).astype(int), np.floor(gt[:, 0]).astype(int)
    assert obj.mask(j)[r2, c2].all()
    gap = np.linalg.norm(obj.xyz(j)[r2, c2] - obj.xyz(i)[rows, cols], axis=1)
    _, z = project(obj.xyz(i)[rows, cols], obj.K, obj.poses[j])
    footprint = z / obj.K[0, 0]                      # object units spanned by one pixel
    assert (gap < 0.02 + 2 * footprint).all()
    assert gap.mean() < footprint.mean()             # on average within one pixel of the true surface point


def test_pairs_respect_rotation_limit_and_count(rendered_object):
    pairs = sample_view_pairs(rendered_object.poses, 70.0, 5, np.random.default_rng(1))
    assert len(pairs) == 5 and all(i != j for i, j in pairs)
    assert all(relative_rotation_deg(rendered_object.poses[i], rendered_object.poses[j]) <= 70.0 for i, j in pairs)


def test_pixel_centers_stride():
    mask = np.zeros((4, 6), dtype=bool)
    mask[1, 2] = mask[2, 2] = mask[2, 4] = True
    np.testing.assert_array_equal(pixel_centers(mask), [[2.5, 1.5], [2.5, 2.5], [4.5, 2.5]])
    np.testing.assert_array_equal(pixel_centers(mask, stride=2), [[2.5, 2.5], [4.5, 2.5]])


def test_oracle_features_give_near_zero_error(rendered_object):
    settings = EquivarianceSettings(max_pairs_per_object=4, num_source_points=200, target_stride=1)
    per_object = {}
    oracle = evaluate_objects(PixelFeatureModel(True), [rendered_object], settings, per_object=per_object)
    assert oracle["equivariance/num_points"] > 100
    assert oracle["equivariance/ape"] < 3.0          # a pixel or so at 64 px: colour quantisation only
    assert oracle["equivariance/pcdp@0.05"] > 90.0
    assert per_object["obj"]["equivariance/ape"] == pytest.approx(oracle["equivariance/ape"])
    constant = evaluate_objects(PixelFeatureModel(False), [rendered_object], settings)
    assert constant["equivariance/ape"] > 5 * oracle["equivariance/ape"]
    assert constant["equivariance/pcdp@0.05"] < oracle["equivariance/pcdp@0.05"]
