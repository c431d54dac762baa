"""Dense-map backbones that are not ViTs: timm ConvNeXt (paper Table 13).

The feature map is the output of stage ``spec.feature_stage`` (stages after it are skipped). ConvNeXt's stem is a
4x4/4 patchify conv and each later stage starts with a 2x2/2 conv, so cell j of a stride-s map is computed from the
input block [j*s, (j+1)*s) plus its centred 7x7 depthwise neighbourhood: its centre is at j*s + s/2, exactly a
non-overlapping patch of size s. Hence ``spec.patch_size = s`` and the ViT sampling code (models/features.py)
applies unchanged.

LoRA has no counterpart here: ``lora.blocks > 0`` means "train the feature stage" (the last stage used), and
``unfreeze_blocks = k`` trains the last k stages up to it; the conv head is added as for ViTs.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn


def create_convnet(spec, timm_kwargs: dict | None = None):
    """Build the timm ConvNeXt (random weights) and return it with the spec completed from the built model."""
    import timm  # deferred: import cost (~2 s), only building a backbone needs it

    kwargs = {**spec.timm_kwargs, **(timm_kwargs or {})}
    net = timm.create_model(spec.timm_id, pretrained=False, num_classes=0, **kwargs)
    if not hasattr(net, "stem") or not hasattr(net, "stages"):
        raise TypeError(f"'{spec.timm_id}' is not a stem + stages convnet (timm ConvNeXt); corr3d's dense-map path "
                        "needs one")
    stage = spec.feature_stage if spec.feature_stage is not None else len(net.stages) - 1
    info = net.feature_info[stage]
    built = dict(patch_size=int(info["reduction"]), embed_dim=int(info["num_chs"]), depth=len(net.stages),
                 num_prefix_tokens=0, feature_stage=stage)
    if kwargs:  # tiny test variants: the built model's facts win over the table
        spec = dataclasses.replace(spec, **built)
    for fact, value in built.items():
        if getattr(spec, fact) != value:
            raise ValueError(f"backbone table entry '{spec.name}' says {fact}={getattr(spec, fact)} but timm built "
                             f"{value}; fix corr3d.models.backbones")
    return net, spec


def convnet_map(net: nn.Module, images: torch.Tensor, stage: int) -> torch.Tensor:
    """(B, C, H/s, W/s) output of stage ``stage`` for normalised images."""
    x = net.stem(images)
    for block in net.stages[: stage + 1]:
        x = block(x)
    return x


def train_last_stages(net: nn.Module, count: int, stage: int) -> list[int]:
    """Freeze ``net`` except stages ``stage - count + 1 .. stage``; returns their indices."""
    for param in net.parameters():
        param.requires_grad_(False)
    if not 0 <= count <= stage + 1:
        raise ValueError(f"cannot train the last {count} stages up to stage {stage}")
    indices = list(range(stage + 1 - count, stage + 1))
    for index in indices:
        for param in net.stages[index].parameters():
            param.requires_grad_(True)
    return indices


def adapt_convnet(net: nn.Module, config: dict, stage: int) -> list[int]:
    """The convnet counterpart of LoRA / partial unfreezing: ``unfreeze_blocks = k`` trains the last k stages up to
    the feature stage; otherwise ``lora.blocks > 0`` trains the feature stage alone; neither: all frozen."""
    count = int(config["unfreeze_blocks"]) or (1 if int(config["lora"]["blocks"]) > 0 else 0)
    return train_last_stages(net, min(count, stage + 1), stage)
