"""The Makefile passes user input to commands without letting the shell (or make) interpret it (issue 21).

Make runs against a fake virtual environment (``VENV=<tmp>/venv``): its ``bin/corr3d`` and ``bin/python`` log their
arguments and exit with ``$FAKE_RC``, and its stamp file is newer than pyproject.toml, so nothing is installed. Only
``python -m corr3d.launch.make_args`` (the splitter of ARGS/PYTEST_ARGS) runs on the real interpreter. Hostile values
try ``;``, ``|``, ``$()``, backticks, redirections, newlines and make's own ``$(shell ...)``: no marker file may
appear, and corr3d's exit status must fail make.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.tiny import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")

FAKE = """#!{python}
import json, os, sys
if sys.argv[1:3] == ["-m", "corr3d.launch.make_args"]:
    os.execv({python!r}, [{python!r}, *sys.argv[1:]])
with open(os.environ["FAKE_LOG"], "a") as fh:
    fh.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
sys.exit(int(os.environ.get("FAKE_RC", "0")))
"""


MAKE_VARS = ("VENV", "PYTHON", "EXP", "ARGS", "TASKS", "CKPT", "BACKBONE", "LAUNCHER", "NODES", "GPUS", "PARTITION",
             "TIME", "ACCOUNT", "NAME", "PYTEST_ARGS")


def clean_env() -> dict[str, str]:
    """This process's environment without the Makefile's variables or a parent make's flags (``make test``)."""
    drop = {*MAKE_VARS, "MAKEFLAGS", "MAKEOVERRIDES", "MFLAGS", "MAKELEVEL"}
    return {k: v for k, v in os.environ.items() if k not in drop}


class FakeMake:
    """``make -C <repo> VENV=<fake venv> ...`` with the fake venv's calls logged."""

    def __init__(self, root: Path, corr3d: str | None = None):
        self.root = root
        self.venv = root / "venv"
        (self.venv / "bin").mkdir(parents=True)
        self.log = root / "calls.jsonl"
        for name in ("python", "corr3d"):
            path = self.venv / "bin" / name
            path.write_text(FAKE.format(python=sys.executable))
            path.chmod(0o755)
        if corr3d is not None:  # the real command behind the fake venv
            (self.venv / "bin" / "corr3d").unlink()
            (self.venv / "bin" / "corr3d").symlink_to(corr3d)
        stamp = self.venv / ".corr3d-installed"
        stamp.touch()
        newer = max(time.time(), (REPO / "pyproject.toml").stat().st_mtime) + 60
        os.utime(stamp, (newer, newer))

    def __call__(self, *args: str, rc: int = 0, dry: bool = False, env: dict | None = None):
        full_env = {**clean_env(), "FAKE_LOG": str(self.log), "FAKE_RC": str(rc), **(env or {})}
        cmd = ["make", "--no-print-directory", "-C", str(REPO), *(["-n"] if dry else []),
               f"VENV={self.venv}", *args]
        return subprocess.run(cmd, cwd=self.root, env=full_env, capture_output=True, text=True, timeout=120)

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def fake_make(tmp_path):
    return FakeMake(tmp_path)


def hostile(marker: Path) -> list[str]:
    """Values that would create ``marker`` if any shell (or make) interpreted them."""
    m = shlex.quote(str(marker))
    return [f"x; touch {m} #", f"x && touch {m}", f"x | touch {m}", f"$(touch {m})", f"`touch {m}`",
            f"x > {m}", f"x\ntouch {m}", f"$(shell touch {m})", f"${{shell touch {m}}}"]


def test_hostile_experiment_is_refused_before_any_command(fake_make, tmp_path):
    marker = tmp_path / "pwned"
    for value in hostile(marker):
        for target in ("train", "eval", "sweep", "render"):
            result = fake_make(target, f"EXP={value}")
            assert result.returncode != 0, (value, result.stdout)
            assert "EXP=" in result.stderr and "may only hold" in result.stderr, result.stderr
            assert not marker.exists(), value
            assert fake_make.calls() == [], value  # corr3d never ran


@pytest.mark.parametrize("var", ["TASKS", "CKPT", "BACKBONE", "NAME", "LAUNCHER", "NODES", "GPUS", "PARTITION",
                                 "TIME", "ACCOUNT"])
