"""Dense ViT features: the paper's resize rule, token maps at any patch size/stride, patch-centre point sampling.

Pixel convention (corr3d/geometry/pixels.py): continuous (x, y), the image's top-left corner is (0, 0), the centre of pixel
(row r, col c) is (c + 0.5, r + 0.5). A token at grid column j of a ViT with patch p and stride s covers input pixels
[j*s, j*s + p), so its centre sits at x_in = j*s + p/2. Sampling inverts exactly that; it does not assume 14-px
patches (the authors' timm path did, and misplaced points on /16 models).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from corr3d.models import shared



def paper_input_size(h: int, w: int, patch_size: int, target_res: int = 640, downsample_factor: int = 8
                     ) -> tuple[int, int]:
    """Paper rule: long side -> ``target_res``, grid = size // ``downsample_factor``, input = grid * patch.

    512x512 with patch 14 -> 80x80 grid -> 1120x1120 input; with patch 16 -> 1280x1280.
    """
    scale = target_res / max(h, w)
    grid_h = max(1, int(round(h * scale)) // downsample_factor)
    grid_w = max(1, int(round(w * scale)) // downsample_factor)
    return grid_h * patch_size, grid_w * patch_size


def token_grid(input_size: tuple[int, int], patch_size: int, stride: int | None = None) -> tuple[int, int]:
    """Token grid of a patch embedding with kernel ``patch_size`` and ``stride`` (default: non-overlapping)."""
    stride = stride or patch_size
    return tuple((n - patch_size) // stride + 1 for n in input_size)  # type: ignore[return-value]


def points_to_grid(points_xy: torch.Tensor, image_size: tuple[int, int], input_size: tuple[int, int],
                   patch_size: int, stride: int | None = None) -> torch.Tensor:
    """Pixel coordinates of the original image -> fractional token indices (u, v) (token centres are integers)."""
    stride = stride or patch_size
    h, w = image_size
    h_in, w_in = input_size
    scale = points_xy.new_tensor([w_in / w, h_in / h])
    return (points_xy * scale - patch_size / 2.0) / stride


def _grid_to_normalised(uv: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Token indices -> grid_sample coordinates with align_corners=True (index 0 -> -1, last -> +1)."""
    sizes = uv.new_tensor([grid_hw[1], grid_hw[0]]) - 1.0
    # A one-token axis has no extent; any coordinate maps onto that token.
    return torch.where(sizes > 0, 2.0 * uv / sizes.clamp(min=1.0) - 1.0, torch.zeros_like(uv))


