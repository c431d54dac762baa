"""``make eval`` loses nothing: subset runs merge, adapters of other experiments get their own output directory,
names are validated before the disk is touched, one evaluation at a time holds an output directory, and a
replaced weights file is measured again (issue 21, "Lost results" and "Reuse that is not justified")."""
from __future__ import annotations

import json
import os

import pytest

import corr3d.eval.run as run
from corr3d.config import load_config
from corr3d.errors import Corr3dUserError, RunLockedError
from corr3d.utils.run_dir import RunLock


def _cfg(tmp_path, *extra, out=True):
    return load_config("base", ["model.backbone=test_vit.r160_in1k", "model.weights=random", "model.target_res=64",
                                "model.lora.blocks=1", f"output_dir={tmp_path / 'runs'}",
                                f"data_root={tmp_path / 'data'}", "eval.device=cpu", "eval.n_boot=50",
                                *([f"eval.out_dir={tmp_path / 'eval'}"] if out else []), *extra])


@pytest.fixture
def fake_tasks(monkeypatch):
    """Equivariance and real_pairs without rendering or photographs: items that depend on the model's name, so a
    test sees which parts were measured (calls) and what the report holds."""
    calls: list[tuple[str, str]] = []

    def fake(task):
        def evaluate(model, cfg, items=None, **_):
            name = type(model).__name__
            calls.append((task, name))
            key = f"{task}/pck@0.05" if task == "real_pairs" else f"{task}/ape"
            rows = [{"id": f"{task}{i}", "unit": f"u{i}", "weight": 1.0, key: float(i + len(name))} for i in range(4)]
            items.extend(rows)
            return {key: sum(r[key] for r in rows) / len(rows)}
        return evaluate

    monkeypatch.setattr("corr3d.eval.tasks.equivariance.evaluate_equivariance", fake("equivariance"))
    monkeypatch.setattr("corr3d.eval.tasks.real_pairs.evaluate_real_pairs", fake("real_pairs"))
    return calls


BOTH = ["eval.tasks=[equivariance,real_pairs]", "eval.models=[pretrained,oracle]"]


def test_a_subset_evaluation_merges_into_the_earlier_results(tmp_path, fake_tasks):
    full = run.run_eval(_cfg(tmp_path, *BOTH))
    out = tmp_path / "eval"
    before = {p.name: p.read_bytes() for p in (out / "parts").rglob("*.json")}
    assert len(fake_tasks) == 4
    # a narrower task selection: nothing is measured again (same fingerprints), nothing is deleted
    subset = run.run_eval(_cfg(tmp_path, "eval.tasks=[real_pairs]", "eval.models=[pretrained,oracle]"))
    assert len(fake_tasks) == 4
    assert {p.name: p.read_bytes() for p in (out / "parts").rglob("*.json")} == before
    assert subset["metrics"] == full["metrics"] and subset["ci"] == full["ci"]
    # a narrower model selection with eval.resume=false: only the selected parts are measured again
    narrow = run.run_eval(_cfg(tmp_path, *BOTH[:1], "eval.models=[oracle]", "eval.resume=false"))
    assert sorted(fake_tasks[4:]) == [("equivariance", "OracleModel"), ("real_pairs", "OracleModel")]
    assert narrow["metrics"] == full["metrics"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"pretrained", "oracle"} and "equivariance/ape" in metrics["pretrained"]
    assert "real_pairs/pck@0.05" in (out / "report.md").read_text()


def test_parts_of_another_configuration_are_kept_but_not_reported(tmp_path, fake_tasks):
    run.run_eval(_cfg(tmp_path, *BOTH))
    parts = tmp_path / "eval" / "parts"
    changed = run.run_eval(_cfg(tmp_path, "eval.tasks=[real_pairs]", "eval.models=[pretrained,oracle]",
                                "model.target_res=96"))
    # the equivariance parts were measured at 64 px: on disk still, out of the 96 px report, and named there
    assert (parts / "equivariance__pretrained.json").exists() and (parts / "equivariance" / "pretrained.json").exists()
    assert all(not k.startswith("equivariance/") for m in changed["metrics"].values() for k in m)
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "equivariance / pretrained: not reported" in report


