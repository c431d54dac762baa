"""DINOv3 (RoPE, registers), SigLIP 2 (no class token) and ConvNeXt (dense conv map) through the same model code:
registry facts vs timm, patch/stride alignment, RoPE at any resolution, LoRA / last-stage training, adapters, and
the ``hf`` weight path against a local Hugging Face cache layout."""
from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

import corr3d
from corr3d.models import BACKBONES, create_model
from corr3d.models.features import token_grid

TINY = {
    "dinov3_s16": {"embed_dim": 64, "depth": 2, "num_heads": 2, "init_values": 1.0},
    "siglip2_b16": {"embed_dim": 64, "depth": 2, "num_heads": 2, "img_size": 64},
    "convnext_b": {"depths": (1, 1, 1, 1), "dims": (16, 24, 32, 40)},
}
NEW = ("dinov3_s16", "dinov3_splus16", "dinov3_b16", "dinov3_l16", "dinov3_hplus16", "siglip2_b16", "siglip2_l16",
       "siglip2_so400m14", "convnext_s", "convnext_b", "convnext_l")


def tiny(name, **overrides):
    overrides.setdefault("weights", "random:0")
    overrides.setdefault("target_res", 64)
    overrides.setdefault("lora", {"blocks": 1, "rank": 4, "alpha": None})
    return create_model(name, timm_kwargs=TINY[name], **overrides)


@pytest.mark.parametrize("name", NEW)
def test_registry_facts_match_timm(name):
    spec = BACKBONES[name]
    cfg = timm.models.get_pretrained_cfg(spec.timm_id)
    assert cfg is not None, spec.timm_id
    assert tuple(cfg.mean) == pytest.approx(spec.mean) and tuple(cfg.std) == pytest.approx(spec.std)
    with torch.device("meta"):
        net = timm.create_model(spec.timm_id, pretrained=False, num_classes=0)
    if spec.kind == "convnet":
        info = net.feature_info[spec.feature_stage]
        assert (info["reduction"], info["num_chs"], len(net.stages)) == (spec.patch_size, spec.embed_dim, spec.depth)
    else:
        assert net.patch_embed.patch_size == (spec.patch_size,) * 2
        assert (net.embed_dim, net.num_prefix_tokens, len(net.blocks)) == \
            (spec.embed_dim, spec.num_prefix_tokens, spec.depth)
    if name.startswith("siglip2"):
        assert spec.num_prefix_tokens == 0 and spec.mean == (0.5, 0.5, 0.5) and "v2_webli" in spec.timm_id
    if name.startswith("dinov3"):
        assert spec.num_prefix_tokens == 5 and net.pos_embed is None and net.rope is not None


@pytest.fixture(scope="module", params=sorted(TINY))
def model(request):
    return tiny(request.param).eval()


def test_map_grid_and_point_sampling_alignment(model):
    """Map = input / patch (or stride); features at cell centres (j*s + s/2 in input px) equal the map cells."""
    images = torch.rand(2, 3, 48, 72)
    input_size = model.input_size(48, 72)
    with torch.no_grad():
        fmap = model(images)
    grid = token_grid(input_size, model.patch_size)
    assert fmap.shape == (2, model.embed_dim, *grid)
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    centres = torch.stack([(cols.reshape(-1) * model.patch_size + model.patch_size / 2) * 72 / input_size[1],
                           (rows.reshape(-1) * model.patch_size + model.patch_size / 2) * 48 / input_size[0]], -1)
    got = model.sample_points(fmap, centres.expand(2, -1, -1), (48, 72), normalize=False)
    torch.testing.assert_close(got, fmap.flatten(2).transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_local_change_moves_its_own_cell_most(model):
    """A known synthetic input: altering the pixels of one cell's block changes that cell's feature only, so the
    map is not shifted against the image (e.g. by unstripped prefix tokens or a wrong stride)."""
    s = model.patch_size
    if not model.is_convnet:
        # random attention mixes tokens arbitrarily; with every block's output projections at 0 the blocks are
        # identities and the map is the patch embedding (+ position terms): a block change must stay in its token
        model = tiny(model.spec.name, head={"num_layers": 0, "init": "default"}).eval()
        with torch.no_grad():
            for block in model.vit.blocks:
                for lin in (block.attn.proj, block.mlp.fc2):
                    lin.weight.zero_()
                    lin.bias.zero_()
    else:
        # the 7x7 depthwise convs legitimately mix neighbouring cells; with the blocks' layer scale at 0 every block
        # is an identity and the map is the stem + downsampling chain alone: a block change must stay in its cell
        model = tiny("convnext_b", head={"num_layers": 0, "init": "default"}).eval()
        with torch.no_grad():
            for name, p in model.vit.named_parameters():
                if name.endswith("gamma"):
                    p.zero_()
    input_size = (4 * s, 6 * s)
    base = torch.full((1, 3, *input_size), 0.5)
    with torch.no_grad():
        ref = model(base, input_size=input_size)
        for r, c in ((1, 4), (2, 1), (3, 3)):
            probe = base.clone()
            probe[..., r * s:(r + 1) * s, c * s:(c + 1) * s] = torch.rand(3, s, s, generator=torch.Generator()
                                                                             .manual_seed(r * 10 + c))
            change = (model(probe, input_size=input_size) - ref).norm(dim=1)[0]
            assert divmod(int(change.argmax()), 6) == (r, c)
            others = change.clone()
            others[r, c] = 0
            assert others.max() == 0 and change[r, c] > 0   # no leak into other cells: the map is not shifted


def test_dinov3_rope_any_resolution_matches_timm():
    """Our token path (RoPE table for the actual grid, 1 cls + 4 registers stripped) equals timm's own forward at
    non-square sizes off the native grid."""
    model = tiny("dinov3_s16", lora={"blocks": 0, "rank": 4, "alpha": None},
                 head={"num_layers": 0, "init": "default"}).eval()
    for size in ((64, 96), (80, 48), (112, 112)):
        x = torch.rand(1, 3, *size)
        with torch.no_grad():
            ours = model(x, input_size=size)
            ref = model.vit.forward_features(model.preprocess(x, size))[:, 5:]
        h, w = size[0] // 16, size[1] // 16
        torch.testing.assert_close(ours, ref.reshape(1, h, w, -1).permute(0, 3, 1, 2), rtol=1e-5, atol=1e-5)


def test_siglip2_has_no_prefix_and_matches_timm():
    model = tiny("siglip2_b16", lora={"blocks": 0, "rank": 4, "alpha": None},
                 head={"num_layers": 0, "init": "default"}).eval()
    assert model.spec.num_prefix_tokens == 0 and model.vit.cls_token is None
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ours = model(x, input_size=(64, 64))
        ref = model.vit.forward_features(model.preprocess(x, (64, 64)))
    torch.testing.assert_close(ours, ref.reshape(1, 4, 4, -1).permute(0, 3, 1, 2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(TINY))
def test_training_updates_only_the_adapted_part(name):
    model = tiny(name, head={"num_layers": 1, "init": "identity"})
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if name == "convnext_b":   # "LoRA" = train the feature stage (stage 2) only; stage 3 is not even run
        assert model.adapted_blocks == [2]
        assert trainable and all(n.startswith(("vit.stages.2.", "head.")) for n in trainable)
    else:
        assert all(".lora_" in n or n.startswith("head.") for n in trainable)
        assert any(f"blocks.{len(model.vit.blocks) - 1}.attn.qkv.lora_b_q" in n for n in trainable)
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.5)
    x = torch.rand(1, 3, 48, 64)
    before = model.dense_features(x).detach()
    loss = model(x).pow(2).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.trainable_parameters())
    opt.step()
    assert not torch.allclose(model.dense_features(x).detach(), before, atol=1e-6)


