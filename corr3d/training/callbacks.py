"""Training that watches itself: a periodic equivariance probe on ``data.val_objects`` with best-step selection, and
TensorBoard logging of the before/after measurements.

The probe replaces a validation loop (the module has no ``validation_step``; the pairs a loss would see say little
about APE): every ``trainer.val_every_n_steps`` optimizer steps, and once before the first step, rank 0 measures
APE/PCDP on the validation objects (never on ``equivariance.objects``, the held-out test objects) and logs
``val/equivariance/ape`` etc. to TensorBoard. The best probe so far (lowest ``val/equivariance/ape``; the step-0 probe
of the untrained model included) is kept as ``best_adapter.safetensors`` + ``checkpoints/best.ckpt`` and listed in
``val_history.json``; with ``trainer.select_best`` the run ends with those weights, so a recipe that overshoots falls
back to its best step on validation objects (and to the untrained model if training never helped there).
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Sequence

import lightning as L
import torch

from corr3d.errors import Corr3dUserError
from corr3d.eval.equivariance import evaluate_equivariance
from corr3d.models.adapter import read_adapter
from corr3d.utils.io import write_json

log = logging.getLogger(__name__)

SELECT_KEY = "equivariance/ape"  # lower is better


class EquivarianceCallback(L.Callback):
    """Every ``every_n_steps`` optimizer steps (and at step 0), rank 0 measures APE/PCDP on ``object_dirs``."""

    def __init__(self, cfg, object_dirs: Sequence[Path], every_n_steps: int, run_dir: Path | None = None,
                 evaluate=None):
        self.cfg = cfg
        self.object_dirs = list(object_dirs)
        self.every_n_steps = int(every_n_steps)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._evaluate = evaluate  # injectable for tests; default: corr3d.eval.equivariance.evaluate_equivariance
        self.history: list[dict] = []
        self.best: dict | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    # -- probing --------------------------------------------------------------------------------------------------
    def _measure(self, model) -> dict[str, float]:
        if self._evaluate is not None:
            return self._evaluate(model)
        cfg = copy.deepcopy(self.cfg)
        for key in ("stereo_check", "mvimgnet", "real_pairs"):  # the probe is about the validation objects only
            if key in cfg.equivariance:
                cfg.equivariance[key] = False
        return evaluate_equivariance(model, cfg, object_dirs=self.object_dirs)

    def probe(self, trainer, pl_module, step: int) -> dict[str, float]:
        results = {k: float(v) for k, v in self._measure(pl_module.model).items()}
        for logger in trainer.loggers:
            logger.log_metrics({f"val/{k}": v for k, v in results.items()}, step=step)
        entry = {"step": int(step), **results}
        self.history.append(entry)
        if SELECT_KEY in results and (self.best is None or results[SELECT_KEY] < self.best[SELECT_KEY]):
            self.best = entry
            self.best_state = {k: v.detach().clone() for k, v in pl_module.model.adapter_state_dict().items()}
            self._save_best(trainer, pl_module)
        self._write_history()
        log.info("val probe at step %d: %s (best: step %s)", step,
                 ", ".join(f"{k}={v:.2f}" for k, v in results.items() if not k.endswith("num_points")),
                 self.best["step"] if self.best else "-")
        return results

    def _due(self, trainer) -> bool:
        step = trainer.global_step
        return bool(self.every_n_steps) and trainer.global_rank == 0 and step > 0 and step % self.every_n_steps == 0 \
            and not any(h["step"] == step for h in self.history)

    def on_train_start(self, trainer, pl_module) -> None:
        if self.every_n_steps and trainer.global_rank == 0 and not any(h["step"] == trainer.global_step
                                                                       for h in self.history):
            self._load_history()
            if not any(h["step"] == trainer.global_step for h in self.history):
                self.probe(trainer, pl_module, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._due(trainer):
            self.probe(trainer, pl_module, trainer.global_step)

    def on_train_end(self, trainer, pl_module) -> None:
        """The last step is probed too, so selection sees the final weights."""
        if self.every_n_steps and trainer.global_rank == 0 and trainer.global_step > 0 \
                and not any(h["step"] == trainer.global_step for h in self.history):
            self.probe(trainer, pl_module, trainer.global_step)

    # -- persistence ----------------------------------------------------------------------------------------------
    def _save_best(self, trainer, pl_module) -> None:
        if self.run_dir is None:
            return
        pl_module.model.save_adapter(self.run_dir / "best_adapter.safetensors")
        try:
            (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(self.run_dir / "checkpoints" / "best.ckpt")
        except Exception as err:  # before the first step the loop state may not be checkpointable
            log.debug("best.ckpt not written at step %d: %s", trainer.global_step, err)

    def _write_history(self) -> None:
        if self.run_dir is None:
            return
        write_json(self.run_dir / "val_history.json",
                   {"select_key": SELECT_KEY, "best": self.best, "history": self.history})

    def _load_history(self) -> None:
        """After a resume: earlier probes (and the best one, whose adapter file is on disk) still count."""
        path = self.run_dir / "val_history.json" if self.run_dir is not None else None
        if not path or not path.exists() or self.history:
            return
        data = json.loads(path.read_text())
        self.history = list(data.get("history", []))
        self.best = data.get("best")
        best_file = self.run_dir / "best_adapter.safetensors"
        if self.best is not None and best_file.exists():
            try:
                self.best_state = dict(read_adapter(best_file)[1])
            except Corr3dUserError as err:  # corrupt / non-finite: forget it, later probes choose a new best
                log.warning("ignoring the best probe of step %s: %s", self.best.get("step"), err)
                self.best = None

    def restore_best(self, model) -> dict | None:
        """Load the best probe's adapter weights into ``model``; returns that probe's entry (None: no probe)."""
        if self.best is None or self.best_state is None:
            return None
        source = self.run_dir / "best_adapter.safetensors" if self.run_dir is not None else "the best probe's weights"
        model.load_adapter_state(self.best_state, source=source)
        return self.best


def log_metrics_to_tensorboard(trainer, metrics: dict) -> None:
    """The before/after equivariance numbers as scalars: 'pretrained' at step 0, 'finetuned' at the last step."""
    for logger in trainer.loggers:
        for label, step in (("pretrained", 0), ("pretrained_head_init", 0), ("finetuned", trainer.global_step)):
            values = metrics.get(label)
            if values:
                logger.log_metrics({f"{label}/{k}": v for k, v in values.items() if isinstance(v, (int, float))},
                                   step=step)
        logger.finalize("success")
