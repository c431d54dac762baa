"""Fixtures shared by the evaluation tests. ``tiny_model`` is a random timm test_vit without head or LoRA, built
once per module (the function of the same name in tests/helpers/models.py is another model, with LoRA)."""
from __future__ import annotations

import pytest
import torch

import corr3d


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return corr3d.load_model("test_vit.r160_in1k", weights="random", head_layers=0, lora_blocks=0).eval()

