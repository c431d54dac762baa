"""LoRA (q, v of fused qkv), partial unfreezing, merging, and the conv head's initialisations."""
from __future__ import annotations

import copy
import math

import pytest
import timm
import torch

from corr3d.models import ConvHead, LoRAQKV, apply_lora, merge_lora, merged_state_dict, vit_tokens
from tests.helpers.models import tiny_model


def _randomise_lora(vit, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in vit.modules():
            if isinstance(module, LoRAQKV):
                module.lora_b_q.copy_(torch.randn(module.lora_b_q.shape, generator=gen) * 0.1)
                module.lora_b_v.copy_(torch.randn(module.lora_b_v.shape, generator=gen) * 0.1)


@pytest.fixture(params=[14, 16], ids=["patch14", "patch16"])
def frozen_and_lora(request):
    model = tiny_model(request.param, lora={"blocks": 0}, head={"num_layers": 0})
    plain = copy.deepcopy(model.backbone)
    apply_lora(model.backbone, blocks=2, rank=4)
    return plain, model.backbone


def test_zero_b_equals_frozen_model_bit_for_bit(frozen_and_lora):
    plain, lora = frozen_and_lora
    x = torch.randn(2, 3, 56, 56)
    assert torch.equal(vit_tokens(lora, x)[0], vit_tokens(plain, x)[0])


def test_lora_placement_init_and_trainable_parameters():
    model = tiny_model(16, lora={"blocks": 4, "rank": 4, "alpha": None}, head={"num_layers": 1})
    depth, dim = len(model.backbone.blocks), model.embed_dim
    wrapped = [i for i, b in enumerate(model.backbone.blocks) if isinstance(b.attn.qkv, LoRAQKV)]
    assert wrapped == list(range(depth - 4, depth)) == model.adapted_blocks
    qkv = model.backbone.blocks[-1].attn.qkv
    assert torch.count_nonzero(qkv.lora_b_q) == 0 and torch.count_nonzero(qkv.lora_b_v) == 0
    bound = 1 / math.sqrt(dim)  # kaiming_uniform(a=sqrt(5)) on (rank, dim) -> U(-1/sqrt(dim), 1/sqrt(dim))
    assert qkv.lora_a_q.abs().max() <= bound and qkv.lora_a_q.std() > bound / 4
    lora_params = 4 * 2 * (4 * dim + dim * 4)
    head_params = dim * dim * 9 + dim
    assert sum(p.numel() for p in model.trainable_parameters()) == lora_params + head_params
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".lora_" in n or n.startswith("head.") for n in names)


def test_lora_updates_only_q_and_v():
    lin = torch.nn.Linear(8, 24)
    lora = LoRAQKV(lin, rank=2)
    with torch.no_grad():
        lora.lora_b_q.fill_(0.5)
        lora.lora_b_v.fill_(-0.5)
    x = torch.randn(3, 8)
    diff = lora(x) - lin(x)
    assert torch.count_nonzero(diff[:, 8:16]) == 0
    assert torch.count_nonzero(diff[:, :8]) > 0 and torch.count_nonzero(diff[:, 16:]) > 0


def test_alpha_scales_the_update():
    lin = torch.nn.Linear(8, 24)
    plain, scaled = LoRAQKV(lin, rank=2), LoRAQKV(lin, rank=2, alpha=8.0)
    with torch.no_grad():
        scaled.lora_a_q.copy_(plain.lora_a_q)
        scaled.lora_a_v.copy_(plain.lora_a_v)
        for m in (plain, scaled):
            m.lora_b_q.fill_(0.3)
            m.lora_b_v.fill_(0.3)
    assert scaled.scale == 4.0
    assert torch.allclose(scaled.delta_weight(), 4.0 * plain.delta_weight())


def test_merged_state_dict_is_plain_timm_and_matches_lora(frozen_and_lora):
    plain, lora = frozen_and_lora
    _randomise_lora(lora)
    x = torch.randn(1, 3, 56, 56)
    expected = vit_tokens(lora, x)[0]
    state = merged_state_dict(lora)
    assert set(state) == set(plain.state_dict())
    fresh = copy.deepcopy(plain)
    fresh.load_state_dict(state, strict=True)
    assert torch.allclose(vit_tokens(fresh, x)[0], expected, atol=1e-5)
    assert not torch.allclose(vit_tokens(plain, x)[0], expected, atol=1e-3)  # the update really does something
    merge_lora(lora)
    assert not any(isinstance(m, LoRAQKV) for m in lora.modules())
    assert torch.allclose(vit_tokens(lora, x)[0], expected, atol=1e-5)


def test_merged_weights_load_into_timm_without_corr3d():
    model = tiny_model(16)
    _randomise_lora(model.backbone)
    reference = timm.create_model("test_vit", pretrained=False, num_classes=0, dynamic_img_size=True)
    reference.load_state_dict(model.merged_backbone_state_dict(), strict=True)
    x = torch.randn(1, 3, 160, 160)
    assert torch.allclose(reference.forward_features(x), vit_tokens(model.backbone, x)[0], atol=1e-5)


def test_gradients_reach_lora_b_and_head_only():
    model = tiny_model(16)
    fmap = model(torch.rand(1, 3, 48, 48))
    fmap.square().mean().backward()
    last = model.backbone.blocks[-1].attn.qkv
    assert last.lora_b_q.grad is not None and last.lora_b_q.grad.abs().sum() > 0
    assert model.head[0].weight.grad is not None
    assert last.weight.grad is None and model.backbone.patch_embed.proj.weight.grad is None


def test_partial_unfreeze_instead_of_lora():
    model = tiny_model(16, unfreeze_blocks=2, head={"num_layers": 1})
    assert not any(isinstance(m, LoRAQKV) for m in model.backbone.modules())
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith(("backbone.blocks.4.", "backbone.blocks.5.", "head.")) for n in names)
    assert any(n.startswith("backbone.blocks.4.") for n in names)
    assert set(model.adapter_state_dict()) == {n for n in names}


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_identity_head_reproduces_pretrained_features(layers):
    bare = tiny_model(14, head={"num_layers": 0})
    headed = tiny_model(14, head={"num_layers": layers, "init": "identity"})
    images = torch.rand(2, 3, 40, 56)
    assert torch.equal(headed.dense_features(images), bare.dense_features(images))


def test_default_head_is_pytorch_init_conv():
    head = ConvHead(32, num_layers=2, init="default")
    assert len(head) == 2 and head[0].kernel_size == (3, 3) and head[0].stride == (1, 1)
    assert head[0].in_channels == head[0].out_channels == 32
    centre = head[0].weight[:, :, 1, 1]
    assert not torch.allclose(centre, torch.eye(32))
    x = torch.randn(1, 32, 5, 7)
    assert head(x).shape == x.shape
    assert torch.equal(ConvHead(32, num_layers=0)(x), x)
    with pytest.raises(ValueError):
        ConvHead(32, num_layers=1, init="xavier")
