"""LightningDataModule serving training pairs from rendered objects or MVImgNet, built from the ``data:`` config.

Objects: ``corr3d.assets.experiment.training_objects`` (``data.train_objects`` + ``data.object_list``, the first
``data.num_train_objects``; validation ``data.val_objects`` or a seeded ``data.val_fraction``; never shared).

Randomness: see ``corr3d.data.pairs``: sample = f(seed, rank, epoch, index), so runs are reproducible, every DDP
rank draws its own pairs, the stream does not depend on ``num_workers`` and a resumed run continues it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from corr3d.assets.experiment import split_objects, training_objects
from corr3d.data.augment import ViewAugmenter
from corr3d.data.mvimgnet import discover_objects, structural_problem
from corr3d.data.pairs import TRAIN_STREAM, VAL_STREAM, MVImgNetPairDataset, PairSampler, RenderedPairDataset
from corr3d.errors import RenderFailedError
from corr3d.render import ensure_rendered
from corr3d.render.batch import FAILED

log = logging.getLogger(__name__)


class MultiviewDataModule(L.LightningDataModule):
    """Pairs of views of 3D objects (``data.kind``: rendered | mvimgnet) with per-rank reproducible streams."""

    def __init__(self, data_cfg: DictConfig, seed: int = 0, rank: int | None = None, world_size: int | None = None):
        super().__init__()
        self.cfg = data_cfg
        self.seed = seed
        self._rank, self._world_size = rank, world_size
        self.skipped: dict[str, str] = {}  # object -> reason it is not used
        self.train_objects, self.val_objects = self._split()
        self.train_dataset = self.val_dataset = None
        self._object_dirs: dict[str, Path] | None = None   # spec -> directory, once rendered (_rendered)
        self._render_failures: dict[str, str] = {}

    # -- objects ----------------------------------------------------------------------------------------------
    def _split(self) -> tuple[list[str], list[str]]:
        cfg = self.cfg
        if cfg.kind == "rendered":
            return training_objects(cfg, self.seed)
        if cfg.kind == "mvimgnet":
            found = []
            for path in map(str, discover_objects(cfg.mvimgnet_dir)):
                problem = structural_problem(path)  # cheap; unreadable models are caught later by the dataset
                if problem:
                    self.skipped[path] = problem
                else:
                    found.append(path)
            if self.skipped:
                log.warning("MVImgNet: skipping %d objects (see datamodule.skipped), e.g. %s",
                            len(self.skipped), next(iter(self.skipped.items())))
            if not found:
                raise FileNotFoundError(f"no usable MVImgNet objects under {cfg.mvimgnet_dir}")
            return split_objects(found, [], cfg.val_fraction, cfg.num_train_objects, self.seed)
        raise ValueError(f"unknown data.kind {cfg.kind!r} (rendered | mvimgnet)")

    def _rendered(self) -> dict[str, Path]:
        """The directory (by spec) of every rendered object a training run uses: the training and validation objects
        of ``data.kind: rendered`` and the probe objects of the validation callback (``data.val_objects``, any kind).
        What is missing is rendered by one ``ensure_rendered`` call per process, whose result ``prepare_data``, the
        datasets and training's callback (:meth:`probe_dirs`) share; failed objects are left out."""
        if self._object_dirs is None:
            own = self.train_objects + self.val_objects if self.cfg.kind == "rendered" else []
            specs = list(dict.fromkeys([*own, *self.cfg.val_objects]))
            dirs = ensure_rendered(specs, Path(self.cfg.rendered_dir), self.cfg.render)
            self._render_failures = dict(dirs.skipped)
            self._object_dirs = dict(zip([s for s in specs if s not in self._render_failures], map(Path, dirs)))
        return self._object_dirs

    def object_dirs(self, specs: list[str]) -> list[Path]:
        """The directories of ``specs`` (in order, failed objects left out); a non-empty list of which none rendered
        is a :class:`corr3d.errors.RenderFailedError`, as from ``ensure_rendered``."""
        if not specs:
            return []
        found = self._rendered()
        dirs = [found[s] for s in specs if s in found]
        if not dirs:
            reasons = "; ".join(f"{s}: {self._render_failures.get(s, 'not rendered')}" for s in specs[:5])
            raise RenderFailedError(f"none of the {len(specs)} objects could be rendered ({reasons})",
                                    path=Path(self.cfg.rendered_dir) / FAILED,
                                    fix="check the listed meshes (corrupt, empty or zero-area) or remove them from "
                                        "the object lists")
        return dirs

    def probe_dirs(self) -> list[Path]:
        """The directories of ``data.val_objects``: what training's validation callback measures."""
        return self.object_dirs(list(self.cfg.val_objects))

    def prepare_data(self) -> None:
        """Render whatever is missing (once per node, before ``setup``)."""
        self._rendered()

    # -- datasets ---------------------------------------------------------------------------------------------
    def _rank_and_world(self) -> tuple[int, int]:
        if self._rank is not None:
            return self._rank, self._world_size or 1
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        return 0, 1

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        self.train_dataset = self.build_dataset(self.train_objects, TRAIN_STREAM, self.cfg.pairs_per_epoch)
        if self.val_objects:
            self.val_dataset = self.build_dataset(self.val_objects, VAL_STREAM, self.cfg.val_pairs,
                                                  augment=False)

    def build_dataset(self, objects: list[str], stream: int, num_samples: int, augment: bool = True):
        cfg = self.cfg
        augmenter = ViewAugmenter(cfg.augment) if augment and cfg.augment.enabled else None
        common = dict(num_points=cfg.pairs.num_points, max_rotation_deg=cfg.pairs.max_rotation_deg,
                      augmenter=augmenter, num_samples=num_samples, seed=self.seed, stream=stream)
        if cfg.kind == "rendered":  # denser positives (data.pairs.true_fraction) only on training pairs
            true_fraction = cfg.pairs.true_fraction if stream == TRAIN_STREAM else 0.0
            return RenderedPairDataset(self.object_dirs(objects), true_fraction=true_fraction,
                                       point_sampling=cfg.pairs.point_sampling, **common)
        return MVImgNetPairDataset(objects, min_matches=cfg.mvimgnet_min_matches, long_side=cfg.mvimgnet_long_side,
                                   extent_percentile=cfg.mvimgnet_extent_percentile, **common)

    # -- loaders ----------------------------------------------------------------------------------------------
    def _loader(self, dataset, sampler: PairSampler) -> DataLoader:
        workers = self.cfg.num_workers
        return DataLoader(dataset, batch_size=self.cfg.batch_size, sampler=sampler, num_workers=workers,
                          persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(), drop_last=False)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        rank, world = self._rank_and_world()
        sampler = PairSampler(len(self.train_dataset), rank, world)
        self._continue_interrupted_epoch(sampler)
        return self._loader(self.train_dataset, sampler)

    def _continue_interrupted_epoch(self, sampler: PairSampler) -> None:
        """Resuming from a mid-epoch checkpoint (e.g. a SLURM pre-timeout save): skip the pairs already trained on.

        Lightning restores the loop progress before it asks for the dataloader; ``processed`` counts the batches of
        the interrupted epoch that went through a training step (checkpoints saved at epoch end give 0 or all).
        """
        trainer = getattr(self, "trainer", None)
        if trainer is None or not trainer.fit_loop.restarting:
            return
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        consumed = done * self.cfg.batch_size
        if 0 < consumed < len(sampler):
            epoch = trainer.fit_loop.epoch_progress.current.processed
            sampler.resume_within_epoch(epoch, consumed)
            log.info("resuming epoch %d after its first %d pairs", epoch, consumed)

    def val_dataloader(self) -> DataLoader | list:
        self.setup("validate")
        if self.val_dataset is None:
            return []
        rank, world = self._rank_and_world()
        return self._loader(self.val_dataset, PairSampler(len(self.val_dataset), rank, world, fixed_epoch=0))


def build_datamodule(cfg: DictConfig, rank: int | None = None, world_size: int | None = None) -> MultiviewDataModule:
    """The DataModule of a full experiment config (``data:`` section and ``seed``)."""
    return MultiviewDataModule(cfg.data, seed=cfg.seed, rank=rank, world_size=world_size)
