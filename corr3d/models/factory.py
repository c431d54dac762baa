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

import dataclasses
import logging
from pathlib import Path
from typing import Mapping

import torch
from omegaconf import DictConfig, OmegaConf

from corr3d.config_schema import HeadConfig, LoraConfig, ModelConfig
from corr3d.errors import AdapterMismatchError
from corr3d.models.adapter import (
    adapter_base_weights,
    config_from_metadata,
    read_adapter,
)
from corr3d.models.backbones import create_backbone, resolve_backbone
from corr3d.models.model import (
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


ModelSection = ModelConfig | DictConfig | Mapping


def as_model_config(section: ModelSection | None = None, **overrides) -> ModelConfig:
    """The typed ``model:`` section the factories build from. A loaded config's ``cfg.model`` (a DictConfig typed by
    the schema) or a :class:`ModelConfig` is complete: the schema applied its defaults at load time, so it is taken
    as it is. A plain mapping and ``overrides`` (nested dicts or flat aliases such as ``head_layers=0``: Python
    callers, adapter metadata) go over the schema's defaults here, once (``model_config``)."""
    if OmegaConf.is_config(section):
        section = (OmegaConf.to_object(section) if OmegaConf.get_type(section) is ModelConfig
                   else OmegaConf.to_container(section, resolve=True))
    if isinstance(section, ModelConfig) and not overrides:
        return section
    plain = model_config(section, **overrides)
    return ModelConfig(**{**plain, "lora": LoraConfig(**plain["lora"]), "head": HeadConfig(**plain["head"])})


def create_model(backbone: str = ModelConfig.backbone, weights: str = ModelConfig.weights,
                 **overrides) -> Corr3DModel:
    """Build the backbone, load ``weights``, add LoRA/unfreezing and the head (no adapter). The public entry for
    Python callers: ``overrides`` (keys of the ``model:`` section) go over the schema's defaults."""
    return build_model(as_model_config(backbone=backbone, weights=weights, **overrides))


def load_model(backbone: str | None = ModelConfig.backbone, weights: str = ModelConfig.weights, adapter=None,
               **overrides) -> Corr3DModel:
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
    return create_model(backbone or ModelConfig.backbone, weights, **overrides).eval()


def build_model(model_cfg: ModelSection) -> Corr3DModel:
    """From a ``model:`` section: a loaded config's ``cfg.model`` or a :class:`ModelConfig` (taken as it is), or a
    plain mapping (over the schema's defaults, :func:`as_model_config`)."""
    cfg = as_model_config(model_cfg)
    backbone, spec = create_backbone(cfg.backbone, cfg.timm_kwargs)
    info = load_weights(backbone, spec, cfg.weights)
    model = Corr3DModel(backbone, spec, cfg, info)
    log.info("corr3d model: %s", model.describe())
    return model


def _check_structure(trained: ModelConfig, probe: ModelConfig) -> None:
    for key in STRUCTURAL_KEYS:
        was, asked = model_config(trained)[key], model_config(probe)[key]
        if asked != was:
            raise ValueError(f"model.{key} is fixed by the adapter ({was}); cannot override it with {asked}")


def load_with_adapter(path, backbone: str | None = None, weights: str = ModelConfig.weights, **overrides):
    """Rebuild the model an adapter was trained with and load its tensors."""
    meta, tensors = read_adapter(path)
    if backbone is not None and backbone != meta["backbone"]:
        spec = resolve_backbone(backbone)
        if spec is None or spec.timm_id != meta["timm_id"]:
            raise AdapterMismatchError(f"adapter {path} was trained for backbone '{meta['backbone']}' "
                                       f"({meta['timm_id']}), not '{backbone}'", path=path,
                                       fix=f"pass backbone='{meta['backbone']}' or backbone=None")
    trained = as_model_config(config_from_metadata(meta))
    cfg = as_model_config(trained, **overrides)   # also validates flat aliases
    _check_structure(trained, cfg)
    model = build_model(dataclasses.replace(cfg, weights=adapter_base_weights(weights, meta)))
    model.load_adapter_state(tensors, source=path)   # AdapterMismatchError naming the file: keys and shapes
    log.info("loaded adapter %s (%d tensors) trained on %s weights", path, len(tensors),
             meta.get("weights", {}).get("source"))
    return model


# ------------------------------------------------------------------------------------------------ compared models
def reference_model_config(model_cfg: ModelSection | None = None, adapter: str | Path | None = None,
                           backbone: str | None = None) -> ModelConfig:
    """The configuration every compared model derives from: the adapter's own (so the baselines run at the
    resolution/layer/norm the adapter was trained with), else the experiment's ``model:`` section; ``backbone``
    swaps the backbone (only without an adapter)."""
    cfg = as_model_config(model_cfg)
    if adapter is not None:
        meta, _ = read_adapter(adapter)   # the metadata holds every key but weights
        return as_model_config({**config_from_metadata(meta), "weights": adapter_base_weights(cfg.weights, meta)})
    return dataclasses.replace(cfg, backbone=backbone) if backbone else cfg


def compared_model_config(reference: ModelSection, name: str, seed: int = 0) -> ModelConfig:
    """The configuration of compared model ``name``: ``reference`` with only weights / LoRA / head changed."""
    ref = as_model_config(reference)
    no_adaptation = {"lora": dataclasses.replace(ref.lora, blocks=0), "unfreeze_blocks": 0}
    if name == "pretrained":
        return dataclasses.replace(ref, **no_adaptation, head=dataclasses.replace(ref.head, num_layers=0))
    if name == "random":
        return dataclasses.replace(ref, **no_adaptation, head=dataclasses.replace(ref.head, num_layers=0),
                                   weights=f"random:{seed}")
    if name == "pretrained_default_conv":
        return dataclasses.replace(ref, **no_adaptation, head=dataclasses.replace(
            ref.head, num_layers=max(1, ref.head.num_layers), init="default"))
    if name not in ("pretrained_head_init", "finetuned"):
        raise ValueError(f"unknown compared model {name!r}; known: {', '.join(COMPARED_MODELS)}")
    return ref


def compared_model(name: str, model_cfg: ModelSection | None = None, adapter: str | Path | None = None,
                   seed: int = 0, backbone: str | None = None) -> Corr3DModel:
    """Build compared model ``name`` (see the module docstring). ``seed`` is the run's seed: it fixes the head init
    of ``pretrained_head_init`` (same RNG state as training's start) and the random backbone of ``random``."""
    if name == "finetuned" and adapter is None:
        raise FileNotFoundError("the 'finetuned' model needs an adapter (adapter.safetensors of a training run)")
    reference = reference_model_config(model_cfg, adapter=adapter, backbone=backbone)
    cfg = compared_model_config(reference, name, seed=seed)
    torch.manual_seed(seed)
    if name == "finetuned":  # the reference is the adapter's own configuration: nothing to override
        return load_model(None, weights=cfg.weights, adapter=adapter)
    return build_model(cfg)
