"""LoRA on the q and v slices of timm's fused ``attn.qkv``, partial unfreezing, and merging.

``LoRAQKV`` keeps the wrapped Linear's ``weight``/``bias`` under the same names, so a LoRA model's state dict is a
plain timm state dict plus ``lora_*`` entries, and merging yields exactly timm's keys.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LoRAQKV(nn.Module):
    """qkv(x) = W x + b, with q += s * B_q A_q x and v += s * B_v A_v x; k untouched.

    A: Kaiming-uniform (a = sqrt(5)), B: zeros, so step 0 equals the frozen model bit for bit.
    s = alpha / rank when alpha is given, else 1 (the authors used no scaling).
    """

    def __init__(self, base: nn.Linear, rank: int = 4, alpha: float | None = None):
        super().__init__()
        if base.out_features % 3:
            raise ValueError("attn.qkv must be a fused q/k/v projection (out_features = 3 * dim)")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.dim = base.out_features // 3
        self.rank, self.alpha = rank, alpha
        self.scale = 1.0 if alpha is None else alpha / rank
        self.weight, self.bias = base.weight, base.bias  # the same Parameters: keys stay 'qkv.weight'/'qkv.bias'
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        factory = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_a_q = nn.Parameter(torch.empty(rank, self.in_features, **factory))
        self.lora_b_q = nn.Parameter(torch.zeros(self.dim, rank, **factory))
        self.lora_a_v = nn.Parameter(torch.empty(rank, self.in_features, **factory))
        self.lora_b_v = nn.Parameter(torch.zeros(self.dim, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_a_q, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.lora_a_v, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = F.linear(x, self.weight, self.bias)
        q, k, v = qkv.split(self.dim, dim=-1)
        q = q + (x @ self.lora_a_q.t()) @ self.lora_b_q.t() * self.scale
        v = v + (x @ self.lora_a_v.t()) @ self.lora_b_v.t() * self.scale
        return torch.cat([q, k, v], dim=-1)

    def delta_weight(self) -> torch.Tensor:
        """The (3*dim, in) update that merging adds to ``weight``."""
        zeros = torch.zeros(self.dim, self.in_features, device=self.weight.device, dtype=self.weight.dtype)
        return torch.cat([self.lora_b_q @ self.lora_a_q * self.scale, zeros,
                          self.lora_b_v @ self.lora_a_v * self.scale], dim=0)

    def merged_linear(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight + self.delta_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, scale={self.scale:g}, targets=q,v"


def freeze(module: nn.Module) -> None:
    for param in module.parameters():
        param.requires_grad_(False)


def _last_blocks(vit: nn.Module, count: int) -> list[nn.Module]:
    depth = len(vit.blocks)
    if not 0 <= count <= depth:
        raise ValueError(f"cannot adapt the last {count} blocks of a {depth}-block ViT")
    return list(vit.blocks)[depth - count:] if count else []


def apply_lora(vit: nn.Module, blocks: int = 4, rank: int = 4, alpha: float | None = None) -> list[int]:
    """Freeze ``vit`` and wrap ``attn.qkv`` of its last ``blocks`` blocks; returns the adapted block indices."""
    freeze(vit)
    depth = len(vit.blocks)
    adapted = []
    for offset, block in enumerate(_last_blocks(vit, blocks)):
        if getattr(block.attn, "q_bias", None) is not None and hasattr(block.attn, "qkv_bias_separate"):
            # timm Eva with separate q/v biases (DINOv3 "qkvb") calls F.linear(x, qkv.weight, bias) and would bypass
            # the wrapper; the "separate" mode calls qkv(x) and then adds the bias (same maths)
            block.attn.qkv_bias_separate = True
        if not isinstance(block.attn.qkv, LoRAQKV):
            block.attn.qkv = LoRAQKV(block.attn.qkv, rank=rank, alpha=alpha)
        adapted.append(depth - blocks + offset)
    return adapted


def unfreeze_last_blocks(vit: nn.Module, count: int) -> list[int]:
    """'Partially unfrozen' alternative to LoRA: everything frozen except the last ``count`` blocks."""
    freeze(vit)
    depth = len(vit.blocks)
    for block in _last_blocks(vit, count):
        for param in block.parameters():
            param.requires_grad_(True)
    return list(range(depth - count, depth))


def merge_lora(vit: nn.Module) -> nn.Module:
    """In place: replace every ``LoRAQKV`` by a plain Linear holding W + s B A (frozen); returns ``vit``."""
    for block in vit.blocks:
        if isinstance(block.attn.qkv, LoRAQKV):
            block.attn.qkv = block.attn.qkv.merged_linear().requires_grad_(False)
    return vit


def merged_state_dict(vit: nn.Module) -> dict[str, torch.Tensor]:
    """A plain timm state dict with LoRA folded into the qkv weights (``vit`` is left unchanged)."""
    state = {}
    for key, value in vit.state_dict().items():
        if ".lora_" in key:
            continue
        state[key] = value.detach().clone()
    for index, block in enumerate(getattr(vit, "blocks", [])):  # convnets have no blocks (models/convnet.py)
        if isinstance(block.attn.qkv, LoRAQKV):
            state[f"blocks.{index}.attn.qkv.weight"] += block.attn.qkv.delta_weight().detach()
    return state
