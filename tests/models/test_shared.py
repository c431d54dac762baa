"""Backbone tokens shared by compared models with the same frozen backbone (corr3d/models/shared.py): identical
numbers, hits only where the backbone really computes the same tokens."""
from __future__ import annotations

import torch

from corr3d.models.lora import LoRAQKV
from corr3d.models.shared import shared_backbone_maps
from tests.helpers.models import tiny_model

LORA = {"blocks": 1, "rank": 2, "alpha": None}


def _models(seed=0):
    torch.manual_seed(seed)
    plain = tiny_model(16, lora={**LORA, "blocks": 0}, head={"num_layers": 0, "init": "default"}).eval()
    head = tiny_model(16, lora=LORA, head={"num_layers": 1, "init": "default"}).eval()
    # same backbone weights, own head and LoRA
    head.backbone.load_state_dict(plain.backbone.state_dict(), strict=False)
    return plain, head


def test_shared_tokens_give_bit_identical_maps_and_skip_the_backbone():
    plain, head = _models()
    _assert_second_model_reuses_the_first_ones_map(plain, head, torch.rand(2, 3, 32, 32))


def _assert_second_model_reuses_the_first_ones_map(plain, head, x):
    with torch.no_grad():
        want = plain(x), head(x)
        with shared_backbone_maps(64) as store:
            got = plain(x), head(x)
            assert (store.misses, store.hits) == (1, 1)
    assert all(torch.equal(a, b) for a, b in zip(want, got))


def test_a_trained_lora_other_weights_or_another_input_never_hit_another_backbone():
    plain, head = _models()
    other, _ = _models(seed=1)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        other.backbone.patch_embed.proj.weight.add_(0.01)   # other backbone weights
        for module in head.backbone.modules():
            if isinstance(module, LoRAQKV):
                module.lora_b_q.fill_(0.01)   # a trained LoRA: its tokens are not the pretrained ones
        with shared_backbone_maps(64) as store:
            plain(x)
            trained = head(x)
            other(x)
            plain(x + 1e-3)
            assert store.hits == 0
            assert torch.equal(head(x), trained) and store.hits == 1   # a finetuned backbone reuses its own tokens


def test_training_mode_grad_and_a_full_store_compute_again():
    plain, _ = _models()
    x = torch.rand(2, 3, 32, 32)
    with shared_backbone_maps(64) as store:
        plain(x)          # grad enabled: not shared
        with torch.no_grad():
            plain.train()
            plain(x)      # training mode: not shared
            plain.eval()
            assert store.misses == 0 and store.hits == 0
    with torch.no_grad(), shared_backbone_maps(1e-6) as tiny:   # a budget below one map: nothing kept
        plain(x)
        plain(x)
        assert tiny.hits == 0 and tiny.used == 0
    with torch.no_grad(), shared_backbone_maps(0) as off:
        assert off is None
        plain(x)


def test_every_backbone_family_shares_its_grid():
    """The store holds the family's dense grid (before the head), so convnets share too, bit for bit."""
    from corr3d.models import create_model

    tiny_convnext = {"depths": (1, 1, 1, 1), "dims": (16, 24, 32, 40)}
    plain, head = (create_model("convnext_b", weights="random:0", target_res=64, timm_kwargs=tiny_convnext,
                                lora_blocks=0, head_layers=layers).eval() for layers in (0, 1))
    _assert_second_model_reuses_the_first_ones_map(plain, head, torch.rand(1, 3, 32, 48))


def test_a_finetuned_lora_continues_from_the_pretrained_leading_blocks_bit_for_bit():
    plain, head = _models()       # plain: no LoRA; head: LoRA on the last block, trained below
    other, _ = _models(seed=1)
    _train_lora(head)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        other.backbone.blocks[0].mlp.fc1.weight.add_(0.01)   # other leading-block weights
        want = plain(x), head(x), other(x)
        with shared_backbone_maps(64, prefix_of_last=LORA["blocks"]) as store:
            got = plain(x), head(x), other(x)
            # head reuses plain's tokens before its LoRA block; other weights never hit; final grids all differ
            assert (store.prefixes.misses, store.prefixes.hits) == (2, 1) and store.hits == 0
        with shared_backbone_maps(64) as store:
            plain(x), head(x)
            assert store.prefixes is None and store.hits == 0
    assert all(torch.equal(a, b) for a, b in zip(want, got))


def test_a_model_adapting_more_blocks_than_shared_computes_its_own_tokens():
    plain, _ = _models()
    deeper = tiny_model(16, lora={**LORA, "blocks": 2}, head={"num_layers": 0, "init": "default"}).eval()
    deeper.backbone.load_state_dict(plain.backbone.state_dict(), strict=False)
    _train_lora(deeper)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        want = deeper(x)
        with shared_backbone_maps(64, prefix_of_last=1) as store:
            plain(x)
            got = deeper(x)       # its frozen prefix is one block shorter: another key, computed itself
            assert store.prefixes.hits == 0 and store.prefixes.misses == 2
    assert torch.equal(want, got)


def _train_lora(model):
    """A trained LoRA (B != 0): its grid is no longer the pretrained one, so only the leading blocks can be shared."""
    for module in model.backbone.modules():
        if isinstance(module, LoRAQKV):
            module.lora_b_q.data.fill_(0.01)


def test_kept_prefixes_serve_a_later_block_and_only_the_pinned_backbone_is_kept():
    """The main job: pretrained (and the random floor) measured before training, the finetuned model after it."""
    from corr3d.models.shared import Prefixes

    plain, head = _models()
    floor, _ = _models()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        floor.backbone.blocks[0].mlp.fc1.weight.add_(0.01)        # the random floor: other weights
        kept = Prefixes(64 * 2**20, LORA["blocks"], keep_for=head.backbone)
        with shared_backbone_maps(64, prefixes=kept):
            floor(x)                                               # measured first: not kept (not head's blocks)
            plain(x)
        assert len(kept._items) == 1 and kept.misses == 2
        kept.kept()
        assert all(v[0].device.type == "cpu" for v in kept._items.values())
        _train_lora(head)                                          # "training" changes only the LoRA block
        want = head(x)
        with shared_backbone_maps(64, prefixes=kept) as store:
            got = head(x)
            assert store.prefixes is kept and kept.hits == 1
    assert torch.equal(want, got)


def test_an_input_written_in_place_gets_a_new_key():
    from corr3d.models.shared import input_key

    x = torch.rand(1, 3, 8, 8)
    first = input_key(x)
    assert input_key(x) == first == input_key(x.clone())
    x[0, 0, 0, 0] += 1.0            # same object, new content: the remembered digest must not be reused
    assert input_key(x) != first and input_key(x) == input_key(x.clone())
