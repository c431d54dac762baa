"""Backbone registry: short names -> timm ids, the facts feature extraction needs, and each name's family.

The table is static so that facts (patch size, normalisation, prefix tokens) are known without building a model;
any other timm ViT id also works, its facts are then read from timm's pretrained config and the built model.

A family (:class:`BackboneFamily`, one per kind of network: timm ViTs, timm ConvNeXts) is the only place that knows
how its networks are built, adapted for training and turned into a dense feature grid; ``Corr3DModel`` calls the
family of its spec (``FAMILIES[spec.family]``) and has no per-kind branches. Adding a family: subclass
``BackboneFamily``, add it to ``FAMILIES`` and name it in the registry entries (tests/models/test_backbones.py then
runs every entry through it).
"""
from __future__ import annotations

import abc
import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

from corr3d.errors import NotSupportedError, UnknownNameError
from corr3d.models.convnet import adapt_convnet, convnet_map, create_convnet
from corr3d.models.features import tokens_to_map, vit_tokens
from corr3d.models.lora import apply_lora, freeze, unfreeze_last_blocks

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class BackboneSpec:
    """What corr3d needs to know about a backbone.

    ``family="vit"``: a timm ViT (``VisionTransformer`` or ``Eva``, e.g. DINOv3 with RoPE); ``patch_size`` is the
    patch. ``family="convnet"``: a dense-map CNN (timm ConvNeXt); features are the output of stage ``feature_stage``
    and ``patch_size`` is that stage's stride (each cell covers a stride x stride block, like a non-overlapping
    patch), ``embed_dim`` its channels and ``num_prefix_tokens`` 0. ``family`` is a key of :data:`FAMILIES`.
    """

    name: str
    timm_id: str                      # "<architecture>.<pretrained tag>"
    patch_size: int
    embed_dim: int
    num_prefix_tokens: int            # class token + register tokens, stripped before building dense maps
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    depth: int | None = None
    weight_sources: tuple[str, ...] = ("hf",)   # offline-capable sources beyond "random" and local files
    description: str = ""
    timm_kwargs: dict = field(default_factory=dict)
    family: str = "vit"               # a key of FAMILIES: vit | convnet
    feature_stage: int | None = None  # convnet: index of the stage whose output is the feature map

    @property
    def architecture(self) -> str:
        return self.timm_id.split(".", 1)[0]

    @property
    def hf_hub_id(self) -> str:
        """Hugging Face repository timm publishes these weights under (``timm/<arch>.<tag>``)."""
        import timm  # deferred: import cost (~2 s), only building a backbone needs it

        cfg = timm.models.get_pretrained_cfg(self.timm_id)
        hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        return hub_id or f"timm/{self.timm_id}"


def _dinov2(size: str, dim: int, depth: int, reg: bool) -> BackboneSpec:
    arch = f"vit_{size}_patch14{'_reg4' if reg else ''}_dinov2"
    name = f"dinov2_{size[0]}14{'_reg' if reg else ''}"
    sources = ("hf", "imgfocus") if (size == "small" and not reg) else ("hf",)
    return BackboneSpec(
        name=name, timm_id=f"{arch}.lvd142m", patch_size=14, embed_dim=dim, depth=depth,
        num_prefix_tokens=5 if reg else 1, mean=IMAGENET_MEAN, std=IMAGENET_STD, weight_sources=sources,
        description=f"DINOv2 ViT-{size[0].upper()}/14{' with 4 registers' if reg else ''}",
    )


