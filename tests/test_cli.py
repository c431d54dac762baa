"""The CLI error boundary (issue 14): user errors print file + fix, exit non-zero, no traceback unless --debug."""
import errno
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


# ---- --dry-run / --print-config (issue 21): validate, print the resolved config, exit 0, write nothing ------------
@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """An empty current directory: the default output_dir (runs) and data_root (data) are relative to it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("command", ["train", "eval", "render"])
@pytest.mark.parametrize("flag", ["--dry-run", "--print-config"])
@pytest.mark.parametrize("own_output_dir", [True, False])
def test_dry_run_prints_the_resolved_config_and_creates_nothing(sandbox, capsys, command, flag, own_output_dir):
    import yaml

    paths = [f"output_dir={sandbox}/runs", f"data_root={sandbox}/data"] if own_output_dir else []
    assert cli.main([command, "dinov2_single_object", *paths, "seed=7", flag]) == 0
    out = capsys.readouterr()
    cfg = yaml.safe_load(out.out)
    data_root = f"{sandbox}/data" if own_output_dir else "data"
    assert cfg["seed"] == 7 and cfg["experiment"] == "dinov2_single_object"
    assert cfg["data"]["rendered_dir"] == f"{data_root}/rendered"     # resolved interpolations
    assert list(sandbox.iterdir()) == []
    assert ("dry run" in out.err) == (flag == "--dry-run")


def test_dry_run_of_a_slurm_experiment_submits_nothing(sandbox, capsys):
    assert cli.main(["train", "dinov2_single_object", "launcher.name=slurm", "--dry-run"]) == 0
    assert "name: slurm" in capsys.readouterr().out and list(sandbox.iterdir()) == []


def test_sweep_dry_run_prints_every_cell(sandbox, capsys):
    import yaml

    assert cli.main(["sweep", "dinov2_single_object", "seed=0,1", f"output_dir={sandbox}/runs", "--dry-run",
                     "--name", "probe", "trainer.max_steps=3,4"]) == 0
    out = capsys.readouterr()
    docs = list(yaml.safe_load_all(out.out))
    assert [(d["seed"], d["trainer"]["max_steps"]) for d in docs] == [(0, 3), (0, 4), (1, 3), (1, 4)]
    assert f"{sandbox}/runs/dinov2_single_object/sweeps/probe/" in out.out
    assert "4 sweep cell configurations valid" in out.err and list(sandbox.iterdir()) == []


def test_sweep_dry_run_validates_every_cell(sandbox, capsys):
    assert cli.main(["sweep", "dinov2_single_object", "loss.name=smooth_ap,smoothap", "--dry-run"]) == 2
    assert "'loss.name' must be one of" in capsys.readouterr().err and list(sandbox.iterdir()) == []


def test_dry_run_stops_at_the_first_invalid_value(sandbox, capsys):
    assert cli.main(["train", "dinov2_single_object", "loss.pos_radius=0.5", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "'loss.pos_radius'=0.5 must be < 'loss.neg_radius'=0.1" in err and "fix:" in err
    assert list(sandbox.iterdir()) == []


def test_eval_dry_run_checks_the_checkpoint_path(sandbox, capsys):
    assert cli.main(["eval", "dinov2_single_object", "--ckpt", f"{sandbox}/missing", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"eval.ckpt={sandbox}/missing: no such file or directory" in err and "fix:" in err


def test_dry_run_imports_no_model_stack(tmp_path):
    """No weights, no torch: the dry run of train/eval/render stops after the config (a fresh interpreter)."""
    code = ("import sys; from corr3d.cli import main; "
            f"rcs = [main([c, 'dinov2_single_object', 'output_dir={tmp_path}/runs', '--dry-run']) "
            "for c in ('train', 'eval', 'render')]; "
            "assert rcs == [0, 0, 0], rcs; heavy = [m for m in ('torch', 'timm') if m in sys.modules]; "
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


# ---- options and overrides in any order (parse_intermixed_args) --------------------------------------------------
@pytest.mark.parametrize("argv,expected", [
    (["train", "--dry-run", "exp", "seed=1"], {"experiment": "exp", "overrides": ["seed=1"], "dry_run": True}),
    (["train", "exp", "seed=1", "--print-config", "trainer.max_steps=3"],
     {"overrides": ["seed=1", "trainer.max_steps=3"], "print_config": True}),
    (["eval", "exp", "--tasks", "equivariance", "eval.models=[pretrained]"],
     {"tasks": "equivariance", "overrides": ["eval.models=[pretrained]"]}),
    (["eval", "--ckpt", "run", "exp", "a=1", "--backbone", "b", "c=2"],
     {"experiment": "exp", "ckpt": "run", "backbone": "b", "overrides": ["a=1", "c=2"]}),
    (["render", "exp", "a=1", "--dry-run", "b=2"], {"experiment": "exp", "overrides": ["a=1", "b=2"]}),
    (["sweep", "exp", "seed=0,1", "--name", "n", "optim.lr=1,2", "--axis", "k=[a,b]", "x=1"],
     {"name": "n", "overrides": ["seed=0,1", "optim.lr=1,2", "x=1"], "axis": ["k=[a,b]"]}),
    (["import-checkpoint", "--backbone", "dinov2_b14", "model.ckpt", "--trust-pickle"],
     {"path": "model.ckpt", "backbone": "dinov2_b14", "trust_pickle": True}),
    (["bench", "--quick", "--only", "loss"], {"quick": True, "only": "loss"}),
])
def test_options_and_overrides_in_any_order(argv, expected):
    args = cli.parse_args(argv)
    assert args.command == argv[0] and callable(args.func)
    assert {k: getattr(args, k) for k in expected} == expected


def test_unknown_option_is_still_refused(capsys):
    with pytest.raises(SystemExit) as info:
        cli.parse_args(["train", "exp", "--bogus"])
    assert info.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_eval_override_after_an_option_is_applied(sandbox, capsys):
    import yaml

    assert cli.main(["eval", "dinov2_single_object", "--tasks", "equivariance", "eval.models=[pretrained]",
                     "--print-config", f"output_dir={sandbox}/runs"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["eval"]["tasks"] == ["equivariance"] and cfg["eval"]["models"] == ["pretrained"]


# ---- operating-system errors at the boundary: path + fix, exit 2 ------------------------------------------------
@pytest.mark.parametrize("exc,reason,fix", [
    (PermissionError(errno.EACCES, "Permission denied", "/srv/runs/exp"), "permission denied", "writable"),
    (OSError(errno.ENOSPC, "No space left on device", "/srv/runs/exp/last.ckpt"), "no space left on device",
     "free space"),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/runs"), "read-only file system", "output_dir="),
])
def test_os_errors_name_the_path_and_the_fix(monkeypatch, capsys, exc, reason, fix):
    monkeypatch.setattr(cli, "_train", _boom(exc))
    assert cli.main(["train", "dinov2_single_object"]) == 2
    err = capsys.readouterr().err
    assert f"corr3d: error: {exc.filename}: {reason}" in err
    assert "fix:" in err and fix in err.split("fix:")[1] and exc.filename in err.split("fix:")[1]
    assert "internal error" not in err and "Traceback" not in err and len(err.strip().splitlines()) == 2


def test_os_error_behind_a_wrapper_and_without_a_path(monkeypatch, capsys):
    def wrapped(args):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as err:
            raise RuntimeError("could not save the checkpoint") from err

    monkeypatch.setattr(cli, "_train", wrapped)
    assert cli.main(["train", "dinov2_single_object"]) == 2
    err = capsys.readouterr().err
    assert "no space left on device (the operating system named no path)" in err and "fix:" in err


def test_other_os_errors_stay_internal(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_train", _boom(OSError(errno.EIO, "Input/output error", "/dev/sdz")))
    assert cli.main(["train", "dinov2_single_object"]) == 1
    err = capsys.readouterr().err
    assert "internal error: OSError" in err
    os.unlink(err.split("saved to ")[1].split(")")[0])
