"""Experiment configuration: a typed schema, a base YAML, small experiment files that override it, CLI overrides.

``corr3d/config_schema.py`` is the one source of every key's default, type, range and comment;
``experiments/base.yaml`` is generated from it (``python -m corr3d.config_schema --write``). Every key an experiment
or the command line sets must exist there: a typo fails loudly with its dotted path and the closest valid key
instead of being silently ignored; a value of the wrong type or out of range fails naming its key.

``load_config`` ends with :func:`validate_config`: closed sets (loss names, precisions, tasks, models...), bounds,
relations between keys (``loss.pos_radius < loss.neg_radius``, ``min_x <= max_x``, rotation limits that admit view
pairs on the camera rig), backbone names and devices are checked before any command touches the disk, so
``corr3d <command> EXP --dry-run`` validates everything. A broken YAML file (syntax, TAB, encoding, a python tag)
is a :class:`ConfigError` naming ``file:line``.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import io
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence, get_type_hints

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from corr3d.config_schema import (
    BACKBONE_NAME_PATTERN,
    BACKBONE_NAMES,
    EVAL_DEVICE_PATTERN,
    Config,
    Violation,
    schema_violations,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A configuration file or override that does not fit the base schema.

    ``fix`` (shown by the CLI as ``fix: ...``) says what to change; ``violations`` lists each invalid key."""

    def __init__(self, message: str, fix: str | None = None, violations: Sequence[Violation] = ()):
        super().__init__(message)
        self.fix = fix
        self.violations = list(violations)

    def __reduce__(self):  # keep fix and violations across processes (spawned workers, submitit)
        return type(self), (str(self), self.fix, self.violations)


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
    raise ConfigError(f"unknown experiment '{name}'{hint}; available: {', '.join(known) or 'none'}",
                      fix=f"use one of the experiments in {experiments_dir()} or a path to a .yaml file")


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
            fix = f"use '{close}'" if close else "remove it (every valid key is in experiments/base.yaml)"
            raise ConfigError(f"unknown config key '{path}' in {source}{hint}", fix=fix,
                              violations=[Violation(path, f"unknown config key '{path}'", fix)])
        if isinstance(schema[key], dict) and schema[key] and isinstance(value, dict):
            _check_keys(schema[key], value, source, path)


def _yaml_error(path: Path, text: str, err: yaml.YAMLError) -> ConfigError:
    """``file:line: cause`` and a fix for a YAML file PyYAML cannot read (syntax, TAB, python tags, duplicates)."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    line = text.splitlines()[mark.line] if mark is not None and mark.line < len(text.splitlines()) else ""
    char = line[mark.column] if mark is not None and mark.column < len(line) else ""
    fix = f"correct the YAML syntax at {where} (indent with spaces; quote values holding ': ' or ' #')"
    if char == "\t" or (problem and ("cannot start any token" in problem or "tab" in problem) and "\t" in line):
        problem, context = "a TAB character (YAML indents with spaces only)", None
        fix = f"replace the TAB at {where} with spaces"
    elif problem and "constructor for the tag" in problem:
        tag = str(problem).split("tag", 1)[1].strip(" '").replace("tag:yaml.org,2002:", "!!")
        problem = f"the tag '{tag}' (experiment files hold plain values; no Python objects are ever constructed)"
        fix = f"remove the tag at {where} and write a plain value"
    elif problem and "duplicate key" in problem:
        fix = f"keep one of the two entries ({problem.split('duplicate key', 1)[1].strip()}) in {path}"
    cause = f"{problem} ({context})" if context and context not in str(problem) else str(problem)
    return ConfigError(f"{where}: unreadable YAML: {cause}", fix=fix)


def load_yaml(path: str | os.PathLike) -> DictConfig:
    """An experiment (or base) YAML file as a DictConfig; every way it can be broken is a :class:`ConfigError` that
    names ``file:line`` and the cause."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start})",
                          fix=f"save {path} as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    try:
        cfg = OmegaConf.load(io.StringIO(text))
    except yaml.YAMLError as err:
        raise _yaml_error(path, text, err) from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path}: invalid config file: {str(err).splitlines()[0]}",
                          fix=f"correct {path} (keys are plain names, values plain YAML)") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path} must hold a mapping at top level",
                          fix=f"write {path} as 'section:' blocks of 'key: value' lines (see experiments/base.yaml)")
    return cfg


