"""The ``make bench`` training-step group (issue 13) runs end to end on a tiny model."""
from __future__ import annotations


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
