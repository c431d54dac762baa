"""Nothing from a config becomes a line of the SLURM batch script (issue 21), without a cluster.

A newline in a launcher string (``partition: "gpu\\ntouch pwned #"``, e.g. in an inherited YAML) would end its
``#SBATCH`` line: the rest would run as a command and sbatch would stop reading the later directives (--time,
--signal). ``validate_launcher`` refuses such values with a ConfigError naming the key, before any submit_* writes
anything; legal values are quoted in the script (executed here with a fake ``srun``).
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from corr3d.config import ConfigError, load_config
from corr3d.launch import slurm

NEWLINE = "gpu\ntouch {marker} #"


def slurm_cfg(*overrides: str, experiment: str = "dinov2_single_object"):
    return load_config(experiment, ["launcher.name=slurm", *overrides])


def inherited_cfg(tmp_path: Path, launcher_yaml: str, *overrides: str):
    """An experiment file that inherits a shipped one and sets launcher keys (the way a user's file would)."""
    path = tmp_path / "mine.yaml"
    path.write_text(f"inherit: dinov2_single_object\noutput_dir: {tmp_path / 'runs'}\n"
                    f"data_root: {tmp_path / 'data'}\nlauncher:\n  name: slurm\n{launcher_yaml}")
    return load_config(str(path), list(overrides))


BAD_VALUES = {
    "partition": ["gpu\ntouch M #", "gpu;touch M", "gpu debug", "$(touch M)", "gpu,,debug"],
    "account": ["vision\rx", "a,b", "a'b", "`touch M`"],
    "qos": ["high\n", "a b", "high;x"],
    "constraint": ["a100\ntouch M", "a100 && x", "a100;x", "$(x)"],
    "gres": ["gpu:8\ntouch M", "gpu:a100:8:2", "gpu 8", ":8", "gpu:a100:8,"],
    "job_name": ["train\ntouch M #", "x\x00y", "a\x1bb"],
}


@pytest.mark.parametrize("field,value", [(f, v) for f, vs in BAD_VALUES.items() for v in vs])
def test_bad_launcher_strings_are_config_errors_naming_the_key(field, value):
    cfg = slurm_cfg()
    cfg.launcher[field] = value
    with pytest.raises(ConfigError, match=re.escape(f"'launcher.{field}'")):
        slurm.validate_launcher(cfg.launcher)


@pytest.mark.parametrize("field,value", [
    ("partition", "gpu"), ("partition", "gpu,debug,a100-80g"), ("partition", "long.q"),
    ("account", "vision_lab-2"), ("qos", "high"),
    ("constraint", "a100"), ("constraint", "a100&ib"), ("constraint", "[rack1|rack2]"), ("constraint", "v100*2"),
    ("constraint", "(a100|h100)&!slow"), ("constraint", "gpu:2"),
    ("gres", "gpu"), ("gres", "gpu:8"), ("gres", "gpu:a100:8"), ("gres", "gpu:a100:8,nvme:1"),
    ("job_name", "my run; $(not a command) `x` > y"),
])
def test_legal_slurm_values_pass(field, value):
    cfg = slurm_cfg()
    cfg.launcher[field] = value
    slurm.validate_launcher(cfg.launcher)


def test_setup_lines_and_extra_options_are_checked():
    cfg = slurm_cfg("launcher.setup=[module load cuda, source .venv/bin/activate]",
                    "launcher.extra={exclude: node12, mail-type: END, comment: 'nightly run; ok', requeue: true}")
    slurm.validate_launcher(cfg.launcher)
    cases = [
        ("launcher.setup[1]", {"setup": ["module load cuda", "echo a\necho b"]}),
        ("launcher.extra.comment", {"extra": {"comment": "x\ntouch M #"}}),
        ("launcher.extra.partition", {"extra": {"partition": "a b"}}),
        ("launcher.extra.exclude=x\ntouch M", {"extra": {"exclude=x\ntouch M": "node1"}}),
        ("launcher.extra.--time", {"extra": {"--time": "10"}}),
        ("launcher.extra.nested", {"extra": {"nested": {"a": 1}}}),
    ]
    for key, change in cases:
        bad = slurm_cfg()
        for section, value in change.items():
            bad.launcher[section] = value
        with pytest.raises(ConfigError, match=re.escape(f"'{key}'")):
            slurm.validate_launcher(bad.launcher)


def test_newline_in_an_inherited_yaml_stops_every_submit_before_anything_is_written(tmp_path, monkeypatch):
    from corr3d.launch.sweep import SweepPlan, submit_sweep

    marker = tmp_path / "pwned"
    monkeypatch.chdir(tmp_path)
    cfg = inherited_cfg(tmp_path, f'  partition: "gpu\\ntouch {marker} #"\n')
    assert cfg.launcher.partition == f"gpu\ntouch {marker} #"
    for submit in (slurm.submit_train, slurm.submit_eval, slurm.submit_render):
        with pytest.raises(ConfigError, match="'launcher.partition'"):
            submit(cfg)
    with pytest.raises(ConfigError, match="'launcher.partition'"):
        submit_sweep(SweepPlan(str(tmp_path / "mine.yaml"), ["seed=1,2"], name="s"))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()
    assert not marker.exists()


def test_the_cli_prints_one_line_not_an_internal_error(tmp_path, monkeypatch, capsys):
    from corr3d.cli import main

    monkeypatch.chdir(tmp_path)
    inherited_cfg(tmp_path, '  account: "lab\\nsqueue #"\n')
    assert main(["train", str(tmp_path / "mine.yaml")]) == 2
    err = capsys.readouterr().err
    assert "config error" in err and "'launcher.account'" in err and "internal error" not in err
    assert not (tmp_path / "runs").exists()


def test_job_name_and_paths_with_control_characters_are_refused(tmp_path):
    cfg = slurm_cfg(f"output_dir={tmp_path}/runs")
    cfg.experiment = "exp\ntouch x"
    with pytest.raises(ConfigError, match="'experiment'"):
        slurm.job_name(cfg, "train")
    with pytest.raises(ConfigError, match="control character"):
        slurm.script_path(tmp_path / "a\nb", "output_dir")
    with pytest.raises(ConfigError, match="control character"):
        slurm.make_executor(tmp_path / "logs\n#x", {"name": "x"})
    bad = slurm_cfg()
    bad.output_dir = f"{tmp_path}/runs\ntouch x"  # (an override would fold the newline into a space)
    with pytest.raises(ConfigError, match="output_dir"):
        slurm.submit_train(bad)
    assert not (tmp_path / "runs").exists()


def _script(cfg, run: Path) -> str:
    cfg = slurm.align_trainer_with_launcher(cfg)
    return slurm.sbatch_script(slurm.train_executor(cfg, run))


def test_script_quotes_values_and_keeps_every_directive(tmp_path):
    marker = tmp_path / "pwned"
    run = tmp_path / "run dir; $(touch x)"
    cfg = slurm_cfg("launcher.partition=gpu,debug", "launcher.constraint=a100&ib", "launcher.gres=gpu:a100:2",
                    "launcher.gpus_per_node=2", "launcher.time_min=90")
    cfg.launcher.job_name = f"nightly; touch {marker} $(touch {marker}) `touch {marker}` > {marker}"
    cfg.launcher.extra = {"comment": f"it's a test; touch {marker}", "mail-type": "END"}
    text = _script(cfg, run)
    lines = text.splitlines()
    directives = [i for i, line in enumerate(lines) if line.startswith("#SBATCH")]
    # all directives form one block right after the header: nothing in between sbatch would stop at
    assert directives == list(range(directives[0], directives[0] + len(directives)))
    assert all(not line or line.startswith("#") for line in lines[:directives[-1] + 1])
    flags = {line.split("=", 1)[0] for line in lines if line.startswith("#SBATCH")}
    assert {"#SBATCH --time", "#SBATCH --signal", "#SBATCH --partition", "#SBATCH --constraint",
            "#SBATCH --job-name", "#SBATCH --comment", "#SBATCH --output", "#SBATCH --gres"} <= flags
    assert "#SBATCH --partition=gpu,debug" in lines and "#SBATCH --constraint='a100&ib'" in lines
    assert "#SBATCH --time=90" in lines and "#SBATCH --gres=gpu:a100:2" in lines

    # run the script as bash would, with a fake srun: no value becomes a command
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$SRUN_ARGS\"\n")
    (bin_dir / "srun").chmod(0o755)
    script = tmp_path / "job.sh"
    script.write_text(text)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SRUN_ARGS": str(tmp_path / "srun_args")}
    result = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert not marker.exists() and not (tmp_path / "x").exists()
    srun_args = (tmp_path / "srun_args").read_text().splitlines()
    assert f"{run}/slurm/%j/%j_%t_log.out" in srun_args  # the path with spaces and $() arrived as one word
    assert srun_args[-1] == f"{run}/slurm/%j"


def test_gres_lists_scale_the_gpu_item():
    assert slurm._gres_for("gpu:a100:8,nvme:1", 2) == "gpu:a100:2,nvme:1"
    assert slurm._gres_for("nvme:1", 2) == "nvme:2"
    assert slurm._gres_for("gpu", 4) == "gpu:4"
