"""Every experiment file loads and validates, and experiments/base.yaml and the typed schema cannot drift apart."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from corr3d.config import REPO_ROOT, available_experiments, load_config, schema_drift
from corr3d.config_schema import Config, range_violations

BASE_YAML = REPO_ROOT / "experiments" / "base.yaml"


def _trees() -> tuple[dict, dict]:
    schema = OmegaConf.to_container(OmegaConf.structured(Config), resolve=False)
    return schema, OmegaConf.to_container(OmegaConf.load(BASE_YAML), resolve=False)


def test_base_yaml_has_every_schema_key():
    drift = schema_drift(*_trees())
    assert not drift["only_in_schema"], (
        "keys of corr3d/config_schema.py missing from experiments/base.yaml (add them there, with a comment): "
        + ", ".join(drift["only_in_schema"]))


def test_schema_has_every_base_yaml_key():
    drift = schema_drift(*_trees())
    assert not drift["only_in_base"], (
        "keys of experiments/base.yaml missing from corr3d/config_schema.py (add a typed field there): "
        + ", ".join(drift["only_in_base"]))


def test_base_yaml_and_schema_share_defaults_and_types():
    drift = schema_drift(*_trees())
    assert not drift["different"], "default or type differs between schema and base.yaml:\n" + "\n".join(
        drift["different"])


def test_schema_drift_names_each_key():
    schema = {"a": 1, "b": {"c": 2.0, "d": [1, 2]}, "e": {}}
    base = {"a": 1, "b": {"c": 2, "d": [1, 2], "x": None}, "e": {}, "f": True}
    drift = schema_drift(schema, base)
    assert drift["only_in_base"] == ["b.x", "f"] and drift["only_in_schema"] == []
    assert drift["different"] == ["'b.c': schema 2.0 (float), base.yaml 2 (int)"]
    assert schema_drift(base, schema)["only_in_schema"] == ["b.x", "f"]


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
