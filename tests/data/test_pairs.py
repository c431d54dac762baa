"""Pair sampling and augmentation on a small rendered procedural object (exact ray-cast geometry, 64x64, 42 views)."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pytest
import torch

from corr3d.data.augment import ViewAugmenter
from corr3d.data.pairs import (
    MVImgNetPairDataset,
    PairSampler,
    RenderedPairDataset,
    TooFewPixels,
    allowed_view_pairs,
    decode_key,
    sample_pixels,
)
from corr3d.geometry import icosphere_poses, intrinsics, project, relative_rotation_deg
from tests.helpers.config import config_section

SIZE = 64


@dataclass
class MemoryObject:
    """The RenderedObject interface over in-memory ``render_views`` output (no disk round trip needed here)."""

    object_id: str
    K: np.ndarray
    poses: np.ndarray
    views: dict

    width = height = SIZE

    @property
    def num_views(self) -> int:
        return len(self.poses)

    def rgb(self, i):
        return self.views["rgb"][i]

    def mask(self, i):
        return self.views["mask"][i]

    def depth(self, i):
        return self.views["depth"][i]

    def xyz(self, i):
        return self.views["xyz"][i]


@pytest.fixture(scope="module")
def rendered():
    from corr3d.assets.objects import load_object
    from corr3d.render import render_views

    K = intrinsics(560.0 * SIZE / 512, SIZE, SIZE)
    poses = icosphere_poses(1, 2.0)
    views = render_views(load_object("procedural:sphere_checker"), K, poses, SIZE, SIZE)
    return MemoryObject("procedural:sphere_checker", K, poses, views)


def bilinear(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Sample an HxWxC image at continuous pixel coordinates (pixel centre at +0.5)."""
    maps = (points - 0.5).astype(np.float32)
    return cv2.remap(image, maps[None, :, 0], maps[None, :, 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)[0]


# --------------------------------------------------------------------------------------------- point sampling
def test_foreground_points_are_distinct_when_enough():
    mask = np.zeros((40, 50), bool)
    mask[5:35, 10:40] = True  # 900 foreground pixels
    rows, cols, valid = sample_pixels(mask, 800, np.random.default_rng(0))
    assert valid.all() and mask[rows, cols].all()
    assert len(set(zip(rows.tolist(), cols.tolist()))) == 800  # no duplicates (the authors' replace bug)


def test_too_few_foreground_pixels_are_padded_as_invalid():
    mask = np.zeros((10, 10), bool)
    mask[2, 3] = mask[7, 1] = mask[4, 4] = True
    rows, cols, valid = sample_pixels(mask, 6, np.random.default_rng(0))
    assert valid.tolist() == [True] * 3 + [False] * 3
    assert sorted(zip(rows[:3].tolist(), cols[:3].tolist())) == [(2, 3), (4, 4), (7, 1)]


# --------------------------------------------------------------------------------------------- rendered pairs
def test_pair_sample_matches_the_convention(rendered):
    ds = RenderedPairDataset([rendered], num_points=300, num_samples=5, seed=3)
    sample = ds[0]
    assert sample["image0"].shape == (3, SIZE, SIZE) and sample["image0"].dtype == torch.float32
    assert 0.0 <= float(sample["image0"].min()) and float(sample["image0"].max()) <= 1.0
    for s in "01":
        assert sample[f"points{s}"].shape == (300, 2) and sample[f"xyz{s}"].shape == (300, 3)
        assert sample[f"valid{s}"].dtype == torch.bool and bool(sample[f"valid{s}"].all())
    i, j = sample["view0"], sample["view1"]
    assert i != j and sample["object_id"] == rendered.object_id
    for s, view in (("0", i), ("1", j)):
        points = sample[f"points{s}"].numpy()
        # pixel centres on the foreground, xyz read from that pixel, no pixel twice
        assert np.allclose(points % 1.0, 0.5)
        rows, cols = (points[:, 1] - 0.5).astype(int), (points[:, 0] - 0.5).astype(int)
        assert rendered.mask(view)[rows, cols].all()
        np.testing.assert_array_equal(sample[f"xyz{s}"].numpy(), rendered.xyz(view)[rows, cols])
        assert len(np.unique(points, axis=0)) == 300
        # the 3D points project back onto their pixels
        uv, z = project(sample[f"xyz{s}"].numpy(), rendered.K, rendered.poses[view])
        assert np.abs(uv - points).max() < 1e-3 and (z > 0).all()
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["image0"].shape == (2, 3, SIZE, SIZE) and batch["valid1"].shape == (2, 300)


def test_few_foreground_pixels_give_fixed_size_with_invalid_padding(rendered):
    ds = RenderedPairDataset([rendered], num_points=5000, num_samples=3, seed=0)  # 64x64 views have < 1300 fg
    sample = ds[1]
    for s, view in (("0", sample["view0"]), ("1", sample["view1"])):
        valid = sample[f"valid{s}"].numpy()
        assert valid.sum() == rendered.mask(view).sum() and len(valid) == 5000
        assert (sample[f"xyz{s}"].numpy()[~valid] == 0).all()


def test_rotation_constraint(rendered):
    assert len(allowed_view_pairs(rendered.poses, 180.0)) == 42 * 41
    assert 900 < len(allowed_view_pairs(rendered.poses, 120.0)) < 1200  # the paper's poses keep 988 of 1722
    ds = RenderedPairDataset([rendered], num_points=10, max_rotation_deg=40.0, num_samples=40, seed=1)
    angles = [relative_rotation_deg(rendered.poses[s["view0"]], rendered.poses[s["view1"]]) for s in
              (ds[k] for k in range(40))]
    assert max(angles) <= 40.0 + 1e-6 and min(angles) > 1.0


def test_stream_is_a_function_of_seed_rank_epoch_index(rendered):
    aug = ViewAugmenter(config_section("data.augment"))  # the full paper augmentation: determinism must include it

    def make(seed):
        return RenderedPairDataset([rendered], num_points=200, augmenter=aug, num_samples=8, seed=seed)

    a, b = make(5), make(5)
    for key in [(0, 0, 0), (1, 2, 3), 4]:
        sa, sb = a[key], b[key]
        for name in ("image0", "image1", "points0", "points1", "xyz0", "valid0", "valid1"):
            assert torch.equal(sa[name], sb[name]), name
    assert decode_key(4) == (0, 0, 4)

    def signature(ds, key):
        s = ds[key]
        return (s["view0"], s["view1"], tuple(s["points0"][:5].flatten().tolist()))

    base = signature(a, (0, 0, 0))
    assert signature(a, (1, 0, 0)) != base   # another DDP rank
    assert signature(a, (0, 1, 0)) != base   # another epoch
    assert signature(a, (0, 0, 1)) != base   # another index (e.g. another worker's)
    assert signature(make(6), (0, 0, 0)) != base
    ranks = {r: [signature(a, key) for key in PairSampler(8, rank=r, world_size=2)] for r in (0, 1)}
    assert not set(ranks[0]) & set(ranks[1])


def test_pair_sampler_keys_follow_epochs():
    sampler = PairSampler(3, rank=1, world_size=4)
    assert list(sampler) == [(1, 0, 0), (1, 0, 1), (1, 0, 2)] and len(sampler) == 3
    sampler.set_epoch(7)
    assert list(sampler)[0] == (1, 7, 0)
    assert list(PairSampler(2, fixed_epoch=0))[-1] == (0, 0, 1)
    assert isinstance(sampler, torch.utils.data.DistributedSampler)  # so Lightning does not replace it


def test_stream_does_not_depend_on_worker_count(rendered):
    ds = RenderedPairDataset([rendered], num_points=50, augmenter=ViewAugmenter(config_section("data.augment")),
                             num_samples=6, seed=2)

    def run(workers):
        loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=PairSampler(6), num_workers=workers,
                                             multiprocessing_context="fork" if workers else None)
        return [(b["view0"].tolist(), b["points0"].sum().item(), b["image1"].sum().item()) for b in loader]

    single = run(0)
    assert single == run(2)
    assert len({tuple(v) for v, _, _ in single}) > 1  # samples differ within the epoch


