"""``make bench-gpu`` on a machine without CUDA: says so, measures nothing, exits 0 (the GPU numbers come from a
lent GPU machine; the CPU ones from ``make bench``)."""
from __future__ import annotations

import pytest
import torch

from corr3d.cli import main
from corr3d.perf import benchmark_groups


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run")
def test_bench_gpu_without_cuda_measures_nothing(capsys):
    assert main(["bench", "--gpu"]) == 0
    assert "no CUDA device" in capsys.readouterr().out


def test_the_gpu_check_is_not_a_make_bench_group():
    assert "_gpu" not in benchmark_groups()
