"""Importing the 3DCorrEnhance authors' Lightning checkpoints (their exact layout, written here) and exporting back."""
from __future__ import annotations

import copy
import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

import corr3d
from corr3d.models.checkpoints import (
    export_checkpoint,
    import_checkpoint,
    read_authors_checkpoint,
)
from tests.helpers.models import TINY_DINOV2_KWARGS, tiny_model

TINY4 = {**TINY_DINOV2_KWARGS, "depth": 4}   # the authors adapt the last 4 blocks -> w_a_000 ... w_a_007


class AuthorsLoRAqkv(nn.Module):
    """The authors' ``_LoRA_qkv`` math (utils/model.py of qq456cvb/3DCorrEnhance), restated for the reference."""

    def __init__(self, qkv, a_q, b_q, a_v, b_v):
        super().__init__()
        self.qkv, self.a_q, self.b_q, self.a_v, self.b_v = qkv, a_q, b_q, a_v, b_v
        self.dim = qkv.in_features

    def forward(self, x):
        qkv = self.qkv(x)
        qkv[:, :, : self.dim] += self.b_q(self.a_q(x))
        qkv[:, :, -self.dim:] += self.b_v(self.a_v(x))
        return qkv


def _authors_module(dim: int, r: int = 4, seed: int = 0):
    """What their FinetuneDINO holds: w_As / w_Bs Linear layers (q then v per block, last 4 blocks) and refine_conv,
    with B made non-zero (as after training)."""
    torch.manual_seed(seed)
    w_as, w_bs = [], []
    for _ in range(4):
        for _target in ("q", "v"):
            a, b = nn.Linear(dim, r, bias=False), nn.Linear(r, dim, bias=False)
            nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
            nn.init.normal_(b.weight, std=0.2)
            w_as.append(a)
            w_bs.append(b)
    conv = nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1)
    return w_as, w_bs, conv


def _lightning_checkpoint(w_as, w_bs, conv) -> dict:
    """A checkpoint dict as Lightning + their on_save_checkpoint write it (Parameters, OrderedDict conv state)."""
    ckpt = {"epoch": 99, "global_step": 10000, "pytorch-lightning_version": "2.1.3",
            "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 100}}}},
            "callbacks": {"ModelCheckpoint{'monitor': None, 'mode': 'min', 'every_n_train_steps': 0, "
                          "'every_n_epochs': 10, 'train_time_interval': None}":
                          {"best_model_score": None, "best_model_path": "", "dirpath": "checkpoints/x",
                           "kth_best_map": {}, "last_model_path": "checkpoints/x/last.ckpt"}},
            "optimizer_states": [torch.optim.AdamW([a.weight for a in w_as], lr=1e-5).state_dict()],
            "lr_schedulers": []}
    # their on_save_checkpoint
    ckpt["state_dict"] = {"refine_conv": conv.state_dict()}
    ckpt.update({f"w_a_{i:03d}": w_as[i].weight for i in range(len(w_as))})
    ckpt.update({f"w_b_{i:03d}": w_bs[i].weight for i in range(len(w_bs))})
    return ckpt


def _reference_map(base_vit, w_as, w_bs, conv, x):
    """Their forward: LoRA-wrapped qkv of the last 4 blocks, final-norm patch tokens -> refine_conv."""
    vit = copy.deepcopy(base_vit)
    for i, blk in enumerate(vit.blocks[-4:]):
        blk.attn.qkv = AuthorsLoRAqkv(blk.attn.qkv, w_as[2 * i], w_bs[2 * i], w_as[2 * i + 1], w_bs[2 * i + 1])
    tokens = vit.forward_features(x)[:, vit.num_prefix_tokens:]
    h, w = x.shape[-2] // 14, x.shape[-1] // 14
    return conv(tokens.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2))


def test_authors_checkpoint_imports_to_the_same_features(tmp_path):
    base = tiny_model(14, timm_kwargs=TINY4, lora={"blocks": 0, "rank": 4, "alpha": None},
                      head={"num_layers": 0, "init": "default"}, weights="random:0")
    w_as, w_bs, conv = _authors_module(base.embed_dim)
    path = tmp_path / "dinov2_small.ckpt"
    torch.save(_lightning_checkpoint(w_as, w_bs, conv), path)
    assert set(read_authors_checkpoint(path)) >= {"state_dict", "w_a_007", "w_b_007"}  # weights_only load

    saved = import_checkpoint(path, "dinov2_s14", tmp_path / "imported", base_weights="random:0", timm_kwargs=TINY4)
    model = corr3d.load_model(None, adapter=saved).eval()
    assert model.config["lora"] == {"rank": 4, "blocks": 4, "alpha": None} and model.head.num_layers == 1
    assert model.adapted_blocks == [0, 1, 2, 3]

    images = torch.rand(2, 3, 70, 70)
    x = (images - torch.tensor(model.spec.mean).view(1, 3, 1, 1)) / torch.tensor(model.spec.std).view(1, 3, 1, 1)
    with torch.no_grad():
        ours = model(images, input_size=(70, 70))
        ref = _reference_map(base.backbone, w_as, w_bs, conv, x)
        plain = base(images, input_size=(70, 70))
    assert ours.shape == ref.shape == (2, model.embed_dim, 5, 5)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(plain, ref[:, :plain.shape[1]], atol=1e-2)  # the import changed something