# --------------------------------------------------------------------------------------------- augmentation
def test_geometric_augmentation_moves_points_with_the_pixels():
    """Exact check of the keypoint convention: warp an image holding each pixel's own coordinates."""
    height, width = 48, 64
    ys, xs = np.mgrid[0:height, 0:width]
    coords = np.stack([(xs + 0.5) / width, (ys + 0.5) / height, np.zeros_like(xs, float)], -1).astype(np.float32)
    rng = np.random.default_rng(0)
    points = np.stack([rng.uniform(0, width, 300), rng.uniform(0, height, 300)], 1).astype(np.float32)
    aug = ViewAugmenter(config_section("data.augment", geometric_p=1.0), color=False)
    moved = 0
    for seed in range(5):
        out = aug(coords, points, np.ones(300, bool), np.random.default_rng(seed))
        v = out.valid
        assert 0 < v.sum() < 300  # some points left the image and are flagged, none removed
        assert (out.points[~v] == 0).all()
        source = bilinear(out.rgb, out.points[v])[:, :2] * np.array([width, height])
        # interior points: the warped coordinate image says where the pixel came from == the original point
        # (away from both images' borders, where bilinear interpolation blends in the zero fill)
        size = np.array([width, height])
        interior = ((out.points[v] > 2).all(1) & (out.points[v] < size - 2).all(1)
                    & (points[v] > 2).all(1) & (points[v] < size - 2).all(1))
        assert interior.sum() > 30
        np.testing.assert_allclose(source[interior], points[v][interior], atol=2e-3)
        moved += np.abs(out.points[v] - points[v]).max() > 1
    assert moved == 5


