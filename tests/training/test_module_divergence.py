"""Issue 21: a diverging run stops at the first non-finite loss or weights, with a user error naming the step and the
fix, and leaves no checkpoint of that step, no adapter and no DONE."""
from __future__ import annotations

import subprocess

import pytest
import torch

from corr3d.errors import Corr3dUserError, TrainingDivergedError
from corr3d.utils.safe_load import non_finite_tensor, safe_checkpoint_load
from tests.helpers.tiny import REPO, corr3d_command, subprocess_env, tiny_train_overrides
from tests.training._synthetic import fit, tiny_module


def _lora_b(module):
    return module.model.backbone.blocks[-1].attn.qkv.lora_b_q


def test_finite_step_passes_and_non_finite_weights_are_named():
    module = tiny_module()
    module._step_loss = torch.tensor(0.5)
    module.check_finite_step()  # finite: nothing happens
    with torch.no_grad():
        _lora_b(module)[0, 0] = float("nan")
    with pytest.raises(TrainingDivergedError) as info:
        module.check_finite_step()
    err = info.value
    assert isinstance(err, Corr3dUserError) and "training diverged at step 1" in str(err)
    assert "model.backbone.blocks.5.attn.qkv.lora_b_q" in str(err) and "optim.lr" in err.fix


def test_non_finite_loss_is_named():
    module = tiny_module()
    module._step_loss = torch.tensor(float("inf"))
    with pytest.raises(TrainingDivergedError, match="the loss is inf"):
        module.check_finite_step()


def test_lr_1e30_stops_at_the_first_non_finite_step_without_writing_it(tmp_path):
    """A real Lightning fit: with lr=1e30 the first step leaves huge but finite weights, the second forward overflows.
    Training raises there; every checkpoint on disk is finite and none is of the diverged step."""
    module = tiny_module(lr=1e30)
    with pytest.raises(TrainingDivergedError) as info:
        fit(module, tmp_path, max_steps=6)
    message = str(info.value)
    step = int(message.split("training diverged at step ")[1].split(":")[0])
    assert 1 <= step < 6 and "1e+30" in info.value.fix and "lower optim.lr" in info.value.fix
    written = sorted((tmp_path / "checkpoints").glob("step*.ckpt"))
    assert len(written) == step - 1   # steps before the diverged one only
    for path in (tmp_path / "checkpoints").glob("*.ckpt"):
        assert non_finite_tensor(safe_checkpoint_load(path)["state_dict"]) is None, path


def test_sane_lr_trains_through_the_check(tmp_path):
    module = tiny_module(lr=1e-3)
    trainer = fit(module, tmp_path, max_steps=2)
    assert trainer.global_step == 2
    assert not torch.equal(_lora_b(module), torch.zeros_like(_lora_b(module)))  # it did train


@pytest.mark.slow
def test_cli_training_with_huge_lr_fails_without_done_or_adapter(tmp_path):
    """The issue's command: ``optim.lr=1e30 trainer.image_log_every_n_steps=0`` used to finish with DONE and a NaN
    adapter; now it exits with a user error (exit code 2) that names the step and the fix."""
    cmd = corr3d_command("train", "dinov2_single_object", *tiny_train_overrides(tmp_path, max_steps=6),
                         "optim.lr=1e30", "trainer.image_log_every_n_steps=0", "equivariance.reference_models=[]")
    result = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=400)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert "corr3d: error: training diverged at step" in result.stderr
    assert "fix: lower optim.lr (now 1e+30" in result.stderr
    runs = [p for p in (tmp_path / "runs" / "dinov2_single_object").iterdir() if p.name != "latest"]
    assert len(runs) == 1
    run = runs[0]
    assert not (run / "DONE").exists() and not (run / "adapter.safetensors").exists()
    for path in (run / "checkpoints").glob("*.ckpt"):
        assert non_finite_tensor(safe_checkpoint_load(path)["state_dict"]) is None, path
