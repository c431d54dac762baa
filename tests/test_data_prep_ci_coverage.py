"""data_prep/ci_coverage.py: the pool it simulates from is the per-object unit sums, and its coverage counts tell
an under-covering interval from a covering one (docs/ci_coverage.md)."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from corr3d.config import REPO_ROOT as ROOT


def _script():
    """data_prep/ is not a package: load the command script as a module."""
    spec = importlib.util.spec_from_file_location("ci_coverage", ROOT / "data_prep" / "ci_coverage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_extract_writes_unit_sums_of_every_model(tmp_path):
    cov = _script()
    parts = tmp_path / "run" / "parts" / "equivariance"
    parts.mkdir(parents=True)
    for shift, model in enumerate(cov.MODELS):
        items = [{"id": "a/0-1", "unit": "a", "weight": 2.0, "equivariance/ape": 10.0 + shift},
                 {"id": "a/1-2", "unit": "a", "weight": 1.0, "equivariance/ape": 4.0},
                 {"id": "b/0-1", "unit": "b", "weight": 3.0, "equivariance/ape": 1.0}]
        (parts / f"{model}.json").write_text(json.dumps(items))
    out = tmp_path / "pool.json"
    pool = cov.extract(tmp_path / "run", out)
    assert json.loads(out.read_text()) == pool and pool["units"] == ["a", "b"]
    # unit a: 2 * (10 + shift) + 4, weight 3; unit b: 3, weight 3
    for shift, model in enumerate(cov.MODELS):
        assert pool["models"][model]["equivariance/ape"] == {"num": [24.0 + 2 * shift, 3.0], "den": [3.0, 3.0]}
    # models scored on different items give no paired pool
    (parts / "random.json").write_text(json.dumps([{"id": "x", "unit": "a", "weight": 1.0, "equivariance/ape": 1}]))
    with pytest.raises(ValueError, match="same items"):
        cov.extract(tmp_path / "run", out)


def test_committed_pool_is_complete():
    cov = _script()
    pool = json.loads(cov.POOL.read_text())
    assert len(pool["units"]) == 56
    for model in cov.MODELS:
        for key in cov.KEYS:
            sums = pool["models"][model][key]
            assert len(sums["num"]) == len(sums["den"]) == 56 and min(sums["den"]) > 0


def test_coverage_separates_the_small_sample_percentile_bootstrap_from_the_t_interval():
    """Normal unit means, 5 units: the percentile interval is a z-interval shrunk by sqrt(4/5) (~83% in theory),
    the t-interval is exact (95%). 300 seeded draws: Monte Carlo SE ~1.3 points, far below the 10-point gap."""
    cov = _script()
    rng = np.random.default_rng(0)
    values = rng.normal(50, 10, size=400)
    arrays = (values * 2.0, np.full(400, 2.0))                # unit sums with equal weights 2
    got = cov.coverage(arrays, "m", n=5, draws=300, seed=1, n_boot=1000, pool_index=0)
    assert got["t"] == pytest.approx(0.95, abs=0.04)
    assert got["percentile"] < 0.90 and got["bca"] < 0.90
    assert cov.coverage(arrays, "m", n=5, draws=300, seed=1, n_boot=1000, pool_index=0) == got  # seeded
    # a paired pool: the truth is the difference of the two pool ratios
    other = values * 2.0 - 3.0 + rng.normal(0, 4, size=400)
    paired = arrays + (other, np.full(400, 2.0))
    assert cov.truth(paired) == pytest.approx(values.mean() - other.mean() / 2.0)
    assert cov.coverage(paired, "m", n=10, draws=100, seed=1, n_boot=500, pool_index=1)["t"] > 0.85
