"""eval.tracking.normalize: L2 normalisation before (corr3d) or after (the authors) bilinear sampling."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from corr3d.eval.tracking import DinoTracker
from tests.helpers.config import config_section
from tests.helpers.models import tiny_model


@pytest.fixture(scope="module")
def setup():
    model = tiny_model(16).eval()
    frames = np.random.default_rng(3).integers(0, 255, (2, 48, 64, 3), dtype=np.uint8)
    with torch.no_grad():
        raw = model(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255, input_size=(48, 64))
    return model, frames, raw


def _tracker(model, frames, mode):
    section = config_section("eval.tracking", stride=None, final_norm=None, normalize=mode)
    return DinoTracker(model, frames, section, frame_size=None, argmax_radius=8.0, batch_size=2)


def test_sampling_order_midway_between_tokens(setup):
    model, frames, raw = setup
    # token (row 1, col 1) centre at (24, 24) and its right neighbour at (40, 24): sample half-way, (32, 24)
    r1, r2 = raw[1, :, 1, 1], raw[1, :, 1, 2]
    after_want = F.normalize((r1 + r2) / 2, dim=0)
    before_want = F.normalize((F.normalize(r1, dim=0) + F.normalize(r2, dim=0)) / 2, dim=0)
    xy = torch.tensor([[32.0, 24.0], [24.0, 24.0]])
    t = torch.tensor([1, 1])
    before = _tracker(model, frames, "before_sampling")
    after = _tracker(model, frames, "after_sampling")
    got_b, got_a = before.sample_at(t, xy), after.sample_at(t, xy)
    torch.testing.assert_close(got_b[0], before_want, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_a[0], after_want, atol=1e-5, rtol=0)
    assert (got_a[0] - got_b[0]).abs().max() > 1e-4        # the order matters between tokens ...
    torch.testing.assert_close(got_a[1], got_b[1], atol=1e-5, rtol=0)   # ... not at a token centre
    torch.testing.assert_close(after.fmaps, before.fmaps)   # correlation maps: unit maps in both modes
    assert before.sample_maps is before.fmaps


def test_bad_normalize_value_is_refused(setup):
    model, frames, _ = setup
    section = config_section("eval.tracking", stride=None, final_norm=None)
    section.normalize = "sometimes"
    with pytest.raises(ValueError, match="eval.tracking.normalize must be one of"):
        DinoTracker(model, frames, section, frame_size=None, argmax_radius=8.0, batch_size=2)
