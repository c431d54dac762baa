"""Experiment configuration: a typed schema, a base YAML, small experiment files that override it, CLI overrides.

``corr3d/config_schema.py`` is the one source of every key's default, type and range; ``experiments/base.yaml``
documents the same keys with comments (a test keeps the two equal). Every key an experiment or the command line sets
must exist there: a typo fails loudly with its dotted path and the closest valid key instead of being silently
ignored; a value of the wrong type or out of range fails naming its key.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, get_type_hints

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from corr3d.config_schema import Config, range_violations

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


def _closest(path: str, schema: dict, prefix: str) -> str | None:
    """Closest valid dotted key: compare whole paths, then the leaf name among siblings."""
    full = [f"{prefix}.{k}" if prefix else k for k in _dotted_keys(schema)]
    close = difflib.get_close_matches(path, full, n=1, cutoff=0.6)
    if close:
        return close[0]
    leaves = {k.rsplit(".", 1)[-1]: k for k in full}
    match = difflib.get_close_matches(path.rsplit(".", 1)[-1], list(leaves), n=1, cutoff=0.5)
    return leaves[match[0]] if match else None


def _check_keys(schema: dict, update: dict, source: str, prefix: str = "") -> None:
    """Raise ConfigError for keys of ``update`` missing from ``schema`` (with the closest valid key).

    Types and ranges are checked by the typed schema (``corr3d/config_schema.py``); an empty mapping in the schema
    (``timm_kwargs``, ``launcher.extra``) accepts any keys.
    """
    for key, value in update.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in schema:
            close = _closest(path, schema, prefix)
            hint = f"; did you mean '{close}'?" if close else ""
            raise ConfigError(f"unknown config key '{path}' in {source}{hint}")
        if isinstance(schema[key], dict) and schema[key] and isinstance(value, dict):
            _check_keys(schema[key], value, source, path)


def _load_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[str, DictConfig]]:
    """An experiment may name a parent with ``inherit: <experiment>``; return [(source, cfg)] parents first."""
    if path in seen:
        raise ConfigError(f"experiment inheritance cycle: {' -> '.join(p.stem for p in (*seen, path))}")
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path} must hold a mapping at top level")
    parent = cfg.pop("inherit", None)
    if parent is not None and not isinstance(parent, str):
        raise ConfigError(f"'inherit' in {path} must be the name of one experiment (a string), got {parent!r}")
    chain = _load_chain(_experiment_path(parent), (*seen, path)) if parent else []
    return [*chain, (str(path), cfg)]


def parse_overrides(overrides: Iterable[str]) -> DictConfig:
    items = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. trainer.max_steps=10)")
        items.append(item)
    return OmegaConf.from_dotlist(items)


def _expected_type(full_key: str) -> str:
    """The schema's type of a dotted key (``data.render.up[0]`` -> the list's type), as written in the schema."""
    cls: Any = Config
    kind: Any = Config
    for part in re.sub(r"\[.*?\]", "", full_key).split("."):
        if not dataclasses.is_dataclass(cls):
            break
        kind = get_type_hints(cls).get(part)
        cls = kind
    name = getattr(kind, "__name__", None) if isinstance(kind, type) else None
    return name or str(kind).replace("typing.", "")


def _merge(cfg: DictConfig, layer: DictConfig, source: str) -> DictConfig:
    """Merge ``layer`` into ``cfg`` in place (a copy per layer would double the load time)."""
    try:
        cfg.merge_with(layer)
    except OmegaConfBaseException as err:
        key, value = getattr(err, "full_key", None), getattr(err, "value", None)
        reason = str(getattr(err, "msg", err)).splitlines()[0]
        if not key:  # e.g. a scalar given for a whole section: OmegaConf names no key
            raise ConfigError(f"invalid value in {source}: {reason}") from None
        raise ConfigError(f"config key '{key}' in {source} must be {_expected_type(key)}, got "
                          f"{type(value).__name__} {value!r}: {reason}") from None
    return cfg


@functools.lru_cache(maxsize=4)
def _typed_base(base_path: Path, stamp: tuple[int, int]) -> tuple[DictConfig, dict, bool]:
    """``Config`` defaults with ``base.yaml`` merged in, and the key tree overrides are checked against.

    Cached per file version: building a structured config is the slow part of loading (~50 ms).
    Keys that base.yaml has and the schema lacks are kept (untyped) with a warning so that a key added to base.yaml
    alone does not stop every run; tests/test_experiments.py fails on them until the schema has them too.
    """
    base = OmegaConf.load(base_path)
    if not isinstance(base, DictConfig):
        raise ConfigError(f"{base_path} must hold a mapping at top level")
    typed = OmegaConf.structured(Config)
    schema = OmegaConf.to_container(typed, resolve=False)
    base_tree = OmegaConf.to_container(base, resolve=False)
    missing = schema_drift(schema, base_tree)["only_in_base"]
    if missing:
        warnings.warn(f"{base_path} has keys corr3d/config_schema.py lacks (kept, untyped): {', '.join(missing)}",
                      stacklevel=2)
        typed = OmegaConf.structured(_with_untyped_keys(Config, base_tree))
        schema = OmegaConf.to_container(typed, resolve=False)
    return _merge(typed, base, str(base_path)), schema, bool(missing)


def _with_untyped_keys(cls: type, tree: dict) -> type:
    """``cls`` extended by the keys of ``tree`` it lacks, typed ``Any`` (a key added to base.yaml alone)."""
    hints = get_type_hints(cls)
    extra = []
    for key, value in tree.items():
        kind = hints.get(key)
        if kind is None:
            extra.append((key, Any, dataclasses.field(default_factory=lambda v=value: copy.deepcopy(v))))
        elif dataclasses.is_dataclass(kind) and isinstance(value, dict):
            sub = _with_untyped_keys(kind, value)
            if sub is not kind:
                extra.append((key, sub, dataclasses.field(default_factory=sub)))
    return dataclasses.make_dataclass(cls.__name__, extra, bases=(cls,)) if extra else cls


def load_config(experiment: str | os.PathLike = "base", overrides: Iterable[str] = ()) -> DictConfig:
    """Compose the schema + ``base.yaml`` + the experiment chain + ``key=value`` overrides.

    Unknown keys fail with the closest valid key, values are converted to (or rejected by) the schema's types
    (``optim.lr=1`` becomes 1.0) and range violations fail naming the key (``corr3d/config_schema.py``).
    """
    base_path = experiments_dir() / "base.yaml"
    stat = base_path.stat()
    typed, schema, drifted = _typed_base(base_path, (stat.st_mtime_ns, stat.st_size))
    cfg = copy.deepcopy(typed)
    if str(experiment) != "base":
        for source, layer in _load_chain(_experiment_path(experiment)):
            _check_keys(schema, OmegaConf.to_container(layer, resolve=False), source)
            cfg = _merge(cfg, layer, source)
    cli = parse_overrides(overrides)
    _check_keys(schema, OmegaConf.to_container(cli, resolve=False), "command-line overrides")
    cfg = _merge(cfg, cli, "command-line overrides")
    if str(experiment) != "base" and "experiment" not in cli:
        cfg.experiment = Path(str(experiment)).stem
    bad = range_violations(cfg)
    if bad:
        raise ConfigError("invalid config: " + "; ".join(bad))
    if drifted:  # the stop-gap classes of _with_untyped_keys cannot be pickled (spawned workers, submitit)
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    OmegaConf.set_struct(cfg, True)
    return cfg


def schema_drift(schema: dict, base: dict, prefix: str = "") -> dict[str, list[str]]:
    """Where the schema's defaults and base.yaml differ: keys only in one of them, and keys whose default or type
    differs (``'data.render.focal': schema 560.0 (float), base.yaml 560 (int)``). Empty lists: no drift."""
    out: dict[str, list[str]] = {"only_in_schema": [], "only_in_base": [], "different": []}
    for key in [*schema, *(k for k in base if k not in schema)]:
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in base:
            out["only_in_schema"].append(path)
        elif key not in schema:
            out["only_in_base"].append(path)
        elif isinstance(schema[key], dict) and isinstance(base[key], dict) and schema[key]:
            for kind, paths in schema_drift(schema[key], base[key], path).items():
                out[kind].extend(paths)
        elif _typed_repr(schema[key]) != _typed_repr(base[key]):
            out["different"].append(f"'{path}': schema {_typed_repr(schema[key])}, base.yaml {_typed_repr(base[key])}")
    return out


def _typed_repr(value: Any) -> str:
    """A value with the type of every element, so 560.0 and 560 (or [0, 0] and [0.0, 0.0]) differ."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_typed_repr(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_typed_repr(v) for v in value) + "]"
    return f"{value!r} ({type(value).__name__})"


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