def test_augmented_rendered_view_keeps_surface_colours(rendered):
    """Colour at the moved point in the warped render == colour at the original pixel (colour ops off)."""
    view = 3
    rgb, mask = rendered.rgb(view), rendered.mask(view)
    rows, cols, valid = sample_pixels(mask, 400, np.random.default_rng(0))
    points = np.stack([cols + 0.5, rows + 0.5], 1).astype(np.float32)
    aug = ViewAugmenter(config_section("data.augment", geometric_p=1.0), color=False)
    errors = []
    for seed in range(4):
        out = aug(rgb, points, valid, np.random.default_rng(seed), mask=mask)
        v = out.valid
        before = rgb[rows[v], cols[v]].astype(np.float32)
        after = bilinear(out.rgb.astype(np.float32), out.points[v])
        errors.append(np.abs(after - before).mean(1))
        # the moved points still lie on the (warped) object
        pixel = np.floor(out.points[v]).astype(int)
        assert out.mask[pixel[:, 1], pixel[:, 0]].mean() > 0.97
    errors = np.concatenate(errors)
    shuffled = np.abs(rgb[rows, cols].astype(np.float32) - np.roll(rgb[rows, cols], 7, 0)).mean(1)
    # relative to the texture's contrast (wrong correspondences): bilinear resampling error grows with contrast, and
    # the lighting (camera-fixed lights by default) sets the contrast; a misplaced warp gives ~1.0
    assert np.median(errors) < 0.15 * np.median(shuffled)


def test_background_is_remasked_and_colour_ops_change_pixels(rendered):
    rgb, mask = rendered.rgb(0), rendered.mask(0)
    rows, cols, valid = sample_pixels(mask, 100, np.random.default_rng(0))
    points = np.stack([cols + 0.5, rows + 0.5], 1).astype(np.float32)
    aug = ViewAugmenter(config_section("data.augment", geometric_p=1.0, color_p=1.0))
    out = aug(rgb, points, valid, np.random.default_rng(1), mask=mask)
    assert (out.rgb[~out.mask] == 0).all()
    no_colour = ViewAugmenter(config_section("data.augment", geometric_p=1.0), color=False)(
        rgb, points, valid, np.random.default_rng(1), mask=mask)
    np.testing.assert_array_equal(out.points, no_colour.points)  # colour ops never move points
    assert np.abs(out.rgb.astype(int) - no_colour.rgb.astype(int))[out.mask].mean() > 2


def test_each_transform_draws_independently():
    """Colour ops at p=0.5 must not fire all-or-nothing (what albumentations' set_random_seed would do)."""
    img = np.full((32, 32, 3), 128, np.uint8)
    aug = ViewAugmenter(config_section("data.augment", color_p=0.5), geometric=False)
    fired = []
    for seed in range(30):
        aug(img, np.zeros((0, 2), np.float32), np.zeros(0, bool), np.random.default_rng(seed))
        fired.append([t.py_random.random() < 0.5 for t in aug.compose.transforms])  # next draws, per transform
    fired = np.array(fired)
    assert len({tuple(row) for row in fired}) > 5


