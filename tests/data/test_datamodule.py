"""MultiviewDataModule from the config: object split, rendering through prepare_data, Lightning epochs, resume, DDP."""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from corr3d.config import load_config
from corr3d.assets.experiment import object_specs, split_objects
from corr3d.data.datamodule import build_datamodule
from corr3d.data.pairs import PairSampler

OBJECTS = ["procedural:sphere_checker", "procedural:box_stripes"]


def small_config(tmp_path: Path, *extra: str):
    return load_config("base", [
        f"data.rendered_dir={tmp_path / 'rendered'}", "data.render.width=48", "data.render.height=48",
        "data.render.focal=52.5", f"data.train_objects=[{','.join(OBJECTS)}]", "data.pairs.num_points=64",
        "data.pairs_per_epoch=4", "data.num_workers=0", "data.batch_size=2", "seed=11", *extra])


@pytest.fixture(scope="module")
def render_root(tmp_path_factory):
    """Render the objects once for the module (48x48, 42 views each)."""
    root = tmp_path_factory.mktemp("dm")
    dm = build_datamodule(small_config(root))
    dm.prepare_data()
    return root


# --------------------------------------------------------------------------------------------- objects
def test_split_is_by_object_disjoint_and_seeded():
    items = [f"procedural:o{i}" for i in range(10)]
    train, val = split_objects(items, [], 0.2, None, seed=0)
    assert len(val) == 2 and not set(train) & set(val) and sorted(train + val) == sorted(items)
    assert (train, val) == split_objects(items, [], 0.2, None, seed=0)
    assert split_objects(items, [], 0.2, None, seed=1) != (train, val)
    assert split_objects(items, [], 0.0, 1, seed=0) == (["procedural:o0"], [])  # the single-object experiment
    assert split_objects(items, ["procedural:x"], 0.5, 3, seed=0) == (items[:3], ["procedural:x"])
    with pytest.raises(ValueError, match="both the training and the validation"):
        split_objects(items, ["procedural:o3"], 0.0, None, seed=0)


def test_object_list_file_extends_train_objects(tmp_path):
    listing = tmp_path / "objaverse.txt"
    listing.write_text(f"objaverse:{'a' * 32}\t/x/a.glb\n# comment\nobjaverse:{'b' * 32}\t/x/b.glb\n")
    cfg = small_config(tmp_path, f"data.object_list={listing}", "data.num_train_objects=3")
    assert object_specs(cfg.data) == OBJECTS + [f"objaverse:{'a' * 32}", f"objaverse:{'b' * 32}"]
    dm = build_datamodule(cfg)
    assert dm.train_objects == OBJECTS + [f"objaverse:{'a' * 32}"] and dm.val_objects == []


def test_unknown_kind_is_rejected(tmp_path):
    from corr3d.config import ConfigError

    with pytest.raises(ConfigError, match="'data.kind' must be one of rendered, mvimgnet"):   # refused at load time
        build_datamodule(small_config(tmp_path, "data.kind=video"))


# --------------------------------------------------------------------------------------------- loaders
def _keys(batch) -> list[tuple]:
    return list(zip(batch["object_id"], batch["view0"].tolist(), batch["view1"].tolist()))


def test_loaders_serve_collated_pairs_from_the_split(render_root):
    dm = build_datamodule(small_config(render_root, "data.val_fraction=0.5", "data.val_pairs=3"))
    assert len(dm.val_objects) == 1 and len(dm.train_objects) == 1
    dm.prepare_data()
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 2
    batch = batches[0]
    assert batch["image0"].shape == (2, 3, 48, 48) and batch["points1"].shape == (2, 64, 2)
    assert batch["valid0"].dtype == torch.bool and batch["xyz0"].dtype == torch.float32
    train_ids = {b for batch in batches for b in batch["object_id"]}
    val_ids = {b for batch in dm.val_dataloader() for b in batch["object_id"]}
    assert train_ids and val_ids and not train_ids & val_ids
    # validation pairs are identical at every evaluation, training pairs change with the epoch
    assert [_keys(b) for b in dm.val_dataloader()] == [_keys(b) for b in dm.val_dataloader()]
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(1)
    assert [_keys(b) for b in loader] != [_keys(b) for b in batches]


def test_same_seed_same_stream_other_rank_other_stream(render_root):
    def stream(rank, seed=11):
        dm = build_datamodule(small_config(render_root, f"seed={seed}", "data.pairs_per_epoch=6"), rank=rank,
                              world_size=2)
        dm.setup("fit")
        return [(_keys(b), b["points0"].sum().item()) for b in dm.train_dataloader()]

    first = stream(0)
    assert first == stream(0)
    assert stream(1) != first
    assert stream(0, seed=12) != first


# --------------------------------------------------------------------------------------------- Lightning
class RecordingModule(L.LightningModule):
    """Consumes pairs without a network; appends (epoch, object, view0, view1) of every sample to ``log_path``."""

    def __init__(self, log_path: str):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.log_path = log_path

    def training_step(self, batch, batch_idx):
        with open(f"{self.log_path}.rank{self.global_rank}", "a") as fh:
            for key in _keys(batch):
                fh.write(json.dumps([self.current_epoch, *key, float(batch["points0"].sum())]) + "\n")
        return (self.weight * batch["image0"].mean()).sum() + self.weight.square().sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _read(path: Path, rank: int = 0) -> list:
    return [tuple(json.loads(line)) for line in Path(f"{path}.rank{rank}").read_text().splitlines()]


