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
    assert model.adapted_blocks == [3, 4, 5] and model.backbone.blocks[-1].attn.qkv.scale == 2.0
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


# ------------------------------------------------------------------------- issue 21: permissions, finiteness, fit
def _saved(tmp_path, **overrides):
    model = tiny_model(16, head={"num_layers": 1, "init": "default"}, **overrides)
    _train_a_bit(model)
    return model, model.save_adapter(tmp_path / "run")


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_adapter_files_get_the_umask_permissions_of_other_files(tmp_path, umask):
    import os
    import stat

    old = os.umask(umask)
    try:
        _, path = _saved(tmp_path)
        other = tmp_path / "run" / "other.txt"
        other.write_text("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE(other.stat().st_mode)
    assert stat.S_IMODE(path.with_suffix(".json").stat().st_mode) == mode


def test_non_finite_adapters_are_neither_written_nor_loaded(tmp_path):
    from safetensors.torch import load_file, save_file

    from corr3d.errors import Corr3dUserError, NonFiniteTensorError

    model, path = _saved(tmp_path)
    with torch.no_grad():
        model.head[0].bias[3] = float("nan")
    with pytest.raises(NonFiniteTensorError, match="refusing to write an adapter: tensor 'head.0.bias'"):
        model.save_adapter(tmp_path / "nan")
    assert not (tmp_path / "nan" / "adapter.safetensors").exists()
    # a NaN file from elsewhere (an older corr3d, a diverged run): refused on load, naming the file and the tensor
    tensors = load_file(str(path))
    tensors["backbone.blocks.5.attn.qkv.lora_b_v"][0, 0] = float("inf")
    save_file(tensors, str(path))
    with pytest.raises(NonFiniteTensorError) as info:
        corr3d.load_model(None, adapter=path)
    assert isinstance(info.value, Corr3dUserError) and info.value.fix
    assert str(path) in str(info.value)
    assert "'backbone.blocks.5.attn.qkv.lora_b_v' holds 1 non-finite" in str(info.value)


def _edit_json(tmp_path, edit):
    path = tmp_path / "run" / "adapter.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    return path


@pytest.mark.parametrize("edit, expected", [
    (lambda m: m.pop("head"), "lacks ['head']"),
    (lambda m: m.update(embed_dim="64"), "'embed_dim' is '64': expected int, found str"),
    (lambda m: m["lora"].update(ranks=4), "'lora' has keys ['alpha', 'block_indices', 'blocks', 'rank', 'ranks']"),
    (lambda m: m["head"].pop("init"), "'head' has keys ['num_layers']: expected ['num_layers', 'init']"),
    (lambda m: m.update(backbone="no_such_vit"), "backbone 'no_such_vit', which is neither"),
    (lambda m: m.update(backbone="dinov2_s14"), "expected timm_id 'vit_small_patch14_dinov2.lvd142m', found "
                                                "'test_vit.r160_in1k'"),
    (lambda m: m["lora"].update(rank=8), "'backbone.blocks.4.attn.qkv.lora_a_q' expected (8, 64), found (4, 64)"),
    (lambda m: m["head"].update(num_layers=2), "missing ['head.1.bias', 'head.1.weight']"),
    (lambda m: m["lora"].update(block_indices=[3, 4]), "unexpected ['backbone.blocks.5.attn.qkv.lora_a_q'"),
])
def test_adapter_json_that_does_not_fit_names_the_file_and_expected_vs_found(tmp_path, edit, expected):
    from corr3d.errors import AdapterMismatchError, DataFileError

    _saved(tmp_path)
    json_path = _edit_json(tmp_path, edit)
    with pytest.raises(AdapterMismatchError) as info:
        read_adapter(tmp_path / "run")
    message = str(info.value)
    assert isinstance(info.value, DataFileError) and info.value.fix
    assert expected in message, message
    assert str(json_path) in message or str(json_path.with_suffix(".safetensors")) in message


def test_adapter_backbone_width_mismatch(tmp_path):
    from corr3d.errors import AdapterMismatchError

    model = tiny_model(14, head={"num_layers": 1, "init": "default"})
    model.save_adapter(tmp_path / "run")
    path = _edit_json(tmp_path, lambda m: (m.pop("timm_kwargs"), m.update(embed_dim=32)))
    with pytest.raises(AdapterMismatchError, match=r"embed_dim 32 for backbone 'dinov2_s14', which has embed_dim "
                                                   r"384 \(expected 384, found 32\)") as info:
        read_adapter(path)
    assert str(path) in str(info.value)


def test_adapter_tensors_that_do_not_fit_name_the_file(tmp_path):
    from safetensors.torch import load_file, save_file

    from corr3d.errors import AdapterMismatchError

    _, path = _saved(tmp_path)
    tensors = load_file(str(path))
    tensors["head.0.weight"] = tensors["head.0.weight"][:, :32].contiguous()
    tensors["backbone.blocks.2.attn.qkv.lora_a_q"] = torch.zeros(4, 64)
    del tensors["head.0.bias"]
    save_file(tensors, str(path))
    with pytest.raises(AdapterMismatchError) as info:
        corr3d.load_model(None, adapter=path)
    message = str(info.value)
    assert str(path) in message and "'head.0.weight' expected (64, 64, 3, 3), found (64, 32, 3, 3)" in message
    assert "missing ['head.0.bias']" in message and "unexpected ['backbone.blocks.2.attn.qkv.lora_a_q']" in message


def test_unfrozen_block_adapter_shapes_are_checked_against_the_model(tmp_path):
    from corr3d.errors import AdapterMismatchError

    model, path = _saved(tmp_path, unfreeze_blocks=2)
    _, tensors = read_adapter(path)  # whole-block tensors: only the built model knows their shapes
    other = tiny_model(16, head={"num_layers": 1, "init": "default"}, unfreeze_blocks=2)
    bad = dict(tensors, **{"backbone.blocks.5.mlp.fc1.weight": torch.zeros(3, 3)})
    with pytest.raises(AdapterMismatchError, match=r"'backbone.blocks.5.mlp.fc1.weight' expected \(192, 64\), found "
                                                   r"\(3, 3\)") as info:
        other.load_adapter_state(bad, source=path)
    assert str(path) in str(info.value)
    other.load_adapter_state(tensors, source=path)
    assert torch.equal(other.head[0].weight, model.head[0].weight)


# ------------------------------------------------------------ issue 20: adapters written before vit -> backbone
def _write_version1(new_path, old_dir, meta_in_json=True):
    """The adapter at ``new_path`` as corr3d wrote it before the rename: version 1, backbone tensors under 'vit.'."""
    from safetensors.torch import load_file, save_file

    tensors = {("vit." + k[len("backbone."):] if k.startswith("backbone.") else k): v
               for k, v in load_file(str(new_path)).items()}
    meta = json.loads(new_path.with_suffix(".json").read_text())
    meta["version"] = 1
    old_dir.mkdir()
    save_file(tensors, str(old_dir / "adapter.safetensors"), metadata={"corr3d_adapter": json.dumps(meta)})
    if meta_in_json:
        (old_dir / "adapter.json").write_text(json.dumps(meta))
    return old_dir / "adapter.safetensors", tensors


@pytest.mark.parametrize("kind", ["lora", "unfreeze"])
@pytest.mark.parametrize("meta_in_json", [True, False])
def test_version1_adapters_with_vit_keys_load_to_the_same_features(tmp_path, kind, meta_in_json):
    extra = {"unfreeze_blocks": 2} if kind == "unfreeze" else {}
    model, path = _saved(tmp_path, **extra)
    assert json.loads(path.with_suffix(".json").read_text())["version"] == 2   # today's layout: 'backbone.*'
    assert all(k.startswith(("backbone.blocks.", "head.")) for k in read_adapter(path)[1])
    old_path, old_tensors = _write_version1(path, tmp_path / "old", meta_in_json)
    assert any(k.startswith("vit.blocks.") for k in old_tensors) and not any(k.startswith("backbone.")
                                                                           for k in old_tensors)
    meta, tensors = read_adapter(old_path)   # keys mapped on read: the checks see today's names
    assert meta["version"] == 1 and set(tensors) == set(read_adapter(path)[1])
    new, old = corr3d.load_model(None, adapter=path), corr3d.load_model(None, adapter=old_path)
    images = torch.rand(2, 3, 48, 64)
    assert torch.equal(old.dense_features(images), new.dense_features(images))
    assert torch.equal(old.dense_features(images), model.eval().dense_features(images))
    # the tensors themselves (not only a file) in the old layout: load_adapter_state maps them too
    fresh = tiny_model(16, head={"num_layers": 1, "init": "default"}, **extra).eval()
    fresh.load_adapter_state(old_tensors)
    assert torch.equal(fresh.dense_features(images), new.dense_features(images))


def test_old_state_dicts_load_through_the_model_and_a_lightning_style_parent():
    """Checkpoints name the model's tensors 'vit.*' (or 'model.vit.*' inside the LightningModule) before the rename:
    ``load_state_dict`` maps them, strict loading included; a tensor under both names is refused."""
    from corr3d.errors import AdapterMismatchError

    source = tiny_model(16)
    _train_a_bit(source)
    state = {("vit." + k[len("backbone."):] if k.startswith("backbone.") else k): v
             for k, v in source.state_dict().items()}
    target = tiny_model(16)
    target.load_state_dict(state, strict=True)
    parent = torch.nn.Module()
    parent.model = tiny_model(16)
    parent.load_state_dict({f"model.{k}": v for k, v in state.items()}, strict=True)
    images = torch.rand(1, 3, 32, 48)
    want = source.eval().dense_features(images)
    assert torch.equal(target.eval().dense_features(images), want)
    assert torch.equal(parent.model.eval().dense_features(images), want)
    both = dict(state, **{"backbone.norm.weight": state["vit.norm.weight"]})
    with pytest.raises(AdapterMismatchError, match="'backbone.norm.weight' is present under both"):
        tiny_model(16).load_state_dict(both)
