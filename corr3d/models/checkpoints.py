"""Import the 3DCorrEnhance authors' released Lightning checkpoints as corr3d adapters (and export back).

Their format (read from their ``finetune.py`` / ``finetune_timm.py`` ``on_save_checkpoint`` and ``utils/model.py``
``_LoRA_qkv``):

- ``checkpoint["state_dict"] = {"refine_conv": <nn.Conv2d(C, C, 3, padding=1).state_dict()>}`` (``weight``
  (C, C, 3, 3), ``bias`` (C,)): one 3x3 conv on the final-norm patch-token map;
- top-level ``w_a_000 ... w_a_{2n-1}`` and ``w_b_000 ... w_b_{2n-1}``: the ``nn.Linear`` weights of the LoRA factors
  of the last ``n`` (= 4) blocks, in block order and, within a block, **q then v** (index ``2i`` = q of adapted block
  ``i``, ``2i + 1`` = v). ``w_a`` is (r, C) (``Linear(C, r)``), ``w_b`` is (C, r) (``Linear(r, C)``);
- the update is ``qkv[..., :C] += B_q A_q x`` and ``qkv[..., -C:] += B_v A_v x`` with **no scaling** (alpha/r = 1),
  which is corr3d's ``LoRAQKV`` with ``alpha=None``. Hyper-parameters (r, backbone) are not stored: ``r`` is read
  from the tensor shapes and the backbone must be named.

Lightning writes these files with ``torch.save``; we read them with ``torch.load(weights_only=True)`` (tensors, dicts,
strings and numbers only); pass ``trust_pickle=True`` only for a file you trust whose extra entries need more.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

from corr3d.errors import AdapterMismatchError, Corr3dUserError, DataFileError
from corr3d.models.adapter import BACKBONE_PREFIX, read_adapter
from corr3d.models.factory import create_model
from corr3d.models.weights import WeightsInfo
from corr3d.utils.safe_load import check_finite_tensors, load_failure_reason, unsafe_pickle_globals

log = logging.getLogger(__name__)

_KEY = re.compile(r"^w_([ab])_(\d{3})$")
# Base weights the authors' LoRA sits on: torch.hub DINOv2 (= timm ``*.lvd142m``) and timm pretrained otherwise.
DEFAULT_BASE_WEIGHTS = "hf"


_IMPORT_FIX = ("pass the authors' released .ckpt of this backbone (3DCorrEnhance: dinov2_small/base/large.ckpt, "
               "trained on the last 4 blocks) and the --backbone it was trained on")


def read_authors_checkpoint(path, trust_pickle: bool = False) -> dict[str, Any]:
    """The checkpoint dict of a ``.ckpt`` written by the authors' Lightning module.

    A file that is not a complete checkpoint (truncated zip, random bytes) raises :class:`DataFileError` saying so;
    only a complete pickle that names globals ``weights_only`` refuses suggests ``trust_pickle`` (with those names).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as err:  # noqa: BLE001 - UnpicklingError (refused globals or garbage), RuntimeError (zip), ...
        unsafe = None if trust_pickle else unsafe_pickle_globals(path)
        if unsafe:
            raise DataFileError(f"torch.load(weights_only=True) refused the checkpoint: it pickles "
                                f"{', '.join(unsafe[:5])}, not only tensors and containers", path=path,
                                fix="if you trust this file, import it with trust_pickle=True (CLI: --trust-pickle); "
                                    "unpickling it can run code") from None
        raise DataFileError(f"not a readable checkpoint: truncated or corrupt ({load_failure_reason(err)})", path=path,
                            fix="download the checkpoint again (compare its size/checksum with the release)") from None
    if not isinstance(ckpt, dict):
        raise DataFileError(f"not a Lightning checkpoint dict (found a {type(ckpt).__name__})", path=path,
                            fix=_IMPORT_FIX)
    return ckpt


def check_authors_finite(ckpt: dict, path) -> None:
    """Refuse NaN/inf in the tensors an import uses (LoRA factors by their ``w_a_``/``w_b_`` names, refine_conv)."""
    named = {str(k): v for k, v in ckpt.items() if _KEY.match(str(k))}
    state = ckpt.get("state_dict")
    conv = state.get("refine_conv") if isinstance(state, dict) else None
    if isinstance(conv, dict):
        named.update({f"state_dict.refine_conv.{k}": v for k, v in conv.items()})
    check_finite_tensors(named, path, what="checkpoint tensor")


