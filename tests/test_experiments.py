"""Every experiment file loads and validates, experiments/base.yaml is the schema's generated text, and every
experiment resolves to the configuration it had before base.yaml was generated (tests/fixtures/config/)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from corr3d import config_schema
from corr3d.config import available_experiments, load_config
from corr3d.config_schema import BASE_YAML, Config, base_yaml_text, range_violations

# OmegaConf.to_container(load_config(name), resolve=True) of every experiment, taken before base.yaml was generated
# from the schema: "base" whole, each experiment as the [key path, value] of its leaves that differ from base
SNAPSHOT = Path(__file__).parent / "fixtures" / "config" / "resolved_experiments.json"


def _typed(value) -> str:
    """JSON keeps 1 and 1.0 apart, so an int default that became a float (or back) differs."""
    return json.dumps(value, sort_keys=True)


def test_base_yaml_is_generated_from_the_schema():
    assert BASE_YAML.read_text() == base_yaml_text(), (
        "experiments/base.yaml differs from corr3d/config_schema.py: edit the schema (defaults, ranges and comments "
        "live there) and regenerate with `python -m corr3d.config_schema --write`")


def test_generated_yaml_holds_the_schema_defaults_with_their_types():
    # plain YAML 1.1 (PyYAML), not OmegaConf's lenient loader: 1.0e-5 must stay a float, "${data_root}/x" a string
    schema = OmegaConf.to_container(OmegaConf.structured(Config), resolve=False)
    assert _typed(yaml.safe_load(base_yaml_text())) == _typed(schema)


def test_generated_yaml_keeps_comments_and_interpolations():
    text = base_yaml_text()
    assert "  rendered_dir: ${data_root}/rendered\n" in text
    assert "  target_res: 640           # long side of the image (px)" in text
    assert "\n    # point lights [x, y, z, energy]: the authors' BlenderProc lights" in text   # a comment above a key
    sections = [line.split(":")[0] for line in text.splitlines() if re.match(r"\w+:\s*(#|$)", line)]
    assert sections == ["model", "loss", "optim", "data", "trainer", "equivariance", "eval", "sweep", "launcher"]


def test_write_base_writes_the_generated_text(tmp_path, monkeypatch, capsys):
    target = tmp_path / "base.yaml"
    monkeypatch.setattr(config_schema, "BASE_YAML", target)
    assert config_schema.main(["--write"]) == 0 and target.read_text() == base_yaml_text()
    assert config_schema.main([]) == 0 and capsys.readouterr().out.endswith(base_yaml_text())


def test_yaml_float_form_is_read_back_as_a_float():
    for value in (1.0e-5, 1.0e-4, 2.5e20, 0.005, 560.0):
        text = config_schema._yaml_float(value)
        assert isinstance(yaml.safe_load(text), float) and yaml.safe_load(text) == value, text


def _unflatten(base: dict, delta: list) -> dict:
    """``base`` with each ``[key path, value]`` of ``delta`` set (paths are lists: sweep.axes keys hold dots)."""
    tree = json.loads(json.dumps(base))
    for path, value in delta:
        node = tree
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):   # a key the experiment adds under a {} of base
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return tree


def _snapshot() -> dict:
    return json.loads(SNAPSHOT.read_text())


@pytest.mark.parametrize("name", ["base", *available_experiments()])
def test_experiment_resolves_as_before(name):
    snapshot = _snapshot()
    assert name == "base" or name in snapshot["experiments"], f"{name} is new: add it to {SNAPSHOT}"
    expected = snapshot["base"] if name == "base" else _unflatten(snapshot["base"], snapshot["experiments"][name])
    assert _typed(OmegaConf.to_container(load_config(name), resolve=True)) == _typed(expected)


def test_schema_defaults_are_in_range():
    assert range_violations(OmegaConf.structured(Config)) == []


@pytest.mark.parametrize("name", available_experiments())
def test_experiment_loads_and_validates(name):
    cfg = load_config(name)
    assert cfg.experiment == name
    assert range_violations(cfg) == []
    OmegaConf.to_yaml(cfg, resolve=True)  # every interpolation resolves


def test_the_default_experiment_exists():
    assert "dinov2_single_object" in available_experiments()
