"""The render bench finds (or skips) the sh3d objects, and reports the one-time import costs."""
from __future__ import annotations

import pytest

from corr3d.assets import sh3d
from corr3d.perf import render as bench


def test_bench_skips_sh3d_without_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv(sh3d.DIR_ENV, str(tmp_path))  # a folder without .sh3f libraries
    assert bench.sh3d_specs(3) == []


@pytest.mark.skipif(not any(sh3d.DEFAULT_DIR.glob("*.sh3f")) if sh3d.DEFAULT_DIR.is_dir() else True,
                    reason=f"{sh3d.DEFAULT_DIR} is missing")
def test_bench_takes_the_first_training_objects(monkeypatch):
    monkeypatch.delenv(sh3d.DIR_ENV, raising=False)
    assert bench.sh3d_specs(2) == sh3d.load_split("train")[:2]


@pytest.mark.slow
def test_bench_import_probe_reports_one_time_costs():
    out = bench.import_seconds(with_sh3d=False)
    assert out["renderer_imports_dash"] is False
    assert out["import_open3d_renderer_s"] > 0 and out["import_open3d_plain_s"] > 0
    assert out["import_corr3d_render_s"] > 0
