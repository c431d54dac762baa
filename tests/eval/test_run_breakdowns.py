"""Breakdowns by viewpoint change (issue 22 item 8) as ``make eval`` writes them: metrics.json and report.md."""
from __future__ import annotations

import json

import pytest

import corr3d.eval.run as run
from corr3d.config import load_config
from corr3d.eval.stats import bootstrap_ci


def _cfg(tmp_path, *extra):
    return load_config("base", ["model.backbone=test_vit.r160_in1k", "model.weights=random", "model.target_res=64",
                                f"output_dir={tmp_path / 'runs'}", f"data_root={tmp_path / 'data'}",
                                "eval.device=cpu", "eval.n_boot=50", f"eval.out_dir={tmp_path / 'eval'}",
                                "eval.tasks=[equivariance]", "eval.models=[pretrained,random]", *extra])


ROTATIONS = [5.0, 10.0, 20.0, 40.0, 50.0, 90.0, 180.0, 25.0]


@pytest.fixture
def fake_equivariance(monkeypatch):
    def evaluate(model, cfg, items=None, **_):
        shift = float(len(type(model).__name__))
        rows = [{"id": f"o{k % 4}/{k}", "unit": f"o{k % 4}", "weight": 1.0, "rotation_deg": r,
                 "equivariance/ape": r / 10 + shift, "equivariance/pcdp@0.05": 100 - r / 2}
                for k, r in enumerate(ROTATIONS)]
        items.extend(rows)
        return {"equivariance/ape": sum(r["equivariance/ape"] for r in rows) / len(rows)}

    monkeypatch.setattr("corr3d.eval.tasks.equivariance.evaluate_equivariance", evaluate)


def test_make_eval_writes_the_rotation_breakdown(tmp_path, fake_equivariance):
    run.run_eval(_cfg(tmp_path))
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    table = metrics["breakdowns"]["equivariance/ape by rotation_deg"]["pretrained"]
    assert {label: cell["n"] for label, cell in table.items()} == {"0-15": 2, "15-30": 2, "30-60": 2, "60-180": 2}
    items = json.loads((tmp_path / "eval" / "parts" / "equivariance" / "pretrained.json").read_text())
    in_bin = [it for it in items if 30 <= it["rotation_deg"] < 60]
    value, lo, hi = bootstrap_ci(in_bin, "equivariance/ape", n_boot=50, seed=0)
    assert (table["30-60"]["value"], table["30-60"]["lo"], table["30-60"]["hi"]) == pytest.approx((value, lo, hi))
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "## By viewpoint change" in report and "### equivariance/pcdp@0.05 by rotation_deg" in report
    assert metrics["protocols"]["equivariance/"]["protocol"] == "corr3d"
    assert "`equivariance/`: **corr3d**" in report


def test_items_without_the_field_give_no_breakdown(tmp_path, monkeypatch):
    def evaluate(model, cfg, items=None, **_):
        items.extend({"id": f"p{i}", "unit": f"u{i}", "weight": 1.0, "equivariance/ape": 1.0} for i in range(3))
        return {"equivariance/ape": 1.0}

    monkeypatch.setattr("corr3d.eval.tasks.equivariance.evaluate_equivariance", evaluate)
    run.run_eval(_cfg(tmp_path))
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["breakdowns"] == {}
    assert "## By viewpoint change" not in (tmp_path / "eval" / "report.md").read_text()
