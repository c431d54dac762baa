"""Photometric change: hand-computed cases and the normals' convention (a plane facing the camera)."""
from __future__ import annotations

import numpy as np
import pytest

from corr3d.eval import photometric as ph


def test_srgb_round_trip_and_known_values():
    x = np.linspace(0, 1, 257)
    assert np.allclose(ph.linear_to_srgb(ph.srgb_to_linear(x)), x, atol=1e-12)
    assert ph.srgb_to_linear(np.array([0.5]))[0] == pytest.approx(0.21404, abs=1e-5)   # the sRGB standard's curve


def test_one_stop_doubles_linear_radiance():
    image = np.full((4, 4, 3), 100, np.uint8)
    d = ph.PhotometricDraw(exposure=1.0, gains=(1.0, 1.0, 1.0), light=(0.0, 0.0, -1.0))
    out = ph.apply(image, d)
    expect = ph.linear_to_srgb(2 * ph.srgb_to_linear(np.array(100 / 255))) * 255
    assert np.all(out == np.round(expect).astype(np.uint8))


def test_white_balance_gains_keep_their_mean_and_colour_the_image():
    rng = np.random.default_rng(0)
    d = ph.draw(rng, exposure_stops=0.0, white_balance=0.2)
    assert np.mean(d.gains) == pytest.approx(1.0) and d.exposure == 0.0
    grey = np.full((2, 2, 3), 128, np.uint8)
    out = ph.apply(grey, d)
    assert len(set(out[0, 0].tolist())) == 3           # a cast: the channels differ


def test_draws_are_reproducible_and_lights_come_from_the_cameras_side():
    a = [ph.draw(np.random.default_rng(s), 0.5, 0.1) for s in range(50)]
    b = [ph.draw(np.random.default_rng(s), 0.5, 0.1) for s in range(50)]
    assert a == b
    assert all(d.light[2] < 0 and abs(np.linalg.norm(d.light) - 1) < 1e-9 for d in a)
    assert all(-0.5 <= d.exposure <= 0.5 for d in a)


def test_normals_of_a_plane_facing_the_camera():
    # a plane z = 2 in the camera frame (identity pose), x right, y down: its normal towards the camera is -z
    h, w = 6, 8
    ys, xs = np.mgrid[0:h, 0:w].astype(float)
    xyz = np.stack([xs * 0.1, ys * 0.1, np.full((h, w), 2.0)], -1)
    mask = np.ones((h, w), bool)
    n = ph.normals_from_xyz(xyz, mask, np.eye(3))
    assert np.allclose(n[1:-1, 1:-1], [0, 0, -1])
    assert np.all(n[0] == 0) and np.all(n[:, -1] == 0)              # no neighbour for the difference
    # the same plane seen after rotating the object by 90 deg about y: the normal turns with it
    rot = np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]], float)
    n2 = ph.normals_from_xyz(xyz, mask, rot)
    assert np.allclose(np.abs(n2[2, 2]), [1, 0, 0])


def test_light_from_the_front_brightens_a_facing_plane_and_grazing_light_darkens_it():
    normals = np.zeros((3, 3, 3))
    normals[..., 2] = -1
    front = ph.PhotometricDraw(0.0, (1, 1, 1), (0.0, 0.0, -1.0))
    side = ph.PhotometricDraw(0.0, (1, 1, 1), (1.0, 0.0, 0.0))
    assert np.allclose(ph.shading_gain(front, 0.5, (3, 3), normals), 0.5 + 0.5 * 2)
    assert np.allclose(ph.shading_gain(side, 0.5, (3, 3), normals), 0.5)
    ramp = ph.shading_gain(side, 0.5, (4, 10))                       # no normals: a left-to-right ramp
    assert np.all(np.diff(ramp, axis=1) < 0) and np.allclose(ramp.mean(), 1.0)


def test_background_outside_the_mask_is_untouched():
    image = np.random.default_rng(1).integers(0, 255, (5, 5, 3)).astype(np.uint8)
    mask = np.zeros((5, 5), bool)
    mask[1:4, 1:4] = True
    out = ph.apply(image, ph.PhotometricDraw(1.0, (1.2, 1.0, 0.8), (0, 0, -1)), mask=mask)
    assert np.array_equal(out[~mask], image[~mask]) and not np.array_equal(out[mask], image[mask])


def test_real_pairs_option_changes_only_the_target_photographs():
    from corr3d.eval.real_pairs import build_pairs
    from tests.helpers.config import config_section

    plain = config_section("eval.real_pairs", stereo=False, homography_images=["coins"], homographies_per_image=1,
                           num_points=50)
    changed = config_section("eval.real_pairs", stereo=False, homography_images=["coins"], homographies_per_image=1,
                             num_points=50)
    changed.photometric.enabled = True
    a, b = build_pairs(plain, 0)[0], build_pairs(changed, 0)[0]
    assert np.array_equal(a.source, b.source) and np.array_equal(a.gt_xy, b.gt_xy)
    assert not np.array_equal(a.target, b.target)
    assert np.array_equal(build_pairs(changed, 0)[0].target, b.target)      # seeded


def test_rendered_views_change_inside_the_mask_only(tmp_path):
    from corr3d.eval.equivariance import view_image
    from tests.helpers.config import config_section

    class View:
        object_id = "obj"
        poses = [np.eye(4)]

        def rgb(self, v):
            return np.full((8, 8, 3), 120, np.uint8)

        def mask(self, v):
            m = np.zeros((8, 8), bool)
            m[2:6, 2:6] = True
            return m

        def xyz(self, v):
            ys, xs = np.mgrid[0:8, 0:8].astype(float)
            return np.stack([xs * 0.1, ys * 0.1, np.full((8, 8), 2.0)], -1)

    section = config_section("equivariance.photometric", enabled=True)
    out = view_image(View(), 0, section, seed=3)
    m = View().mask(0)
    assert np.all(out[~m] == 120) and np.any(out[m] != 120)
    assert np.array_equal(view_image(View(), 0, config_section("equivariance.photometric"), 3), View().rgb(0))
