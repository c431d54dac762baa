"""The ``make bench`` loss group (issue 13) runs end to end on tiny inputs, and the authors' loss reference equals
ours."""
from __future__ import annotations

import pytest
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