def test_a_failed_part_is_reported_not_hidden(tmp_path, fake_tasks, monkeypatch):
    def broken(model, cfg, items=None, **_):
        raise ValueError("bad photograph")

    monkeypatch.setattr("corr3d.eval.tasks.real_pairs.evaluate_real_pairs", broken)
    with pytest.raises(run.EvaluationFailed):
        run.run_eval(_cfg(tmp_path, *BOTH))
    assert "real_pairs FAILED for pretrained: ValueError: bad photograph" in (tmp_path / "eval" / "report.md").read_text()


def test_a_replaced_weights_file_is_measured_again(tmp_path, fake_tasks):
    import torch
    from safetensors.torch import save_file

    weights = tmp_path / "w.safetensors"
    save_file({"x": torch.zeros(2)}, weights)
    cfg = _cfg(tmp_path, *BOTH)
    fp = run.part_fingerprint(cfg, "real_pairs", "pretrained")
    cfg_w = _cfg(tmp_path, *BOTH, f"model.weights={weights}")
    first = run.part_fingerprint(cfg_w, "real_pairs", "pretrained")
    save_file({"x": torch.ones(2)}, weights)   # same path, other content
    os.utime(weights, ns=(1, 1))               # even with an unchanged size
    second = run.part_fingerprint(cfg_w, "real_pairs", "pretrained")
    assert len({fp, first, second}) == 3


def test_two_evaluations_of_one_output_directory_are_serialised(tmp_path, fake_tasks):
    out = tmp_path / "eval"
    holder = RunLock(out, name=".eval.lock", what="evaluation output directory").acquire()
    try:
        with pytest.raises(RunLockedError, match="in use by pid") as err:
            run.run_eval(_cfg(tmp_path, *BOTH))
        assert "eval.out_dir" in err.value.fix
        assert fake_tasks == [] and not (out / "parts").exists()
    finally:
        holder.release()
    run.run_eval(_cfg(tmp_path, *BOTH))   # released: the next one runs
    assert len(fake_tasks) == 4


def _adapter(tmp_path, folder):
    from tests.helpers.models import tiny_model

    folder.mkdir(parents=True, exist_ok=True)
    return tiny_model(16, target_res=64).save_adapter(folder / "adapter.safetensors")


def _run_dir(runs, experiment, name="2026-01-01_00-00-00"):
    run_dir = runs / experiment / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(f"experiment: {experiment}\n")
    return run_dir


def test_ckpt_of_another_experiments_run_does_not_write_into_that_run(tmp_path):
    other = _run_dir(tmp_path / "runs", "other_experiment")
    adapter = _adapter(tmp_path, other)
    cfg = _cfg(tmp_path, f"eval.ckpt={adapter}", out=False)
    out = run.output_dir(cfg)
    assert not str(out).startswith(str(other)) and out.parent == tmp_path / "runs" / "base" / "eval_ckpt"
    own = _run_dir(tmp_path / "runs", "base")
    mine = _adapter(tmp_path, own)
    assert run.output_dir(_cfg(tmp_path, f"eval.ckpt={mine}", out=False)) == own / "eval"
    assert run.output_dir(_cfg(tmp_path, f"eval.ckpt={own}", out=False)) == own / "eval"


def test_ckpt_of_an_imported_adapter_gets_its_own_output_directory(tmp_path):
    latest = _run_dir(tmp_path / "runs", "base")
    (tmp_path / "runs" / "base" / "latest").symlink_to(latest.name)
    imported = _adapter(tmp_path, tmp_path / "adapters" / "dinov2 base_corr3d")   # no config.yaml
    out = run.output_dir(_cfg(tmp_path, f"eval.ckpt={imported.parent}", out=False))
    assert out.parent == tmp_path / "runs" / "base" / "eval_ckpt" and out.name.startswith("dinov2_base_corr3d-")
    assert not str(out).startswith(str(latest))
    # two adapter folders with the same name elsewhere do not share a directory
    twin = _adapter(tmp_path, tmp_path / "elsewhere" / "dinov2 base_corr3d")
    assert run.output_dir(_cfg(tmp_path, f"eval.ckpt={twin}", out=False)) != out