def _default_table() -> dict[str, BackboneSpec]:
    table: dict[str, BackboneSpec] = {}
    for size, dim, depth in (("small", 384, 12), ("base", 768, 12), ("large", 1024, 24), ("giant", 1536, 40)):
        for reg in (False, True):
            spec = _dinov2(size, dim, depth, reg)
            table[spec.name] = spec
    table["clip_b16"] = BackboneSpec(
        "clip_b16", "vit_base_patch16_clip_384.laion2b_ft_in12k_in1k", 16, 768, 1, OPENAI_CLIP_MEAN,
        OPENAI_CLIP_STD, depth=12,
        description="LAION-2B CLIP ViT-B/16 fine-tuned IN-12k -> IN-1k at 384 px (the paper's 'CLIP'; not OpenAI)",
    )
    table["mae_b16"] = BackboneSpec("mae_b16", "vit_base_patch16_224.mae", 16, 768, 1, IMAGENET_MEAN, IMAGENET_STD,
                                    depth=12, description="MAE ViT-B/16")
    table["deit3_b16"] = BackboneSpec("deit3_b16", "deit3_base_patch16_224.fb_in1k", 16, 768, 1, IMAGENET_MEAN,
                                      IMAGENET_STD, depth=12, description="DeiT-III ViT-B/16 (IN-1k)")
    # DINOv3 (timm Eva): patch 16, 1 class + 4 register tokens, RoPE instead of learned position embeddings
    for short, size, dim, depth in (("s", "small", 384, 12), ("splus", "small_plus", 384, 12),
                                    ("b", "base", 768, 12), ("l", "large", 1024, 24),
                                    ("hplus", "huge_plus", 1280, 32)):
        table[f"dinov3_{short}16"] = BackboneSpec(
            f"dinov3_{short}16", f"vit_{size}_patch16_dinov3.lvd1689m", 16, dim, 5, IMAGENET_MEAN, IMAGENET_STD,
            depth=depth, description=f"DINOv3 ViT-{size.replace('_plus', '+').title()}/16 (LVD-1689M; RoPE, 4 registers)")
    # SigLIP 2 (timm VisionTransformer, no class token, mean = std = 0.5); the 384-px towers for dense features
    for short, arch, patch, dim, depth in (("b16", "vit_base_patch16_siglip_384", 16, 768, 12),
                                           ("l16", "vit_large_patch16_siglip_384", 16, 1024, 24),
                                           ("so400m14", "vit_so400m_patch14_siglip_378", 14, 1152, 27)):
        table[f"siglip2_{short}"] = BackboneSpec(
            f"siglip2_{short}", f"{arch}.v2_webli", patch, dim, 0, SIGLIP_MEAN, SIGLIP_STD, depth=depth,
            description=f"SigLIP 2 {arch.split('_')[1]} /{patch} (WebLI; no class token)")
    # ConvNeXt (paper Table 13): dense features from stage 2 (stride 16, like a /16 ViT), IN-22k -> IN-1k weights
    for short, size, dims in (("s", "small", (96, 192, 384, 768)), ("b", "base", (128, 256, 512, 1024)),
                              ("l", "large", (192, 384, 768, 1536))):
        table[f"convnext_{short}"] = BackboneSpec(
            f"convnext_{short}", f"convnext_{size}.fb_in22k_ft_in1k", 16, dims[2], 0, IMAGENET_MEAN, IMAGENET_STD,
            depth=4, family="convnet", feature_stage=2,
            description=f"ConvNeXt-{size.title()} (IN-22k -> IN-1k), stage-2 map (stride 16)")
    return table


BACKBONES: dict[str, BackboneSpec] = _default_table()


def register_backbone(spec: BackboneSpec, overwrite: bool = False) -> BackboneSpec:
    """Add a short name to the registry (e.g. from a plugin or notebook)."""
    backbone_family(spec)  # an unknown family fails here, not at the first model built from the entry
    if spec.name in BACKBONES and not overwrite:
        raise KeyError(f"backbone '{spec.name}' already registered (pass overwrite=True to replace it)")
    BACKBONES[spec.name] = spec
    return spec


def _timm_cfg(timm_id: str):
    import timm  # deferred: import cost (~2 s), only building a backbone needs it

    return timm.models.get_pretrained_cfg(timm_id)


def resolve_backbone(name: str) -> BackboneSpec | None:
    """Spec for a short name, or a provisional one for a timm id (completed by ``spec_from_model``).

    Returns None for a timm id: its facts are only certain once the model is built.
    """
    if name in BACKBONES:
        return BACKBONES[name]
    for spec in BACKBONES.values():  # a timm id that the table knows under a short name
        if name in (spec.timm_id, spec.architecture):
            return spec
    import timm  # deferred: import cost (~2 s), only building a backbone needs it

    arch = name.split(".", 1)[0]
    if not timm.is_model(arch):

        close = difflib.get_close_matches(name, list(BACKBONES), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownNameError(f"unknown backbone '{name}': not a corr3d short name ({', '.join(BACKBONES)}) "
                               f"nor a timm model id.{hint}", fix="set model.backbone to one of those names")
    return None


def _full_timm_id(name: str) -> str:
    """``vit_base_patch16_224`` -> ``vit_base_patch16_224.augreg2_in21k_ft_in1k`` (timm's default tag)."""
    if "." in name:
        return name
    cfg = _timm_cfg(name)
    tag = getattr(cfg, "tag", None) if cfg is not None else None
    return f"{name}.{tag}" if tag else name


def spec_from_model(name: str, model: torch.nn.Module) -> BackboneSpec:
    """Facts read from a built timm ViT and its pretrained config (for ids outside the table)."""
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    patch = model.patch_embed.patch_size
    return BackboneSpec(
        name=name, timm_id=_full_timm_id(name), patch_size=int(patch[0]), embed_dim=int(model.embed_dim),
        num_prefix_tokens=int(model.num_prefix_tokens), mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)), depth=len(model.blocks), description=f"timm {name}",
    )


