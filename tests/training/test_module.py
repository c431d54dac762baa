"""The LightningModule's checkpoint hooks (corr3d/training/module.py)."""
from __future__ import annotations

import pytest

from corr3d.losses import build_loss
from corr3d.training.module import MultiviewFinetuneModule
from tests.helpers.models import tiny_model


def _module():
    return MultiviewFinetuneModule(tiny_model(), build_loss({"name": "smooth_ap"}), lr=1e-4)


def test_a_checkpoint_written_before_the_backbone_rename_passes_the_trainable_check():
    module = _module()
    current = {k: v for k, v in module.state_dict().items()}
    legacy = {k.replace("model.backbone.", "model.vit.", 1): v for k, v in current.items()}
    assert any(k.startswith("model.vit.") for k in legacy)
    checkpoint = {"state_dict": dict(legacy)}
    module.on_load_checkpoint(checkpoint)                    # raised KeyError on the old names before
    assert set(checkpoint["state_dict"]) == set(current)
    module.load_state_dict(checkpoint["state_dict"])


def test_a_checkpoint_without_the_trainable_tensors_is_refused():
    module = _module()
    state = {k: v for k, v in module.state_dict().items() if "lora" not in k and "head" not in k}
    with pytest.raises(KeyError, match="lacks trainable tensors"):
        module.on_load_checkpoint({"state_dict": state})
