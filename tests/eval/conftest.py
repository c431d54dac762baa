"""Fixtures shared by the evaluation tests. ``tiny_model`` is a random timm test_vit without head or LoRA, built
once per module (the function of the same name in tests/helpers/models.py is another model, with LoRA).
``make eval`` measures in this process here, whatever ``eval.workers`` says, unless a test is marked
``eval_workers``: the tests monkeypatch measurements, fakes and counters that spawned workers would not see."""
from __future__ import annotations

import pytest
import torch

import corr3d


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return corr3d.load_model("test_vit.r160_in1k", weights="random", head_layers=0, lora_blocks=0).eval()


@pytest.fixture(autouse=True)
def _one_eval_process(request, monkeypatch):
    if request.node.get_closest_marker("eval_workers") is None:
        import corr3d.eval.run as run

        monkeypatch.setattr(run, "eval_workers", lambda cfg: 1)