def lora_pairs(ckpt: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(A list, B list) ordered by their 3-digit index; validates that both lists are complete and even."""
    found: dict[str, dict[int, torch.Tensor]] = {"a": {}, "b": {}}
    for key, value in ckpt.items():
        match = _KEY.match(str(key))
        if match:
            found[match.group(1)][int(match.group(2))] = value
    n = len(found["a"])
    if n == 0 or n % 2 or sorted(found["a"]) != list(range(n)) or sorted(found["b"]) != list(range(n)):
        raise ValueError(f"not a 3DCorrEnhance checkpoint: expected w_a_000..w_a_{{2n-1}} and w_b_000..w_b_{{2n-1}}, "
                         f"found a={sorted(found['a'])}, b={sorted(found['b'])}")
    return [found["a"][i] for i in range(n)], [found["b"][i] for i in range(n)]


def refine_conv_state(ckpt: dict) -> dict[str, torch.Tensor]:
    state = ckpt.get("state_dict")
    conv = state.get("refine_conv") if isinstance(state, dict) else None
    if not isinstance(conv, dict) or "weight" not in conv:
        raise ValueError("not a 3DCorrEnhance checkpoint: state_dict['refine_conv'] (the conv head) is missing")
    return dict(conv)


def authors_structure(ckpt: dict) -> dict[str, Any]:
    """The corr3d ``model:`` structure the checkpoint needs: LoRA rank/blocks (alpha None) and one default conv."""
    a_list, b_list = lora_pairs(ckpt)
    rank, dim = a_list[0].shape
    for i, (a, b) in enumerate(zip(a_list, b_list)):
        if tuple(a.shape) != (rank, dim) or tuple(b.shape) != (dim, rank):
            raise ValueError(f"w_a_{i:03d}/w_b_{i:03d} have shapes {tuple(a.shape)}/{tuple(b.shape)}; expected "
                             f"({rank}, {dim})/({dim}, {rank})")
    conv = refine_conv_state(ckpt)
    if tuple(conv["weight"].shape) != (dim, dim, 3, 3):
        raise ValueError(f"refine_conv.weight is {tuple(conv['weight'].shape)}; expected ({dim}, {dim}, 3, 3)")
    return {"embed_dim": int(dim), "lora": {"rank": int(rank), "blocks": len(a_list) // 2, "alpha": None},
            "head": {"num_layers": 1, "init": "default"}, "unfreeze_blocks": 0}


def authors_to_corr3d(ckpt: dict, depth: int) -> dict[str, torch.Tensor]:
    """corr3d adapter tensors (``Corr3DModel`` keys) of an authors' checkpoint for a ``depth``-block ViT."""
    a_list, b_list = lora_pairs(ckpt)
    blocks = len(a_list) // 2
    if blocks > depth:
        raise ValueError(f"checkpoint adapts {blocks} blocks but the backbone has {depth}")
    out: dict[str, torch.Tensor] = {}
    for i in range(blocks):
        prefix = f"{BACKBONE_PREFIX}blocks.{depth - blocks + i}.attn.qkv."
        out[prefix + "lora_a_q"], out[prefix + "lora_b_q"] = a_list[2 * i], b_list[2 * i]
        out[prefix + "lora_a_v"], out[prefix + "lora_b_v"] = a_list[2 * i + 1], b_list[2 * i + 1]
    conv = refine_conv_state(ckpt)
    out["head.0.weight"] = conv["weight"]
    if conv.get("bias") is not None:
        out["head.0.bias"] = conv["bias"]
    return {k: v.detach().float().contiguous() for k, v in out.items()}


def import_checkpoint(path, backbone: str, out, base_weights: str = DEFAULT_BASE_WEIGHTS,
                      timm_kwargs: dict | None = None, trust_pickle: bool = False, **model_overrides) -> Path:
    """Convert an authors' ``.ckpt`` into a corr3d adapter directory ``out`` (adapter.safetensors + adapter.json).

    The backbone is built with random weights (the adapter only stores the trained tensors); ``base_weights`` is
    what ``load_model(None, adapter=out)`` will load under them (``hf``: timm's pretrained weights, which for DINOv2
    are the torch.hub weights the authors used). Returns the .safetensors path.
    """
    ckpt = read_authors_checkpoint(path, trust_pickle=trust_pickle)
    try:
        structure = authors_structure(ckpt)
        check_authors_finite(ckpt, path)
    except Corr3dUserError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as err:  # layout errors: name the file
        raise AdapterMismatchError(str(err).strip("'\""), path=path, fix=_IMPORT_FIX) from None
    embed_dim = structure.pop("embed_dim")
    try:
        model = create_model(backbone, weights="random:0", timm_kwargs=timm_kwargs or {}, **structure,
                             **model_overrides)
    except Corr3dUserError:
        raise
    except ValueError as err:  # e.g. more LoRA blocks than the backbone has
        raise AdapterMismatchError(f"checkpoint (LoRA on {structure['lora']['blocks']} blocks) does not fit backbone "
                                   f"'{backbone}': {err}", path=path, fix=_IMPORT_FIX) from None
    if model.embed_dim != embed_dim:
        raise AdapterMismatchError(f"checkpoint has width {embed_dim} but backbone '{backbone}' has width "
                                   f"{model.embed_dim} (expected {model.embed_dim}, found {embed_dim})", path=path,
                                   fix=f"pass the --backbone this checkpoint was trained on (one of width {embed_dim})")
    try:
        tensors = authors_to_corr3d(ckpt, len(model.backbone.blocks))
        expected = model.adapter_state_dict()
        wrong = [f"{k}: expected {tuple(expected[k].shape)}, found {tuple(v.shape)}" for k, v in tensors.items()
                 if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
        unexpected = sorted(set(tensors) - set(expected))
        missing = sorted(set(expected) - set(tensors))
        if wrong or unexpected or missing:
            raise ValueError(f"checkpoint does not fit {backbone}: " + "; ".join(
                part for part in (f"wrong shapes {wrong[:4]}" if wrong else "",
                                  f"unexpected {unexpected[:8]}" if unexpected else "",
                                  f"missing {missing[:8]}" if missing else "") if part))
        model.load_state_dict(tensors, strict=False)
    except (ValueError, RuntimeError) as err:
        raise AdapterMismatchError(str(err), path=path, fix=_IMPORT_FIX) from None
    if base_weights.startswith("random"):
        seed = int(base_weights.split(":", 1)[1]) if ":" in base_weights else 0
        model.weights_info = WeightsInfo("random", None, f"random initialisation (seed {seed})", f"random:{seed}")
    elif base_weights in ("hf", "imgfocus"):
        model.weights_info = WeightsInfo(base_weights, None, f"{model.spec.timm_id} ({base_weights}); LoRA + conv "
                                         f"imported from the authors' checkpoint {Path(path).name}", base_weights)
    else:
        model.weights_info = WeightsInfo("file", str(base_weights), f"local file {Path(base_weights).name}",
                                         str(base_weights))
    saved = model.save_adapter(out)
    log.info("imported %s (%d LoRA blocks, rank %d) -> %s", path, structure["lora"]["blocks"],
             structure["lora"]["rank"], saved)
    return saved


def corr3d_to_authors(meta: dict, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """An authors'-format checkpoint dict from a corr3d adapter (LoRA on the last blocks + exactly one conv).

    corr3d always adapts the last ``lora.blocks`` blocks (``adapter.json`` ``lora.block_indices``), as the authors do.
    """
    lora = meta["lora"]
    if meta.get("unfreeze_blocks"):
        raise ValueError("the authors' format holds LoRA factors only; this adapter unfroze whole blocks")
    if meta["head"]["num_layers"] != 1:
        raise ValueError(f"the authors' format has exactly one refine_conv; this adapter has "
                         f"{meta['head']['num_layers']} head layers")
    scale = 1.0 if lora.get("alpha") is None else float(lora["alpha"]) / float(lora["rank"])
    indices = [int(i) for i in lora.get("block_indices") or []]
    if len(indices) != int(lora["blocks"]) or indices != list(range(indices[0], indices[0] + len(indices))):
        raise ValueError(f"adapter.json lora.block_indices {indices} are not {lora['blocks']} consecutive blocks")
    ckpt: dict[str, Any] = {"state_dict": {"refine_conv": {"weight": tensors["head.0.weight"].clone(),
                                                           "bias": tensors["head.0.bias"].clone()}},
                            "epoch": 0, "global_step": 0, "pytorch-lightning_version": "2.0.0"}
    for i, block in enumerate(indices):
        prefix = f"{BACKBONE_PREFIX}blocks.{block}.attn.qkv."
        for j, target in enumerate(("q", "v")):
            ckpt[f"w_a_{2 * i + j:03d}"] = tensors[prefix + f"lora_a_{target}"].clone()
            # the authors apply no scaling: fold ours into B so that B A x is unchanged
            ckpt[f"w_b_{2 * i + j:03d}"] = tensors[prefix + f"lora_b_{target}"].clone() * scale
    return ckpt


def export_checkpoint(adapter, out) -> Path:
    """Write a corr3d adapter as an authors'-format ``.ckpt`` (loadable by their ``FinetuneDINO``)."""
    meta, tensors = read_adapter(adapter)
    ckpt = corr3d_to_authors(meta, tensors)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, out)
    return out
