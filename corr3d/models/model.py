"""``Corr3DModel``: a backbone (+ LoRA or partially unfrozen blocks, through its family in models/backbones.py) +
conv head, with dense/point feature access."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from corr3d.config_schema import ModelConfig
from corr3d.errors import AdapterMismatchError, NonFiniteFeaturesError
from corr3d.geometry.pixels import pixel_grid_tensor
from corr3d.models.adapter import save_adapter, upgrade_legacy_keys
from corr3d.models.backbones import BackboneFamily, BackboneSpec, backbone_family
from corr3d.models.features import (
    POS_EMBED_INTERP_ATTR,
    paper_input_size,
    sample_feature_map,
)
from corr3d.models import shared
from corr3d.models.head import ConvHead
from corr3d.models.lora import LoRAQKV, merged_state_dict
from corr3d.models.weights import WeightsInfo

log = logging.getLogger(__name__)

# Flat aliases accepted by load_model(**overrides), e.g. load_model("dinov2_s14", head_layers=0).
FLAT_ALIASES = {"lora_rank": ("lora", "rank"), "lora_blocks": ("lora", "blocks"), "lora_alpha": ("lora", "alpha"),
                "head_layers": ("head", "num_layers"), "head_init": ("head", "init")}
# Keys that change the set or shape of trained tensors: an adapter fixes them.
STRUCTURAL_KEYS = ("lora", "unfreeze_blocks", "head", "timm_kwargs")


def finite_flag(tensor: torch.Tensor) -> torch.Tensor:
    """0-d bool tensor on ``tensor``'s device: True when every value is finite. One min/max reduction (NaN propagates
    through it, inf shows as an extreme), no tensor-sized temporary and no device sync (the caller decides when)."""
    if tensor.numel() == 0 or not tensor.is_floating_point():
        return torch.ones((), dtype=torch.bool, device=tensor.device)
    lo, hi = torch.aminmax(tensor.detach())
    return torch.isfinite(lo) & torch.isfinite(hi)


def assert_finite(tensor: torch.Tensor, what: str) -> torch.Tensor:
    """``tensor`` unchanged if every value is finite; else :class:`NonFiniteFeaturesError` naming ``what``.

    ``finite_flag`` plus one device sync: negligible next to the forward pass that produced ``tensor`` (measured in
    tests/models/test_model_finite.py)."""
    if not bool(finite_flag(tensor)):
        bad = int((~torch.isfinite(tensor)).sum())
        raise NonFiniteFeaturesError(
            f"{what} hold {bad} non-finite (NaN/inf) values of {tensor.numel()}: the weights (or the input) are "
            "broken, so any metric computed from them would be meaningless",
            fix="evaluate another adapter/weights file; if it comes from training, re-train with a lower optim.lr")
    return tensor


def model_config(base: ModelConfig | Mapping | None = None, **overrides) -> dict[str, Any]:
    """The plain-dict form of a ``model:`` section (what ``Corr3DModel.config`` holds), ``overrides`` (nested dicts or
    flat aliases) applied; unknown keys fail loudly. A typed :class:`ModelConfig` is complete (the schema gave it its
    defaults when the config was loaded) and is taken as it is; a partial mapping (Python callers) goes over the
    schema's defaults. Stdlib only: hubconf.py stays free of OmegaConf/Lightning."""
    cfg = dataclasses.asdict(base if isinstance(base, ModelConfig) else ModelConfig())
    for source in ({} if isinstance(base, ModelConfig) else base or {}), overrides:
        for key, value in dict(source).items():
            if key in FLAT_ALIASES:
                group, leaf = FLAT_ALIASES[key]
                cfg[group][leaf] = value
            elif key not in cfg:
                raise KeyError(f"unknown model option '{key}'; valid: {sorted(set(cfg) | set(FLAT_ALIASES))}")
            elif isinstance(cfg[key], dict) and key != "timm_kwargs":
                unknown = set(value or {}) - set(cfg[key])
                if unknown:
                    raise KeyError(f"unknown model.{key} option(s) {sorted(unknown)}; valid: {sorted(cfg[key])}")
                cfg[key].update(value or {})
            else:
                cfg[key] = dict(value) if key == "timm_kwargs" else value
    return cfg


