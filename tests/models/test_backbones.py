"""Every backbone of the registry, through the same model code (timm's tests/test_models.py pattern: one test,
parametrised over every registered name): registry facts vs timm, family assignment, random-init builds at a tiny
input (feature-map shape and stride, adaptation only in the last blocks), and the family path against a
hand-assembled timm reference. Then, on tiny variants of DINOv3 (RoPE, registers), SigLIP 2 (no class token) and
ConvNeXt (dense conv map): patch/stride alignment, RoPE at any resolution, LoRA / last-stage training, adapters, and
the ``hf`` weight path against a local Hugging Face cache layout."""
from __future__ import annotations

import dataclasses
import functools

import pytest
import timm
import torch
from safetensors.torch import save_file

import corr3d
from corr3d.errors import UnknownNameError
from corr3d.models import BACKBONES, FAMILIES, backbone_family, create_model, register_backbone
from corr3d.models.features import token_grid
from tests.helpers.models import TINY_DINOV2_KWARGS

TINY = {
    "dinov3_s16": {"embed_dim": 64, "depth": 2, "num_heads": 2, "init_values": 1.0},
    "siglip2_b16": {"embed_dim": 64, "depth": 2, "num_heads": 2, "img_size": 64},
    "convnext_b": {"depths": (1, 1, 1, 1), "dims": (16, 24, 32, 40)},
}
# the identity check also covers learned, resampled position embeddings (DINOv2)
REFERENCE_KWARGS = {**TINY, "dinov2_s14": TINY_DINOV2_KWARGS}
ALL = sorted(BACKBONES)
# registry entries with more parameters are not built at full size here: a random init of a ViT-B takes ~10 s on the
# 2-core test machine and ViT-G ~4.5 GB and minutes; their facts are checked on the meta device instead
BUILD_LIMIT = 30_000_000


@functools.cache
def meta_network(name):
    """The full-size timm network of a registry entry on the meta device (shapes only, no memory, no init)."""
    with torch.device("meta"):
        return timm.create_model(BACKBONES[name].timm_id, pretrained=False, num_classes=0)


def tiny(name, **overrides):
    overrides.setdefault("weights", "random:0")
    overrides.setdefault("target_res", 64)
    overrides.setdefault("lora", {"blocks": 1, "rank": 4, "alpha": None})
    return create_model(name, timm_kwargs=TINY[name], **overrides)


def test_registry_names():
    expected = {"dinov2_s14", "dinov2_b14", "dinov2_l14", "dinov2_g14", "dinov2_s14_reg", "dinov2_b14_reg",
                "dinov2_l14_reg", "dinov2_g14_reg", "clip_b16", "mae_b16", "deit3_b16", "dinov3_s16", "dinov3_splus16",
                "dinov3_b16", "dinov3_l16", "dinov3_hplus16", "siglip2_b16", "siglip2_l16", "siglip2_so400m14",
                "convnext_s", "convnext_b", "convnext_l"}
    assert expected <= set(BACKBONES)
    assert BACKBONES["clip_b16"].timm_id == "vit_base_patch16_clip_384.laion2b_ft_in12k_in1k"


@pytest.mark.parametrize("name", ALL)
def test_registry_facts_match_timm(name):
    spec = BACKBONES[name]
    cfg = timm.models.get_pretrained_cfg(spec.timm_id)
    assert cfg is not None, spec.timm_id
    assert tuple(cfg.mean) == pytest.approx(spec.mean) and tuple(cfg.std) == pytest.approx(spec.std)
    net = meta_network(name)
    if spec.family == "convnet":
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


@pytest.mark.parametrize("name", ALL)
def test_family_assignment(name):
    """Each entry's family is the one its timm network needs: patch embedding + blocks (LoRA on attention) for the
    ViT family, stem + stages (no attention: stages are trained instead) for the convnet family."""
    spec, net = BACKBONES[name], meta_network(name)
    family = backbone_family(spec)
    assert family is FAMILIES[spec.family] and family.name == spec.family
    is_vit = hasattr(net, "patch_embed") and hasattr(net, "blocks")
    assert spec.family == ("vit" if is_vit else "convnet")
    assert family.lora == family.overlapping_stride == is_vit
    assert (spec.feature_stage is None) == is_vit


def test_timm_ids_outside_the_table_and_unknown_families():
    assert backbone_family(None) is FAMILIES["vit"]   # any timm ViT id: built as a timm ViT
    bad = dataclasses.replace(BACKBONES["dinov2_s14"], name="dinov2_typo", family="vitt")
    with pytest.raises(UnknownNameError, match="names family 'vitt'.*did you mean 'vit'"):
        register_backbone(bad)
    assert "dinov2_typo" not in BACKBONES


@pytest.mark.parametrize("name", ALL)
def test_random_init_build_feature_map_and_adaptation(name):
    """Full-size network, random weights, a 2 x 3 cell input: the grid has the spec's width and one cell per
    patch (stride); LoRA (ViT) or stage training (convnet) makes only the last block / feature stage trainable."""
    count = sum(p.numel() for p in meta_network(name).parameters())
    if count > BUILD_LIMIT:
        pytest.skip(f"{name} has {count / 1e6:.0f}M parameters (> {BUILD_LIMIT / 1e6:.0f}M): a random-init build "
                    "is too slow/large for the CPU test run; its facts are checked on the meta device")
    model = create_model(name, weights="random:0", lora={"blocks": 1, "rank": 4, "alpha": None},
                         head={"num_layers": 1, "init": "default"}).eval()
    spec, s = model.spec, model.patch_size
    with torch.no_grad():
        fmap = model(torch.rand(1, 3, 2 * s, 3 * s), input_size=(2 * s, 3 * s))
    assert fmap.shape == (1, spec.embed_dim, 2, 3)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    if spec.family == "convnet":
        last = f"backbone.stages.{spec.feature_stage}."
        assert model.adapted_blocks == [spec.feature_stage]
    else:
        last = f"backbone.blocks.{spec.depth - 1}.attn.qkv.lora_"
        assert model.adapted_blocks == [spec.depth - 1]
    assert trainable and all(n.startswith(last) for n in trainable), trainable[:4]


