"""The sweep driver (corr3d/launch/sweep.py): grid expansion, a real 3-cell sweep on the tiny model (CSV, shared
baselines, report), resume of finished cells, and names that become paths."""
from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
import torch

from corr3d.launch.sweep import SweepPlan, cell_names, expand_grid, parse_axes, run_sweep, split_values
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


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tiny_sweep_writes_csv_shares_work_and_resumes_finished_cells(tmp_path):
    # two held-out objects: objects are the bootstrap unit, and one unit has no CI (n/a)
    overrides = [*tiny_train_overrides(tmp_path, max_steps=2, pairs_per_epoch=3), "trainer.checkpoint_every_n_steps=2",
                 "equivariance.objects=[procedural:sphere_astronaut,procedural:torus_coffee]"]
    calls = []

    from corr3d.training.run import train

    def counting_train(cfg, run_dir):
        calls.append((int(cfg.trainer.max_steps), Path(run_dir).name))
        return train(cfg, run_dir=run_dir)

    axes = ["trainer.max_steps=0,2,4"]
    sweep = run_sweep("dinov2_single_object", axes, overrides, name="t", train_fn=counting_train)
    assert calls == [(0, "max_steps-0"), (2, "max_steps-2"), (4, "max_steps-4")]
    rows = _rows(sweep / "results.csv")
    assert [r["cell"] for r in rows] == ["max_steps-0", "max_steps-2", "max_steps-4"]
    assert [r["status"] for r in rows] == ["done"] * 3
    assert [int(r["steps"]) for r in rows] == [0, 2, 4]
    for row in rows:
        for model in ("pretrained", "pretrained_head_init", "finetuned"):
            assert 0 < float(row[f"{model}/equivariance/ape"]) < 100
            assert float(row[f"{model}/equivariance/ape_lo"]) <= float(row[f"{model}/equivariance/ape"]) \
                <= float(row[f"{model}/equivariance/ape_hi"])
    # later cells reused the first cell's baseline rows instead of measuring them again
    assert len({r["pretrained/equivariance/ape"] for r in rows}) == 1
    assert len({r["pretrained_head_init/equivariance/ape"] for r in rows}) == 1
    # 0 steps: finetuned == the untrained-head model exactly
    assert float(rows[0]["finetuned-pretrained_head_init/equivariance/ape"]) == pytest.approx(0.0, abs=1e-9)
    # the 4-step cell continued the 2-step cell's checkpoint: it trained steps 2 and 3 only ...
    logged = [json.loads(x)["step"] for x in (sweep / "max_steps-4" / "pairs_rank0.jsonl").read_text().splitlines()]
    assert logged == [2, 3]
    # ... and ends exactly where an uninterrupted 4-step run ends
    from safetensors.torch import load_file

    fresh = train(load_config_for(overrides, "trainer.max_steps=4", "equivariance.objects=[]"),
                  run_dir=tmp_path / "fresh")
    a, b = load_file(str(sweep / "max_steps-4" / "adapter.safetensors")), load_file(str(fresh / "adapter.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    report = (sweep / "report.md").read_text()
    assert "equivariance/ape" in report and "max_steps-4" in report
    assert (sweep / "equivariance_ape.png").exists()
    # resume: finished cells are skipped, an unfinished one (DONE removed) is trained again in its directory
    (sweep / "max_steps-2" / "DONE").unlink()
    calls.clear()
    run_sweep("dinov2_single_object", axes, overrides, name="t", train_fn=counting_train)
    assert calls == [(2, "max_steps-2")]
    calls.clear()
    run_sweep("dinov2_single_object", axes, overrides, name="t", train_fn=counting_train)
    assert calls == []


def load_config_for(overrides, *extra):
    from corr3d.config import load_config

    return load_config("dinov2_single_object", [*overrides, *extra])


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
    # the cells trained, but `latest` (what `make eval` evaluates as "finetuned") was not moved to a cell
    assert not (tmp_path / "runs" / "dinov2_single_object" / "latest").exists()


def test_variant_axis_applies_bundles_of_dotted_keys(tmp_path):
    plan = SweepPlan("dinov2_single_object",
                     ["recipe={optim.lr: 3e-4, loss.name: infonce, _name: nce},{data.pairs.true_fraction: 0.25}"],
                     [f"output_dir={tmp_path}"], name="v")
    assert plan.names == ["recipe-nce", "recipe-data.pairs.true_fraction_0.25"]
    first, second = (plan.cell_config(c) for c in plan.cells)
    base = plan.base
    assert base.optim.lr != 3e-4 and base.loss.name != "infonce" and base.data.pairs.true_fraction != 0.25
    assert first.optim.lr == 3e-4 and first.loss.name == "infonce"
    assert first.data.pairs.true_fraction == base.data.pairs.true_fraction
    assert second.data.pairs.true_fraction == 0.25 and second.optim.lr == base.optim.lr
    with pytest.raises(Exception):
        SweepPlan("dinov2_single_object", ["recipe=1,2"], [f"output_dir={tmp_path}"]).cell_config({"recipe": "1"})


# ---- names become paths (issue 21) -------------------------------------------------------------------------------
ESCAPES = ["../../../../escaped", "a/b", "..", ".", ".hidden", "/abs", "x" * 300, "", "a\nb", "~user"]


@pytest.mark.parametrize("name", ESCAPES)
def test_sweep_name_is_validated_before_anything_is_written(tmp_path, name):
    from corr3d.errors import Corr3dUserError

    out = tmp_path / "runs"
    calls = []
    with pytest.raises(Corr3dUserError, match="sweep name"):
        run_sweep("dinov2_single_object", ["seed=1,2"], [f"output_dir={out}", "trainer.max_steps=0"], name=name,
                  train_fn=lambda cfg, run_dir: calls.append(run_dir))
    if name:  # the same name from the config file (an empty sweep.name there means "default")
        with pytest.raises(Corr3dUserError, match="sweep name"):
            SweepPlan("dinov2_single_object", ["seed=1,2"], [f"output_dir={out}", f"sweep.name={json.dumps(name)}"])
    assert calls == [] and not out.exists() and not (tmp_path / "escaped").exists()


def test_cli_refuses_an_escaping_sweep_name_in_one_line(tmp_path, monkeypatch, capsys):
    from corr3d.cli import main

    monkeypatch.chdir(tmp_path)
    rc = main(["sweep", "dinov2_single_object", "seed=1,2", "trainer.max_steps=0", f"output_dir={tmp_path}/runs",
               "--name", "../../../../escaped"])
    err = capsys.readouterr().err
    assert rc == 2 and "sweep name '../../../../escaped'" in err and "internal error" not in err
    rc = main(["sweep", "dinov2_single_object", "seed=1", f"output_dir={tmp_path}/runs", "--name", "n" * 300])
    err = capsys.readouterr().err
    assert rc == 2 and "longer than 200 characters" in err and "OSError" not in err
    assert list(tmp_path.iterdir()) == []


def test_cell_names_from_axis_values_stay_single_safe_components(tmp_path):
    from corr3d.utils.paths import is_within, safe_name

    plan = SweepPlan("dinov2_single_object", ["seed=../x,a/b,..,/etc/passwd,~root,.hidden"],
                     [f"output_dir={tmp_path}"], name="t")
    assert plan.names == ["seed-.._x", "seed-a_b", "seed-..", "seed-etc_passwd", "seed-root", "seed-.hidden"]
    for cell in plan.names:
        assert safe_name(cell) == cell
        run = plan.run_dir(cell)
        assert run.parent == plan.root and is_within(plan.root, run)
    # keys become names too (a variant axis' key is any text), and a name never starts with a dot or a dash
    assert cell_names([{"../../x": "1"}, {"../../x": "2"}]) == ["x-1", "x-2"]
    assert cell_names([{".a": "1"}])[0] == "a-1"
    assert cell_names([{"-k": "-1"}]) == ["k--1"]


def test_over_long_cell_names_are_shortened_uniquely():
    from corr3d.utils.paths import MAX_NAME, safe_name

    long_a, long_b = "a" * 400 + "1", "a" * 400 + "2"
    names = cell_names(expand_grid({"model.lora.rank": [long_a, long_b], "seed": ["0", "1"]}))
    assert len(set(names)) == 4 and all(len(n) <= MAX_NAME and safe_name(n) == n for n in names)
    many = cell_names(expand_grid({f"k{i}": [str(10 ** 12 + i)] for i in range(40)}))
    assert len(many[0]) <= MAX_NAME


def test_a_symlink_in_the_sweep_directory_cannot_redirect_a_cell(tmp_path):
    from corr3d.errors import UnsafePathError

    outside = tmp_path / "outside"
    outside.mkdir()
    plan = SweepPlan("dinov2_single_object", ["seed=1,2"], [f"output_dir={tmp_path / 'runs'}"], name="t")
    plan.root.mkdir(parents=True)
    (plan.root / "seed-2").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="outside"):
        plan.run_dir("seed-2")
    calls = []
    with pytest.raises(UnsafePathError):  # refused when the plan is made, before the first cell trains
        run_sweep("dinov2_single_object", ["seed=1,2"], [f"output_dir={tmp_path / 'runs'}"], name="t",
                  train_fn=lambda cfg, run_dir: calls.append(run_dir))
    assert calls == [] and list(outside.iterdir()) == []
    # a planted sweeps/<name> symlink is refused too
    (plan.root.parent / "u").symlink_to(outside)
    with pytest.raises(UnsafePathError):
        SweepPlan("dinov2_single_object", ["seed=1"], [f"output_dir={tmp_path / 'runs'}"], name="u")


def test_sweep_cells_do_not_move_latest(tmp_path):
    """``make eval EXP=..`` evaluates ``runs/<exp>/latest`` as "finetuned": a sweep cell must not become it."""
    from corr3d.utils.run_dir import point_latest

    plan = SweepPlan("dinov2_single_object", ["seed=1,2"], [f"output_dir={tmp_path / 'runs'}"], name="t")
    experiment_dir = tmp_path / "runs" / "dinov2_single_object"
    own = experiment_dir / "2024-01-01_00-00-00"
    own.mkdir(parents=True)
    assert point_latest(experiment_dir, own) is True
    cell = plan.run_dir(plan.names[-1])
    cell.mkdir(parents=True)
    assert point_latest(experiment_dir, cell) is False
    assert (experiment_dir / "latest").resolve() == own.resolve()
    # the local sweep driver trains cells through train(), which calls point_latest: same outcome
    calls = []

    def fake_train(cfg, run_dir):
        calls.append(point_latest(experiment_dir, Path(run_dir)))
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / "DONE").write_text("")

    run_sweep("dinov2_single_object", ["seed=1,2"], [f"output_dir={tmp_path / 'runs'}"], name="t",
              train_fn=fake_train)
    assert calls == [False, False] and (experiment_dir / "latest").resolve() == own.resolve()