def _load_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[str, DictConfig]]:
    """An experiment may name a parent with ``inherit: <experiment>``; return [(source, cfg)] parents first."""
    if path in seen:
        raise ConfigError(f"experiment inheritance cycle: {' -> '.join(p.stem for p in (*seen, path))}",
                          fix=f"remove one 'inherit:' line of that cycle (e.g. in {path})")
    cfg = load_yaml(path)
    parent = cfg.pop("inherit", None)
    if parent is not None and not isinstance(parent, str):
        raise ConfigError(f"'inherit' in {path} must be the name of one experiment (a string), got {parent!r}",
                          fix="inherit from one experiment; chain files (a inherits b, b inherits c) for more")
    chain = _load_chain(_experiment_path(parent), (*seen, path)) if parent else []
    return [*chain, (str(path), cfg)]


def space_flow_mappings(text: str) -> str:
    """``{depth:0, a:{b:1}}`` -> ``{depth: 0, a: {b: 1}}``: YAML reads ``depth:0`` as the key ``'depth:0'`` (value
    null), which no corr3d key is; the first ``:`` of each flow-mapping entry gets the space YAML needs. Quoted text,
    ``${...}`` interpolations and later colons (``{url: http://x}``) are left alone."""
    out: list[str] = []
    stack: list[list] = []          # [bracket, key colon seen in the current entry]
    quote = None
    i = 0
    while i < len(text):
        char = text[i]
        out.append(char)
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "$" and text[i + 1:i + 2] == "{":
            out.append("{")
            stack.append(["$", True])
            i += 1
        elif char in "{[":
            stack.append([char, False])
        elif char in "}]":
            if stack:
                stack.pop()
        elif char == "," and stack:
            stack[-1][1] = False
        elif char == ":" and stack and stack[-1][0] == "{" and not stack[-1][1]:
            stack[-1][1] = True
            if text[i + 1:i + 2] not in (" ", "\t", ""):
                out.append(" ")
        i += 1
    return "".join(out)


def parse_overrides(overrides: Iterable[str]) -> DictConfig:
    items = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. trainer.max_steps=10)",
                              fix="write each override as key=value, e.g. trainer.max_steps=10")
        key, _, value = item.partition("=")
        items.append(f"{key}={space_flow_mappings(value)}" if "{" in value else item)
    try:
        return OmegaConf.from_dotlist(items)
    except yaml.YAMLError as err:
        bad = next((i for i in items if _yaml_fails(i.partition("=")[2])), items[-1] if items else "")
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"override '{bad}' is not a valid YAML value: {problem}",
                          fix="quote the value (key='a: b') or close its brackets ({k: v}, [a, b])") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"invalid override: {str(err).splitlines()[0]}",
                          fix="write each override as key=value with a dotted key, e.g. model.lora.rank=8") from None


def _yaml_fails(value: str) -> bool:
    try:
        yaml.safe_load(value)
    except yaml.YAMLError:
        return True
    return False


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
            raise ConfigError(f"invalid value in {source}: {reason}",
                              fix="give a section as a mapping (section.key=value), see experiments/base.yaml"
                              ) from None
        expected = _expected_type(key)
        fix = f"set {key} to a value of type {expected} (documented in experiments/base.yaml)"
        message = f"config key '{key}' in {source} must be {expected}, got {type(value).__name__} {value!r}: {reason}"
        raise ConfigError(message, fix=fix, violations=[Violation(str(key), message, fix)]) from None
    return cfg


