"""Whole-config validation at load time (issue 21): closed sets, relations between keys, the camera rig, backbone
names, devices, malformed override maps and broken YAML files are ConfigErrors naming the key (or file:line) and
the fix, raised by ``load_config`` before any command touches the disk."""
from __future__ import annotations

import math
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest

from corr3d import config as config_module
from corr3d import config_schema as schema
from corr3d.config import (
    ConfigError,
    load_config,
    min_max_violations,
    rig_min_camera_angle_deg,
    space_flow_mappings,
)

REPO = Path(__file__).resolve().parents[1]


# ---- the light constants equal the modules that use them ----------------------------------------------------------
def test_closed_sets_equal_their_sources():
    from corr3d.eval.equivariance import PROTOCOLS
    from corr3d.eval.run import MODEL_ORDER
    from corr3d.eval.tasks import registry
    from corr3d.losses import LOSSES
    from corr3d.models.backbones import BACKBONES
    from corr3d.models.head import HEAD_INITS

    assert schema.LOSS_NAMES == tuple(LOSSES)
    assert schema.HEAD_INITS == tuple(HEAD_INITS)
    assert schema.EQUIVARIANCE_PROTOCOLS == tuple(PROTOCOLS)
    assert set(schema.EVAL_TASKS) == set(registry())
    assert set(schema.EVAL_MODELS) == set(MODEL_ORDER)
    assert set(schema.REFERENCE_MODELS) == set(MODEL_ORDER) - {"finetuned"}  # finetuned needs a trained adapter
    assert set(schema.BACKBONE_NAMES) == set(BACKBONES)


def test_precisions_are_lightnings():
    from lightning.fabric.plugins.precision.precision import (
        _PRECISION_INPUT_INT,
        _PRECISION_INPUT_STR,
        _PRECISION_INPUT_STR_ALIAS,
    )

    lightning = {*typing.get_args(_PRECISION_INPUT_STR), *typing.get_args(_PRECISION_INPUT_STR_ALIAS),
                 *(str(v) for v in typing.get_args(_PRECISION_INPUT_INT))}
    assert set(schema.LIGHTNING_PRECISIONS) == lightning
    assert schema.PRECISIONS == ("auto", *schema.LIGHTNING_PRECISIONS)
    for value in ("bf16-mixed", "16", "32-true", "auto"):
        assert load_config("base", [f"trainer.precision={value}"]).trainer.precision == value