def test_every_single_word_variable_is_validated(fake_make, tmp_path, var):
    marker = tmp_path / "pwned"
    for value in hostile(marker)[:1] + hostile(marker)[3:5]:
        for target in ("eval", "sweep"):
            result = fake_make(target, f"{var}={value}")
            assert result.returncode != 0 and f"{var}=" in result.stderr, result.stderr
    # a dry run shows the same error; nothing ran
    assert fake_make(f"{var}={hostile(marker)[0]}", "train", dry=True).returncode != 0
    assert not marker.exists() and fake_make.calls() == []


def test_venv_and_python_are_validated(tmp_path):
    marker = tmp_path / "pwned"
    for var in ("VENV", "PYTHON"):
        for value in hostile(marker)[:5]:
            result = subprocess.run(["make", "-C", str(REPO), "-n", "setup", f"{var}={value}"], capture_output=True,
                                    text=True, timeout=60, env=clean_env())
            assert result.returncode != 0 and f"{var}=" in result.stderr, result.stderr
    assert not marker.exists()
    refused = subprocess.run(["make", "-C", str(REPO), "-n", "clean-venv", "VENV=/"], capture_output=True, text=True,
                             timeout=60, env=clean_env())
    assert refused.returncode != 0 and "refusing" in refused.stderr


def test_environment_values_are_checked_only_for_the_run_targets(fake_make):
    # GNU time reads TIME as its format: a stray TIME in the environment does not break `make test-fast` ...
    assert fake_make("test-fast", env={"TIME": "%E real"}).returncode == 0
    # ... but a run target that would pass it on says where it came from
    result = fake_make("train", env={"TIME": "%E real"})
    assert result.returncode != 0 and "TIME='%E real' (from environment)" in result.stderr


def test_args_are_words_for_corr3d_never_shell_code(fake_make, tmp_path):
    marker = tmp_path / "pwned"
    m = shlex.quote(str(marker))
    args = (f"trainer.max_steps=1 'output_dir=/tmp/a dir' \"launcher.setup=[module load cuda]\" ; touch {m} | "
            f"cat $(touch {m}) `touch {m}` > {m} $(shell touch {m}) && touch {m}")
    result = fake_make("train", "EXP=dinov2_single_object", env={"ARGS": args})
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    assert fake_make.calls() == [["corr3d", "train", "dinov2_single_object", *shlex.split(args)]]
    assert fake_make.calls()[0][3:6] == ["trainer.max_steps=1", "output_dir=/tmp/a dir",
                                         "launcher.setup=[module load cuda]"]
    # the ARGS text is not part of any command line make hands to the shell
    dry = fake_make("train", dry=True, env={"ARGS": args})
    assert "touch" not in dry.stdout and "module load" not in dry.stdout, dry.stdout


def test_args_on_the_make_command_line_too(fake_make, tmp_path):
    marker = tmp_path / "pwned"
    result = fake_make("bench", f"ARGS=--quick; touch {marker}")
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    assert fake_make.calls() == [["corr3d", "bench", "--quick;", "touch", str(marker)]]


def test_pytest_args_are_split_without_a_shell(fake_make, tmp_path):
    marker = tmp_path / "pwned"
    args = f"-x -q -k 'not slow and sweep' tests/x.py; touch {marker} $(touch {marker})"
    result = fake_make("test-fast", env={"PYTEST_ARGS": args})
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    assert fake_make.calls() == [["python", "-m", "pytest", "-m", "not slow and not slurm", *shlex.split(args)]]


def test_unbalanced_quotes_in_args_fail_with_a_message(fake_make):
    result = fake_make("train", env={"ARGS": "seed=1 'oops"})
    assert result.returncode != 0
    assert "ARGS=" in result.stderr and "quot" in result.stderr
    assert fake_make.calls() == []


def test_corr3d_exit_status_fails_make(fake_make):
    result = fake_make("train", rc=3)
    assert result.returncode != 0 and "Error 3" in result.stderr
    assert fake_make.calls() == [["corr3d", "train", "dinov2_single_object"]]
    assert fake_make("sweep", "NAME=n", rc=1).returncode != 0
    assert fake_make("test-fast", rc=1).returncode != 0