# --------------------------------------------------------------------------------------------- MVImgNet pairs
def test_mvimgnet_pairs_are_matched_points(tmp_path):
    from corr3d.data.mvimgnet import MVImgNetObject
    from tests.helpers.mvimgnet import HEIGHT, WIDTH, object_points, write_object

    write_object(tmp_path / "a", object_points(0), num_frames=4)
    write_object(tmp_path / "b", object_points(1), num_frames=4)
    (tmp_path / "broken" / "images").mkdir(parents=True)
    ds = MVImgNetPairDataset([tmp_path / "a", tmp_path / "b", tmp_path / "broken"], num_points=64, min_matches=8,
                             long_side=2 * WIDTH, num_samples=10, seed=0)
    objects = {name: MVImgNetObject.open(tmp_path / name) for name in ("a", "b")}
    seen = set()
    for k in range(10):
        s = ds[k]
        assert s["image0"].shape == (3, 2 * HEIGHT, 2 * WIDTH)
        valid = s["valid0"].numpy()
        assert valid.sum() >= 8 and np.array_equal(valid, s["valid1"].numpy())
        assert torch.equal(s["xyz0"], s["xyz1"])
        obj = objects[s["object_id"]]
        for suffix, view in (("0", s["view0"]), ("1", s["view1"])):
            uv, _ = project(s[f"xyz{suffix}"].numpy()[valid].astype(np.float64), obj.K[view], obj.poses[view])
            np.testing.assert_allclose(uv * 2.0, s[f"points{suffix}"].numpy()[valid], atol=2e-3)
        assert len(np.unique(s["points0"].numpy()[valid], axis=0)) == valid.sum()
        seen.add(s["object_id"])
    assert seen == {"a", "b"}
    assert "missing sparse/" in ds.skipped[str(tmp_path / "broken")]


# ---- denser positives (data.pairs.true_fraction) ------------------------------------------------------------------
def _positive_count(sample, radius=0.005):
    xyz0, xyz1 = sample["xyz0"][sample["valid0"]], sample["xyz1"][sample["valid1"]]
    return int((torch.cdist(xyz0.double(), xyz1.double()) < radius).any(1).sum())


def test_true_fraction_places_view1_points_at_true_correspondences(rendered):
    """Independent check: every forced view-1 point sees (within a pixel footprint) the 3D point of a view-0 point,
    and view 0's point projects into that pixel."""
    from corr3d.data.pairs import true_correspondence_pixels

    n = 200
    dense = RenderedPairDataset([rendered], num_points=n, max_rotation_deg=40.0, true_fraction=0.5, seed=3)
    plain = RenderedPairDataset([rendered], num_points=n, max_rotation_deg=40.0, seed=3)
    s = dense[0]
    obj = rendered
    xyz0 = s["xyz0"][s["valid0"]].numpy()
    uv, _ = project(xyz0.astype(np.float64), obj.K, obj.poses[s["view1"]])
    forced = min(int(0.5 * n), len(true_correspondence_pixels(obj, s["view1"], xyz0, 0.02)[0]))
    assert forced >= n // 4  # a 40-degree pair of a sphere: most points stay visible
    pts1 = s["points1"][:forced].numpy()
    pixels0 = {(int(np.floor(u)), int(np.floor(v))) for u, v in uv}
    assert all((int(x), int(y)) in pixels0 for x, y in pts1)  # each forced point is some view-0 point's pixel
    assert len({tuple(p) for p in pts1}) == forced  # no duplicates
    assert s["valid1"].all() and len(s["points1"]) == n
    # positives: many more than with independent sampling (the point of the option); at 64 px a pixel spans ~0.03
    # object units, so "coincident" here means within 0.02 (at the training renders' 512 px, within 0.005)
    assert _positive_count(s, 0.02) >= forced * 0.9
    assert _positive_count(s, 0.02) > 2 * _positive_count(plain[0], 0.02)


def test_true_fraction_zero_is_the_paper_sampling(rendered):
    a = RenderedPairDataset([rendered], num_points=100, seed=5)[0]
    b = RenderedPairDataset([rendered], num_points=100, seed=5, true_fraction=0.0)[0]
    assert all(torch.equal(a[k], b[k]) for k in ("points0", "points1", "xyz0", "xyz1"))


