"""compared_model: the untrained identity-head model is bit-identical to the pretrained one (training/run.py copies
its row instead of measuring it twice); the factories take the typed ``model:`` section as it is."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from omegaconf import OmegaConf

from corr3d.models import COMPARED_MODELS, compared_model, compared_model_config, create_model, model_config
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


def test_a_loaded_model_section_reaches_the_factories_typed_and_unchanged():
    from corr3d.config import load_config
    from corr3d.config_schema import ModelConfig
    from corr3d.models.factory import as_model_config, reference_model_config

    cfg = load_config("dinov2_single_object", ["model.lora.alpha=2", "model.timm_kwargs={drop_path_rate: 0.1}"])
    typed = as_model_config(cfg.model)
    assert isinstance(typed, ModelConfig) and typed.target_res == 256 and typed.lora.alpha == 2.0
    assert model_config(typed) == OmegaConf.to_container(cfg.model, resolve=True)   # nothing re-defaulted
    assert as_model_config(typed) is typed and reference_model_config(typed) is typed


def test_compared_model_configs_change_only_weights_lora_and_head():
    from corr3d.config_schema import HeadConfig, LoraConfig, ModelConfig

    ref = ModelConfig(backbone="test_vit", weights="hf", target_res=96, lora=LoraConfig(rank=8, blocks=3, alpha=4.0),
                      unfreeze_blocks=2, head=HeadConfig(num_layers=3, init="identity"))
    plain = {name: model_config(compared_model_config(ref, name, seed=5)) for name in COMPARED_MODELS}
    same = {k: v for k, v in model_config(ref).items() if k not in ("weights", "lora", "unfreeze_blocks", "head")}
    off = {"lora": {"rank": 8, "blocks": 0, "alpha": 4.0}, "unfreeze_blocks": 0}
    assert plain["pretrained"] == {**same, **off, "weights": "hf", "head": {"num_layers": 0, "init": "identity"}}
    assert plain["random"] == {**same, **off, "weights": "random:5", "head": {"num_layers": 0, "init": "identity"}}
    assert plain["pretrained_default_conv"] == {**same, **off, "weights": "hf",
                                                "head": {"num_layers": 3, "init": "default"}}
    assert plain["pretrained_head_init"] == plain["finetuned"] == model_config(ref)
    one = compared_model_config(dataclasses.replace(ref, head=HeadConfig(num_layers=0)), "pretrained_default_conv")
    assert one.head == HeadConfig(num_layers=1, init="default")       # the control always has a conv
    with pytest.raises(ValueError, match="unknown compared model 'pretrained_x'"):
        compared_model_config(ref, "pretrained_x")


def test_python_callers_get_the_schema_defaults_once():
    from corr3d.config_schema import ModelConfig
    from corr3d.models.factory import as_model_config

    cfg = as_model_config({"backbone": "test_vit", "lora": {"rank": 2}}, head_layers=0, target_res=96)
    assert cfg == dataclasses.replace(ModelConfig(), backbone="test_vit", target_res=96,
                                      lora=dataclasses.replace(ModelConfig().lora, rank=2),
                                      head=dataclasses.replace(ModelConfig().head, num_layers=0))
    with pytest.raises(KeyError, match="unknown model option 'lora_rnk'"):
        as_model_config(lora_rnk=2)
    model = create_model("test_vit", weights="random", target_res=64, lora_blocks=1, head_layers=0)
    assert model.config == model_config(as_model_config(backbone="test_vit", weights="random", target_res=64,
                                                        lora_blocks=1, head_layers=0))