def _trainer(tmp_path, max_epochs, **kwargs) -> L.Trainer:
    from lightning.pytorch.callbacks import ModelCheckpoint

    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_epochs=1)
    return L.Trainer(accelerator="cpu", max_epochs=max_epochs, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=[checkpoint], num_sanity_val_steps=0,
                     limit_val_batches=0, **kwargs)


def test_lightning_epochs_and_resume_continue_the_stream(render_root, tmp_path):
    cfg = small_config(render_root)
    full = tmp_path / "full.jsonl"
    _trainer(tmp_path / "a", 3).fit(RecordingModule(str(full)), datamodule=build_datamodule(cfg))
    records = _read(full)
    epochs = [[r[1:] for r in records if r[0] == e] for e in range(3)]
    assert all(len(e) == 4 for e in epochs) and epochs[0] != epochs[1] != epochs[2]
    # what the trainer saw is exactly the dataset's (rank 0, epoch, index) samples: Lightning kept our sampler
    dm = build_datamodule(cfg)
    dm.setup("fit")
    expected = dm.train_dataset[(0, 2, 3)]
    assert epochs[2][3][:3] == (expected["object_id"], expected["view0"], expected["view1"])

    # stop after one epoch, resume from its checkpoint: epochs 1-2 replay the uninterrupted run exactly
    part = tmp_path / "part.jsonl"
    _trainer(tmp_path / "b", 1).fit(RecordingModule(str(part)), datamodule=build_datamodule(cfg))
    _trainer(tmp_path / "b", 3).fit(RecordingModule(str(part)), datamodule=build_datamodule(cfg),
                                    ckpt_path=str(tmp_path / "b" / "ckpt" / "last.ckpt"))
    assert _read(part) == records


def test_resume_from_a_mid_epoch_checkpoint_skips_trained_pairs(render_root, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    cfg = small_config(render_root, "data.pairs_per_epoch=6")  # 3 batches per epoch
    full = tmp_path / "full.jsonl"
    _trainer(tmp_path / "a", 2).fit(RecordingModule(str(full)), datamodule=build_datamodule(cfg))
    part = tmp_path / "part.jsonl"
    every_step = ModelCheckpoint(dirpath=tmp_path / "b" / "ckpt", save_last=True, every_n_train_steps=1)
    L.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_progress_bar=False, enable_model_summary=False,
              callbacks=[every_step], limit_val_batches=0).fit(RecordingModule(str(part)),
                                                              datamodule=build_datamodule(cfg))
    assert len(_read(part)) == 8  # stopped after batch 1 of epoch 1
    _trainer(tmp_path / "b", 2).fit(RecordingModule(str(part)), datamodule=build_datamodule(cfg),
                                    ckpt_path=str(tmp_path / "b" / "ckpt" / "last.ckpt"))
    assert _read(part) == _read(full)


def test_ddp_ranks_draw_different_pairs(render_root, tmp_path):
    """Real DDP (gloo, 2 forked CPU processes): the DataModule picks the rank up from the trainer."""
    cfg = small_config(render_root, "data.pairs_per_epoch=3", "data.batch_size=1")
    log = tmp_path / "ddp.jsonl"
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_fork", max_epochs=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(RecordingModule(str(log)), datamodule=build_datamodule(cfg))
    rank0, rank1 = _read(log, 0), _read(log, 1)
    assert len(rank0) == len(rank1) == 3  # pairs_per_epoch on every rank
    assert [r[1:] for r in rank0] != [r[1:] for r in rank1]
    dm = build_datamodule(cfg, rank=1, world_size=2)
    dm.setup("fit")
    expected = [dm.train_dataset[key] for key in PairSampler(3, rank=1, world_size=2)]
    assert [r[1:4] for r in rank1] == [(e["object_id"], e["view0"], e["view1"]) for e in expected]
    assert np.allclose([r[4] for r in rank1], [float(e["points0"].sum()) for e in expected])


def test_mvimgnet_datamodule_splits_objects_and_skips_holes(tmp_path):
    from tests.helpers.mvimgnet import object_points, write_object

    root = tmp_path / "mvimgnet"
    for k in range(4):
        write_object(root / "category_7" / f"obj{k}", object_points(k), num_frames=4)
    (root / "category_7" / "hole" / "images").mkdir(parents=True)  # no sparse/: skipped with a reason
    cfg = small_config(tmp_path, "data.kind=mvimgnet", f"data.mvimgnet_dir={root}", "data.val_fraction=0.2",
                       "data.mvimgnet_min_matches=8", "data.mvimgnet_long_side=96", "data.augment.enabled=false",
                       "data.pairs_per_epoch=6")
    dm = build_datamodule(cfg)
    assert len(dm.train_objects) == 3 and len(dm.val_objects) == 1
    assert not set(dm.train_objects) & set(dm.val_objects)
    dm.prepare_data()  # nothing to render
    dm.setup("fit")
    ids = [i for batch in dm.train_dataloader() for i in batch["object_id"]]
    assert len(ids) == 6 and not set(ids) & {Path(p).name for p in dm.val_objects}
    batch = next(iter(dm.train_dataloader()))
    assert batch["image0"].shape == (2, 3, 72, 96) and batch["points0"].shape == (2, 64, 2)
    assert dm.skipped == {str(root / "category_7" / "hole"): "missing sparse/ (no COLMAP model)"}
