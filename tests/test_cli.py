"""The CLI error boundary (issue 14): user errors print file + fix, exit non-zero, no traceback unless --debug."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from corr3d import cli
from corr3d.errors import DataFileError

REPO = Path(__file__).resolve().parents[1]


def _run(*args, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "corr3d.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_user_error_is_one_message_with_a_fix_and_no_traceback():
    result = _run("train", "no_such_experiment")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "unknown experiment 'no_such_experiment'" in result.stderr
    assert "fix:" in result.stderr


def test_debug_shows_the_traceback():
    result = _run("train", "no_such_experiment", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_escaping_experiment_name_is_refused_before_anything_is_written(tmp_path):
    result = _run("train", "dinov2_single_object", f"output_dir={tmp_path}/runs", "experiment=../../x",
                  "trainer.accelerator=cpu")
    assert result.returncode == 2 and "experiment name '../../x'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()
    assert not list(tmp_path.glob("**/config.yaml"))


def _boom(exc):
    def fn(args):
        raise exc
    return fn


def test_unexpected_errors_are_one_line_and_exit_1(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_train", _boom(ZeroDivisionError("division by zero")))
    assert cli.main(["train", "dinov2_single_object"]) == 1
    err = capsys.readouterr().err
    assert "internal error: ZeroDivisionError" in err and "--debug" in err and "Traceback" not in err
    saved = err.split("saved to ")[1].split(")")[0]
    assert "ZeroDivisionError" in Path(saved).read_text()
    os.unlink(saved)
    with pytest.raises(ZeroDivisionError):
        cli.main(["--debug", "train", "dinov2_single_object"])


def test_data_file_errors_name_the_file_and_the_fix(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_eval", _boom(DataFileError("truncated", path="/data/x.pkl", fix="download it again")))
    assert cli.main(["eval", "dinov2_single_object"]) == 2
    err = capsys.readouterr().err
    assert "corr3d: error: /data/x.pkl: truncated" in err and "fix: download it again" in err


def test_keyboard_interrupt_exits_130(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_render", _boom(KeyboardInterrupt()))
    assert cli.main(["render", "dinov2_single_object"]) == 130


@pytest.fixture
def eval_args(tmp_path):
    return ["eval", "dinov2_single_object", f"output_dir={tmp_path}/runs", f"data_root={tmp_path}/data",
            "eval.tasks=[equivariance]", "eval.real_data=false", "eval.offline.enabled=false",
            "trainer.accelerator=cpu", "eval.device=cpu"]


@pytest.mark.parametrize("override,expected", [
    ("model.backbone=resnet50", "'resnet50' is not a ViT"),
    ("model.backbone=not_a_model", "unknown backbone 'not_a_model'"),
])
def test_backbone_probes(eval_args, capsys, override, expected):
    assert cli.main([*eval_args, override]) == 2
    err = capsys.readouterr().err
    assert expected in err and "fix:" in err


@pytest.mark.parametrize("name", ["weights.safetensors", "weights.pth"])
def test_corrupt_weights_files_are_named(eval_args, tmp_path, capsys, name):
    bad = tmp_path / name
    bad.write_bytes(b"\x80\x02corrupt" + bytes(range(256)))
    assert cli.main([*eval_args, "model.backbone=test_vit.r160_in1k", f"model.weights={bad}"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: unreadable" in err and "fix:" in err


def test_corrupt_adapter_is_named(eval_args, tmp_path, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter.safetensors").write_bytes(os.urandom(64))
    (adapter / "adapter.json").write_text("{not json")
    assert cli.main([*eval_args, f"eval.ckpt={adapter}"]) == 2
    err = capsys.readouterr().err
    assert "adapter.json: unreadable adapter metadata" in err


HOLD_RUN = ("import sys, time; from corr3d.config import load_config; from corr3d.utils.run_dir import create_run_dir; "
            "run = create_run_dir(load_config('dinov2_single_object', sys.argv[1:]), lock=True); "
            "print(run, flush=True); time.sleep(120)")


def test_second_train_of_a_running_experiment_exits_3_with_the_holder(tmp_path):
    overrides = [f"output_dir={tmp_path}/runs", f"data_root={tmp_path}/data", "trainer.accelerator=cpu"]
    holder = subprocess.Popen([sys.executable, "-c", HOLD_RUN, *overrides], cwd=REPO, stdout=subprocess.PIPE,
                              text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        run = Path(holder.stdout.readline().strip())
        assert run.is_dir()
        result = _run("train", "dinov2_single_object", *overrides)
        assert result.returncode == 3, result.stderr[-2000:]
        assert f"is in use by pid {holder.pid}" in result.stderr and str(run) in result.stderr
        assert "Traceback" not in result.stderr and "fix:" in result.stderr
        assert sorted(p.name for p in run.iterdir()) == [".lock", "config.yaml", "env.json"]  # nothing added
    finally:
        holder.kill()
        holder.wait()


def test_failed_start_does_not_move_latest(tmp_path):
    """A start that fails (here: a non-ViT backbone) leaves ``latest`` where it was (absent here)."""
    result = _run("train", "dinov2_single_object", f"output_dir={tmp_path}/runs", f"data_root={tmp_path}/data",
                  "trainer.accelerator=cpu", "model.backbone=resnet18", "equivariance.objects=[]",
                  "data.val_objects=[]")
    assert result.returncode == 2 and "is not a ViT" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "runs" / "dinov2_single_object" / "latest").exists()
