"""Feature extraction: resize rule, prefix stripping, layers, and patch-centre point sampling for /14 and /16."""
from __future__ import annotations

import pytest
import torch

from corr3d.models import paper_input_size, sample_feature_map, token_grid, vit_tokens
from corr3d.models.features import tokens_to_map
from tests.helpers.models import tiny_model


@pytest.fixture(scope="module", params=[14, 16], ids=["patch14", "patch16"])
def model(request):
    return tiny_model(request.param).eval()


def test_paper_resize_rule():
    assert paper_input_size(512, 512, 14) == (1120, 1120)          # 640/8 = 80 tokens -> 1120 px
    assert paper_input_size(512, 512, 16) == (1280, 1280)
    assert paper_input_size(480, 854, 14) == (45 * 14, 80 * 14)    # long side 640 -> 360 x 640
    assert paper_input_size(500, 500, 14, target_res=448, downsample_factor=14) == (448, 448)
    assert token_grid((1120, 1120), 14) == (80, 80)
    assert token_grid((476, 854), 14, stride=7) == (67, 121)


def index_map(h: int, w: int) -> torch.Tensor:
    """(1, 2, h, w) map whose channels are the token column and row: sampling must return (u, v) exactly."""
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
    return torch.stack([cols, rows])[None]


def expected_index(points, image_size, input_size, patch, stride, grid):
    """Token j covers input pixels [j*s, j*s + p): its centre is at x_in = j*s + p/2 (conventions file)."""
    scale = torch.tensor([input_size[1] / image_size[1], input_size[0] / image_size[0]])
    uv = (points * scale - patch / 2) / stride
    return torch.minimum(uv.clamp(min=0), torch.tensor([grid[1] - 1, grid[0] - 1], dtype=torch.float32))


def test_sampling_known_map(model):
    patch = model.patch_size
    image_size = (48, 72)
    input_size = model.input_size(*image_size)
    grid = token_grid(input_size, patch)
    assert input_size == (grid[0] * patch, grid[1] * patch)
    fmap = index_map(*grid)
    # Token centres must map to integer indices: centre of token (r, c) in image pixels.
    cols = torch.arange(grid[1], dtype=torch.float32)
    centres_x = (cols * patch + patch / 2) * image_size[1] / input_size[1]
    pts = torch.stack([centres_x, torch.full_like(centres_x, (patch / 2) * image_size[0] / input_size[0])], -1)
    got = model.sample_points(fmap, pts[None], image_size, normalize=False)[0]
    assert torch.allclose(got[:, 0], cols, atol=1e-5) and torch.allclose(got[:, 1], torch.zeros_like(cols), atol=1e-5)
    # Arbitrary sub-pixel points (including beyond the outer token centres -> border clamp).
    gen = torch.Generator().manual_seed(0)
    pts = torch.rand(1, 200, 2, generator=gen) * torch.tensor([image_size[1], image_size[0]])
    got = model.sample_points(fmap, pts, image_size, normalize=False)[0]
    assert torch.allclose(got, expected_index(pts[0], image_size, input_size, patch, patch, grid), atol=1e-4)
    # The module-level helper gives the same answer for the default (stride == patch) case.
    assert torch.allclose(sample_feature_map(fmap, pts, image_size, normalize=False)[0], got, atol=1e-5)


def test_sampling_known_map_with_overlapping_stride(model):
    patch, stride = model.patch_size, model.patch_size // 2
    image_size = (40, 64)
    input_size = (4 * patch, 6 * patch)
    grid = token_grid(input_size, patch, stride)
    fmap = index_map(*grid)
    gen = torch.Generator().manual_seed(1)
    pts = torch.rand(1, 300, 2, generator=gen) * torch.tensor([image_size[1], image_size[0]])
    got = model.sample_points(fmap, pts, image_size, input_size=input_size, stride=stride, normalize=False)[0]
    assert torch.allclose(got, expected_index(pts[0], image_size, input_size, patch, stride, grid), atol=1e-4)


