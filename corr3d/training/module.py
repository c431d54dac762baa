"""LightningModule for multiview-equivariance finetuning: network and loss are injected (lightning-hydra style)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from corr3d.errors import TrainingDivergedError
from corr3d.models.adapter import upgrade_legacy_keys
from corr3d.models.features import frozen_prefix_depth, tokens_to_map, vit_prefix_tokens, vit_tokens_from
from corr3d.models.model import finite_flag
from corr3d.utils.visualize import correspondence_figure, pca_rgb


CHECKPOINT_FINGERPRINT_KEY = "corr3d_fingerprint"


class MultiviewFinetuneModule(L.LightningModule):
    """Finetunes a ``Corr3DModel`` (LoRA + conv head) with a dense 3D-correspondence ranking loss.

    Checkpoints hold only the trainable tensors (LoRA, head, unfrozen blocks) plus optimizer and loop state: the
    frozen backbone is rebuilt from its weight source, so a ViT-G run does not write 4 GB per checkpoint. They also
    carry ``fingerprint`` (``CHECKPOINT_FINGERPRINT_KEY``: a hash of the config sections that define the model and
    its training, corr3d/training/run.py ``training_fingerprint``), so a resume can tell its own checkpoints apart.

    Divergence stops training: after every optimizer step the loss of that step and the trainable tensors (LoRA,
    head, unfrozen blocks: a few small tensors, one device sync) must be finite, else :class:`TrainingDivergedError`
    names the step; no checkpoint of that step is written (the check runs before ``on_train_batch_end``).
    """

    def __init__(self, model: torch.nn.Module, loss_fn: Callable, lr: float = 1e-5, weight_decay: float = 1e-4,
                 image_log_every_n_steps: int = 50, pair_log_dir: str | None = None,
                 cache_frozen_prefix: bool = False, prefix_cache_views: int = 4096, fingerprint: str | None = None):
        """``cache_frozen_prefix``: keep the output of the frozen leading blocks per (object, view) and run only the
        trainable last blocks + head on a hit (``corr3d.models.features.frozen_prefix_depth``). Only valid when the
        images of a view never change, i.e. with augmentation off (training/run.py enables it only then)."""
        super().__init__()
        # the prefix cache runs a ViT's leading blocks (``.blocks``); other families always run whole
        self.cache_frozen_prefix = bool(cache_frozen_prefix) and hasattr(model.backbone, "blocks")
        self.prefix_cache_views = int(prefix_cache_views)
        self._prefix_cache: dict = {}
        self.pair_log_dir = pair_log_dir
        self.model = model
        self.loss_fn = loss_fn
        self.lr = lr
        self.weight_decay = weight_decay
        self.image_log_every_n_steps = image_log_every_n_steps
        self.strict_loading = False  # checkpoints deliberately omit frozen weights; checked in on_load_checkpoint
        self.fingerprint = fingerprint
        self._step_loss: torch.Tensor | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def pair_features(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw maps of both views in one backbone call, and L2-normalised features at the sampled points."""
        images = torch.cat([batch["image0"], batch["image1"]])
        maps = self._cached_maps(batch, images) if self.cache_frozen_prefix else self.model(images)
        map0, map1 = maps.chunk(2)
        size = tuple(batch["image0"].shape[-2:])
        # sampled and normalised in fp32 (a no-op in fp32 training): under bf16-mixed the maps are bf16, and the
        # loss (corr3d/losses/precision.py) computes in fp32 like the authors' fp32 training
        f0 = F.normalize(self.model.sample_points(map0.float(), batch["points0"].float(), size), dim=-1)
        f1 = F.normalize(self.model.sample_points(map1.float(), batch["points1"].float(), size), dim=-1)
        return maps, f0, f1

    def _cached_maps(self, batch: dict, images: torch.Tensor) -> torch.Tensor:
        """``self.model(images)`` with the frozen prefix's tokens looked up per (object, view) (see __init__)."""
        model = self.model
        depth = frozen_prefix_depth(model.backbone)
        if depth == 0 or "object_id" not in batch:
            return model(images)
        keys = [(o, int(v)) for o, v in zip(batch["object_id"], batch["view0"].tolist())]
        keys += [(o, int(v)) for o, v in zip(batch["object_id"], batch["view1"].tolist())]
        input_size = model.input_size(*images.shape[-2:])
        missing = [k for k, key in enumerate(keys) if key not in self._prefix_cache]
        if missing:
            with torch.no_grad():
                tokens, grid = vit_prefix_tokens(model.backbone, model.preprocess(images[missing], input_size), depth)
            for k, t in zip(missing, tokens):
                if len(self._prefix_cache) >= self.prefix_cache_views:
                    self._prefix_cache.pop(next(iter(self._prefix_cache)))
                self._prefix_cache[keys[k]] = (t, grid)
        grid = self._prefix_cache[keys[0]][1]
        x = torch.stack([self._prefix_cache[key][0] for key in keys])
        tokens = vit_tokens_from(model.backbone, x, depth, layer=model.config["layer"],
                                 final_norm=model.config["final_norm"])
        return model.head(tokens_to_map(tokens, model.spec.num_prefix_tokens, grid))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        maps, f0, f1 = self.pair_features(batch)
        loss, stats = self.loss_fn(f0, f1, batch["xyz0"], batch["xyz1"], batch.get("valid0"), batch.get("valid1"))
        bs = batch["image0"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for key, value in stats.items():
            if key == "loss":
                continue
            self.log(f"train/{key}", torch.as_tensor(value, dtype=torch.float32), batch_size=bs)
        self._record_pairs(batch)
        if self._should_log_images():
            self._log_images(batch, maps.detach(), f0.detach(), f1.detach())
        self._step_loss = loss.detach()
        return loss

    # -- divergence ---------------------------------------------------------------------------------------------
    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.check_finite_step()

    def check_finite_step(self) -> None:
        """Raise :class:`TrainingDivergedError` if this step's loss or the updated trainable tensors are not finite.

        One min/max reduction per trainable tensor (``corr3d.models.model.finite_flag``) and one sync; across DDP
        ranks the decision is shared, so every rank stops at the same step."""
        flags = [finite_flag(p) for p in self.model.parameters() if p.requires_grad]
        if self._step_loss is not None:
            flags.append(finite_flag(self._step_loss))
        bad = not bool(torch.stack(flags).all()) if flags else False
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            raise self._diverged()

    def _diverged(self) -> TrainingDivergedError:
        step = int(self.global_step) + 1  # the step that just ran (Lightning counts it as done after this hook)
        loss = self._step_loss
        what = []
        if loss is not None and not bool(torch.isfinite(loss).all()):
            what.append(f"the loss is {float(loss.float().mean())}")
        names = [f"model.{n}" for n, p in self.model.named_parameters()
                 if p.requires_grad and not bool(torch.isfinite(p.detach()).all())]
        if names:
            what.append(f"the updated weights are non-finite ({', '.join(names[:4])}"
                        f"{f' and {len(names) - 4} more' if len(names) > 4 else ''})")
        if not what:
            what.append("another rank's loss or weights are non-finite")
        return TrainingDivergedError(
            f"training diverged at step {step}: {'; '.join(what)}. Stopped before writing a checkpoint, adapter or "
            "DONE for it", fix=f"lower optim.lr (now {self.lr:g}; the paper's is 1e-5) and train again; "
                               "optim.grad_clip limits the gradient norm")

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters (check model.lora / model.head / unfreeze_blocks)")
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)

    def _record_pairs(self, batch: dict) -> None:
        """Append which object views each rank trained on (audits data streams across ranks and resumes)."""
        if not self.pair_log_dir or "object_id" not in batch:
            return
        views = zip(batch["object_id"], batch["view0"].tolist(), batch["view1"].tolist())
        line = json.dumps({"step": int(self.global_step), "rank": int(self.global_rank),
                           "pairs": [[o, v0, v1] for o, v0, v1 in views]})
        with open(Path(self.pair_log_dir) / f"pairs_rank{self.global_rank}.jsonl", "a") as fh:
            fh.write(line + "\n")

    # -- checkpoints: trainable tensors only -------------------------------------------------------------------
    def _trainable_keys(self) -> set[str]:
        return {f"model.{name}" for name, p in self.model.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = self._trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        if self.fingerprint is not None:
            checkpoint[CHECKPOINT_FINGERPRINT_KEY] = self.fingerprint

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # checkpoints written before the vit -> backbone rename carry model.vit.* keys: renamed, then checked
        checkpoint["state_dict"] = upgrade_legacy_keys(checkpoint["state_dict"], "model.")
        missing = self._trainable_keys() - set(checkpoint["state_dict"])
        if missing:
            raise KeyError(f"checkpoint lacks trainable tensors {sorted(missing)[:5]}...: different model config?")

    # -- TensorBoard images ------------------------------------------------------------------------------------
    def _should_log_images(self) -> bool:
        n = self.image_log_every_n_steps
        return bool(n) and self.global_rank == 0 and self.global_step % n == 0 and self.logger is not None \
            and hasattr(self.logger.experiment, "add_image")

    @torch.no_grad()
    def _log_images(self, batch: dict, maps: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor) -> None:
        writer, step = self.logger.experiment, self.global_step
        img0 = (batch["image0"][0].permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)
        img1 = (batch["image1"][0].permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)
        pca0, pca1 = pca_rgb([maps[0].float().cpu(), maps[maps.shape[0] // 2].float().cpu()])
        writer.add_image("features/pca_view0", pca0, step, dataformats="HWC")
        writer.add_image("features/pca_view1", pca1, step, dataformats="HWC")
        # predicted vs true: for view-0 points with a 3D-coincident view-1 point, the NN among view-1 points
        xyz0, xyz1 = batch["xyz0"][0], batch["xyz1"][0]
        valid0 = batch.get("valid0", torch.ones_like(xyz0[:, 0], dtype=torch.bool))[0]
        valid1 = batch.get("valid1", torch.ones_like(xyz1[:, 0], dtype=torch.bool))[0]
        dist = torch.cdist(xyz0.float(), xyz1.float())
        dist[~valid0] = float("inf")
        dist[:, ~valid1] = float("inf")
        nearest, true_idx = dist.min(dim=1)
        src = torch.nonzero(nearest < 0.01).flatten()[:40]
        if len(src) == 0:
            return
        sim = f0[0, src] @ f1[0].T
        sim[:, ~valid1] = -2
        pred_idx = sim.argmax(dim=1)
        pts1 = batch["points1"][0].cpu().numpy()
        fig = correspondence_figure(img0, img1, batch["points0"][0, src].cpu().numpy(), pts1[pred_idx.cpu().numpy()],
                                    pts1[true_idx[src].cpu().numpy()], title=f"step {step}: predicted vs true")
        writer.add_figure("correspondences/predicted_vs_true", fig, step)
