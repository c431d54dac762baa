"""Adapter artefact round trips and config plumbing (build_model from the `model:` section)."""
from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

import corr3d
from corr3d.models import build_model, read_adapter
from tests.helpers.models import tiny_model


def _train_a_bit(model, seed=0):
    """Stand-in for training: perturb every trainable tensor."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.trainable_parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.05)


@pytest.mark.parametrize("kind", ["lora", "unfreeze"])
def test_adapter_round_trip(tmp_path, kind):
    extra = {"unfreeze_blocks": 2} if kind == "unfreeze" else {}
    model = tiny_model(16, head={"num_layers": 2, "init": "default"}, **extra)
    _train_a_bit(model)
    path = model.save_adapter(tmp_path / "run")
    assert path.name == "adapter.safetensors" and (tmp_path / "run" / "adapter.json").is_file()
    meta = json.loads((tmp_path / "run" / "adapter.json").read_text())
    assert meta["backbone"] == "test_vit" and meta["timm_id"] == "test_vit.r160_in1k"
    assert meta["lora"]["rank"] == 4 and meta["head"] == {"num_layers": 2, "init": "default"}
    assert meta["weights"]["request"] == "random:0" and meta["target_res"] == 64
    loaded = corr3d.load_model("test_vit", adapter=path)
    images, pts = torch.rand(1, 3, 48, 64), torch.rand(1, 9, 2) * 40
    assert torch.equal(loaded.point_features(images, pts), model.point_features(images, pts))
    # the tensor file alone carries the recipe too
    (tmp_path / "run" / "adapter.json").unlink()
    again = corr3d.load_model(None, adapter=tmp_path / "run" / "adapter.safetensors")
    assert torch.equal(again.dense_features(images), model.dense_features(images))


def test_adapter_holds_only_trained_tensors(tmp_path):
    model = tiny_model(16)
    path = model.save_adapter(tmp_path / "a.safetensors")
    _, tensors = read_adapter(path)
    assert tensors and all(".lora_" in k or k.startswith("head.") for k in tensors)
    assert sum(v.numel() for v in tensors.values()) == sum(p.numel() for p in model.trainable_parameters())


def test_adapter_mismatches_fail_loudly(tmp_path):
    model = tiny_model(16)
    path = model.save_adapter(tmp_path / "run")
    with pytest.raises(ValueError, match="trained for backbone 'test_vit'"):
        corr3d.load_model("dinov2_s14", adapter=path)
    with pytest.raises(ValueError, match="fixed by the adapter"):
        corr3d.load_model("test_vit", adapter=path, head_layers=3)
    evaluated = corr3d.load_model("test_vit", adapter=path, target_res=96)  # non-structural override is fine
    assert evaluated.input_size(48, 48) == (192, 192)


def test_build_model_from_experiment_config():
    cfg = OmegaConf.create({"backbone": "test_vit", "weights": "random", "target_res": 64, "downsample_factor": 8,
                            "layer": -1, "final_norm": True, "lora": {"rank": 2, "blocks": 3, "alpha": 4.0},
                            "unfreeze_blocks": 0, "head": {"num_layers": 0, "init": "identity"}, "timm_kwargs": {}})
    model = build_model(cfg)
    assert model.adapted_blocks == [3, 4, 5] and model.vit.blocks[-1].attn.qkv.scale == 2.0
    assert model.head.num_layers == 0
    with pytest.raises(KeyError, match="unknown model option"):
        build_model({"backbone": "test_vit", "weights": "random", "lora_rnk": 2})


def test_base_yaml_model_section_builds():
    from corr3d.config import REPO_ROOT

    base = OmegaConf.load(REPO_ROOT / "experiments" / "base.yaml")
    section = OmegaConf.to_container(base.model)
    section.update(backbone="test_vit", weights="random")
    model = build_model(section)
    assert model.config["target_res"] == base.model.target_res


def test_hubconf_entry_points_are_light(tmp_path):
    import subprocess
    import sys

    from corr3d.config import REPO_ROOT

    code = ("import sys, torch; sys.path.insert(0, sys.argv[1]); "
            "m = torch.hub.load(sys.argv[1], 'corr3d_model', source='local', backbone='test_vit', weights='random', "
            "target_res=64); print(type(m).__name__, m.patch_size); "
            "print('lightning' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(REPO_ROOT)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["Corr3DModel", "16", "False"]
    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf", REPO_ROOT / "hubconf.py")
    hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hub)
    assert hub.dependencies == ["torch", "timm"] and callable(hub.dinov2_s14) and callable(hub.clip_b16)