def create_backbone(spec_or_name: BackboneSpec | str, timm_kwargs: dict | None = None
                    ) -> tuple[nn.Module, BackboneSpec]:
    """Build the backbone with random weights (weights are loaded separately) and return it with its spec, through
    the family of its registry entry (a timm id outside the table is built as a timm ViT)."""
    spec = spec_or_name if isinstance(spec_or_name, BackboneSpec) else resolve_backbone(spec_or_name)
    return backbone_family(spec).build(spec if spec is not None else str(spec_or_name), timm_kwargs)


def _check_spec(spec: BackboneSpec, built: BackboneSpec) -> None:
    for fact in ("patch_size", "embed_dim", "num_prefix_tokens"):
        if getattr(spec, fact) != getattr(built, fact):
            raise ValueError(f"backbone table entry '{spec.name}' says {fact}={getattr(spec, fact)} but timm built "
                             f"{getattr(built, fact)}; fix corr3d.models.backbones")


# ------------------------------------------------------------------------------------------------------- families
class BackboneFamily(abc.ABC):
    """How one kind of network is built, adapted for training and turned into a dense (B, C, h, w) grid.

    The grid's cell (i, j) is centred at input pixel (j * s + p / 2, i * s + p / 2) for ``p = spec.patch_size`` and
    stride ``s`` (= p unless an overlapping stride is asked of a family with ``overlapping_stride``), so point
    sampling (models/features.py) is the same for every family.
    """

    #: the key of this family in :data:`FAMILIES` and in ``BackboneSpec.family``
    name: str
    #: ``feature_map`` honours an overlapping patch ``stride``; otherwise the grid always has its native stride
    overlapping_stride: bool
    #: ``adapt`` puts LoRA factors on the network (unless ``unfreeze_blocks``): an adapter then holds exactly the LoRA
    #: and head tensors, whose shapes its metadata implies (models/adapter.py ``expected_adapter_shapes``)
    lora: bool

    @abc.abstractmethod
    def build(self, spec: BackboneSpec | str, timm_kwargs: dict | None = None) -> tuple[nn.Module, BackboneSpec]:
        """The network with random weights and its spec completed from it (``spec``: a table entry, or for the ViT
        family a timm id outside the table)."""

    @abc.abstractmethod
    def adapt(self, backbone: nn.Module, spec: BackboneSpec, config: Mapping) -> list[int]:
        """Freeze ``backbone`` and make trainable what the ``model:`` section ``config`` asks for (``lora``,
        ``unfreeze_blocks``), in the last blocks; returns the adapted block (or stage) indices."""

    @abc.abstractmethod
    def feature_map(self, backbone: nn.Module, x: torch.Tensor, spec: BackboneSpec, layer: int, final_norm: bool,
                    stride: int | None = None) -> torch.Tensor:
        """(B, C, h, w) dense grid of the normalised input batch ``x`` at the model's ``layer``."""

    @abc.abstractmethod
    def describe_adaptation(self, config: Mapping, adapted: list[int]) -> str:
        """What ``adapt`` trained, for messages (e.g. an adapter that does not fit)."""


