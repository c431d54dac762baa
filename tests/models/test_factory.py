"""compared_model: the untrained identity-head model is bit-identical to the pretrained one (training/run.py copies
its row instead of measuring it twice)."""
from __future__ import annotations

import torch
from omegaconf import OmegaConf

from corr3d.models import compared_model
from corr3d.training.run import untrained_is_pretrained


def test_identity_head_init_model_is_the_pretrained_model(cfg_tiny):
    model_cfg = OmegaConf.merge(cfg_tiny.model, {"head": {"init": "identity", "num_layers": 2}})
    assert untrained_is_pretrained(model_cfg) and int(model_cfg.lora.blocks) > 0
    pretrained = compared_model("pretrained", model_cfg, seed=3)
    untrained = compared_model("pretrained_head_init", model_cfg, seed=3)
    assert any("lora" in n for n, _ in untrained.named_parameters())   # LoRA is there, with B = 0
    images = torch.rand(2, 3, 64, 96)
    assert torch.equal(untrained.dense_features(images), pretrained.dense_features(images))


def test_default_head_init_is_not_the_pretrained_model(cfg_tiny):
    model_cfg = OmegaConf.merge(cfg_tiny.model, {"head": {"init": "default", "num_layers": 1}})
    assert not untrained_is_pretrained(model_cfg)
    pretrained = compared_model("pretrained", model_cfg, seed=3)
    untrained = compared_model("pretrained_head_init", model_cfg, seed=3)
    images = torch.rand(1, 3, 64, 96)
    assert not torch.equal(untrained.dense_features(images), pretrained.dense_features(images))
