"""Resuming never unpickles code (issue 14): checkpoints in a run directory load with weights_only=True."""
import os
import time

import pytest
import torch

from corr3d.errors import DataFileError
from corr3d.training.run import resume_checkpoint
from corr3d.utils.safe_load import safe_checkpoint_load


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_crafted_and_truncated_checkpoints_are_skipped(tmp_path):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    good = ckpts / "step000003.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "global_step": 3, "loops": {"x": [1, 2]}}, good)
    marker = tmp_path / "pwned"
    evil = ckpts / "step000006.ckpt"
    torch.save({"state_dict": {}, "payload": _RunsShell(marker)}, evil)
    truncated = ckpts / "last.ckpt"
    truncated.write_bytes(good.read_bytes()[:64])
    now = time.time()
    for i, p in enumerate((good, evil, truncated)):  # newest first is truncated, then evil, then good
        os.utime(p, (now + i, now + i))
    assert resume_checkpoint(tmp_path) == good
    assert not marker.exists()
    with pytest.raises(DataFileError, match="weights-only") as info:
        safe_checkpoint_load(evil)
    assert str(evil) in str(info.value) and not marker.exists()
    with pytest.raises(DataFileError, match="unreadable checkpoint"):
        safe_checkpoint_load(truncated)


# ---------------------------------------------------------------------------------------------- issue 21: justified
def _age(*paths):
    """Give ``paths`` increasing mtimes in the given order (the last one is the newest)."""
    now = time.time()
    for i, p in enumerate(paths):
        os.utime(p, (now + i, now + i))


def test_real_checkpoints_carry_the_fingerprint_and_resume_continues(tmp_path):
    from tests.training._synthetic import fit, tiny_module

    fit(tiny_module(fingerprint="a" * 16), tmp_path, max_steps=2)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert safe_checkpoint_load(last)["corr3d_fingerprint"] == "a" * 16
    module = tiny_module(fingerprint="a" * 16)
    picked = resume_checkpoint(tmp_path, fingerprint=module.fingerprint, module=module)
    assert picked is not None and picked.parent == tmp_path / "checkpoints"
    assert fit(module, tmp_path, max_steps=3, ckpt_path=picked).global_step == 3


def test_other_config_other_shapes_and_corrupt_checkpoints_are_skipped_by_name(tmp_path, caplog):
    """Newest first: corrupt, foreign fingerprint, no fingerprint, wrong shapes (other LoRA rank under the same
    fingerprint), non-finite, then the justified one, which is picked; each skip names the file and the reason."""
    from tests.training._synthetic import fit, tiny_module

    fit(tiny_module(fingerprint="a" * 16), tmp_path, max_steps=1)
    ckpts = tmp_path / "checkpoints"
    good = ckpts / "step000001.ckpt"
    (ckpts / "last.ckpt").unlink()
    base = safe_checkpoint_load(good)
    nan = {**base, "state_dict": {k: v.clone() for k, v in base["state_dict"].items()}}
    next(iter(nan["state_dict"].values()))[0] = float("nan")
    torch.save(nan, ckpts / "nan.ckpt")
    other_rank = tmp_path / "rank8"
    fit(tiny_module(fingerprint="a" * 16, lora={"blocks": 2, "rank": 8, "alpha": None}), other_rank, max_steps=1)
    (other_rank / "checkpoints" / "step000001.ckpt").rename(ckpts / "rank8.ckpt")
    torch.save({k: v for k, v in base.items() if k != "corr3d_fingerprint"}, ckpts / "unsigned.ckpt")
    torch.save({**base, "corr3d_fingerprint": "b" * 16}, ckpts / "foreign.ckpt")
    (ckpts / "corrupt.ckpt").write_bytes(os.urandom(512))
    order = [good, ckpts / "nan.ckpt", ckpts / "rank8.ckpt", ckpts / "unsigned.ckpt", ckpts / "foreign.ckpt",
             ckpts / "corrupt.ckpt"]
    _age(*order)
    module = tiny_module(fingerprint="a" * 16)
    with caplog.at_level("WARNING", logger="corr3d.training.run"):
        assert resume_checkpoint(tmp_path, fingerprint=module.fingerprint, module=module) == good
    text = caplog.text
    for name, reason in (("corrupt.ckpt", "truncated or corrupt"), ("foreign.ckpt", "another config"),
                         ("unsigned.ckpt", "no config fingerprint"), ("rank8.ckpt", "other shapes"),
                         ("nan.ckpt", "non-finite")):
        line = next((ln for ln in text.splitlines() if name in ln), "")
        assert reason in line, (name, text)
    assert "step000001.ckpt" not in text


def test_nothing_justified_means_a_fresh_start_not_an_error(tmp_path, caplog):
    from tests.training._synthetic import tiny_module

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    torch.save({"state_dict": {}, "corr3d_fingerprint": "b" * 16}, ckpts / "last.ckpt")
    (ckpts / "step000003.ckpt").write_bytes(b"PK\x03\x04 truncated")
    module = tiny_module(fingerprint="a" * 16)
    with caplog.at_level("WARNING", logger="corr3d.training.run"):
        assert resume_checkpoint(tmp_path, fingerprint=module.fingerprint, module=module) is None
    assert "last.ckpt" in caplog.text and "step000003.ckpt" in caplog.text


def test_training_fingerprint_covers_what_defines_training_only():
    from corr3d.config import load_config
    from corr3d.training.run import training_fingerprint

    base = load_config("dinov2_single_object")
    same = ["trainer.max_steps=7", "output_dir=/elsewhere", "data_root=/moved", "data.num_workers=7",
            "data.render.workers=5", "trainer.val_every_n_steps=3", "eval.n_boot=10"]
    for override in same:
        assert training_fingerprint(load_config("dinov2_single_object", [override])) == training_fingerprint(base), \
            override
    differs = ["model.lora.rank=8", "model.head.num_layers=2", "optim.lr=1e-3", "loss.temperature=0.5",
               "data.pairs.num_points=100", "data.augment.enabled=true", "seed=1"]
    for override in differs:
        assert training_fingerprint(load_config("dinov2_single_object", [override])) != training_fingerprint(base), \
            override
