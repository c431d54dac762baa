"""Run directories: ``runs/<experiment>/<timestamp>/`` with the resolved config, git commit and package versions.

Re-running the same command after a crash or kill reuses the unfinished run (same resolved config, no ``DONE``
marker) so training resumes from its last checkpoint instead of starting over.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from corr3d.config import REPO_ROOT

DONE_MARKER = "DONE"
_PACKAGES = ("corr3d", "torch", "torchvision", "lightning", "timm", "torchmetrics", "omegaconf", "open3d", "numpy")


def atomic_write_text(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a kill never leaves a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _resolved_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def find_resumable_run(experiment_dir: Path, cfg: DictConfig) -> Path | None:
    """The latest run of this experiment if it did not finish and was started with the same resolved config."""
    latest = experiment_dir / "latest"
    if not latest.exists():
        return None
    run = latest.resolve()
    cfg_file = run / "config.yaml"
    if (run / DONE_MARKER).exists() or not cfg_file.exists():
        return None
    return run if cfg_file.read_text() == _resolved_yaml(cfg) else None


def create_run_dir(cfg: DictConfig, resume: bool = True, run_dir: str | os.PathLike | None = None) -> Path:
    """Create (or reuse, see module doc) the run directory for ``cfg`` and point ``latest`` at it."""
    experiment_dir = Path(cfg.output_dir) / cfg.experiment
    experiment_dir.mkdir(parents=True, exist_ok=True)
    if run_dir is not None:
        run = Path(run_dir)
    else:
        run = find_resumable_run(experiment_dir, cfg) if resume else None
    if run is None:
        stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        run = experiment_dir / stamp
        suffix = 1
        while run.exists():
            run = experiment_dir / f"{stamp}_{suffix}"
            suffix += 1
    run.mkdir(parents=True, exist_ok=True)
    if not (run / "config.yaml").exists():
        atomic_write_text(run / "config.yaml", _resolved_yaml(cfg))
        info = {"git_commit": git_commit(), "packages": package_versions(),
                "created": _dt.datetime.now().isoformat(timespec="seconds")}
        atomic_write_text(run / "env.json", json.dumps(info, indent=2))
    point_latest(experiment_dir, run)
    return run


def point_latest(experiment_dir: Path, run: Path) -> None:
    link = experiment_dir / "latest"
    tmp = experiment_dir / f".latest.{os.getpid()}.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(run.resolve().name if run.resolve().parent == experiment_dir.resolve() else run.resolve())
    os.replace(tmp, link)


def mark_done(run: Path) -> None:
    atomic_write_text(Path(run) / DONE_MARKER, _dt.datetime.now().isoformat(timespec="seconds") + "\n")


def latest_run(output_dir: str | os.PathLike, experiment: str) -> Path | None:
    link = Path(output_dir) / experiment / "latest"
    return link.resolve() if link.exists() else None