def test_real_corr3d_failure_is_make_failure(tmp_path):
    """``make train EXP=nonexistent`` exits non-zero with corr3d's one-line error (the real command)."""
    real = Path(sys.executable).parent / "corr3d"
    if not real.exists():
        pytest.skip("corr3d is not installed next to this interpreter")
    make = FakeMake(tmp_path, corr3d=str(real))
    result = make("train", "EXP=nonexistent")
    assert result.returncode != 0
    assert "unknown experiment 'nonexistent'" in result.stderr, result.stderr


def test_eval_and_sweep_argument_order_parses(fake_make):
    """Options come before the experiment and ARGS last; the real parser reads them as intended."""
    from corr3d.cli import build_parser

    env = {"ARGS": "eval.device=cpu seed=1"}
    assert fake_make("eval", "EXP=dinov2_single_object", "TASKS=pose,tracking", "CKPT=runs/x/latest",
                     "BACKBONE=hf-hub:timm/vit_small.dino", "LAUNCHER=slurm", "NODES=2", env=env).returncode == 0
    assert fake_make("sweep", "EXP=ablation_fig12_iterations", "NAME=s1", "GPUS=8", "PARTITION=gpu,debug",
                     "TIME=60", "ACCOUNT=vision", env={"ARGS": "seed=0,1 --axis k=[a,b]"}).returncode == 0
    (_, *eval_argv), (_, *sweep_argv) = fake_make.calls()
    args = build_parser().parse_args(eval_argv)
    assert (args.command, args.experiment, args.tasks, args.ckpt, args.backbone) == (
        "eval", "dinov2_single_object", "pose,tracking", "runs/x/latest", "hf-hub:timm/vit_small.dino")
    assert args.overrides == ["launcher.name=slurm", "launcher.nodes=2", "trainer.num_nodes=2", "eval.device=cpu",
                              "seed=1"]
    args = build_parser().parse_args(sweep_argv)
    assert (args.experiment, args.name, args.axis) == ("ablation_fig12_iterations", "s1", ["k=[a,b]"])
    assert args.overrides == ["launcher.gpus_per_node=8", "trainer.devices=8", "launcher.partition=gpu,debug",
                              "launcher.time_min=60", "launcher.account=vision", "seed=0,1"]


def test_runtime_packages_include_the_real_furniture_models():
    text = (REPO / "Makefile").read_text()
    runtime = re.search(r"^APT_RUNTIME := (.*)$", text, re.M).group(1).split()
    assert "sweethome3d-furniture" in runtime


PIP_FAKE = """#!{python}
import json, os, sys
with open(os.environ["FAKE_LOG"], "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1:2] == ["-c"]:  # the platform test: run it for real
    os.execv({python!r}, [{python!r}, *sys.argv[1:]])
sys.exit(0 if sys.argv[1:5] != ["-m", "pip", "show", "-q"] else int(os.environ["FULL_OPEN3D"]))
"""


@pytest.mark.parametrize("full_open3d", [True, False])
def test_install_removes_a_full_open3d_before_installing_open3d_cpu(tmp_path, full_open3d):
    """An older venv holds the full open3d; pyproject now wants open3d-cpu (the same files): the install step removes
    both first and reinstalls, and touches nothing when the full open3d is absent."""
    runtime = re.search(r"^APT_RUNTIME := (.*)$", (REPO / "Makefile").read_text(), re.M).group(1).split()
    if subprocess.run(["dpkg", "-s", *runtime], capture_output=True).returncode != 0:
        pytest.skip("the runtime Debian packages are missing: the install step would apt-get them")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(PIP_FAKE.format(python=sys.executable))
    python.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    env = {**clean_env(), "FAKE_LOG": str(log), "FULL_OPEN3D": "0" if full_open3d else "1"}
    result = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), f"VENV={venv}", "setup"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    pips = [call[2:] for call in map(json.loads, log.read_text().splitlines()) if call[:2] == ["-m", "pip"]]
    uninstall = ["uninstall", "-q", "-y", "open3d", "open3d-cpu"]
    on_linux_x86 = sys.platform == "linux" and platform.machine() == "x86_64"
    expected = [["install", "-q", "--upgrade", "pip"], *([["show", "-q", "open3d"]] if on_linux_x86 else []),
                *([uninstall] if full_open3d and on_linux_x86 else []), ["install", "-q", "-e", ".[all,test]"]]
    assert pips == expected
    assert (venv / ".corr3d-installed").exists()