@functools.lru_cache(maxsize=4)
def _typed_base(base_path: Path, stamp: tuple[int, int]) -> tuple[DictConfig, dict]:
    """``Config`` defaults with ``base.yaml`` merged in, and the key tree overrides are checked against.

    The committed base.yaml is generated from the schema, so merging it changes nothing; it stays a layer so that a
    ``$CORR3D_EXPERIMENTS`` directory's own base.yaml (or a broken one) is read like any experiment file.
    Cached per file version: building a structured config is the slow part of loading (~50 ms).
    """
    base = load_yaml(base_path)
    typed = OmegaConf.structured(Config)
    schema = OmegaConf.to_container(typed, resolve=False)
    _check_keys(schema, OmegaConf.to_container(base, resolve=False), str(base_path))
    return _merge(typed, base, str(base_path)), schema


def load_config(experiment: str | os.PathLike = "base", overrides: Iterable[str] = ()) -> DictConfig:
    """Compose the schema + ``base.yaml`` + the experiment chain + ``key=value`` overrides.

    Unknown keys fail with the closest valid key, values are converted to (or rejected by) the schema's types
    (``optim.lr=1`` becomes 1.0) and range violations fail naming the key (``corr3d/config_schema.py``).
    """
    base_path = experiments_dir() / "base.yaml"
    stat = base_path.stat()
    typed, schema = _typed_base(base_path, (stat.st_mtime_ns, stat.st_size))
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
    validate_config(cfg)
    OmegaConf.set_struct(cfg, True)
    return cfg


def config_from_yaml(text: str, source: str = "a job's config") -> DictConfig:
    """A configuration saved with ``OmegaConf.to_yaml`` (a SLURM job's pickled config), typed again by the schema
    and validated like :func:`load_config`'s, so jobs run on the same typed path as the command line."""
    layer = OmegaConf.create(text)
    typed = OmegaConf.structured(Config)
    _check_keys(OmegaConf.to_container(typed, resolve=False), OmegaConf.to_container(layer, resolve=False), source)
    cfg = _merge(typed, layer, source)
    validate_config(cfg)
    OmegaConf.set_struct(cfg, True)
    return cfg


def validate_config(cfg: DictConfig) -> None:
    """Raise one :class:`ConfigError` listing every invalid value of a composed config (key, what is wrong, fix).

    Checked: the schema's bounds and closed sets (``corr3d/config_schema.py``), that every ``${...}`` resolves,
    ``loss.pos_radius < loss.neg_radius``, ``min_x <= max_x`` wherever a section has both, the camera rig
    (``data.render.up``/``background``/``lights`` shapes), rotation limits that admit at least one view pair on the
    rig, backbone names (plain names of the registry or timm) and ``eval.device`` (a CUDA device must exist).
    Runs at the end of :func:`load_config`, before any command creates a directory or loads weights."""
    try:
        tree = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        key = str(getattr(err, "full_key", "") or "?")
        reason = str(getattr(err, "msg", err)).splitlines()[0]
        raise ConfigError(f"invalid config: '{key}': {reason}",
                          fix=f"correct the ${{...}} interpolation of {key}: it must name an existing key, "
                              "e.g. ${data_root}/rendered") from None
    problems = list(schema_violations(tree))
    for check in (_radius_violations, min_max_violations, _render_violations, _rotation_violations,
                  _backbone_violations, _device_violations, _workers_violations):
        problems += check(tree)
    if problems:
        raise ConfigError("invalid config: " + "; ".join(p.message for p in problems),
                          fix="; ".join(dict.fromkeys(p.fix for p in problems)), violations=problems)