def test_q_v_order_is_not_swapped(tmp_path):
    """Swapping q and v (or A and B) must change the features: the test above would catch a wrong order."""
    base = tiny_model(14, timm_kwargs=TINY4, lora={"blocks": 0, "rank": 4, "alpha": None},
                      head={"num_layers": 0, "init": "default"}, weights="random:0")
    w_as, w_bs, conv = _authors_module(base.embed_dim, seed=1)
    ckpt = _lightning_checkpoint(w_as, w_bs, conv)
    swapped = dict(ckpt)
    for i in range(0, 8, 2):
        swapped[f"w_a_{i:03d}"], swapped[f"w_a_{i + 1:03d}"] = ckpt[f"w_a_{i + 1:03d}"], ckpt[f"w_a_{i:03d}"]
        swapped[f"w_b_{i:03d}"], swapped[f"w_b_{i + 1:03d}"] = ckpt[f"w_b_{i + 1:03d}"], ckpt[f"w_b_{i:03d}"]
    torch.save(ckpt, tmp_path / "a.ckpt")
    torch.save(swapped, tmp_path / "b.ckpt")
    images = torch.rand(1, 3, 70, 70)
    maps = []
    for name in ("a", "b"):
        saved = import_checkpoint(tmp_path / f"{name}.ckpt", "dinov2_s14", tmp_path / name, base_weights="random:0",
                                  timm_kwargs=TINY4)
        with torch.no_grad():
            maps.append(corr3d.load_model(None, adapter=saved)(images, input_size=(70, 70)))
    assert not torch.allclose(maps[0], maps[1], atol=1e-3)


@pytest.mark.parametrize("alpha", [None, 8.0])
def test_round_trip_adapter_authors_adapter(tmp_path, alpha):
    model = tiny_model(14, timm_kwargs=TINY4, lora={"blocks": 4, "rank": 4, "alpha": alpha},
                       head={"num_layers": 1, "init": "default"}, weights="random:0")
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    first = model.save_adapter(tmp_path / "ours")
    ckpt_path = export_checkpoint(first, tmp_path / "theirs.ckpt")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert sorted(k for k in ckpt if k.startswith("w_")) == [f"w_{x}_{i:03d}" for x in "ab" for i in range(8)]
    assert set(ckpt["state_dict"]) == {"refine_conv"} and ckpt["w_a_000"].shape == (4, model.embed_dim)
    again = import_checkpoint(ckpt_path, "dinov2_s14", tmp_path / "back", base_weights="random:0", timm_kwargs=TINY4,
                             target_res=64)
    images = torch.rand(1, 3, 70, 84)
    with torch.no_grad():
        torch.testing.assert_close(corr3d.load_model(None, adapter=again).dense_features(images),
                                   model.eval().dense_features(images), rtol=1e-5, atol=1e-5)


def test_wrong_backbone_and_foreign_files_fail_clearly(tmp_path):
    base = tiny_model(14, timm_kwargs=TINY4, lora={"blocks": 0, "rank": 4, "alpha": None},
                      head={"num_layers": 0, "init": "default"})
    torch.save(_lightning_checkpoint(*_authors_module(base.embed_dim)), tmp_path / "x.ckpt")
    with pytest.raises(ValueError, match="width"):
        import_checkpoint(tmp_path / "x.ckpt", "test_vit", tmp_path / "o", base_weights="random:0")
    torch.save({"state_dict": OrderedDict(w=torch.zeros(1))}, tmp_path / "y.ckpt")
    with pytest.raises(ValueError, match="not a 3DCorrEnhance checkpoint"):
        import_checkpoint(tmp_path / "y.ckpt", "dinov2_s14", tmp_path / "o", timm_kwargs=TINY4)


def test_cli_import_checkpoint(tmp_path):
    from corr3d.cli import main

    base = tiny_model(14, timm_kwargs=TINY4, lora={"blocks": 0, "rank": 4, "alpha": None},
                      head={"num_layers": 0, "init": "default"})
    torch.save(_lightning_checkpoint(*_authors_module(base.embed_dim)), tmp_path / "dinov2_small.ckpt")
    rc = main(["import-checkpoint", str(tmp_path / "dinov2_small.ckpt"), "--backbone", "dinov2_s14",
               "--out", str(tmp_path / "cli"), "--base-weights", "random:0",
               "--timm-kwargs", '{"embed_dim": 32, "depth": 4, "num_heads": 2, "img_size": 70, "init_values": 1.0}'])
    assert rc == 0 and (tmp_path / "cli" / "adapter.safetensors").is_file()


