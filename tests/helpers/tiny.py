"""A tiny but real training configuration (timm test_vit, 96-px renders) shared by end-to-end tests."""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def tiny_train_overrides(root: Path, max_steps: int = 6, pairs_per_epoch: int = 3) -> list[str]:
    return [f"data_root={root}/data", f"output_dir={root}/runs",
            "model.backbone=test_vit.r160_in1k", "model.weights=random", "model.lora.blocks=2",
            "model.target_res=128", "data.render.width=96", "data.render.height=96", "data.render.focal=105.0",
            "data.pairs.num_points=300", "data.num_workers=0", f"data.pairs_per_epoch={pairs_per_epoch}",
            "data.train_objects=[procedural:hemisphere_textured]",   # one small procedural object: fast, no package
            "equivariance.objects=[procedural:sphere_astronaut]", "equivariance.max_pairs_per_object=2",
            "equivariance.num_source_points=100", "equivariance.real_pairs=false",
            f"trainer.max_steps={max_steps}", "trainer.accelerator=cpu", "trainer.image_log_every_n_steps=2",
            "trainer.log_every_n_steps=1"]


def corr3d_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "corr3d.cli", *args]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def shared_offline_suite(tmp_path_factory, parts=None) -> Path:
    """The offline benchmark suite of this test session (generated once: each part is only generated when missing),
    for tests that read it and never change it."""
    from corr3d.eval.offline_suite import ensure_offline_suite

    root = tmp_path_factory.getbasetemp() / "offline_suite"
    ensure_offline_suite(root, parts)
    return root
