"""Validation of equivariance during training and TensorBoard logging of the before/after measurements."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import lightning as L


class EquivarianceCallback(L.Callback):
    """Every ``every_n_steps`` optimizer steps, rank 0 measures APE/PCDP on the validation objects and logs them."""

    def __init__(self, cfg, object_dirs: Sequence[Path], every_n_steps: int):
        self.cfg = cfg
        self.object_dirs = list(object_dirs)
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self.every_n_steps or step == 0 or step % self.every_n_steps or trainer.global_rank != 0:
            return
        from corr3d.eval.equivariance import evaluate_equivariance

        results = evaluate_equivariance(pl_module.model, self.cfg, object_dirs=self.object_dirs)
        for logger in trainer.loggers:
            logger.log_metrics({f"val/{k}": v for k, v in results.items()}, step=step)


def log_metrics_to_tensorboard(trainer, metrics: dict) -> None:
    """The before/after equivariance numbers as scalars: 'pretrained' at step 0, 'finetuned' at the last step."""
    for logger in trainer.loggers:
        for label, step in (("pretrained", 0), ("pretrained_head_init", 0), ("finetuned", trainer.global_step)):
            values = metrics.get(label)
            if values:
                logger.log_metrics({f"{label}/{k}": v for k, v in values.items() if isinstance(v, (int, float))},
                                   step=step)
        logger.finalize("success")
