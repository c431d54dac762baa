"""Run directories: ``runs/<experiment>/<timestamp>/`` with the resolved config, git commit and package versions.

Re-running the same command after a crash or kill reuses the unfinished run (same resolved config, no ``DONE``
marker) so training resumes from its last checkpoint instead of starting over.

Concurrency (:class:`RunLock`): a training process holds ``<run>/.lock`` (``fcntl.flock`` + its pid/host/start time
in the file) for its whole life. The kernel drops the lock when the process dies, so a killed run is resumable at
once; where the filesystem has no working flock, the pid/host in the file decide (a dead pid on this host = stale,
recovered). Choosing a run directory is serialised per experiment (flock on ``<experiment>/``). Policy: a second
``corr3d train`` of the same experiment and resolved config while the first is alive does NOT share its directory;
it stops with :class:`corr3d.errors.RunLockedError` naming the pid/host that holds it (wait, stop that run, or use
another ``experiment=`` name). A different config gets its own new directory as before.

``latest`` is a pointer for people and ``make eval``: training moves it only after a successful start
(:func:`point_latest` from ``corr3d.training.run``), so a start that fails leaves it on the last good run. Resuming
does not depend on it: :func:`find_resumable_run` scans the experiment's runs, newest first. A sweep cell
(``<experiment>/sweeps/<name>/<cell>/``) never moves it, so ``make eval`` keeps evaluating the experiment's own run.

Experiment names become directory names and are validated (:func:`corr3d.utils.paths.safe_name`): ``..``, separators
and absolute paths are refused, so a run is never written outside ``output_dir``.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import logging
import os
import socket
import subprocess
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from corr3d.config import REPO_ROOT
from corr3d.errors import RunLockedError
from corr3d.utils.io import atomic_write, atomic_write_text, write_json
from corr3d.utils.paths import safe_name

log = logging.getLogger(__name__)

DONE_MARKER = "DONE"
LOCK_FILE = ".lock"
SWEEPS_DIR = "sweeps"  # <output_dir>/<experiment>/sweeps/<name>/<cell>/: sweep cells (never `latest`)
_PACKAGES = ("corr3d", "torch", "torchvision", "lightning", "timm", "torchmetrics", "omegaconf", "open3d", "numpy")


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


def experiment_name(cfg_or_name) -> str:
    """The validated experiment name (a single safe path component) of a config or a name."""
    name = cfg_or_name.experiment if hasattr(cfg_or_name, "experiment") else cfg_or_name
    return safe_name(name, "experiment name",
                     fix="set experiment=<name> with letters, digits, '.', '_' or '-' only (it names runs/<name>/)")


# ------------------------------------------------------------------------------------------------------------ locks
def process_alive(pid: int) -> bool:
    """True for a running process on this host; a zombie (killed, not yet reaped) counts as dead."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def hostname() -> str:
    return socket.gethostname()


