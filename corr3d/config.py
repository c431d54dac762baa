"""Experiment configuration: a base YAML, small experiment files that override it, and CLI overrides.

Every key an experiment or the command line sets must exist in ``experiments/base.yaml``: a typo fails loudly with
its dotted path and the closest valid key instead of being silently ignored.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A configuration file or override that does not fit the base schema."""


def experiments_dir() -> Path:
    """Where experiment YAMLs live: ``$CORR3D_EXPERIMENTS`` or the repository's ``experiments/``."""
    return Path(os.environ.get("CORR3D_EXPERIMENTS", REPO_ROOT / "experiments"))


def available_experiments() -> list[str]:
    return sorted(p.stem for p in experiments_dir().glob("*.yaml") if p.stem != "base")


def _experiment_path(name: str | os.PathLike) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = experiments_dir() / f"{name}.yaml"
    if candidate.exists():
        return candidate
    known = available_experiments()
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"unknown experiment '{name}'{hint}; available: {', '.join(known) or 'none'}")


def _dotted_keys(tree: Any, prefix: str = "") -> list[str]:
    keys: list[str] = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            keys.append(path)
            keys.extend(_dotted_keys(value, path))
    return keys


def _type_name(value: Any) -> str:
    for kind, name in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str"), (list, "list"), (dict, "mapping")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


_COMPATIBLE = {("float", "int")}  # an int where a float is expected is fine (lr: 1 means 1.0)


def _closest(path: str, schema: dict, prefix: str) -> str | None:
    """Closest valid dotted key: compare whole paths, then the leaf name among siblings."""
    full = [f"{prefix}.{k}" if prefix else k for k in _dotted_keys(schema)]
    close = difflib.get_close_matches(path, full, n=1, cutoff=0.6)
    if close:
        return close[0]
    leaves = {k.rsplit(".", 1)[-1]: k for k in full}
    match = difflib.get_close_matches(path.rsplit(".", 1)[-1], list(leaves), n=1, cutoff=0.5)
    return leaves[match[0]] if match else None


def _check_against(schema: dict, update: dict, source: str, prefix: str = "") -> None:
    """Raise ConfigError for keys of ``update`` missing from ``schema`` or whose type differs.

    A ``null`` or empty mapping in the base accepts anything (free-form values such as extra kwargs).
    """
    for key, value in update.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in schema:
            close = _closest(path, schema, prefix)
            hint = f"; did you mean '{close}'?" if close else ""
            raise ConfigError(f"unknown config key '{path}' in {source}{hint}")
        base = schema[key]
        if base is None or value is None or (isinstance(value, str) and value.startswith("${")):
            continue
        expected, got = _type_name(base), _type_name(value)
        if expected != got and (expected, got) not in _COMPATIBLE:
            raise ConfigError(
                f"config key '{path}' in {source} must be {expected} (like the base value {base!r}), "
                f"got {got} {value!r}"
            )
        if expected == "mapping" and base:
            _check_against(base, value, source, path)


def _load_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[str, DictConfig]]:
    """An experiment may name a parent with ``inherit: <experiment>``; return [(source, cfg)] parents first."""
    if path in seen:
        raise ConfigError(f"experiment inheritance cycle: {' -> '.join(p.stem for p in (*seen, path))}")
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path} must hold a mapping at top level")
    parent = cfg.pop("inherit", None)
    chain = _load_chain(_experiment_path(parent), (*seen, path)) if parent else []
    return [*chain, (str(path), cfg)]


def parse_overrides(overrides: Iterable[str]) -> DictConfig:
    items = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. trainer.max_steps=10)")
        items.append(item)
    return OmegaConf.from_dotlist(items)


def load_config(experiment: str | os.PathLike = "base", overrides: Iterable[str] = ()) -> DictConfig:
    """Compose ``base.yaml`` + the experiment chain + ``key=value`` overrides, validated against the base."""
    base_path = experiments_dir() / "base.yaml"
    cfg = OmegaConf.load(base_path)
    schema = OmegaConf.to_container(cfg, resolve=False)
    if str(experiment) != "base":
        for source, layer in _load_chain(_experiment_path(experiment)):
            _check_against(schema, OmegaConf.to_container(layer, resolve=False), source)
            cfg = OmegaConf.merge(cfg, layer)
    cli = parse_overrides(overrides)
    _check_against(schema, OmegaConf.to_container(cli, resolve=False), "command-line overrides")
    cfg = OmegaConf.merge(cfg, cli)
    if str(experiment) != "base" and "experiment" not in cli:
        cfg.experiment = Path(str(experiment)).stem
    OmegaConf.set_struct(cfg, True)
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
