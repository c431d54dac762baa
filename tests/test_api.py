"""The Python API's defaults mean what they say (issue 20 item 7)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import corr3d
from tests.helpers.models import TINY_DINOV2_KWARGS


def test_load_model_returns_the_backbones_own_features_in_eval_mode():
    model = corr3d.load_model("dinov2_s14", weights="random", timm_kwargs=TINY_DINOV2_KWARGS, target_res=64)
    assert not model.training
    assert model.config["head"]["num_layers"] == 0 and model.config["lora"]["blocks"] == 0
    assert model.adapted_blocks == []
    asked = corr3d.load_model("dinov2_s14", weights="random", timm_kwargs=TINY_DINOV2_KWARGS, head_layers=1,
                              lora={"blocks": 1, "rank": 2, "alpha": None})
    assert asked.config["head"]["num_layers"] == 1 and asked.config["lora"]["blocks"] == 1


def test_image_to_tensor_takes_paths_pil_and_arrays(tmp_path):
    rgb = (np.arange(4 * 5 * 3) % 256).astype(np.uint8).reshape(4, 5, 3)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    want = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    for image in (rgb, Image.fromarray(rgb), tmp_path / "x.png", str(tmp_path / "x.png"), rgb / 255.0):
        got = corr3d.image_to_tensor(image)
        assert got.shape == (1, 3, 4, 5) and torch.allclose(got, want, atol=1e-6)
    gray = corr3d.image_to_tensor(rgb[..., 0])
    assert torch.equal(gray[:, 0], gray[:, 2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        corr3d.image_to_tensor(rgb * 2.0)
    with pytest.raises(ValueError, match="shape"):
        corr3d.image_to_tensor(np.zeros((2, 3, 4, 5)))