def test_sample_pixels_with_keeps_fixed_pixels_first_and_distinct():
    from corr3d.data.pairs import sample_pixels_with

    mask = np.zeros((10, 10), dtype=bool)
    mask[2:8, 2:8] = True
    rows, cols, valid = sample_pixels_with(mask, 20, np.random.default_rng(0), np.array([3, 4]), np.array([5, 6]))
    assert (rows[:2] == [3, 4]).all() and (cols[:2] == [5, 6]).all()
    flat = rows * 10 + cols
    assert valid.all() and len(set(flat.tolist())) == 20 and mask[rows, cols].all()


# --------------------------------------------------------------------------------------------- data.pairs.point_sampling
def test_paper_era_sampling_is_with_replacement_above_num_points():
    mask = np.zeros((40, 50), bool)
    mask[5:35, 10:40] = True  # 900 foreground pixels
    rows, cols, valid = sample_pixels(mask, 800, np.random.default_rng(0), "paper_era")
    assert valid.all() and mask[rows, cols].all() and len(rows) == 800
    # the authors' np.random.choice(900, 800, replace=True) on the row-major foreground list, same generator
    pick = np.random.default_rng(0).choice(900, size=800, replace=True)
    want_rows, want_cols = np.divmod(np.flatnonzero(mask)[pick], 50)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(cols, want_cols)
    assert len(set(zip(rows.tolist(), cols.tolist()))) < 800  # duplicates: 800 draws from 900 with replacement
    rows, cols, _ = sample_pixels(mask, 900, np.random.default_rng(0), "paper_era")  # exactly 900: all, once
    assert len(set(zip(rows.tolist(), cols.tolist()))) == 900
    with pytest.raises(TooFewPixels):
        sample_pixels(mask, 901, np.random.default_rng(0), "paper_era")


def test_authors_fixed_sampling_is_distinct_above_and_with_replacement_below():
    mask = np.zeros((40, 50), bool)
    mask[5:35, 10:40] = True
    rows, cols, valid = sample_pixels(mask, 800, np.random.default_rng(0), "authors_fixed")
    assert valid.all() and len(set(zip(rows.tolist(), cols.tolist()))) == 800
    rows, cols, valid = sample_pixels(mask, 2000, np.random.default_rng(0), "authors_fixed")
    assert valid.all() and mask[rows, cols].all() and len(rows) == 2000  # duplicates, none padded
    pick = np.random.default_rng(0).choice(900, size=2000, replace=True)
    np.testing.assert_array_equal(rows * 50 + cols, np.flatnonzero(mask)[pick])
    with pytest.raises(ValueError, match="point sampling must be one of"):
        sample_pixels(mask, 10, np.random.default_rng(0), "bogus")


def test_paper_era_redraws_pairs_with_too_few_pixels(rendered):
    small = set(range(0, 42, 3))  # these views keep only the top rows of their mask: too few pixels
    masks = np.array(rendered.views["mask"]).copy()
    masks[sorted(small), SIZE // 3:] = False
    obj = MemoryObject(rendered.object_id, rendered.K, rendered.poses, {**rendered.views, "mask": masks})
    need = int(min(masks[v].sum() for v in range(42) if v not in small))
    assert max(masks[v].sum() for v in small) < need
    ds = RenderedPairDataset([obj], num_points=need, num_samples=30, seed=2, point_sampling="paper_era")
    for k in range(30):
        sample = ds[k]
        assert sample["view0"] not in small and sample["view1"] not in small
        assert bool(sample["valid0"].all()) and bool(sample["valid1"].all())
    distinct = RenderedPairDataset([obj], num_points=need, num_samples=30, seed=2)
    assert any(distinct[k]["view0"] in small or distinct[k]["view1"] in small for k in range(30))
    with pytest.raises(RuntimeError, match="point_sampling='paper_era'"):
        RenderedPairDataset([rendered], num_points=10 ** 6, num_samples=1, point_sampling="paper_era")[0]
    with pytest.raises(ValueError, match="needs point_sampling='distinct'"):
        RenderedPairDataset([rendered], true_fraction=0.5, point_sampling="paper_era")