@pytest.mark.parametrize("name", sorted(TINY))
def test_adapter_round_trip(tmp_path, name):
    model = tiny(name, head={"num_layers": 1, "init": "default"})
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    path = model.save_adapter(tmp_path / "a")
    loaded = corr3d.load_model(None, adapter=path)
    x = torch.rand(1, 3, 48, 64)
    assert torch.equal(loaded.eval().dense_features(x), model.eval().dense_features(x))


def test_dinov3_qkv_bias_variant_lora_is_applied():
    model = create_model("vit_small_patch16_dinov3_qkvb", weights="random:0", target_res=64,
                         timm_kwargs=TINY["dinov3_s16"], lora={"blocks": 1, "rank": 4, "alpha": None},
                         head={"num_layers": 0, "init": "default"}).eval()
    x = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        before = model(x)
        model.vit.blocks[-1].attn.qkv.lora_b_v.add_(1.0)
        assert not torch.allclose(model(x), before, atol=1e-4)


@pytest.mark.parametrize("name", sorted(TINY))
def test_hf_weights_from_local_cache_layout(tmp_path, monkeypatch, name):
    """``weights=hf`` reads ``models--timm--<arch>.<tag>/snapshots/<rev>/model.safetensors`` offline (timm's hub
    files carry the classifier, which must be dropped)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    spec = BACKBONES[name]
    torch.manual_seed(7)
    hub_model = timm.create_model(spec.timm_id.split(".")[0], pretrained=False, num_classes=10, **TINY[name])
    state = {k: v.clone().contiguous() for k, v in hub_model.state_dict().items()}
    snap = tmp_path / "hub" / f"models--timm--{spec.timm_id}" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    save_file(state, str(snap / "model.safetensors"))
    model = corr3d.load_model(name, weights="hf", timm_kwargs=TINY[name], lora_blocks=0, head_layers=0)
    assert model.weights_info.source == "hf"
    own = model.vit.state_dict()
    compared = [k for k in state if k in own]
    assert len(compared) > 10
    for key in compared:
        assert torch.equal(own[key], state[key]), key
    auto = corr3d.load_model(name, weights="auto", timm_kwargs=TINY[name], lora_blocks=0, head_layers=0)
    assert auto.weights_info.source == "hf"


@pytest.mark.parametrize("name", sorted(TINY))
def test_compared_models_build(name):
    from corr3d.models import compared_model

    cfg = {"backbone": name, "timm_kwargs": TINY[name], "target_res": 64, "weights": "random:3",
           "lora": {"blocks": 1, "rank": 4, "alpha": None}}
    for which in ("pretrained", "random", "pretrained_head_init"):
        m = compared_model(which, cfg, seed=0)
        assert m(torch.rand(1, 3, 32, 48)).shape[1] == m.embed_dim