# ------------------------------------------------------------------------------------------------- FiT3D weights
def _fit3d_like_timm_model(seed: int = 5):
    """FiT3D's model: ``timm.create_model(name, num_classes=0, dynamic_img_size=True, dynamic_img_pad=False)`` (their
    hubconf.py / utils/model_utils.py), here the tiny DINOv2 architecture, 'finetuned' = perturbed weights."""
    import timm

    torch.manual_seed(seed)
    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, dynamic_img_size=True,
                            dynamic_img_pad=False, **TINY_DINOV2_KWARGS)
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return vit.eval()


@pytest.mark.parametrize("layout", ["released", "training"])
def test_fit3d_state_dict_loads_as_weights(tmp_path, layout):
    """Released files are the plain timm state dict (loaded strictly by their hubconf); training checkpoints wrap
    it as {'model', 'optimizer', 'lr_scheduler', 'epoch', 'args': argparse.Namespace} (their finetune.py)."""
    import argparse

    vit = _fit3d_like_timm_model()
    state = vit.state_dict()
    assert "pos_embed" in state and not any(k.startswith("head.") for k in state)
    path = tmp_path / "dinov2_small_finetuned.pth"
    if layout == "released":
        torch.save(state, path)
    else:
        torch.save({"model": state, "optimizer": {}, "lr_scheduler": {}, "epoch": 0,
                    "args": argparse.Namespace(lr=1e-5, model_name="dinov2_small")}, path)
    model = corr3d.load_model("dinov2_s14", weights=str(path), timm_kwargs=TINY_DINOV2_KWARGS, lora_blocks=0,
                              head_layers=0, target_res=64).eval()
    assert model.weights_info.source == "file"
    for key, value in state.items():
        torch.testing.assert_close(model.backbone.state_dict()[key], value)
    images = torch.rand(1, 3, 70, 70)
    x = (images - torch.tensor(model.spec.mean).view(1, 3, 1, 1)) / torch.tensor(model.spec.std).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = vit.forward_features(x)[:, vit.num_prefix_tokens:].reshape(1, 5, 5, -1).permute(0, 3, 1, 2)
        torch.testing.assert_close(model(images, input_size=(70, 70)), ref, rtol=1e-5, atol=1e-5)


def test_ddp_prefixed_state_dict(tmp_path):
    vit = _fit3d_like_timm_model()
    torch.save({f"module.{k}": v for k, v in vit.state_dict().items()}, tmp_path / "ddp.pth")
    model = corr3d.load_model("dinov2_s14", weights=str(tmp_path / "ddp.pth"), timm_kwargs=TINY_DINOV2_KWARGS,
                              lora_blocks=0, head_layers=0)
    torch.testing.assert_close(model.backbone.state_dict()["norm.weight"], vit.state_dict()["norm.weight"])


