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