class TimmViTFamily(BackboneFamily):
    """timm ``VisionTransformer`` / ``Eva`` (DINOv2/v3, CLIP, SigLIP 2, MAE, DeiT, any timm ViT id): LoRA on q/v of
    the last blocks or partially unfrozen blocks; the grid is the patch tokens after block ``layer``."""

    name, overlapping_stride, lora = "vit", True, True

    def build(self, spec, timm_kwargs=None):
        """``dynamic_img_size`` lets one model run at any input size (position embeddings resampled on the fly);
        ``num_classes=0`` drops classifier heads we never use."""
        import timm  # deferred: import cost (~2 s), only building a backbone needs it

        entry = spec if isinstance(spec, BackboneSpec) else None
        name = entry.timm_id if entry is not None else str(spec)
        kwargs = {**(entry.timm_kwargs if entry else {}), **(timm_kwargs or {})}
        not_vit = NotSupportedError(f"'{name}' is not a ViT with patch_embed/blocks; corr3d needs a plain timm "
                                    "VisionTransformer", fix="choose a ViT backbone, e.g. model.backbone=dinov2_s14")
        try:
            model = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True, **kwargs)
        except TypeError as err:
            if "dynamic_img_size" in str(err):  # only ViT constructors take it: a CNN/other family was named
                raise not_vit from None
            raise
        if not hasattr(model, "patch_embed") or not hasattr(model, "blocks"):
            raise not_vit
        built = spec_from_model(entry.name if entry else str(spec), model)
        if entry is None:
            entry = built
        elif kwargs:  # e.g. tiny test variants: the built model's facts win over the table
            entry = dataclasses.replace(entry, patch_size=built.patch_size, embed_dim=built.embed_dim,
                                        num_prefix_tokens=built.num_prefix_tokens, depth=built.depth)
        _check_spec(entry, built)
        return model, entry

    def adapt(self, backbone, spec, config):
        if config["unfreeze_blocks"] > 0:  # "partially unfrozen" replaces LoRA
            return unfreeze_last_blocks(backbone, config["unfreeze_blocks"])
        lora = config["lora"]
        if lora["blocks"] > 0:
            return apply_lora(backbone, blocks=lora["blocks"], rank=lora["rank"], alpha=lora["alpha"])
        freeze(backbone)
        return []

    @staticmethod
    def adapted_last_blocks(config: Mapping) -> int:
        """How many last blocks :meth:`adapt` makes trainable for a ``model:`` section (the rest stay pretrained)."""
        return config["unfreeze_blocks"] if config["unfreeze_blocks"] > 0 else config["lora"]["blocks"]

    def feature_map(self, backbone, x, spec, layer, final_norm, stride=None):
        tokens, grid = vit_tokens(backbone, x, layer=layer, final_norm=final_norm, stride=stride)
        return tokens_to_map(tokens, spec.num_prefix_tokens, grid)

    def describe_adaptation(self, config, adapted):
        if config["unfreeze_blocks"]:
            return f"trained blocks/stages {adapted}"
        return f"LoRA rank {config['lora']['rank']} on blocks {adapted}"


class TimmConvNeXtFamily(BackboneFamily):
    """timm ConvNeXt (paper Table 13; models/convnet.py): no attention to put LoRA on, so the last stage(s) up to
    the feature stage are trained instead; the grid is the output of stage ``spec.feature_stage`` (``layer`` and
    ``final_norm`` are ViT options and do not apply)."""

    name, overlapping_stride, lora = "convnet", False, False

    def build(self, spec, timm_kwargs=None):
        if not isinstance(spec, BackboneSpec):  # timm ids outside the table are built as ViTs (TimmViTFamily)
            raise NotSupportedError(f"'{spec}' is not a registry entry; the convnet family builds registry entries "
                                    "only", fix="register it with register_backbone(BackboneSpec(..., "
                                    "family='convnet', feature_stage=...))")
        return create_convnet(spec, timm_kwargs)

    def adapt(self, backbone, spec, config):
        return adapt_convnet(backbone, config, spec.feature_stage)

    def feature_map(self, backbone, x, spec, layer, final_norm, stride=None):
        return convnet_map(backbone, x, spec.feature_stage)

    def describe_adaptation(self, config, adapted):
        return f"trained blocks/stages {adapted}"


FAMILIES: dict[str, BackboneFamily] = {family.name: family for family in (TimmViTFamily(), TimmConvNeXtFamily())}


def backbone_family(spec: BackboneSpec | None) -> BackboneFamily:
    """The family of a registry entry (None, i.e. a timm id outside the table: the timm ViT family)."""
    if spec is None:
        return FAMILIES["vit"]
    family = FAMILIES.get(spec.family)
    if family is None:
        close = difflib.get_close_matches(str(spec.family), list(FAMILIES), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UnknownNameError(f"backbone '{spec.name}' names family '{spec.family}', which is not one of "
                               f"{', '.join(FAMILIES)}{hint}", fix=f"set BackboneSpec.family to one of "
                                                                  f"{', '.join(FAMILIES)}")
    return family
