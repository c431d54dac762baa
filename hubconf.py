"""torch.hub entry points: ``torch.hub.load("<repo>", "dinov2_s14", adapter=None, weights="auto")``.

Light on purpose: imports only torch/timm (through corr3d.models), never Lightning or the training stack.
"""
dependencies = ["torch", "timm"]


def corr3d_model(backbone: str = "dinov2_s14", weights: str = "auto", adapter=None, **overrides):
    """Any corr3d backbone (short name or timm ViT id), optionally with a finetuned adapter."""
    from corr3d.models import load_model

    return load_model(backbone, weights=weights, adapter=adapter, **overrides)


def _entry(name: str):
    def entry(adapter=None, weights: str = "auto", **overrides):
        return corr3d_model(name, weights=weights, adapter=adapter, **overrides)

    entry.__name__ = name
    entry.__doc__ = (f"corr3d feature model on {name}; ``adapter``: path to adapter.safetensors (or its run "
                     "directory); ``weights``: auto | hf | imgfocus | random | path.")
    return entry


dinov2_s14 = _entry("dinov2_s14")
dinov2_b14 = _entry("dinov2_b14")
dinov2_l14 = _entry("dinov2_l14")
dinov2_g14 = _entry("dinov2_g14")
dinov2_s14_reg = _entry("dinov2_s14_reg")
dinov2_b14_reg = _entry("dinov2_b14_reg")
dinov2_l14_reg = _entry("dinov2_l14_reg")
dinov2_g14_reg = _entry("dinov2_g14_reg")
clip_b16 = _entry("clip_b16")
mae_b16 = _entry("mae_b16")
deit3_b16 = _entry("deit3_b16")