def test_authors_timm_bug_would_be_caught():
    """Sampling a /16 map as if patches were 14 px (paper.md §8.3.1) misplaces points; ours does not."""
    image_size, grid = (64, 64), (8, 8)
    fmap = index_map(*grid)
    centre = torch.tensor([[[28.0, 28.0]]])  # centre of token (3, 3) in a 64-px image tiled by 8 tokens
    ours = sample_feature_map(fmap, centre, image_size, input_size=(128, 128), patch_size=16, normalize=False)
    assert torch.allclose(ours, torch.tensor([[[3.0, 3.0]]]))
    # Authors: points scaled into the 128-px /16 input, then normalised as if tokens were 14 px apart.
    wrong = sample_feature_map(fmap, centre * 2, (128, 128), input_size=(128, 128), patch_size=14, normalize=False)
    assert torch.allclose(wrong, torch.tensor([[[3.5, 3.5]]]))


def test_dense_features_shapes_and_normalisation(model):
    images = torch.rand(2, 3, 48, 64)
    fmap = model.dense_features(images)
    grid = token_grid(model.input_size(48, 64), model.patch_size)
    assert fmap.shape == (2, model.embed_dim, *grid)
    assert torch.allclose(fmap.norm(dim=1), torch.ones(2, *grid), atol=1e-5)
    pts = torch.rand(2, 7, 2) * torch.tensor([64.0, 48.0])
    feats = model.point_features(images, pts)
    assert feats.shape == (2, 7, model.embed_dim)
    assert torch.allclose(feats.norm(dim=-1), torch.ones(2, 7), atol=1e-5)
    full = model.pixel_features(fmap, (48, 64), step=4)
    assert full.shape == (2, model.embed_dim, 12, 16)


def test_point_features_at_token_centres_equal_the_map(model):
    images = torch.rand(1, 3, 48, 64)
    fmap = model.dense_features(images)
    h_in, w_in = model.input_size(48, 64)
    p = model.patch_size
    r, c = 1, 2
    centre = torch.tensor([[[(c * p + p / 2) * 64 / w_in, (r * p + p / 2) * 48 / h_in]]])
    assert torch.allclose(model.sample_points(fmap, centre, (48, 64))[0, 0], fmap[0, :, r, c], atol=1e-5)