def _timm_reference(name, kwargs, state, layer):
    """The same timm network, built by timm alone with the weights ``state`` and cut after block ``layer`` (ViT) /
    the feature stage (convnet), so that its own ``forward_features`` is the features at the model's layer."""
    spec = BACKBONES[name]
    extra = {} if spec.family == "convnet" else {"dynamic_img_size": True}
    net = timm.create_model(spec.timm_id, pretrained=False, num_classes=0, **extra, **kwargs).eval()
    net.load_state_dict(state, strict=True)
    if spec.family == "convnet":
        net.stages = net.stages[: spec.feature_stage + 1]
    else:
        net.blocks = net.blocks[: layer % len(net.blocks) + 1]
    return net


@pytest.mark.parametrize("name", sorted(REFERENCE_KWARGS))
@pytest.mark.parametrize("layer", [0, -1])
def test_family_path_equals_hand_assembled_timm_features(name, layer):
    """Numbers unchanged by the family interface: a tiny random-init model built through ``create_model`` gives
    exactly timm's own ``forward_features`` at the model's layer (prefix tokens dropped, tokens laid out as the
    grid), bit for bit."""
    model = create_model(name, weights="random:0", timm_kwargs=REFERENCE_KWARGS[name], layer=layer, lora_blocks=0,
                         head_layers=0).eval()
    reference = _timm_reference(name, REFERENCE_KWARGS[name], model.backbone.state_dict(), layer)
    s, prefix = model.patch_size, model.spec.num_prefix_tokens
    # off their native grid timm's dynamic path antialiases learned position embeddings and corr3d deliberately does
    # not (features.add_pos_embed): those are compared on the native grid, RoPE / convnets on a 3 x 5 one
    h, w = (3, 5) if getattr(model.backbone, "pos_embed", None) is None else model.backbone.patch_embed.grid_size
    x = torch.rand(2, 3, h * s, w * s)
    with torch.no_grad():
        ours = model(x, input_size=(h * s, w * s))
        ref = reference.forward_features(model.preprocess(x, (h * s, w * s)))
    if model.spec.family == "vit":
        ref = ref[:, prefix:].reshape(2, h, w, -1).permute(0, 3, 1, 2)
    assert ours.shape == ref.shape == (2, model.embed_dim, h, w)
    assert torch.equal(ours, ref)


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
    if model.spec.family == "vit":
        # random attention mixes tokens arbitrarily; with every block's output projections at 0 the blocks are
        # identities and the map is the patch embedding (+ position terms): a block change must stay in its token
        model = tiny(model.spec.name, head={"num_layers": 0, "init": "default"}).eval()
        with torch.no_grad():
            for block in model.backbone.blocks:
                for lin in (block.attn.proj, block.mlp.fc2):
                    lin.weight.zero_()
                    lin.bias.zero_()
    else:
        # the 7x7 depthwise convs legitimately mix neighbouring cells; with the blocks' layer scale at 0 every block
        # is an identity and the map is the stem + downsampling chain alone: a block change must stay in its cell
        model = tiny("convnext_b", head={"num_layers": 0, "init": "default"}).eval()
        with torch.no_grad():
            for name, p in model.backbone.named_parameters():
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
            ref = model.backbone.forward_features(model.preprocess(x, size))[:, 5:]
        h, w = size[0] // 16, size[1] // 16
        torch.testing.assert_close(ours, ref.reshape(1, h, w, -1).permute(0, 3, 1, 2), rtol=1e-5, atol=1e-5)


def test_siglip2_has_no_prefix_and_matches_timm():
    model = tiny("siglip2_b16", lora={"blocks": 0, "rank": 4, "alpha": None},
                 head={"num_layers": 0, "init": "default"}).eval()
    assert model.spec.num_prefix_tokens == 0 and model.backbone.cls_token is None
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ours = model(x, input_size=(64, 64))
        ref = model.backbone.forward_features(model.preprocess(x, (64, 64)))
    torch.testing.assert_close(ours, ref.reshape(1, 4, 4, -1).permute(0, 3, 1, 2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(TINY))
def test_training_updates_only_the_adapted_part(name):
    model = tiny(name, head={"num_layers": 1, "init": "identity"})
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if name == "convnext_b":   # "LoRA" = train the feature stage (stage 2) only; stage 3 is not even run
        assert model.adapted_blocks == [2]
        assert trainable and all(n.startswith(("backbone.stages.2.", "head.")) for n in trainable)
    else:
        assert all(".lora_" in n or n.startswith("head.") for n in trainable)
        assert any(f"blocks.{len(model.backbone.blocks) - 1}.attn.qkv.lora_b_q" in n for n in trainable)
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
        model.backbone.blocks[-1].attn.qkv.lora_b_v.add_(1.0)
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
    own = model.backbone.state_dict()
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
