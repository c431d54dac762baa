"""Backbone token maps computed once and shared by the compared models that have the same frozen backbone.

``pretrained``, ``pretrained_head_init`` and ``pretrained_default_conv`` differ only in their conv head (LoRA, when
present, starts with B = 0 and adds exact zeros): their backbones compute bit-identical tokens for the same input.
Inside :func:`shared_backbone_maps`, :meth:`corr3d.models.model.Corr3DModel.forward` looks the tokens up by
(backbone weights' content, the exact preprocessed input batch, layer, norm, stride) before running the backbone, so
an evaluation that measures those models pays for the backbone once. A hit returns the very tensor the backbone
computed for that input batch, so every number stays identical to the last digit (tests/models/test_shared.py).

Only eval-mode, no-grad forwards of an unmodified backbone take part: a trained LoRA (some B != 0), unfrozen blocks
or a convnet's adapted stages are never shared. The store stops growing at its byte budget (no eviction: the
first inputs keep hitting for every later model instead of thrashing).
"""
from __future__ import annotations

import hashlib
import weakref
from contextlib import contextmanager
from typing import Iterator

import torch

from corr3d.models.lora import LoRAQKV

_ACTIVE: list["SharedBackboneMaps"] = []


class SharedBackboneMaps:
    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.used = 0
        self.hits = 0
        self.misses = 0
        self._maps: dict[tuple, tuple[torch.Tensor, tuple[int, int]]] = {}
        self._digests: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()

    def backbone_key(self, model) -> str | None:
        """The content digest of ``model``'s backbone when it computes the plain pretrained tokens, else None."""
        if model.training or torch.is_grad_enabled() or model.is_convnet or model.config["unfreeze_blocks"] > 0:
            return None
        for module in model.vit.modules():
            if isinstance(module, LoRAQKV) and (bool(module.lora_b_q.any()) or bool(module.lora_b_v.any())):
                return None   # a trained LoRA changes the tokens
        digest = self._digests.get(model.vit)
        if digest is None:
            h = hashlib.blake2b(digest_size=16)
            for name, tensor in sorted(model.vit.state_dict().items()):
                if "lora_" in name:
                    continue
                h.update(name.encode())
                h.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
                h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
                         if tensor.numel() else b"")
            digest = h.hexdigest()
            self._digests[model.vit] = digest
        return digest

    @staticmethod
    def input_key(x: torch.Tensor) -> str:
        h = hashlib.blake2b(digest_size=16)
        h.update(str((tuple(x.shape), str(x.dtype), str(x.device))).encode())
        h.update(x.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def get(self, key: tuple):
        found = self._maps.get(key)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(self, key: tuple, tokens: torch.Tensor, grid: tuple[int, int]) -> None:
        size = tokens.numel() * tokens.element_size()
        if self.used + size <= self.max_bytes:
            self._maps[key] = (tokens, grid)
            self.used += size


def active() -> SharedBackboneMaps | None:
    return _ACTIVE[-1] if _ACTIVE else None


@contextmanager
def shared_backbone_maps(max_mb: float = 2048) -> Iterator[SharedBackboneMaps | None]:
    """Share backbone tokens among the models evaluated inside this block (``max_mb`` <= 0: off)."""
    if max_mb <= 0:
        yield None
        return
    store = SharedBackboneMaps(int(max_mb * 2 ** 20))
    _ACTIVE.append(store)
    try:
        yield store
    finally:
        _ACTIVE.remove(store)
