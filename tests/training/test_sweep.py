"""The sweep driver: grid expansion, a real 2-cell sweep on the tiny model (CSV, shared baselines, report), resume
of finished cells, and the Fig. 3 correlation helper against scipy-free hand computations."""
from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from corr3d.training.sweep import (
    SweepPlan,
    cell_names,
    correlation_table,
    expand_grid,
    parse_axes,
    pearson_spearman,
    run_sweep,
    split_values,
)
from tests.helpers.tiny import REPO, corr3d_command, subprocess_env, tiny_train_overrides


def test_split_values_respects_brackets():
    assert split_values("0,1,5") == ["0", "1", "5"]
    assert split_values("[a,b],[c]") == ["[a,b]", "[c]"]
    assert split_values("'x,y',z") == ["'x,y'", "z"]


def test_grid_is_the_cartesian_product_in_axis_order():
    axes = parse_axes(["trainer.max_steps=0,1,5", "model.head.init=default,identity", "seed=0,1"])
    cells = expand_grid(axes)
    assert len(cells) == 12
    assert cells[0] == {"trainer.max_steps": "0", "model.head.init": "default", "seed": "0"}
    assert cells[1] == {"trainer.max_steps": "0", "model.head.init": "default", "seed": "1"}
    assert cells[-1] == {"trainer.max_steps": "5", "model.head.init": "identity", "seed": "1"}
    names = cell_names(cells)
    assert names[0] == "max_steps-0__init-default__seed-0" and len(set(names)) == 12
    assert expand_grid({}) == [{}]


def test_plan_merges_experiment_axes_with_command_line(tmp_path):
    plan = SweepPlan("ablation_fig12_iterations", ["seed=3,4"], [f"output_dir={tmp_path}"], name="t")
    assert plan.axes["seed"] == ["3", "4"]
    assert "trainer.max_steps" in plan.axes and "model.head.init" in plan.axes
    assert plan.root == tmp_path / "ablation_fig12_iterations" / "sweeps" / "t"
    cfg = plan.cell_config(plan.cells[-1])
    assert cfg.seed == 4 and cfg.model.head.init == "identity"


def _rows(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.mark.timeout(600)
def test_tiny_sweep_writes_csv_and_resumes_finished_cells(tmp_path):
    overrides = tiny_train_overrides(tmp_path, max_steps=2, pairs_per_epoch=2)
    calls = []

    from corr3d.training.run import train

    def counting_train(cfg, run_dir):
        calls.append((int(cfg.trainer.max_steps), Path(run_dir).name))
        return train(cfg, run_dir=run_dir)

    sweep = run_sweep("dinov2_single_object", ["trainer.max_steps=0,2"], overrides, name="t", train_fn=counting_train)
    assert calls == [(0, "max_steps-0"), (2, "max_steps-2")]
    rows = _rows(sweep / "results.csv")
    assert [r["cell"] for r in rows] == ["max_steps-0", "max_steps-2"]
    assert [r["status"] for r in rows] == ["done", "done"]
    assert [int(r["steps"]) for r in rows] == [0, 2]
    for row in rows:
        for model in ("pretrained", "pretrained_head_init", "finetuned"):
            assert 0 < float(row[f"{model}/equivariance/ape"]) < 100
    # the second cell reused the first cell's baselines instead of measuring them again
    assert rows[0]["pretrained/equivariance/ape"] == rows[1]["pretrained/equivariance/ape"]
    # 0 steps: finetuned == the untrained-head model exactly
    assert float(rows[0]["finetuned-pretrained_head_init/equivariance/ape"]) == pytest.approx(0.0, abs=1e-9)
    report = (sweep / "report.md").read_text()
    assert "equivariance/ape" in report and "max_steps-2" in report
    assert (sweep / "equivariance_ape.png").exists()
    # resume: finished cells are skipped, an unfinished one (DONE removed) is trained again in its directory
    (sweep / "max_steps-2" / "DONE").unlink()
    calls.clear()
    run_sweep("dinov2_single_object", ["trainer.max_steps=0,2"], overrides, name="t", train_fn=counting_train)
    assert calls == [(2, "max_steps-2")]
    calls.clear()
    run_sweep("dinov2_single_object", ["trainer.max_steps=0,2"], overrides, name="t", train_fn=counting_train)
    assert calls == []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cli_sweep_axis_syntax(tmp_path):
    """``corr3d sweep EXP key=v1,v2 key=v`` through the real command: one axis, one plain override."""
    overrides = tiny_train_overrides(tmp_path, max_steps=0, pairs_per_epoch=1)
    cmd = corr3d_command("sweep", "dinov2_single_object", *overrides, "seed=1,2", "--name", "cli")
    result = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = _rows(tmp_path / "runs" / "dinov2_single_object" / "sweeps" / "cli" / "results.csv")
    assert [r["seed"] for r in rows] == ["1", "2"]
    manifest = json.loads((tmp_path / "runs" / "dinov2_single_object" / "sweeps" / "cli" / "sweep.json").read_text())
    assert manifest["axes"] == {"seed": ["1", "2"]}


def test_pearson_spearman_against_hand_values():
    x = [1.0, 2.0, 3.0, 4.0]
    y = [2.0, 4.0, 5.0, 4.5]
    r, rho = pearson_spearman(x, y)
    xm, ym = np.mean(x), np.mean(y)
    expected_r = sum((a - xm) * (b - ym) for a, b in zip(x, y)) / np.sqrt(
        sum((a - xm) ** 2 for a in x) * sum((b - ym) ** 2 for b in y))
    assert r == pytest.approx(expected_r, rel=1e-12)
    # ranks of y: 1, 2.5?  no ties: y ranks = 1, 3, 4, 2 -> rho = 1 - 6 * sum d^2 / (n (n^2 - 1))
    d2 = (1 - 1) ** 2 + (2 - 2) ** 2 + (3 - 4) ** 2 + (4 - 3) ** 2
    assert rho == pytest.approx(1 - 6 * d2 / (4 * 15), rel=1e-12)
    table = correlation_table([{"equivariance/ape": a, "pck": b} for a, b in zip(x, y)])
    assert table == [{"metric": "pck", "n": 4, "pearson_r": pytest.approx(r), "spearman_r": pytest.approx(rho)}]
