"""Tracking evaluation: per-video items reproduce the headline, the ground-truth oracle is perfect, token norm, the
tracker on a static video."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from corr3d.eval.datasets.tapvid import iter_videos, write_tapvid_pickle
from corr3d.eval.tracking import (
    DinoTracker,
    evaluate_oracle_tracking,
    evaluate_videos,
    token_norm,
)
from tests.helpers.config import config_section

# what eval/run.py passes next to the section: native frame size (small videos), a radius for their scale
TRACKER = {"frame_size": None, "argmax_radius": 8.0, "batch_size": 4}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Three small videos of a textured square translating over noise, with different numbers of points."""
    path = tmp_path_factory.mktemp("tapvid") / "tapvid_davis.pkl"
    rng = np.random.default_rng(0)
    T, H, W = 8, 48, 64
    data = {}
    for v, n_points in enumerate((3, 5, 2)):
        bg = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
        patch = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
        frames, tracks = [], np.zeros((n_points, T, 2))
        offsets = rng.uniform(2, 18, (n_points, 2))
        for t in range(T):
            x0, y0 = 8 + 3 * t, 10 + v
            f = bg.copy()
            f[y0:y0 + 20, x0:x0 + 20] = patch
            frames.append(f)
            tracks[:, t] = [x0, y0] + offsets
        occ = np.zeros((n_points, T), dtype=bool)
        occ[0, -1] = True                                   # one GT occlusion per video
        data[f"v{v}"] = {"video": np.stack(frames), "points": (tracks / [W, H]).astype(np.float32),
                         "occluded": occ}
    write_tapvid_pickle(path, data)
    return path


def _settings():
    return config_section("eval.tracking", stride=8, query_chunk=4, final_norm=None)


def test_oracle_is_perfect(videos):
    metrics, tables = evaluate_oracle_tracking(list(iter_videos(videos, "strided", 3)), _settings(), "t/")
    assert metrics["t/aj"] == 100.0 and metrics["t/delta_avg"] == 100.0 and metrics["t/oa"] == 100.0
    assert [i["id"] for i in tables["items"]] == ["v0", "v1", "v2"]


def test_items_reproduce_headline(videos):
    from tests.helpers.models import tiny_model

    model = tiny_model(16)
    metrics, tables = evaluate_videos(model, list(iter_videos(videos, "strided", 3)), _settings(), **TRACKER,
                                     prefix="t/")
    items = tables["items"]
    assert len(items) == 3 and all(i["unit"] == i["id"] for i in items)
    for key in ("aj", "delta_avg", "oa"):
        vals = [i[f"t/{key}"] for i in items if f"t/{key}" in i]
        assert np.mean(vals) == pytest.approx(metrics[f"t/{key}"])
    assert 0 < metrics["t/oa"] <= 100


def test_token_norm_switch_and_restore():
    from tests.helpers.models import tiny_model

    model = tiny_model(16).eval()
    frames = np.random.default_rng(1).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    s_pre = config_section("eval.tracking", stride=None, final_norm=False)
    s_post = config_section("eval.tracking", stride=None, final_norm=True)
    native = {"frame_size": None, "argmax_radius": s_pre.argmax_radius, "batch_size": 4}
    pre = DinoTracker(model, frames, s_pre, **native).fmaps
    post = DinoTracker(model, frames, s_post, **native).fmaps
    assert model.config["final_norm"] is True                     # restored after each extraction
    assert not torch.allclose(pre, post, atol=1e-4)
    with token_norm(model, False):
        assert model.config["final_norm"] is False
        ref = torch.nn.functional.normalize(model(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255,
                                                  input_size=(32, 32)), dim=1)
    assert torch.allclose(pre, ref, atol=1e-5)


# -- the batched soft-argmax / occlusion path against the original per-query computation ---------------------------
def _reference_soft_argmax(corr, centres, radius, temperature):
    """The original head: ReLU, argmax, cdist to every token, softmax within the radius disc, weighted centres."""
    shape = corr.shape[:-1]
    corr = corr.reshape(-1, corr.shape[-1]).clamp(min=0)
    idx = corr.argmax(dim=-1)
    dist = torch.cdist(centres[idx], centres)
    logits = (corr / temperature).masked_fill(dist > radius, float("-inf"))
    return (torch.softmax(logits, dim=-1) @ centres).reshape(*shape, 2)


