"""Backbone registry: short names -> timm ids and the facts feature extraction needs.

The table is static so that facts (patch size, normalisation, prefix tokens) are known without building a model;
any other timm ViT id also works, its facts are then read from timm's pretrained config and the built model.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field

import torch

from corr3d.errors import NotSupportedError, UnknownNameError
from corr3d.models.convnet import create_convnet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class BackboneSpec:
    """What corr3d needs to know about a backbone.

    ``kind="vit"``: a timm ViT (``VisionTransformer`` or ``Eva``, e.g. DINOv3 with RoPE); ``patch_size`` is the patch.
    ``kind="convnet"``: a dense-map CNN (timm ConvNeXt); features are the output of stage ``feature_stage`` and
    ``patch_size`` is that stage's stride (each cell covers a stride x stride block, like a non-overlapping patch),
    ``embed_dim`` its channels and ``num_prefix_tokens`` 0.
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
    kind: str = "vit"                 # vit | convnet
    feature_stage: int | None = None  # convnet: index of the stage whose output is the feature map

    @property
    def architecture(self) -> str:
        return self.timm_id.split(".", 1)[0]

    @property
    def hf_hub_id(self) -> str:
        """Hugging Face repository timm publishes these weights under (``timm/<arch>.<tag>``)."""
        import timm  # deferred: heavy optional dependency, loaded only when used

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
            depth=4, kind="convnet", feature_stage=2,
            description=f"ConvNeXt-{size.title()} (IN-22k -> IN-1k), stage-2 map (stride 16)")
    return table


BACKBONES: dict[str, BackboneSpec] = _default_table()


def register_backbone(spec: BackboneSpec, overwrite: bool = False) -> BackboneSpec:
    """Add a short name to the registry (e.g. from a plugin or notebook)."""
    if spec.name in BACKBONES and not overwrite:
        raise KeyError(f"backbone '{spec.name}' already registered (pass overwrite=True to replace it)")
    BACKBONES[spec.name] = spec
    return spec


def _timm_cfg(timm_id: str):
    import timm  # deferred: heavy optional dependency, loaded only when used

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
    import timm  # deferred: heavy optional dependency, loaded only when used

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


def create_vit(spec_or_name: BackboneSpec | str, timm_kwargs: dict | None = None
               ) -> tuple[torch.nn.Module, BackboneSpec]:
    """Build the timm backbone with random weights (weights are loaded separately) and return it with its spec.

    ConvNeXt-style entries (``kind="convnet"``) go through :func:`corr3d.models.convnet.create_convnet`.

    ``dynamic_img_size`` lets one model run at any input size (position embeddings resampled on the fly);
    ``num_classes=0`` drops classifier heads we never use.
    """
    import timm  # deferred: heavy optional dependency, loaded only when used

    spec = spec_or_name if isinstance(spec_or_name, BackboneSpec) else resolve_backbone(spec_or_name)
    if spec is not None and spec.kind == "convnet":
        return create_convnet(spec, timm_kwargs)
    name = spec.timm_id if spec is not None else str(spec_or_name)
    kwargs = {**(spec.timm_kwargs if spec else {}), **(timm_kwargs or {})}
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
    built = spec_from_model(spec.name if spec else str(spec_or_name), model)
    if spec is None:
        spec = built
    elif kwargs:  # e.g. tiny test variants: the built model's facts win over the table
        spec = dataclasses.replace(spec, patch_size=built.patch_size, embed_dim=built.embed_dim,
                                   num_prefix_tokens=built.num_prefix_tokens, depth=built.depth)
    _check_spec(spec, built)
    return model, spec


def _check_spec(spec: BackboneSpec, built: BackboneSpec) -> None:
    for fact in ("patch_size", "embed_dim", "num_prefix_tokens"):
        if getattr(spec, fact) != getattr(built, fact):
            raise ValueError(f"backbone table entry '{spec.name}' says {fact}={getattr(spec, fact)} but timm built "
                             f"{getattr(built, fact)}; fix corr3d.models.backbones")
