"""In-process Lightning fits of the real ``MultiviewFinetuneModule`` on synthetic pairs (tiny ViT, 48-px images):
seconds, no rendering, so divergence and resume rules can be tested on real Lightning checkpoints."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Dataset

from corr3d.losses import smooth_ap_loss
from corr3d.training.module import MultiviewFinetuneModule
from tests.helpers.models import tiny_model

SIZE, POINTS = 48, 24


class SyntheticPairs(Dataset):
    """Pairs whose view-1 points are the view-0 points seen elsewhere (same 3D positions: every point a positive)."""

    def __init__(self, length: int = 8):
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        gen = torch.Generator().manual_seed(index)
        xyz = torch.rand(POINTS, 3, generator=gen)
        return {"image0": torch.rand(3, SIZE, SIZE, generator=gen), "image1": torch.rand(3, SIZE, SIZE, generator=gen),
                "points0": torch.rand(POINTS, 2, generator=gen) * SIZE,
                "points1": torch.rand(POINTS, 2, generator=gen) * SIZE, "xyz0": xyz, "xyz1": xyz.clone()}


def tiny_module(fingerprint: str | None = "f" * 16, lr: float = 1e-3, **model_overrides) -> MultiviewFinetuneModule:
    torch.manual_seed(0)
    model_overrides.setdefault("head", {"num_layers": 1, "init": "default"})
    return MultiviewFinetuneModule(tiny_model(16, **model_overrides), smooth_ap_loss, lr=lr,
                                   image_log_every_n_steps=0, fingerprint=fingerprint)


def fit(module: MultiviewFinetuneModule, run: Path, max_steps: int, ckpt_path: Path | None = None) -> L.Trainer:
    """``max_steps`` optimizer steps with a checkpoint after every step (``checkpoints/step*.ckpt`` + ``last.ckpt``)."""
    checkpoint = ModelCheckpoint(dirpath=Path(run) / "checkpoints", filename="step{step:06d}",
                                 auto_insert_metric_name=False, save_last=True, save_top_k=-1, every_n_train_steps=1)
    trainer = L.Trainer(max_steps=max_steps, max_epochs=-1, accelerator="cpu", devices=1, logger=False,
                        callbacks=[checkpoint], enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, gradient_clip_val=1.0, default_root_dir=run)
    trainer.fit(module, train_dataloaders=DataLoader(SyntheticPairs(), batch_size=1),
                ckpt_path=str(ckpt_path) if ckpt_path else None, weights_only=True if ckpt_path else None)
    return trainer