class Corr3DModel(nn.Module):
    """Feature model. Images are float (B, 3, H, W) in [0, 1]; normalisation and resizing happen inside.

    ``forward`` gives the raw (B, C, h, w) map (training path); ``dense_features``/``point_features`` are
    L2-normalised. ``backbone`` is the timm network (its family: ``family``), ``head`` the conv refinement head.
    State dicts written before ``vit`` was renamed ``backbone`` load unchanged (``_upgrade_legacy_keys``).
    """

    #: evaluation (eval mode) refuses NaN/inf feature maps (``assert_finite``); training checks its own loss/weights
    check_finite: bool = True

    def __init__(self, backbone: nn.Module, spec: BackboneSpec, config: Mapping,
                 weights_info: WeightsInfo | None = None):
        super().__init__()
        self.config = model_config(config)
        self.spec = spec
        self.backbone = backbone
        # how add_pos_embed resamples position embeddings (model.pos_embed_interp; corr3d/models/features.py)
        setattr(self.backbone, POS_EMBED_INTERP_ATTR, self.config.get("pos_embed_interp", "exact"))
        self.weights_info = weights_info or WeightsInfo("unknown", None, "weights loaded by the caller")
        self.register_buffer("pixel_mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        self.adapted_blocks = self.family.adapt(self.backbone, spec, self.config)
        head = self.config["head"]
        self.head = ConvHead(spec.embed_dim, head["num_layers"], head["init"])
        # old checkpoints and adapters name the backbone's tensors 'vit.*'
        self.register_load_state_dict_pre_hook(self._upgrade_legacy_keys)

    @staticmethod
    def _upgrade_legacy_keys(module, state_dict, prefix, *args) -> None:
        """``load_state_dict`` pre-hook: ``{prefix}vit.*`` keys (written before the rename) -> ``{prefix}backbone.*``,
        in place, so ``strict`` loading and missing/unexpected-key reports see the current names."""
        upgraded = upgrade_legacy_keys(state_dict, prefix)
        if upgraded.keys() != state_dict.keys():
            state_dict.clear()
            state_dict.update(upgraded)

    # -- facts ----------------------------------------------------------------------------------------------------
    @property
    def family(self) -> BackboneFamily:
        """How this backbone is built, adapted and turned into a grid (models/backbones.py ``FAMILIES``)."""
        return backbone_family(self.spec)

    def _stride(self, stride: int | None) -> int | None:
        """An overlapping stride where the family supports it; otherwise the grid's native stride (None)."""
        return stride if self.family.overlapping_stride else None

    @property
    def patch_size(self) -> int:
        return self.spec.patch_size

    @property
    def embed_dim(self) -> int:
        return self.spec.embed_dim

    @property
    def layer(self) -> int:
        return self.config["layer"]

    def input_size(self, h: int, w: int) -> tuple[int, int]:
        """ViT input size for an (h, w) image (paper rule with this model's target_res / downsample_factor)."""
        return paper_input_size(h, w, self.patch_size, self.config["target_res"], self.config["downsample_factor"])

    # -- features -------------------------------------------------------------------------------------------------
    def preprocess(self, images: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) floats in [0, 1], got {tuple(images.shape)}")
        x = images.to(self.pixel_mean.dtype)
        if tuple(x.shape[-2:]) != tuple(input_size):
            x = F.interpolate(x, size=tuple(input_size), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.pixel_mean) / self.pixel_std

    def forward(self, images: torch.Tensor, input_size: tuple[int, int] | None = None,
                stride: int | None = None) -> torch.Tensor:
        """Raw (not normalised) (B, C, h, w) map: the backbone family's dense grid -> conv head."""
        input_size = tuple(input_size or self.input_size(*images.shape[-2:]))
        fmap = self.head(self._backbone_map(self.preprocess(images, input_size), self._stride(stride)))
        if self.check_finite and not self.training and not torch.jit.is_tracing() \
                and not torch.compiler.is_compiling():
            assert_finite(fmap, f"features of {self.name_for_errors()}")
        return fmap

    def _backbone_map(self, x: torch.Tensor, stride: int | None) -> torch.Tensor:
        """The backbone's (B, C, h, w) grid for the preprocessed batch ``x``; inside ``shared_backbone_maps`` computed
        once per (frozen backbone, input) for every compared model that shares that backbone (models/shared.py)."""
        store = shared.active()
        backbone = store.backbone_key(self) if store is not None else None
        key = None
        if backbone is not None:
            key = (backbone, store.input_key(x), self.config["layer"], bool(self.config["final_norm"]), stride)
            found = store.get(key)
            if found is not None:
                return found
        fmap = self.family.feature_map(self.backbone, x, self.spec, layer=self.config["layer"],
                                       final_norm=self.config["final_norm"], stride=stride)
        if key is not None:
            store.put(key, fmap)
        return fmap

    def name_for_errors(self) -> str:
        """Which model this is, for error messages: backbone, weights and (if loaded) the adapter file."""
        adapter = getattr(self, "adapter_source", None)
        return (f"model {self.spec.name} ({self.weights_info.source}: {self.weights_info.label})"
                + (f" with adapter {adapter}" if adapter else ""))

    def dense_features(self, images: torch.Tensor, input_size: tuple[int, int] | None = None,
                       stride: int | None = None) -> torch.Tensor:
        """(B, C, h, w) feature map, L2-normalised over C."""
        return F.normalize(self(images, input_size=input_size, stride=stride), dim=1)

    def sample_points(self, fmap: torch.Tensor, points_xy: torch.Tensor, image_size: tuple[int, int],
                      input_size: tuple[int, int] | None = None, stride: int | None = None,
                      normalize: bool = True) -> torch.Tensor:
        """(B, N, C) bilinear, patch-centre aligned features of a map this model produced for images of
        ``image_size`` = (H, W) at pixel points (B, N, 2); pass the same ``input_size``/``stride`` as for the map."""
        input_size = tuple(input_size or self.input_size(*image_size))
        return sample_feature_map(fmap, points_xy, tuple(image_size), input_size=input_size,
                                  patch_size=self.patch_size, stride=self._stride(stride), normalize=normalize)

    def point_features(self, images: torch.Tensor, points_xy: torch.Tensor, input_size: tuple[int, int] | None = None,
                       stride: int | None = None) -> torch.Tensor:
        """(B, N, C) L2-normalised features at pixel points (B, N, 2) of ``images``."""
        fmap = self(images, input_size=input_size, stride=stride)
        return self.sample_points(fmap, points_xy, tuple(images.shape[-2:]), input_size, stride)

    def pixel_features(self, fmap: torch.Tensor, image_size: tuple[int, int], input_size=None, stride=None,
                       step: int = 1) -> torch.Tensor:
        """Upsample a map to every ``step``-th pixel centre of the image -> (B, C, H/step, W/step), normalised.

        Uses the same patch-centre alignment as ``sample_points`` (the authors' whole-map resize does not).
        """
        h, w = image_size
        points = pixel_grid_tensor((h, w), device=fmap.device, step=step)
        feats = self.sample_points(fmap, points.expand(fmap.shape[0], -1, -1), image_size, input_size, stride)
        rows, cols = len(range(0, h, step)), len(range(0, w, step))
        return feats.transpose(1, 2).reshape(fmap.shape[0], -1, rows, cols)

    # -- training / export ----------------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """What training changed: LoRA factors, unfrozen blocks and the head (not the frozen backbone)."""
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        return {k: v.detach() for k, v in self.state_dict().items()
                if k in trainable or k.startswith("head.") or ".lora_" in k}

    def merged_backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """Plain timm state dict of the backbone with LoRA folded into qkv (loads into timm with no corr3d code)."""
        return merged_state_dict(self.backbone)

    def save_adapter(self, path) -> Path:
        return save_adapter(self, path)

    def load_adapter_state(self, tensors: Mapping[str, torch.Tensor], source=None) -> None:
        """Load adapter tensors after checking they are exactly this model's adapter tensors with its shapes;
        otherwise :class:`AdapterMismatchError` naming ``source`` (the file) and expected vs found. Tensors saved
        before the rename (``vit.*``) are accepted under their current names."""
        tensors = upgrade_legacy_keys(tensors)
        expected = self.adapter_state_dict()
        wrong = [f"'{k}' expected {tuple(expected[k].shape)}, found {tuple(v.shape)}" for k, v in tensors.items()
                 if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        if wrong or missing or unexpected:
            parts = [f"wrong shapes: {'; '.join(wrong[:4])}" if wrong else "",
                     f"missing {missing[:6]}" if missing else "", f"unexpected {unexpected[:6]}" if unexpected else ""]
            raise AdapterMismatchError(f"adapter tensors do not fit {self.spec.name} ({self.describe_structure()}): "
                                       + ", ".join(p for p in parts if p), path=source,
                                       fix="load the adapter with the backbone and structure it was trained with "
                                           "(load_model(None, adapter=PATH) rebuilds them)")
        self.load_state_dict(dict(tensors), strict=False)
        if source is not None:
            self.adapter_source = str(source)

    def describe_structure(self) -> str:
        trained = self.family.describe_adaptation(self.config, self.adapted_blocks)
        return f"{trained}, {self.head.num_layers} head layer(s), width {self.embed_dim}"

    def describe(self) -> str:
        trainable = sum(p.numel() for p in self.trainable_parameters())
        total = sum(p.numel() for p in self.parameters())
        lora = sum(isinstance(m, LoRAQKV) for m in self.backbone.modules())
        return (f"{self.spec.name} ({self.spec.timm_id}, patch {self.patch_size}, dim {self.embed_dim}); "
                f"weights: {self.weights_info.source} - {self.weights_info.label}; LoRA blocks {lora}, "
                f"unfrozen blocks {self.config['unfreeze_blocks']}, head {self.head.num_layers}x3x3 "
                f"({self.head.init}); trainable {trainable:,} / {total:,} parameters")