def test_overlapping_stride_grid(model):
    images = torch.rand(1, 3, 48, 64)
    p = model.patch_size
    input_size = (4 * p, 6 * p)
    fmap = model.dense_features(images, input_size=input_size, stride=p // 2)
    assert fmap.shape[-2:] == token_grid(input_size, p, p // 2) == (7, 11)
    # stride == patch reproduces the default path exactly (functional conv, no module mutation)
    default = model.dense_features(images, input_size=input_size)
    assert torch.equal(model.dense_features(images, input_size=input_size, stride=p), default)
    assert model.backbone.patch_embed.proj.stride == (p, p)


def test_tokens_to_map_order_and_prefix_stripping():
    tokens = torch.arange(2 * (3 + 6) * 4, dtype=torch.float32).reshape(2, 9, 4)
    fmap = tokens_to_map(tokens, 3, (2, 3))
    assert torch.equal(fmap[1, :, 1, 2], tokens[1, 3 + 1 * 3 + 2])


def test_register_model_strips_all_prefix_tokens():
    model = tiny_model(14, registers=True).eval()
    assert model.spec.num_prefix_tokens == 5
    images = torch.rand(1, 3, 42, 42)
    x = model.preprocess(images, (42, 42))
    tokens, grid = vit_tokens(model.backbone, x)
    assert tokens.shape[1] == 5 + grid[0] * grid[1]
    fmap = model(images, input_size=(42, 42))
    assert torch.equal(fmap, model.head(tokens[:, 5:].transpose(1, 2).reshape(1, -1, *grid)))


def test_native_grid_matches_timm_forward_features():
    model = tiny_model(16, lora={"blocks": 0})
    x = torch.randn(1, 3, 160, 160)  # test_vit's native 10x10 grid: no position-embedding resampling
    tokens, _ = vit_tokens(model.backbone, x)
    assert torch.equal(tokens, model.backbone.forward_features(x))


def test_layer_and_prenorm_options():
    model = tiny_model(16, lora={"blocks": 0}, head={"num_layers": 0})
    x = torch.randn(1, 3, 160, 160)  # native grid: timm's own path needs no position-embedding resampling
    vit = model.backbone
    with torch.no_grad():
        ref = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        after0 = vit.blocks[0](ref)
    tokens, _ = vit_tokens(vit, x, layer=0)
    assert torch.allclose(tokens, vit.norm(after0), atol=1e-6)
    pre, _ = vit_tokens(vit, x, layer=-1, final_norm=False)
    post, _ = vit_tokens(vit, x, layer=-1)
    assert torch.allclose(vit.norm(pre), post, atol=1e-6)
    layered = tiny_model(16, lora={"blocks": 0}, head={"num_layers": 0}, layer=2)
    assert not torch.allclose(layered(torch.rand(1, 3, 48, 48)), model(torch.rand(1, 3, 48, 48)))
    with pytest.raises(ValueError):
        vit_tokens(vit, x, layer=6)


# -- GPU path on CPU: autocast, fused attention, frozen-prefix caching (issue 13) --------------------------------
def test_autocast_switch_and_bf16_forward_on_cpu():
    from corr3d.models.features import autocast_context, autocast_dtype

    assert autocast_dtype("cpu", "auto") is None and autocast_dtype("cuda", "auto") == torch.bfloat16
    assert autocast_dtype("cpu", "bf16") == torch.bfloat16 and autocast_dtype("cuda", "fp16") == torch.float16
    with pytest.raises(ValueError):
        autocast_dtype("cpu", "fp8")
    model = tiny_model(14).eval()
    images = torch.rand(2, 3, 42, 42)
    with torch.no_grad():
        ref = model(images)
        with autocast_context("cpu", "bf16"):  # the CUDA code path, on CPU where torch supports bf16 autocast
            low = model(images)
    assert low.dtype == torch.bfloat16
    cos = torch.nn.functional.cosine_similarity(low.float().flatten(1), ref.flatten(1), dim=1)
    assert (cos > 0.99).all()


def test_timm_blocks_use_fused_sdpa_and_match_explicit_attention():
    from corr3d.models.features import enable_fused_attention, fused_attention_status

    model = tiny_model(14).eval()
    status = fused_attention_status(model.backbone)
    assert status["timm_use_fused_attn"] and status["all_fused"], status
    images = torch.rand(1, 3, 42, 42)
    with torch.no_grad():
        fused = model(images)
        for block in model.backbone.blocks:
            block.attn.fused_attn = False
        explicit = model(images)
        assert enable_fused_attention(model.backbone) == len(model.backbone.blocks)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)


def test_frozen_prefix_continuation_equals_full_forward():
    from corr3d.models.features import frozen_prefix_depth, tokens_to_map, vit_prefix_tokens, vit_tokens_from

    model = tiny_model(16).eval()  # 6 blocks, LoRA on the last 2
    assert frozen_prefix_depth(model.backbone) == 4
    images = torch.rand(2, 3, 48, 48)
    size = model.input_size(48, 48)
    with torch.no_grad():
        prefix, grid = vit_prefix_tokens(model.backbone, model.preprocess(images, size), 4)
        tokens = vit_tokens_from(model.backbone, prefix, 4)
        torch.testing.assert_close(model.head(tokens_to_map(tokens, model.spec.num_prefix_tokens, grid)),
                                   model(images), atol=1e-6, rtol=0)
    assert frozen_prefix_depth(tiny_model(16, unfreeze_blocks=6).backbone) == 0


def test_cached_prefix_training_features_and_gradients_equal_uncached():
    from corr3d.losses import smooth_ap_loss
    from corr3d.training.module import MultiviewFinetuneModule

    model = tiny_model(16)
    with torch.no_grad():
        for block in model.backbone.blocks[-2:]:  # LoRA B != 0 so the adapted blocks matter
            block.attn.qkv.lora_b_q.normal_(0, 0.1)
    gen = torch.Generator().manual_seed(0)
    batch = {"image0": torch.rand(1, 3, 48, 48, generator=gen), "image1": torch.rand(1, 3, 48, 48, generator=gen),
             "points0": torch.rand(1, 20, 2, generator=gen) * 48, "points1": torch.rand(1, 20, 2, generator=gen) * 48,
             "object_id": ["o"], "view0": torch.tensor([3]), "view1": torch.tensor([5])}
    plain = MultiviewFinetuneModule(model, smooth_ap_loss)
    cached = MultiviewFinetuneModule(model, smooth_ap_loss, cache_frozen_prefix=True)
    grads = []
    for module in (plain, cached, cached):  # the second cached call is a cache hit
        model.zero_grad()
        _, f0, f1 = module.pair_features(batch)
        (f0 * f1).sum().backward()
        grads.append(model.backbone.blocks[-1].attn.qkv.lora_a_q.grad.clone())
    assert len(cached._prefix_cache) == 2
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grads[2], grads[0], atol=1e-6, rtol=1e-5)


