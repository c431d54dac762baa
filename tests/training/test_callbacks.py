"""The validation probe: schedule (step 0, every n, last step), best selection by val APE, best adapter / history on
disk, restore of the best weights, resume of the history; and a real training run that selects its best step."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from corr3d.training.callbacks import EquivarianceCallback
from tests.helpers.models import tiny_model
from tests.helpers.tiny import REPO, corr3d_command, subprocess_env, tiny_train_overrides


class _Logger:
    def __init__(self):
        self.logged = []

    def log_metrics(self, values, step):
        self.logged.append((step, dict(values)))


class _Trainer:
    def __init__(self):
        self.global_step = 0
        self.global_rank = 0
        self.loggers = [_Logger()]
        self.saved = []

    def save_checkpoint(self, path):
        Path(path).write_text("ckpt")
        self.saved.append(self.global_step)


def _head_weight(model):
    return next(v for k, v in model.adapter_state_dict().items() if k.startswith("head.") and k.endswith("weight"))


def test_probe_schedule_best_selection_and_restore(tmp_path):
    model = tiny_model(16, head={"num_layers": 1, "init": "default"})
    module = SimpleNamespace(model=model)
    apes = iter([20.0, 18.0, 19.0, 25.0])  # step 0, 2, 4, final 5: best at step 2
    callback = EquivarianceCallback(None, [], every_n_steps=2, run_dir=tmp_path,
                                    evaluate=lambda m: {"equivariance/ape": next(apes), "equivariance/pcdp@0.05": 1.0})
    trainer = _Trainer()
    callback.on_train_start(trainer, module)
    weights = {}
    for step in range(1, 6):
        with torch.no_grad():
            _head_weight(model).add_(1.0)  # "training" changes the head every step
        trainer.global_step = step
        weights[step] = _head_weight(model).clone()
        callback.on_train_batch_end(trainer, module, None, None, step)
    callback.on_train_end(trainer, module)
    assert [h["step"] for h in callback.history] == [0, 2, 4, 5]
    assert callback.best["step"] == 2 and callback.best["equivariance/ape"] == 18.0
    logged = trainer.loggers[0].logged
    assert [s for s, _ in logged] == [0, 2, 4, 5] and "val/equivariance/ape" in logged[1][1]
    history = json.loads((tmp_path / "val_history.json").read_text())
    assert history["best"]["step"] == 2 and len(history["history"]) == 4
    assert (tmp_path / "best_adapter.safetensors").exists() and 2 in trainer.saved
    # restore: the model gets the step-2 weights back
    assert not torch.equal(_head_weight(model), weights[2])
    assert callback.restore_best(model)["step"] == 2
    assert torch.equal(_head_weight(model), weights[2])
    # a resumed run reads the history (and the best adapter) instead of probing step 0 again
    fresh = EquivarianceCallback(None, [], every_n_steps=2, run_dir=tmp_path,
                                 evaluate=lambda m: (_ for _ in ()).throw(AssertionError("probed again")))
    trainer.global_step = 0
    fresh.on_train_start(trainer, module)
    assert fresh.best["step"] == 2
    assert all(torch.equal(fresh.best_state[k], callback.best_state[k]) for k in callback.best_state)


def test_disabled_probe_never_measures(tmp_path):
    callback = EquivarianceCallback(None, [], every_n_steps=0, run_dir=tmp_path,
                                    evaluate=lambda m: (_ for _ in ()).throw(AssertionError("measured")))
    trainer = _Trainer()
    module = SimpleNamespace(model=None)
    callback.on_train_start(trainer, module)
    trainer.global_step = 3
    callback.on_train_batch_end(trainer, module, None, None, 3)
    callback.on_train_end(trainer, module)
    assert callback.history == [] and callback.restore_best(None) is None


def _probe_once(tmp_path, model):
    callback = EquivarianceCallback(None, [], every_n_steps=2, run_dir=tmp_path,
                                    evaluate=lambda m: {"equivariance/ape": 10.0})
    callback.on_train_start(_Trainer(), SimpleNamespace(model=model))
    return callback


def test_restore_best_into_another_structure_names_the_file(tmp_path):
    from corr3d.errors import AdapterMismatchError

    callback = _probe_once(tmp_path, tiny_model(16, head={"num_layers": 1, "init": "default"}))
    other = tiny_model(16, head={"num_layers": 2, "init": "default"})
    with pytest.raises(AdapterMismatchError, match=r"missing \['head.1.bias', 'head.1.weight'\]") as info:
        callback.restore_best(other)
    assert str(tmp_path / "best_adapter.safetensors") in str(info.value)


def test_a_corrupt_or_non_finite_best_adapter_does_not_block_a_resume(tmp_path, caplog):
    from safetensors.torch import load_file, save_file

    model = tiny_model(16, head={"num_layers": 1, "init": "default"})
    _probe_once(tmp_path, model)
    best = tmp_path / "best_adapter.safetensors"
    save_file({k: torch.full_like(v, float("nan")) for k, v in load_file(str(best)).items()}, str(best))
    apes = iter([9.0])
    fresh = EquivarianceCallback(None, [], every_n_steps=2, run_dir=tmp_path,
                                 evaluate=lambda m: {"equivariance/ape": next(apes)})
    trainer = _Trainer()
    trainer.global_step = 2
    with caplog.at_level("WARNING"):
        fresh.on_train_start(trainer, SimpleNamespace(model=model))
    assert "ignoring the best probe of step 0" in caplog.text and "non-finite" in caplog.text
    assert fresh.best["step"] == 2 and [h["step"] for h in fresh.history] == [0, 2]


@pytest.mark.slow
def test_training_run_probes_val_objects_and_selects_best(tmp_path):
    """A real tiny run: val probe on a validation object at steps 0, 2, 4; select_best writes the chosen step."""
    cmd = corr3d_command("train", "dinov2_single_object", *tiny_train_overrides(tmp_path, max_steps=4),
                         "data.val_objects=[procedural:gear_astronaut]", "trainer.val_every_n_steps=2",
                         "trainer.select_best=true", "optim.lr=1e-2")
    result = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = (tmp_path / "runs" / "dinov2_single_object" / "latest").resolve()
    history = json.loads((run / "val_history.json").read_text())
    assert [h["step"] for h in history["history"]] == [0, 2, 4]
    best = min(history["history"], key=lambda h: h["equivariance/ape"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["selected_step"] == best["step"]
    # the saved adapter is the selected one
    from safetensors.torch import load_file

    assert all(torch.equal(a, b) for a, b in zip(load_file(str(run / "adapter.safetensors")).values(),
                                                 load_file(str(run / "best_adapter.safetensors")).values()))
    report = (run / "report.md").read_text()
    assert "Validation probe" in report and "features.png" in report
    assert (run / "features.png").exists() and (run / "matches_finetuned.png").exists()