@pytest.mark.parametrize("backbone", ["x/../../../../victim", "..", "a/b", "x\x00y"])
def test_a_backbone_name_that_is_a_path_touches_nothing(tmp_path, backbone):
    victim = tmp_path / "victim" / "parts"
    victim.mkdir(parents=True)
    (victim / "keep__me.json").write_text("{}")
    (victim / "task").mkdir()
    (victim / "task" / "me.json").write_text("{}")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(Corr3dUserError):
            cfg = _cfg(tmp_path, f"output_dir={tmp_path / 'a' / 'b' / 'runs'}", "eval.tasks=[equivariance]", out=False)
            cfg.eval.backbone = backbone      # past the config validation, as a caller of run_eval could
            run.run_eval(cfg)
    finally:
        os.chdir(cwd)
    assert (victim / "keep__me.json").exists() and (victim / "task" / "me.json").exists()
    assert not (tmp_path / "a").exists()


def test_objects_that_were_not_measured_are_named_in_the_report(tmp_path, monkeypatch):
    """Every requested item is measured or named with its reason; a selection that yields nothing is an error."""
    def partly(model, cfg, items=None, skipped=None, **_):
        skipped.append(("sh3d_Scopia_x", "render failed: EmptyRenderError"))
        items.append({"id": "a", "unit": "u", "weight": 1.0, "equivariance/ape": 10.0})
        return {"equivariance/ape": 10.0}

    monkeypatch.setattr("corr3d.eval.tasks.equivariance.evaluate_equivariance", partly)
    run.run_eval(_cfg(tmp_path, "eval.tasks=[equivariance]", "eval.models=[pretrained]"))
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "equivariance: objects: sh3d_Scopia_x not evaluated — render failed: EmptyRenderError" in report

    def nothing(model, cfg, items=None, skipped=None, **_):
        skipped.append(("sh3d_Scopia_x", "no view pair within 70 deg"))
        return {"equivariance/ape": float("nan")}

    monkeypatch.setattr("corr3d.eval.tasks.equivariance.evaluate_equivariance", nothing)
    with pytest.raises(run.EvaluationFailed):
        run.run_eval(_cfg(tmp_path, "eval.tasks=[equivariance]", "eval.models=[pretrained]", "eval.resume=false"))
    part = json.loads((tmp_path / "eval" / "parts" / "equivariance__pretrained.json").read_text())
    assert part["status"] == "failed" and "no item could be measured" in part["error"]["message"]


def test_control_sets_are_measured_under_their_own_keys_and_described(tmp_path):
    from corr3d.eval.equivariance import OracleModel, evaluate_equivariance

    cfg = _cfg(tmp_path, "data.render.width=96", "data.render.height=96", "data.render.focal=105.0",
               "data.render.icosphere_subdivisions=0", "equivariance.max_rotation_deg=70",
               "equivariance.objects=[procedural:sphere_astronaut]", "equivariance.max_pairs_per_object=2",
               "equivariance.num_source_points=40", "equivariance.controls.procedural.objects=[procedural:box_chelsea]",
               "equivariance.control_sets=[procedural]")
    items: list = []
    metrics = evaluate_equivariance(OracleModel(), cfg, items=items, controls=True)
    assert metrics["equivariance/ape"] < 2 and metrics["equivariance/procedural/ape"] < 2
    assert {it["unit"] for it in items} == {"procedural_sphere_astronaut", "procedural_box_chelsea"}
    assert all(("equivariance/procedural/ape" in it) == (it["unit"] == "procedural_box_chelsea") for it in items)
    assert "equivariance/untextured/ape" not in metrics                  # not selected
    text = "\n".join(run.object_sets_section(cfg))
    assert "colour-matching control" in text and "1 held-out objects" in text
    cfg.equivariance.control_sets = ["nope"]
    with pytest.raises(Corr3dUserError, match="unknown set"):
        run.run_eval(cfg)