class RunLock:
    """Exclusive lock of a directory for one process: ``fcntl.flock`` on ``<dir>/.lock`` plus pid/host in the file.

    ``acquire()`` raises :class:`RunLockedError` (with the holder's pid, host and start time) when a live process
    holds it. A holder that died released its flock with its file descriptor; on filesystems without flock the
    recorded pid decides: dead on this host = stale lock, taken over; a pid on another host is trusted (refused).
    """

    def __init__(self, directory: str | os.PathLike, name: str = LOCK_FILE, what: str = "run directory"):
        self.directory = Path(directory)
        self.path = self.directory / name
        self.what = what
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def _refuse(self, info: dict) -> RunLockedError:
        who = f"pid {info.get('pid', '?')} on host {info.get('host', '?')} (since {info.get('started', '?')})"
        return RunLockedError(f"{self.what} {self.directory} is in use by {who}", path=self.directory,
                              fix="wait for that process to finish or stop it; to run the same experiment in "
                                  "parallel, give it another name (experiment=<other name>)")

    def acquire(self, blocking: bool = False, record: bool = True) -> "RunLock":
        """Take the lock (``blocking``: wait for it); ``record`` writes this process's pid/host into the file."""
        import fcntl  # deferred: Linux-only module

        if self._fd is not None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise self._refuse(self.holder()) from None
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            info = self.holder()  # no flock on this filesystem: decide by the recorded pid/host
            if info.get("pid") and info.get("pid") != os.getpid():
                if info.get("host") != hostname() or process_alive(int(info["pid"])):
                    os.close(fd)
                    raise self._refuse(info) from None
        self._fd = fd
        if record:
            previous = self.holder()
            if previous.get("pid") and previous.get("pid") != os.getpid():
                log.info("recovered stale lock %s of pid %s on %s", self.path, previous.get("pid"),
                         previous.get("host"))
            info = {"pid": os.getpid(), "host": hostname(),
                    "started": _dt.datetime.now().isoformat(timespec="seconds")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            os.fsync(fd)
        return self

    def release(self, clear: bool = True) -> None:
        if self._fd is None:
            return
        import fcntl  # deferred: Linux-only module

        try:
            if clear:
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def is_locked(self) -> bool:
        """True when another live process holds the lock (probes without keeping it)."""
        if self._fd is not None:
            return False
        if not self.path.exists():
            return False
        probe = RunLock(self.directory, self.path.name, self.what)
        try:
            probe.acquire(record=False)
        except RunLockedError:
            return True
        probe.release(clear=False)  # probing keeps the last holder's record
        return False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def directory_lock(directory: str | os.PathLike):
    """Hold an exclusive ``flock`` on the directory itself for the ``with`` block (waits for other holders).

    Locking the directory's own descriptor leaves no lock file behind; on filesystems without flock on
    directories it degrades to no serialisation (the steps it guards are still individually atomic).
    """
    import fcntl  # deferred: Linux-only module

    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


_HELD: dict[str, RunLock] = {}  # run locks this process holds (released by release_run or at exit by the kernel)


def lock_run(run: str | os.PathLike) -> RunLock:
    """Hold ``run``'s lock for this process (idempotent: a second call in the same process keeps the first lock)."""
    key = os.path.realpath(run)
    lock = _HELD.get(key)
    if lock is None or not lock.held:
        lock = RunLock(run).acquire()
        _HELD[key] = lock
    return lock


def release_run(run: str | os.PathLike) -> None:
    lock = _HELD.pop(os.path.realpath(run), None)
    if lock is not None:
        lock.release()


# ------------------------------------------------------------------------------------------------------------ runs
def find_resumable_run(experiment_dir: Path, cfg: DictConfig) -> Path | None:
    """The newest run of this experiment that did not finish and was started with the same resolved config
    (``latest`` first, then every run directory newest first)."""
    experiment_dir = Path(experiment_dir)
    wanted = _resolved_yaml(cfg)
    candidates = []
    latest = experiment_dir / "latest"
    if latest.exists():
        candidates.append(latest.resolve())
    if experiment_dir.is_dir():
        candidates += sorted((p for p in experiment_dir.iterdir() if p.is_dir() and not p.is_symlink()
                              and not p.name.startswith(".")), key=lambda p: p.name, reverse=True)
    for run in candidates:
        cfg_file = run / "config.yaml"
        if (run / DONE_MARKER).exists() or not cfg_file.exists():
            continue
        try:
            if cfg_file.read_text() == wanted:
                return run.resolve()
        except OSError:
            continue
    return None


def _new_run_dir(experiment_dir: Path) -> Path:
    """A fresh ``<timestamp>[_n]`` directory, created atomically (two processes never get the same one)."""
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    suffix = 0
    while True:
        run = experiment_dir / (stamp if suffix == 0 else f"{stamp}_{suffix}")
        try:
            run.mkdir(parents=True)
            return run
        except FileExistsError:
            suffix += 1


def create_run_dir(cfg: DictConfig, resume: bool = True, run_dir: str | os.PathLike | None = None, *,
                   lock: bool = False, move_latest: bool = True) -> Path:
    """Create (or reuse, see module doc) the run directory for ``cfg``.

    ``lock=True`` holds the run's :class:`RunLock` for this process (training does; see the module doc for the
    policy when another live process holds it). ``move_latest=False`` leaves ``latest`` for the caller to move with
    :func:`point_latest` once the run has started successfully.
    """
    experiment_dir = Path(cfg.output_dir) / experiment_name(cfg)
    experiment_dir.mkdir(parents=True, exist_ok=True)
    # choosing and locking a run is one step per experiment: a concurrent start waits here, then sees this run
    with directory_lock(experiment_dir):
        if run_dir is not None:
            run = Path(run_dir)
            run.mkdir(parents=True, exist_ok=True)
        else:
            run = find_resumable_run(experiment_dir, cfg) if resume else None
            if run is None:
                run = _new_run_dir(experiment_dir)
        if lock:
            lock_run(run)
        if not (run / "config.yaml").exists():
            atomic_write_text(run / "config.yaml", _resolved_yaml(cfg))
            info = {"git_commit": git_commit(), "packages": package_versions(),
                    "created": _dt.datetime.now().isoformat(timespec="seconds")}
            write_json(run / "env.json", info)
    if move_latest:
        point_latest(experiment_dir, run)
    return run


def is_sweep_cell(experiment_dir: str | os.PathLike, run: str | os.PathLike) -> bool:
    """True for a run inside ``<experiment_dir>/sweeps/`` (a cell of ``corr3d sweep``, corr3d/launch/sweep.py)."""
    sweeps = Path(experiment_dir).resolve() / SWEEPS_DIR
    return Path(run).resolve().is_relative_to(sweeps)


def point_latest(experiment_dir: Path, run: Path) -> bool:
    """Point ``<experiment_dir>/latest`` at ``run``; returns whether it moved.

    A sweep cell never moves it: ``latest`` is what ``make eval EXP=..`` evaluates as "finetuned", and the last
    cell of a grid (0 steps, another seed, ...) is not the experiment's trained model.
    """
    if is_sweep_cell(experiment_dir, run):
        log.info("%s is a sweep cell: %s/latest stays where it is", run, experiment_dir)
        return False
    target = run.resolve().name if run.resolve().parent == Path(experiment_dir).resolve() else run.resolve()
    atomic_write(Path(experiment_dir) / "latest", lambda tmp: tmp.symlink_to(target))
    return True


def mark_done(run: Path) -> None:
    atomic_write_text(Path(run) / DONE_MARKER, _dt.datetime.now().isoformat(timespec="seconds") + "\n")


def latest_run(output_dir: str | os.PathLike, experiment: str) -> Path | None:
    link = Path(output_dir) / experiment_name(experiment) / "latest"
    return link.resolve() if link.exists() else None