def _section(tree: dict, path: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _workers_violations(tree: dict) -> list[Violation]:
    value = _section(tree, "eval.workers")
    if value is None or str(value) == "auto" or re.fullmatch(r"[1-9][0-9]*", str(value)):
        return []
    return [Violation("eval.workers", f"'eval.workers' must be auto or a positive integer, got {value!r}",
                      "set eval.workers=auto (one per CPU core, at most 4) or eval.workers=1 (one part at a time)")]


def _radius_violations(tree: dict) -> list[Violation]:
    pos, neg = _section(tree, "loss.pos_radius"), _section(tree, "loss.neg_radius")
    if _number(pos) and _number(neg) and not pos < neg:
        return [Violation("loss.pos_radius", f"'loss.pos_radius'={pos:g} must be < 'loss.neg_radius'={neg:g} "
                          "(positives lie closer than negatives)",
                          "set loss.pos_radius below loss.neg_radius (defaults 0.005 < 0.1)")]
    return []


def min_max_violations(tree: dict, prefix: str = "") -> list[Violation]:
    """``min_x`` > ``max_x`` (or ``x_min`` > ``x_max``) in any section of ``tree`` (a plain nested dict)."""
    out: list[Violation] = []
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out += min_max_violations(value, path)
            continue
        key = str(key)
        other = ("max_" + key[4:] if key.startswith("min_") else
                 key[:-4] + "_max" if key.endswith("_min") else None)
        high = tree.get(other) if other else None
        if _number(value) and _number(high) and value > high:
            other_path = f"{prefix}.{other}" if prefix else other
            out.append(Violation(path, f"'{path}'={value:g} is greater than '{other_path}'={high:g}",
                                 f"set {path} <= {other_path}"))
    return out


def _render_violations(tree: dict) -> list[Violation]:
    out: list[Violation] = []
    up = _section(tree, "data.render.up")
    if not (isinstance(up, list) and len(up) == 3 and all(_number(v) for v in up) and any(v != 0 for v in up)):
        out.append(Violation("data.render.up", f"'data.render.up' must be a non-zero 3-vector, got {up!r}",
                             "set data.render.up=[0.0,1.0,0.0] (y-up, glTF/Objaverse)"))
    bg = _section(tree, "data.render.background")
    if not (isinstance(bg, list) and len(bg) == 3 and all(_number(v) and 0 <= v <= 255 for v in bg)):
        out.append(Violation("data.render.background", f"'data.render.background' must be 3 values in 0..255 "
                             f"(RGB), got {bg!r}", "set data.render.background=[0,0,0]"))
    lights = _section(tree, "data.render.lights")
    if not (isinstance(lights, list) and all(isinstance(li, list) and len(li) == 4 for li in lights)):
        out.append(Violation("data.render.lights", "'data.render.lights' must be a list of [x, y, z, energy], got "
                             f"{lights!r}", "write each light as [x, y, z, energy] (see experiments/base.yaml)"))
    return out


def rig_min_camera_angle_deg(subdivisions: int) -> float:
    """Smallest angle (degrees) between two camera directions of the level-``subdivisions`` icosphere rig: the
    icosahedron's edge angle atan(2) halved at each level (subdividing splits each original edge's arc in two).

    The relative rotation of two look-at cameras (what ``allowed_view_pairs`` in corr3d/data/pairs.py and
    ``sample_view_pairs`` in corr3d/eval/equivariance.py compare with ``max_rotation_deg``) is never smaller than
    the angle between their directions, so a limit below this admits no pair. Closed form: no numpy or torch
    import (tests/test_config_validation.py checks it against the rig itself)."""
    return math.degrees(math.atan(2.0)) / 2 ** int(subdivisions)


def _rotation_violations(tree: dict) -> list[Violation]:
    level = _section(tree, "data.render.icosphere_subdivisions")
    if not isinstance(level, int) or isinstance(level, bool) or level < 0:
        return []  # reported by the schema
    closest = rig_min_camera_angle_deg(level)
    views = 10 * 4 ** level + 2
    out = []
    # data.pairs: the training pairs of rendered objects; equivariance: the (always rendered) evaluation objects
    for key, applies in (("data.pairs.max_rotation_deg", _section(tree, "data.kind") == "rendered"),
                         ("equivariance.max_rotation_deg", True)):
        limit = _section(tree, key)
        if applies and _number(limit) and limit < closest - 1e-6:
            out.append(Violation(key, f"'{key}'={limit:g} admits no view pair: the closest cameras of the "
                                 f"data.render rig (icosphere_subdivisions={level}, {views} views) are "
                                 f"{closest:.2f} deg apart",
                                 f"set {key} >= {math.ceil(closest * 100) / 100:g} (or raise "
                                 "data.render.icosphere_subdivisions: each level halves the camera spacing)"))
    return out


def _backbone_violations(tree: dict) -> list[Violation]:
    out = []
    for key in ("model.backbone", "eval.backbone"):
        name = _section(tree, key)
        if name is None and key == "eval.backbone":
            continue
        problem = backbone_problem(key, name)
        if problem is not None:
            out.append(problem)
    return out


def backbone_problem(key: str, name: Any) -> Violation | None:
    """A backbone name must be a plain name (never a path) of the corr3d registry or of timm's model registry.

    Short names are checked against a constant (no torch/timm import); other names import timm, which the command
    needs anyway to build that model."""
    examples = "a corr3d short name (e.g. dinov2_s14) or a timm ViT id (e.g. vit_small_patch14_dinov2.lvd142m)"
    if not isinstance(name, str) or not re.fullmatch(BACKBONE_NAME_PATTERN, name) or ".." in name:
        return Violation(key, f"'{key}' must be a plain backbone name (letters, digits, '_', '.', '-'; never a "
                         f"path with '/' or '..'), got {name!r}", f"set {key} to {examples}")
    if name in BACKBONE_NAMES or _registered_backbone(name) or _timm_knows(name):
        return None
    close = difflib.get_close_matches(name, list(BACKBONE_NAMES), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return Violation(key, f"unknown backbone '{name}' in '{key}': not a corr3d short name nor a timm model id{hint}",
                     f"set {key} to {examples}; short names: {', '.join(BACKBONE_NAMES)}")


def _registered_backbone(name: str) -> bool:
    """Names added at run time with ``register_backbone`` (only if the registry is already imported)."""
    module = sys.modules.get("corr3d.models.backbones")
    table = getattr(module, "BACKBONES", {}) if module is not None else {}
    return any(name in (short, spec.timm_id, spec.architecture) for short, spec in table.items())


@functools.lru_cache(maxsize=64)
def _timm_knows(name: str) -> bool:
    try:
        import timm  # deferred: heavy; only for names outside the short-name table
    except ImportError:  # pragma: no cover - timm is a dependency; without it the build reports the name
        return True
    return bool(timm.is_model(name.split(".", 1)[0]))


def cuda_device_count() -> int:
    """CUDA devices this process can use (imports torch; only asked when a config names a CUDA device)."""
    import torch  # deferred: only an explicit cuda device needs it

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def _device_violations(tree: dict) -> list[Violation]:
    device = _section(tree, "eval.device")
    if not isinstance(device, str) or not re.fullmatch(EVAL_DEVICE_PATTERN, device):
        return [Violation("eval.device", f"'eval.device' must be auto, cpu, cuda, cuda:<index> or mps, got "
                          f"{device!r}", "set eval.device=auto (the GPU when there is one, else the CPU)")]
    if not device.startswith("cuda") or _section(tree, "launcher.name") == "slurm":
        return []  # a SLURM job runs on the cluster's GPU nodes, not on the submitting host
    index = int(device.partition(":")[2] or 0)
    count = cuda_device_count()
    if count == 0:
        return [Violation("eval.device", f"'eval.device'={device} but this machine has no usable CUDA GPU "
                          "(torch.cuda.is_available() is False)",
                          "set eval.device=cpu (or auto), or run on a machine with a GPU and a CUDA build of torch")]
    if index >= count:
        return [Violation("eval.device", f"'eval.device'={device} but this machine has {count} CUDA device(s) "
                          f"(cuda:0..cuda:{count - 1})", f"set eval.device=cuda:{count - 1} (or cuda, or auto)")]
    return []


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