def test_loading_a_config_imports_neither_torch_nor_timm():
    code = ("import sys; from corr3d.config import load_config; load_config('dinov2_single_object'); "
            "heavy = [m for m in ('torch', 'timm', 'lightning', 'numpy') if m in sys.modules]; "
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


# ---- the camera rig -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("level", [0, 1, 2])
def test_rig_angle_is_the_closest_pair_the_pair_selection_sees(level):
    from corr3d.data.pairs import allowed_view_pairs
    from corr3d.eval.equivariance import sample_view_pairs
    from corr3d.geometry.icosphere import icosphere_poses
    from corr3d.geometry.rotations import relative_rotation_matrix_deg

    closest = rig_min_camera_angle_deg(level)
    for up in [(0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.3, 0.8, -0.2)]:
        poses = icosphere_poses(level, 2.0, up)
        angles = relative_rotation_matrix_deg(poses)
        np.fill_diagonal(angles, np.inf)
        assert angles.min() >= closest - 1e-6        # a limit below it admits no pair, whatever the up vector
        if up == (0.0, 1.0, 0.0):
            assert angles.min() == pytest.approx(closest, abs=1e-6)   # and the default rig reaches it
            assert len(allowed_view_pairs(poses, closest - 1e-3)) == 0
            assert len(allowed_view_pairs(poses, closest + 1e-3)) > 0
            rng = np.random.default_rng(0)
            assert sample_view_pairs(poses, closest - 1e-3, 0, rng) == []
            assert sample_view_pairs(poses, closest + 1e-3, 0, rng)


@pytest.mark.parametrize("key", ["data.pairs.max_rotation_deg", "equivariance.max_rotation_deg"])
def test_rotation_limit_that_admits_no_pair(key):
    with pytest.raises(ConfigError) as info:
        load_config("base", [f"{key}=20"])
    text = str(info.value)
    assert f"'{key}'=20 admits no view pair" in text and "31.72 deg" in text and "42 views" in text
    assert f"set {key} >= 31.72" in info.value.fix
    # a finer rig makes the same limit legal; the level-1 spacing itself is legal
    assert load_config("base", [f"{key}=20", "data.render.icosphere_subdivisions=2"])
    assert load_config("base", [f"{key}=31.72"])
    with pytest.raises(ConfigError, match="admits no view pair"):
        load_config("base", [f"{key}=-5"])


def test_training_pair_limit_is_not_checked_for_mvimgnet():
    cfg = load_config("base", ["data.kind=mvimgnet", "data.pairs.max_rotation_deg=10"])
    assert cfg.data.pairs.max_rotation_deg == 10


# ---- relations between keys ---------------------------------------------------------------------------------------
def test_min_max_pairs_anywhere():
    tree = {"a": {"min_points": 5, "max_points": 3, "x_min": 0.5, "x_max": 0.1, "min_other": 1},
            "b": {"min_k": 1, "max_k": 2, "time_min": 9}}
    found = {(v.key, v.message) for v in min_max_violations(tree)}
    assert found == {("a.min_points", "'a.min_points'=5 is greater than 'a.max_points'=3"),
                     ("a.x_min", "'a.x_min'=0.5 is greater than 'a.x_max'=0.1")}
    assert all(v.fix.startswith("set a.") for v in min_max_violations(tree))


def test_every_error_is_reported_at_once_with_key_and_fix():
    with pytest.raises(ConfigError) as info:
        load_config("base", ["loss.name=smoothap", "data.render.png_compression=12", "loss.pos_radius=0.2"])
    keys = [v.key for v in info.value.violations]
    assert keys == ["loss.name", "data.render.png_compression", "loss.pos_radius"]
    assert all(v.key in v.message and v.fix for v in info.value.violations)
    assert "set loss.name=smooth_ap" in info.value.fix and "data.render.png_compression" in info.value.fix


def test_unresolvable_interpolation_names_the_key():
    with pytest.raises(ConfigError) as info:
        load_config("base", ["data.rendered_dir=${no_such_key}/rendered"])
    assert "data.rendered_dir" in str(info.value) and "interpolation" in info.value.fix


# ---- backbone names -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["model.backbone", "eval.backbone"])
@pytest.mark.parametrize("name", ["../dinov2_s14", "a/b", "x..y", "dinov2 s14", "hf-hub:timm/x"])
def test_backbone_must_be_a_plain_name(key, name):
    with pytest.raises(ConfigError) as info:
        load_config("base", [f"{key}='{name}'"])
    assert f"'{key}' must be a plain backbone name" in str(info.value) and key in info.value.fix


def test_unknown_backbone_names_the_closest():
    with pytest.raises(ConfigError) as info:
        load_config("base", ["eval.backbone=dinov2_s41"])
    assert "unknown backbone 'dinov2_s41' in 'eval.backbone'" in str(info.value) and "dinov2_s14" in str(info.value)


def test_timm_ids_and_runtime_registrations_are_backbones(monkeypatch):
    assert load_config("base", ["model.backbone=test_vit.r160_in1k"]).model.backbone == "test_vit.r160_in1k"
    from corr3d.models.backbones import BACKBONES

    monkeypatch.setitem(BACKBONES, "my_vit", BACKBONES["dinov2_s14"])
    assert load_config("base", ["model.backbone=my_vit"]).model.backbone == "my_vit"


# ---- eval.device --------------------------------------------------------------------------------------------------
def test_cuda_without_a_gpu_is_one_error_with_the_fix(monkeypatch):
    monkeypatch.setattr(config_module, "cuda_device_count", lambda: 0)
    with pytest.raises(ConfigError) as info:
        load_config("base", ["eval.device=cuda"])
    assert "'eval.device'=cuda but this machine has no usable CUDA GPU" in str(info.value)
    assert "eval.device=cpu" in info.value.fix and "\n" not in str(info.value)
    # a SLURM job runs on the cluster's GPU nodes, not on the submitting host
    assert load_config("base", ["eval.device=cuda", "launcher.name=slurm"]).eval.device == "cuda"
    monkeypatch.setattr(config_module, "cuda_device_count", lambda: 2)
    assert load_config("base", ["eval.device=cuda:1"]).eval.device == "cuda:1"
    with pytest.raises(ConfigError, match=r"has 2 CUDA device\(s\)"):
        load_config("base", ["eval.device=cuda:2"])


def test_cuda_check_asks_torch():
    import torch

    expected = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert config_module.cuda_device_count() == expected


# ---- typed maps in overrides --------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["{depth:0}", "{depth: 0}", "{ depth:0 }"])
def test_timm_kwargs_map_is_parsed(text):
    cfg = load_config("base", [f"model.timm_kwargs={text}"])
    assert dict(cfg.model.timm_kwargs) == {"depth": 0}


def test_flow_mapping_spacing():
    assert space_flow_mappings("{depth:0,drop_path_rate:0.1}") == "{depth: 0,drop_path_rate: 0.1}"
    assert space_flow_mappings("{a:{b:1}, c:[1,2]}") == "{a: {b: 1}, c: [1,2]}"
    assert space_flow_mappings("{url: http://x:80}") == "{url: http://x:80}"       # later colons are values
    assert space_flow_mappings("{url:http://x}") == "{url: http://x}"
    assert space_flow_mappings("{'a:b':1}") == "{'a:b': 1}"
    assert space_flow_mappings("{p:${oc.env:HOME}}") == "{p: ${oc.env:HOME}}"
    assert space_flow_mappings("[a:b, c]") == "[a:b, c]"                            # no mapping: unchanged
    cfg = load_config("base", ["launcher.extra={exclude:node12, mail-type:END}"])
    assert dict(cfg.launcher.extra) == {"exclude": "node12", "mail-type": "END"}


def test_unclosed_override_value_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        load_config("base", ["model.timm_kwargs={depth: 0"])
    assert "model.timm_kwargs={depth: 0" in str(info.value) and "YAML" in str(info.value) and info.value.fix


# ---- broken YAML files --------------------------------------------------------------------------------------------
@pytest.fixture
def exp_dir(tmp_path, monkeypatch):
    directory = tmp_path / "experiments"
    directory.mkdir()
    (directory / "base.yaml").write_text((REPO / "experiments" / "base.yaml").read_text())
    monkeypatch.setenv("CORR3D_EXPERIMENTS", str(directory))
    return directory


BROKEN = {
    "tab": (b"seed: 1\nmodel:\n\tbackbone: dinov2_s14\n", ":3:", "TAB"),
    "syntax": (b"seed: 1\nmodel: [a, b\n", ":3:", "did not find expected"),
    "latin1": (b"seed: 1\nexperiment: caf\xe9\n", ":2:", "not UTF-8"),
    "pytag": (b"seed: 1\nexperiment: !!python/object/apply:os.system [echo hi]\n", ":2:", "!!python/object"),
    "duplicate": (b"seed: 1\nseed: 2\n", ":2:", "duplicate key"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_yaml_names_file_and_line(exp_dir, name):
    content, line, cause = BROKEN[name]
    (exp_dir / f"{name}.yaml").write_bytes(content)
    (exp_dir / f"child_{name}.yaml").write_text(f"inherit: {name}\nseed: 3\n")
    for experiment in (name, f"child_{name}"):   # the file itself and a file that inherits it
        with pytest.raises(ConfigError) as info:
            load_config(experiment)
        assert f"{exp_dir / name}.yaml{line}" in str(info.value) and cause in str(info.value), str(info.value)
        assert info.value.fix


def test_broken_base_yaml_is_a_config_error(exp_dir):
    (exp_dir / "base.yaml").write_text((exp_dir / "base.yaml").read_text() + "\tbroken: 1\n")
    with pytest.raises(ConfigError, match=r"base\.yaml:\d+: unreadable YAML: a TAB"):
        load_config("base")


def test_unknown_key_in_base_yaml_is_a_config_error(exp_dir):
    # base.yaml is read like an experiment file: a key the schema lacks fails (it was kept untyped, with a warning)
    (exp_dir / "base.yaml").write_text((exp_dir / "base.yaml").read_text() + "extra_section:\n  key: 1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'extra_section' in .*base\.yaml"):
        load_config("base")


def test_broken_yaml_through_the_cli_is_a_config_error(exp_dir, capsys):
    from corr3d.cli import main

    (exp_dir / "bad.yaml").write_bytes(BROKEN["pytag"][0])
    assert main(["train", "bad", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"corr3d: config error: {exp_dir / 'bad.yaml'}:2:" in err and "fix:" in err
    assert "internal error" not in err and "Traceback" not in err


def test_rig_formula():
    assert rig_min_camera_angle_deg(0) == pytest.approx(63.43494882, abs=1e-6)
    assert rig_min_camera_angle_deg(3) == pytest.approx(math.degrees(math.atan(2)) / 8)


def test_config_error_pickles_with_its_fix():
    import pickle

    with pytest.raises(ConfigError) as info:
        load_config("base", ["loss.name=smoothap"])
    copy = pickle.loads(pickle.dumps(info.value))
    assert str(copy) == str(info.value) and copy.fix == info.value.fix and copy.violations == info.value.violations