def _reference_track(tracker, query_t, query_xy):
    """The original ``track``: per-query-chunk correlation, then one query at a time for the occlusion cycle."""
    s = tracker.tracking
    head = lambda c: _reference_soft_argmax(c, tracker.centres, tracker.argmax_radius, s.softmax_temperature)  # noqa
    qt, qxy = torch.as_tensor(query_t), torch.as_tensor(query_xy, dtype=torch.float32)
    Q = len(qt)
    src = tracker.sample_at(qt, qxy)
    tracks = torch.cat([head(torch.einsum("qc,tcn->qtn", src[i:i + s.query_chunk], tracker.flat))
                        for i in range(0, Q, s.query_chunk)])
    feats = tracker.sample_at(torch.arange(tracker.T).expand(Q, -1).reshape(-1), tracks.reshape(-1, 2))
    feats = feats.reshape(Q, tracker.T, -1)
    cos = torch.einsum("qtc,qc->qt", feats, feats[torch.arange(Q), qt])
    occ = torch.zeros(Q, tracker.T, dtype=torch.bool)
    for q in range(Q):
        anchors = torch.nonzero(cos[q] >= s.anchor_cos).flatten()
        cycle = head(torch.einsum("tc,acn->atn", feats[q], tracker.flat[anchors]))
        dists = torch.linalg.norm(cycle - tracks[q][anchors][:, None, :], dim=-1)
        threshold = torch.median(dists[:, anchors], dim=0).values.max()
        occ[q] = (torch.median(dists, dim=0).values > threshold) | (cos[q] < s.occlusion_cos)
    return tracks.numpy(), occ.numpy(), cos.numpy()


@pytest.mark.parametrize("anchor_cos", [0.5, 0.7])
def test_batched_track_is_bit_identical_to_reference(anchor_cos):
    """Bit-identical tracks, occlusion and cosines (radius 8 on a stride-8 grid: tokens exactly on the disc edge)."""
    from tests.helpers.models import tiny_model

    model = tiny_model(16).eval()
    rng = np.random.default_rng(3)
    base = rng.integers(0, 255, (48, 64, 3))        # one scene, rolled and noised per frame: anchors vary
    frames = np.stack([np.clip(np.roll(base, 2 * t, axis=1) + rng.normal(0, 25 * (t % 3), base.shape), 0, 255)
                       for t in range(9)]).astype(np.uint8)
    s = config_section("eval.tracking", stride=8, query_chunk=5, final_norm=None, anchor_cos=anchor_cos)
    tracker = DinoTracker(model, frames, s, **TRACKER)
    assert len(tracker.centres) > 25          # cdist's matmul form, as on every real map
    query_t = rng.integers(0, 9, 13)
    query_xy = rng.uniform(0, [64, 48], (13, 2))
    tracks, occ, cos = tracker.track(query_t, query_xy)
    ref_tracks, ref_occ, ref_cos = _reference_track(tracker, query_t, query_xy)
    np.testing.assert_array_equal(tracks, ref_tracks)
    np.testing.assert_array_equal(cos, ref_cos)
    np.testing.assert_array_equal(occ, ref_occ)
    assert occ.any() and not occ.all()       # the occlusion rule is exercised both ways
    many_anchors = (cos >= anchor_cos).sum(1)
    assert many_anchors.min() >= 1 and many_anchors.max() > 1


def test_radius_table_matches_cdist_on_the_disc_edge():
    """The per-video table of far tokens equals the per-map cdist test row for row, also where a token lies at
    exactly the radius (stride 8, radius 8 and 8 * sqrt(2))."""
    from tests.helpers.models import tiny_model

    model = tiny_model(16).eval()
    frames = np.random.default_rng(4).integers(0, 255, (2, 48, 64, 3), dtype=np.uint8)
    for radius in (8.0, 8.0 * 2 ** 0.5, 16.0):
        tracker = DinoTracker(model, frames, config_section("eval.tracking", stride=8, final_norm=None),
                              frame_size=None, argmax_radius=radius, batch_size=2)
        idx = torch.arange(len(tracker.centres)).repeat(3)
        expected = torch.cdist(tracker.centres[idx], tracker.centres) > radius
        assert torch.equal(tracker._outside(idx), expected)
        assert 0 < expected.float().mean() < 1


def test_tracker_on_static_video(tiny_model):
    from corr3d.eval.tracking import DinoTracker
    from tests.helpers.config import config_section

    rng = np.random.default_rng(0)
    frame = (rng.random((64, 96, 3)) * 255).astype(np.uint8)
    frames = np.stack([frame] * 4)
    tracking = config_section("eval.tracking", stride=8, query_chunk=3)
    tracker = DinoTracker(tiny_model, frames, tracking, frame_size=None, argmax_radius=8.0, batch_size=4)
    q_xy = np.array([[20.0, 20.0], [48.0, 32.0], [70.0, 40.0], [30.0, 50.0]])
    tracks, occ, cos = tracker.track(np.array([0, 1, 2, 3]), q_xy)
    assert tracks.shape == (4, 4, 2) and occ.shape == (4, 4)
    err = np.linalg.norm(tracks - q_xy[:, None], axis=-1)
    assert err.max() < 8.0                     # within one token of the query in every (identical) frame
    assert np.allclose(cos, cos[:, :1], atol=1e-5)
    assert not occ.any()                       # identical frames: nothing occluded
    for i, t in enumerate([0, 1, 2, 3]):       # the query frame is its own anchor: cosine 1
        assert cos[i, t] == pytest.approx(1.0, abs=1e-5)