# -- model.pos_embed_interp (issue 22): official DINOv2 scale-factor interpolation -------------------------------
def _cubic_weights(t: float, a: float = -0.75) -> list[float]:
    """Keys' cubic convolution weights of the 4 taps at offsets -1, 0, 1, 2 for fraction t (torch's bicubic)."""
    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):   # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _resize_axis(values: list[list[float]], out_len: int, scale: float) -> list[list[float]]:
    """Resize rows of ``values`` (n, C) to ``out_len`` with source = (o + 0.5) / scale - 0.5, taps clamped."""
    import math

    n, out = len(values), []
    for o in range(out_len):
        src = (o + 0.5) / scale - 0.5
        base = math.floor(src)
        weights = _cubic_weights(src - base)
        row = [0.0] * len(values[0])
        for k, wk in zip(range(-1, 3), weights):
            idx = min(max(base + k, 0), n - 1)
            row = [r + wk * v for r, v in zip(row, values[idx])]
        out.append(row)
    return out


def _official_dinov2_patch_table(table: torch.Tensor, h: int, w: int, offset: float = 0.1) -> torch.Tensor:
    """The official formula in plain Python: (M, M, C) -> (h, w, C), scale factor (n + offset) / M per axis."""
    m = table.shape[0]
    grid = table.double().tolist()
    cols = [_resize_axis(r, w, (w + offset) / m) for r in grid]              # (M, w, C) along x
    by_col = [[cols[r][c] for r in range(m)] for c in range(w)]               # (w, M, C)
    rows = [_resize_axis(col, h, (h + offset) / m) for col in by_col]        # (w, h, C) along y
    return torch.tensor(rows, dtype=torch.float64).permute(1, 0, 2)


def test_dinov2_pos_embed_interp_reproduces_the_official_formula():
    from corr3d.models.features import add_pos_embed, dinov2_resample_pos_embed

    model = tiny_model(16, lora={"blocks": 0})
    vit = model.backbone
    m = vit.patch_embed.grid_size[0]
    prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
    table = vit.pos_embed[0, prefix:].detach().reshape(m, m, -1)
    for h, w in ((7, 13), (15, 4), (m + 3, m)):
        got = dinov2_resample_pos_embed(vit.pos_embed.detach(), (h, w), (m, m), prefix)
        want = _official_dinov2_patch_table(table, h, w)
        assert got.shape == (1, prefix + h * w, table.shape[-1])
        assert torch.equal(got[:, :prefix], vit.pos_embed[:, :prefix].detach())
        torch.testing.assert_close(got[0, prefix:].double().reshape(h, w, -1), want, rtol=0, atol=1e-5)
    # on the native grid the table is used as is; elsewhere the offset moves the samples: exact != dinov2
    assert dinov2_resample_pos_embed(vit.pos_embed, (m, m), (m, m), prefix) is vit.pos_embed
    x = torch.randn(1, 7, 13, vit.embed_dim)
    exact, dino = add_pos_embed(vit, x), add_pos_embed(vit, x, "dinov2")
    assert (exact - dino).abs().max() > 1e-4
    setattr(vit, "corr3d_pos_embed_interp", "dinov2")
    try:
        assert torch.equal(add_pos_embed(vit, x), dino)   # the ViT's attribute selects the mode
        tokens, _ = vit_tokens(vit, torch.randn(1, 3, 7 * 16, 13 * 16))
    finally:
        delattr(vit, "corr3d_pos_embed_interp")
    assert torch.isfinite(tokens).all()
    with pytest.raises(ValueError, match="pos_embed_interp must be one of"):
        add_pos_embed(vit, x, "nearest")
