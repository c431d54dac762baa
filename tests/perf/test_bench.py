"""``make bench`` groups of issue 13 run end to end on tiny inputs, and the authors' loss reference equals ours."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F


def test_authors_loss_reference_equals_smooth_ap():
    from corr3d.losses import smooth_ap_loss
    from corr3d.perf.loss import authors_smooth_ap, make_inputs

    for kind in ("realistic", "dense"):
        f0, f1, x0, x1 = (t.double() for t in make_inputs(kind, points=400, dim=16))
        f0, f1 = F.normalize(f0, dim=-1), F.normalize(f1, dim=-1)
        ours, stats = smooth_ap_loss(f0, f1, x0, x1)
        assert int(stats["num_positives"]) > 0
        # same positives in double precision (cdist's matmul mode only differs at the radius in fp32)
        assert ours.item() == pytest.approx(authors_smooth_ap(f0, f1, x0, x1).item(), abs=1e-12)


def test_loss_bench_quick():
    from corr3d.perf.loss import time_losses

    out = time_losses("realistic", reps=1, points=300)
    assert out["loss_realistic_corr3d_fwd_bwd_s"] > 0 and out["loss_realistic_rel_diff"] < 1e-4


def test_training_step_bench_and_estimates():
    from corr3d.perf import training
    from tests.helpers.models import tiny_model

    model = tiny_model(16)
    batch = training._batch(points=200, size=48)
    out = training.time_steps(model, batch, reps=1)
    assert out["step_corr3d_s"] > 0 and out["step_corr3d_cached_s"] > 0
    est = training.estimates()
    assert 5 < est["paper_recipe_step_tflop"] < 15        # DINOv2-B, two 1120-px views, forward + backward
    assert est["paper_recipe_10k_steps_h100_min_est"] > 0
