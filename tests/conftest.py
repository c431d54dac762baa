"""Shared test setup: small thread counts (2-core machines), offline hubs, tiny configs."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _torch_threads():
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    yield
    torch.set_num_threads(threads)


# ---- one config fixture: the real experiment config, composed once and shrunk (lightning-hydra-template's
# cfg_train_global / cfg_train pair). Tests take ``cfg_tiny`` (a private copy whose data_root and output_dir live
# in the test's tmp_path) and change what they need by attribute (``cfg.trainer.max_steps = 2``).
@pytest.fixture(scope="session")
def cfg_tiny_global():
    """``dinov2_single_object`` with ``tests/helpers/tiny.py``'s shrinking overrides (timm test_vit, random weights,
    96-px renders, a few pairs and steps on CPU), validated like any user config."""
    from pathlib import Path

    from corr3d.config import load_config
    from tests.helpers.tiny import tiny_train_overrides

    return load_config("dinov2_single_object", tiny_train_overrides(Path("/nonexistent/corr3d-test-root")))


@pytest.fixture
def cfg_tiny(cfg_tiny_global, tmp_path):
    import copy

    cfg = copy.deepcopy(cfg_tiny_global)
    cfg.data_root = str(tmp_path / "data")
    cfg.output_dir = str(tmp_path / "runs")
    return cfg


# ``make eval`` measures in the test process, whatever ``eval.workers`` says, unless a test is marked
# ``eval_workers``: tests monkeypatch measurements, fakes and counters that spawned workers would not see, and
# spawning two interpreters per in-process evaluation would only slow the suite down
@pytest.fixture(autouse=True)
def _one_eval_process(request, monkeypatch):
    if request.node.get_closest_marker("eval_workers") is None:
        import corr3d.eval.run as run

        monkeypatch.setattr(run, "eval_workers", lambda cfg: 1)
