"""Where models come from: create, load, build from config, load with an adapter, and the models a comparison uses.

``compared_model`` is the one definition of the models every before/after table compares (training's report,
``make eval``, SLURM eval arrays, the validation callback, ``make bench``). They share one reference configuration
(backbone, resolution, layer, norm) and differ only in weights, adapter and head:

- ``pretrained``: the backbone alone (no LoRA, no head), the paper's baseline;
- ``pretrained_head_init``: the training structure (LoRA with B = 0, so the backbone is unchanged) plus the conv head
  exactly as training initialises it under the run's seed; the untrained head alone changes the features, so
  training must not be credited for it;
- ``random``: ``pretrained`` with a random-init backbone (the floor a benchmark must clear to measure anything);
- ``finetuned``: the reference structure with the trained adapter loaded.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import DictConfig, OmegaConf

from corr3d.errors import AdapterMismatchError
from corr3d.models.adapter import (
    adapter_base_weights,
    config_from_metadata,
    read_adapter,
)
from corr3d.models.backbones import create_vit, resolve_backbone
from corr3d.models.model import (
    DEFAULT_MODEL_CONFIG,
    STRUCTURAL_KEYS,
    Corr3DModel,
    model_config,
)
from corr3d.models.weights import load_weights


log = logging.getLogger(__name__)

# pretrained_default_conv: the pretrained backbone plus an untrained, default-initialised conv head (the paper's
# starting point): a random 3x3 conv mixes neighbouring tokens, which nearest-neighbour matching already likes, so
# training must beat this free control, not only the raw backbone
COMPARED_MODELS = ("pretrained", "pretrained_head_init", "pretrained_default_conv", "random", "finetuned")


def create_model(backbone: str = "dinov2_s14", weights: str = "auto", **overrides) -> Corr3DModel:
    """Build the backbone, load ``weights``, add LoRA/unfreezing and the head (no adapter)."""
    cfg = model_config(backbone=backbone, weights=weights, **overrides)
    vit, spec = create_vit(cfg["backbone"], cfg["timm_kwargs"])
    info = load_weights(vit, spec, cfg["weights"])
    model = Corr3DModel(vit, spec, cfg, info)
    log.info("corr3d model: %s", model.describe())
    return model


def load_model(backbone: str | None = "dinov2_s14", weights: str = "auto", adapter=None, **overrides) -> Corr3DModel:
    """A ready feature model: ``load_model("dinov2_s14")``, ``load_model("clip_b16", weights="hf")``,
    ``load_model("dinov2_s14", adapter="runs/x/latest/adapter.safetensors")``.

    ``weights``: auto | hf | imgfocus | random[:seed] | path to .pth/.safetensors. ``overrides``: keys of the
    ``model:`` config section (nested dicts or flat aliases such as ``head_layers=1``). With an adapter, its
    backbone and structure are used; ``backbone=None`` means "whatever the adapter was trained on".

    Without an adapter the model computes the backbone's own features: no LoRA and no head unless ``overrides``
    ask for them (a training structure with an untrained head would change the features). The model is returned
    in eval mode (``.train()`` for finetuning).
    """
    if adapter is not None:
        return load_with_adapter(adapter, backbone=backbone, weights=weights, **overrides).eval()
    for alias, (group, leaf) in (("lora_blocks", ("lora", "blocks")), ("head_layers", ("head", "num_layers"))):
        if alias not in overrides and leaf not in (overrides.get(group) or {}):
            overrides[alias] = 0
    return create_model(backbone or DEFAULT_MODEL_CONFIG["backbone"], weights, **overrides).eval()


def build_model(model_cfg) -> Corr3DModel:
    """From the ``model:`` section of an experiment config (OmegaConf DictConfig or plain mapping)."""
    cfg = _plain(model_cfg)
    adapter = cfg.pop("adapter", None)
    if adapter is not None:
        return load_with_adapter(adapter, backbone=cfg.pop("backbone", None), weights=cfg.pop("weights", "auto"),
                                 **cfg)
    return create_model(cfg.pop("backbone", "dinov2_s14"), cfg.pop("weights", "auto"), **cfg)


def _check_structure(cfg: dict, overrides: dict) -> None:
    trained, probe = model_config(cfg), model_config(cfg, **overrides)  # also validates flat aliases
    for key in STRUCTURAL_KEYS:
        if probe[key] != trained[key]:
            raise ValueError(f"model.{key} is fixed by the adapter ({trained[key]}); cannot override it with "
                             f"{probe[key]}")


def load_with_adapter(path, backbone: str | None = None, weights: str = "auto", **overrides):
    """Rebuild the model an adapter was trained with and load its tensors."""
    meta, tensors = read_adapter(path)
    if backbone is not None and backbone != meta["backbone"]:
        spec = resolve_backbone(backbone)
        if spec is None or spec.timm_id != meta["timm_id"]:
            raise AdapterMismatchError(f"adapter {path} was trained for backbone '{meta['backbone']}' "
                                       f"({meta['timm_id']}), not '{backbone}'", path=path,
                                       fix=f"pass backbone='{meta['backbone']}' or backbone=None")
    cfg = config_from_metadata(meta)
    _check_structure(cfg, overrides)
    cfg = model_config(cfg, **overrides)
    cfg["weights"] = adapter_base_weights(weights, meta)
    model = create_model(**cfg)
    model.load_adapter_state(tensors, source=path)   # AdapterMismatchError naming the file: keys and shapes
    log.info("loaded adapter %s (%d tensors) trained on %s weights", path, len(tensors),
             meta.get("weights", {}).get("source"))
    return model


# ------------------------------------------------------------------------------------------------ compared models
def _plain(model_cfg: Mapping | None) -> dict[str, Any]:
    """A resolved, independent plain-dict copy of a ``model:`` section (DictConfig or mapping)."""
    if isinstance(model_cfg, DictConfig):
        return OmegaConf.to_container(model_cfg, resolve=True)
    return copy.deepcopy(dict(model_cfg or {}))


def reference_model_config(model_cfg: Mapping | None = None, adapter: str | Path | None = None,
                           backbone: str | None = None) -> dict[str, Any]:
    """The configuration every compared model derives from: the adapter's own (so the baselines run at the
    resolution/layer/norm the adapter was trained with), else the experiment's ``model:`` section; ``backbone``
    swaps the backbone (only without an adapter)."""
    cfg = _plain(model_cfg)
    if adapter is not None:
        meta, _ = read_adapter(adapter)
        cfg = {**model_config(cfg), **config_from_metadata(meta),
               "weights": adapter_base_weights(str(cfg.get("weights", "auto")), meta)}
    elif backbone:
        cfg["backbone"] = backbone
    cfg.pop("adapter", None)
    return model_config(cfg)


def compared_model_config(reference: Mapping, name: str, seed: int = 0) -> dict[str, Any]:
    """The configuration of compared model ``name``: ``reference`` with only weights / LoRA / head changed."""
    cfg = model_config(reference)
    if name in ("pretrained", "random"):
        cfg.update(lora={**cfg["lora"], "blocks": 0}, unfreeze_blocks=0, head={**cfg["head"], "num_layers": 0})
        if name == "random":
            cfg["weights"] = f"random:{int(seed)}"
    elif name == "pretrained_default_conv":
        cfg.update(lora={**cfg["lora"], "blocks": 0}, unfreeze_blocks=0,
                   head={**cfg["head"], "num_layers": max(1, int(cfg["head"]["num_layers"])), "init": "default"})
    elif name not in ("pretrained_head_init", "finetuned"):
        raise ValueError(f"unknown compared model {name!r}; known: {', '.join(COMPARED_MODELS)}")
    return cfg


def compared_model(name: str, model_cfg: Mapping | None = None, adapter: str | Path | None = None,
                   seed: int = 0, backbone: str | None = None) -> Corr3DModel:
    """Build compared model ``name`` (see the module docstring). ``seed`` is the run's seed: it fixes the head init
    of ``pretrained_head_init`` (same RNG state as training's start) and the random backbone of ``random``."""
    if name == "finetuned" and adapter is None:
        raise FileNotFoundError("the 'finetuned' model needs an adapter (adapter.safetensors of a training run)")
    reference = reference_model_config(model_cfg, adapter=adapter, backbone=backbone)
    cfg = compared_model_config(reference, name, seed=seed)
    torch.manual_seed(int(seed))
    if name == "finetuned":  # the reference is the adapter's own configuration: nothing to override
        return load_model(None, weights=cfg["weights"], adapter=adapter)
    return create_model(**cfg)