# ----------------------------------------------------------------------- issue 21: corrupt / foreign / non-finite
class _Payload:
    """A pickled object whose unpickling would run ``touch <marker>``: the kind of file --trust-pickle is about."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _valid_ckpt_bytes(tmp_path) -> bytes:
    base = tiny_model(14, timm_kwargs=TINY4, lora={"blocks": 0, "rank": 4, "alpha": None},
                      head={"num_layers": 0, "init": "default"})
    torch.save(_lightning_checkpoint(*_authors_module(base.embed_dim)), tmp_path / "valid.ckpt")
    return (tmp_path / "valid.ckpt").read_bytes()


@pytest.mark.parametrize("kind", ["truncated_zip", "random_bytes", "empty", "truncated_legacy", "text"])
def test_corrupt_checkpoints_never_suggest_trust_pickle(tmp_path, kind, capsys):
    import os

    from corr3d.cli import main
    from corr3d.errors import DataFileError

    valid = _valid_ckpt_bytes(tmp_path)
    if kind == "truncated_legacy":
        torch.save({"w_a_000": torch.ones(2)}, tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False)
        legacy = (tmp_path / "legacy.ckpt").read_bytes()
    data = {"truncated_zip": valid[: len(valid) // 2], "random_bytes": os.urandom(4096), "empty": b"",
            "truncated_legacy": legacy[: len(legacy) // 2] if kind == "truncated_legacy" else b"",
            "text": b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\n"}[kind]
    path = tmp_path / "broken.ckpt"
    path.write_bytes(data)
    for trust in (False, True):
        with pytest.raises(DataFileError) as info:
            read_authors_checkpoint(path, trust_pickle=trust)
        text = f"{info.value} {info.value.fix}"
        assert str(path) in text and "truncated or corrupt" in text
        assert "trust" not in text.lower() and "weights_only" not in text
    assert main(["import-checkpoint", str(path), "--backbone", "dinov2_s14", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "truncated or corrupt" in err and "--trust-pickle" not in err


def test_only_a_valid_pickle_with_foreign_globals_suggests_trust_pickle(tmp_path, capsys):
    from corr3d.cli import main
    from corr3d.errors import DataFileError

    marker = tmp_path / "pwned"
    base = tiny_model(14, timm_kwargs=TINY4, lora={"blocks": 0, "rank": 4, "alpha": None},
                      head={"num_layers": 0, "init": "default"})
    ckpt = _lightning_checkpoint(*_authors_module(base.embed_dim))
    ckpt["hyper_parameters"] = _Payload(marker)
    path = tmp_path / "pickled.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(DataFileError) as info:
        read_authors_checkpoint(path)
    assert "posix.system" in str(info.value) and "--trust-pickle" in info.value.fix and str(path) in str(info.value)
    assert main(["import-checkpoint", str(path), "--backbone", "dinov2_s14", "--out", str(tmp_path / "o")]) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    assert not marker.exists()


def test_import_refuses_non_finite_tensors_by_name(tmp_path):
    from corr3d.errors import NonFiniteTensorError

    base = tiny_model(14, timm_kwargs=TINY4, lora={"blocks": 0, "rank": 4, "alpha": None},
                      head={"num_layers": 0, "init": "default"})
    w_as, w_bs, conv = _authors_module(base.embed_dim)
    ckpt = _lightning_checkpoint(w_as, w_bs, conv)
    ckpt["w_b_005"] = ckpt["w_b_005"].detach().clone()
    ckpt["w_b_005"][1, 2] = float("nan")
    torch.save(ckpt, tmp_path / "nan.ckpt")
    with pytest.raises(NonFiniteTensorError, match="'w_b_005' holds 1 non-finite") as info:
        import_checkpoint(tmp_path / "nan.ckpt", "dinov2_s14", tmp_path / "o", base_weights="random:0",
                          timm_kwargs=TINY4)
    assert str(tmp_path / "nan.ckpt") in str(info.value) and not (tmp_path / "o").exists()
    ckpt = _lightning_checkpoint(w_as, w_bs, conv)
    ckpt["state_dict"]["refine_conv"] = {k: v.clone() for k, v in ckpt["state_dict"]["refine_conv"].items()}
    ckpt["state_dict"]["refine_conv"]["bias"][0] = float("inf")
    torch.save(ckpt, tmp_path / "inf.ckpt")
    with pytest.raises(NonFiniteTensorError, match="'state_dict.refine_conv.bias'"):
        import_checkpoint(tmp_path / "inf.ckpt", "dinov2_s14", tmp_path / "o", base_weights="random:0",
                          timm_kwargs=TINY4)


def test_import_layout_errors_are_user_errors_naming_the_file(tmp_path):
    from corr3d.errors import AdapterMismatchError

    base = tiny_model(14, timm_kwargs=TINY4, lora={"blocks": 0, "rank": 4, "alpha": None},
                      head={"num_layers": 0, "init": "default"})
    w_as, w_bs, conv = _authors_module(base.embed_dim)
    ckpt = _lightning_checkpoint(w_as, w_bs, conv)
    ckpt["w_a_002"] = torch.zeros(8, base.embed_dim)  # another rank than the others
    torch.save(ckpt, tmp_path / "shape.ckpt")
    with pytest.raises(AdapterMismatchError, match=r"w_a_002/w_b_002 have shapes \(8, 32\)/\(32, 4\); expected "
                                                   r"\(4, 32\)/\(32, 4\)") as info:
        import_checkpoint(tmp_path / "shape.ckpt", "dinov2_s14", tmp_path / "o", timm_kwargs=TINY4)
    assert str(tmp_path / "shape.ckpt") in str(info.value) and info.value.fix
    torch.save(_lightning_checkpoint(w_as, w_bs, conv), tmp_path / "x.ckpt")
    with pytest.raises(AdapterMismatchError, match=r"expected 64, found 32") as info:
        import_checkpoint(tmp_path / "x.ckpt", "test_vit", tmp_path / "o", base_weights="random:0")
    assert str(tmp_path / "x.ckpt") in str(info.value)
    deep = {**TINY4, "depth": 2}   # 4 adapted blocks do not fit a 2-block backbone
    with pytest.raises(AdapterMismatchError, match=r"LoRA on 4 blocks\) does not fit backbone 'dinov2_s14': "
                                                   r"cannot adapt the last 4 blocks of a 2-block"):
        import_checkpoint(tmp_path / "x.ckpt", "dinov2_s14", tmp_path / "o", base_weights="random:0",
                          timm_kwargs=deep)