def sample_grid(fmap: torch.Tensor, uv: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Bilinear sampling of (B, C, h, w) at fractional token indices uv (B, N, 2); border-clamped -> (B, N, C)."""
    grid = _grid_to_normalised(uv.to(fmap.dtype), fmap.shape[-2:]).unsqueeze(1)  # (B, 1, N, 2)
    out = F.grid_sample(fmap, grid, mode="bilinear", padding_mode="border", align_corners=True)
    out = out.squeeze(2).transpose(1, 2)
    return F.normalize(out, dim=-1) if normalize else out


def sample_feature_map(fmap: torch.Tensor, points_xy: torch.Tensor, image_size: tuple[int, int],
                       input_size: tuple[int, int] | None = None, patch_size: int | None = None,
                       stride: int | None = None, normalize: bool = True) -> torch.Tensor:
    """Features of (B, C, h, w) ``fmap`` at sub-pixel points (B, N, 2) of images of size ``image_size`` = (H, W).

    Default case (stride == patch, input = grid * patch, as the paper's rule produces): the map tiles the image
    exactly, so token j's centre is at x = (j + 0.5) * W / w whatever the patch size. Pass ``input_size``,
    ``patch_size`` and ``stride`` for overlapping strides or inputs that are not a multiple of the patch.
    L2-normalised over C unless ``normalize=False``.
    """
    h, w = fmap.shape[-2:]
    if patch_size is None:
        if input_size is not None or stride is not None:
            raise ValueError("sample_feature_map: input_size/stride need patch_size")
        patch_size, input_size = 1, (h, w)  # token j spans [j, j+1) in units of the map
    elif input_size is None:
        input_size = (h * patch_size, w * patch_size)
    uv = points_to_grid(points_xy, image_size, input_size, patch_size, stride)
    return sample_grid(fmap, uv, normalize=normalize)


def tokens_to_map(tokens: torch.Tensor, num_prefix_tokens: int, grid_hw: tuple[int, int]) -> torch.Tensor:
    """(B, prefix + h*w, C) tokens -> (B, C, h, w) map with class/register tokens dropped."""
    patches = tokens[:, num_prefix_tokens:]
    b, n, c = patches.shape
    if n != grid_hw[0] * grid_hw[1]:
        raise ValueError(f"{n} patch tokens do not fill a {grid_hw} grid")
    return patches.transpose(1, 2).reshape(b, c, grid_hw[0], grid_hw[1])


def patch_embed(vit: torch.nn.Module, images: torch.Tensor, stride: int | None = None) -> torch.Tensor:
    """Patch embedding with an optional overlapping ``stride`` -> (B, h, w, C).

    Runs the conv functionally instead of mutating ``patch_embed.proj.stride`` in place: the authors' tracking code
    did that and broke later tasks in the same process. Pixels beyond the last full patch are
    ignored, as timm does.
    """
    proj = vit.patch_embed.proj
    x = F.conv2d(images, proj.weight, proj.bias, stride=stride or proj.stride)
    x = x.permute(0, 2, 3, 1)
    return vit.patch_embed.norm(x)


# model.pos_embed_interp: how position embeddings are resampled to the token grid (``add_pos_embed``); the model
# sets it on its ViT as the attribute POS_EMBED_INTERP_ATTR
POS_EMBED_INTERP = ("exact", "dinov2")
POS_EMBED_INTERP_ATTR = "corr3d_pos_embed_interp"
DINOV2_INTERPOLATE_OFFSET = 0.1  # official DINOv2 ``interpolate_offset``


def dinov2_resample_pos_embed(pos_embed: torch.Tensor, new_size: tuple[int, int], old_size: tuple[int, int],
                              num_prefix_tokens: int, offset: float = DINOV2_INTERPOLATE_OFFSET) -> torch.Tensor:
    """Official DINOv2 ``interpolate_pos_encoding``: the (M, M) patch table is resized bicubically (no antialias)
    with ``scale_factor = ((h + offset) / M, (w + offset) / M)`` rather than to the size (h, w); torch then maps
    output pixels back with 1 / scale_factor, so the sampled positions differ slightly from the exact resize.
    Returned unchanged on the native grid, as there; computed in fp32 and cast back."""
    h, w = new_size
    if (h, w) == tuple(old_size):
        return pos_embed
    m_h, m_w = old_size
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = patches.shape[-1]
    grid = patches.float().reshape(1, m_h, m_w, dim).permute(0, 3, 1, 2)
    out = F.interpolate(grid, scale_factor=((h + offset) / m_h, (w + offset) / m_w), mode="bicubic",
                        antialias=False)
    if tuple(out.shape[-2:]) != (h, w):
        raise ValueError(f"DINOv2 interpolation gave a {tuple(out.shape[-2:])} grid for {(h, w)}")
    out = out.permute(0, 2, 3, 1).reshape(1, h * w, dim).to(pos_embed.dtype)
    return torch.cat([prefix, out], dim=1)


def add_pos_embed(vit: torch.nn.Module, x: torch.Tensor, interp: str | None = None) -> torch.Tensor:
    """timm's ``_pos_embed`` for (B, h, w, C) patch tokens, resampling position embeddings bicubically WITHOUT
    antialiasing, as official DINOv2 and HF ``Dinov2Model`` do (timm's dynamic path antialiases, which changes
    features whenever the grid is smaller than the native one, e.g. 448 px on DINOv2).

    ``interp`` (default: the ViT's ``POS_EMBED_INTERP_ATTR`` attribute, else ``exact``): ``exact`` resizes to the
    grid size; ``dinov2`` uses the official scale factor with the +0.1 offset (``dinov2_resample_pos_embed``)."""
    from timm.layers import resample_abs_pos_embed  # deferred: import cost (timm, ~2 s)

    interp = interp or getattr(vit, POS_EMBED_INTERP_ATTR, "exact")
    if interp not in POS_EMBED_INTERP:
        raise ValueError(f"pos_embed_interp must be one of {POS_EMBED_INTERP}, got {interp!r}")
    b, h, w, c = x.shape
    prefix = [t.expand(b, -1, -1) for t in (vit.cls_token, vit.reg_token) if t is not None]
    x = x.reshape(b, h * w, c)
    if vit.pos_embed is None:
        return torch.cat(prefix + [x], dim=1)
    num_pos_prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
    if interp == "dinov2":
        pos = dinov2_resample_pos_embed(vit.pos_embed, (h, w), tuple(vit.patch_embed.grid_size), num_pos_prefix)
    else:
        pos = resample_abs_pos_embed(vit.pos_embed, new_size=(h, w), old_size=vit.patch_embed.grid_size,
                                     num_prefix_tokens=num_pos_prefix, interpolation="bicubic", antialias=False)
    if vit.no_embed_class:  # DeiT-3 / DINOv2-reg style: prefix tokens carry no position embedding
        x = torch.cat(prefix + [x + pos], dim=1)
    else:
        x = torch.cat(prefix + [x], dim=1) + pos
    return vit.pos_drop(x)


def vit_tokens(vit: torch.nn.Module, images: torch.Tensor, layer: int = -1, final_norm: bool = True,
               stride: int | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """Tokens (B, prefix + h*w, C) after block ``layer`` (-1: last), final LayerNorm optional, and the grid (h, w).

    Position embeddings are resampled to the grid (``add_pos_embed``). Blocks after ``layer`` are skipped.
    RoPE ViTs (timm ``Eva``, e.g. DINOv3) go through :func:`rope_vit_tokens`.
    """
    if getattr(vit, "rope", None) is not None:
        return rope_vit_tokens(vit, images, layer, final_norm, stride)
    depth = len(vit.blocks)
    last = layer % depth if layer < 0 else layer
    if not 0 <= last < depth:
        raise ValueError(f"layer {layer} out of range for a {depth}-block ViT")
    prefixes = _shared_prefixes(vit)
    frozen = 0 if prefixes is None else min(frozen_prefix_depth(vit), depth - prefixes.adapted_last, last + 1)
    if frozen <= 0:
        x, grid = vit_prefix_tokens(vit, images, last + 1, stride)
        return (vit.norm(x) if final_norm else x), grid
    # the leading blocks' tokens are the same for every model that keeps them pretrained (models/shared.py): a
    # finetuned model continues from the tokens its pretrained backbone computed
    key = prefixes.key(vit, frozen, images, stride, getattr(vit, POS_EMBED_INTERP_ATTR, "exact"))
    found = prefixes.get(key)
    if found is None:
        found = vit_prefix_tokens(vit, images, frozen, stride)
        prefixes.put(key, *found)
    x, grid = found
    return vit_tokens_from(vit, x.to(images.device), frozen, last, final_norm), grid   # kept tokens: on CPU


def _shared_prefixes(vit: torch.nn.Module):
    """The active store's frozen-prefix tokens (None: no store, prefixes off, training or grad)."""
    store = shared.active()
    if store is None or store.prefixes is None or vit.training or torch.is_grad_enabled():
        return None
    return store.prefixes


def rope_vit_tokens(vit: torch.nn.Module, images: torch.Tensor, layer: int = -1, final_norm: bool = True,
                    stride: int | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """``vit_tokens`` for timm ``Eva`` models with rotary position embeddings (DINOv3): the rotary table is built
    for the actual (h, w) token grid by the model's own ``_pos_embed`` (built with ``dynamic_img_size``), so any
    resolution works; class and register tokens are prepended there and stripped by ``tokens_to_map``."""
    x = patch_embed(vit, images, stride)
    grid = (x.shape[1], x.shape[2])
    x, rope = vit._pos_embed(x)
    x = vit.norm_pre(x)
    depth = len(vit.blocks)
    last = layer % depth if layer < 0 else layer
    if not 0 <= last < depth:
        raise ValueError(f"layer {layer} out of range for a {depth}-block ViT")
    mixed = getattr(vit, "rope_mixed", False) and rope is not None  # depth-dependent tables: one per block
    for index, block in enumerate(vit.blocks[: last + 1]):
        x = block(x, rope=rope[index] if mixed else rope)
    if final_norm:
        x = vit.norm(x)
    return x, grid


# -- GPU path: mixed precision and fused attention ----------------------------------------------------------------
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def autocast_dtype(device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: plain fp32).

    ``auto``: bf16 on CUDA (H100/A100 tensor cores; bf16 keeps fp32's range, so no loss scaling), fp32 elsewhere
    (CPU bf16 matmuls are slower than fp32 without AMX). ``bf16``/``fp16`` force autocast, on CPU too where torch
    supports it (the CPU tests exercise the same code path as CUDA)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device_type = torch.device(device).type
    if precision == "fp32" or (precision == "auto" and device_type != "cuda"):
        return None
    return torch.float16 if precision == "fp16" else torch.bfloat16


def autocast_context(device, precision: str = "auto"):
    """``torch.autocast`` for ``autocast_dtype(device, precision)``, or a no-op context for fp32."""
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def fused_attention_status(vit: torch.nn.Module) -> dict[str, object]:
    """Whether the timm blocks run ``F.scaled_dot_product_attention`` (fused flash / memory-efficient kernels on
    CUDA) instead of the explicit softmax(QK^T)V: timm decides per ``Attention`` module at construction from
    ``timm.layers.use_fused_attn()`` (env ``TIMM_FUSED_ATTN``)."""
    from timm.layers import use_fused_attn  # deferred: import cost (timm, ~2 s)

    flags = [bool(getattr(block.attn, "fused_attn", False)) for block in getattr(vit, "blocks", [])]
    return {"timm_use_fused_attn": bool(use_fused_attn()), "blocks": len(flags), "fused_blocks": sum(flags),
            "all_fused": bool(flags) and all(flags)}


def enable_fused_attention(vit: torch.nn.Module) -> int:
    """Switch every timm ``Attention`` block to SDPA (same maths; returns how many blocks were switched)."""
    switched = 0
    for block in getattr(vit, "blocks", []):
        attn = getattr(block, "attn", None)
        if attn is not None and hasattr(attn, "fused_attn") and not attn.fused_attn:
            attn.fused_attn = True
            switched += 1
    return switched


# -- frozen-prefix activations --------------------------------------------------------------------------------
def frozen_prefix_depth(vit: torch.nn.Module) -> int:
    """Number of leading blocks with no trainable parameter (LoRA/unfrozen blocks are the last k): their output is
    a deterministic function of the input image, so it can be cached per view when augmentation is off."""
    depth = 0
    for block in vit.blocks:
        if any(p.requires_grad for p in block.parameters()):
            break
        depth += 1
    stem = [vit.patch_embed, getattr(vit, "norm_pre", None)]
    stem_trainable = any(p.requires_grad for m in stem if m is not None for p in m.parameters())
    pos_trainable = any(t is not None and t.requires_grad for t in (vit.pos_embed, vit.cls_token,
                                                                     getattr(vit, "reg_token", None)))
    return 0 if stem_trainable or pos_trainable else depth


def vit_prefix_tokens(vit: torch.nn.Module, images: torch.Tensor, depth: int,
                      stride: int | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """Tokens after the first ``depth`` blocks (the cacheable part of ``vit_tokens``) and the grid."""
    x = patch_embed(vit, images, stride)
    grid = (x.shape[1], x.shape[2])
    x = add_pos_embed(vit, x)
    x = vit.patch_drop(x)
    x = vit.norm_pre(x)
    for block in vit.blocks[:depth]:
        x = block(x)
    return x, grid


def vit_tokens_from(vit: torch.nn.Module, x: torch.Tensor, start: int, layer: int = -1,
                    final_norm: bool = True) -> torch.Tensor:
    """Continue ``vit_tokens`` from the output of block ``start - 1`` (``vit_prefix_tokens(..., depth=start)``)."""
    depth = len(vit.blocks)
    last = layer % depth if layer < 0 else layer
    if not 0 <= last < depth or start > last + 1:
        raise ValueError(f"cannot continue from block {start} to layer {layer} of a {depth}-block ViT")
    for block in vit.blocks[start: last + 1]:
        x = block(x)
    return vit.norm(x) if final_norm else x
