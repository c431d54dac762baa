"""Tracking evaluation: per-video items reproduce the headline, the ground-truth oracle is perfect, token norm."""
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
