"""Run directories (issue 14): experiment names stay under output_dir, run lock + stale recovery, latest policy."""
import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corr3d.config import load_config
from corr3d.errors import RunLockedError, UnsafePathError
from corr3d.utils import run_dir as rd

REPO = Path(__file__).resolve().parents[2]


def _cfg(tmp_path, *extra):
    return load_config("base", [f"output_dir={tmp_path / 'runs'}", "experiment=demo", *extra])


@pytest.mark.parametrize("name", ["../../x", "/abs/x", "..", "a/b", ""])
def test_experiment_names_that_escape_output_dir_are_refused(tmp_path, name):
    cfg = _cfg(tmp_path)
    cfg.experiment = name
    with pytest.raises(UnsafePathError, match="experiment name"):
        rd.create_run_dir(cfg)
    with pytest.raises(UnsafePathError):
        rd.latest_run(tmp_path / "runs", name)
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["runs"])
    assert not any((tmp_path / "runs").glob("**/config.yaml")) if (tmp_path / "runs").exists() else True


def test_lock_refuses_a_second_holder_and_names_it(tmp_path):
    lock = rd.RunLock(tmp_path).acquire()
    info = json.loads((tmp_path / ".lock").read_text())
    assert info["pid"] == os.getpid() and info["host"] == rd.hostname()
    with pytest.raises(RunLockedError) as err:  # flock locks are per open file: a second open conflicts
        rd.RunLock(tmp_path).acquire()
    assert f"pid {os.getpid()}" in str(err.value) and err.value.fix
    assert rd.RunLock(tmp_path).is_locked()
    lock.release()
    assert not rd.RunLock(tmp_path).is_locked()
    rd.RunLock(tmp_path).acquire().release()


HOLD = "import sys, time; from corr3d.utils.run_dir import RunLock; RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)"


def test_lock_of_a_killed_process_is_recovered(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"pid {proc.pid}"):
            rd.RunLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait()
    lock = rd.RunLock(tmp_path).acquire()  # SIGKILL dropped the flock: the stale record is taken over
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    lock.release()


def test_without_flock_a_dead_pid_on_this_host_is_stale_and_a_live_one_holds(tmp_path, monkeypatch):
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "no locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead.pid, "host": rd.hostname(), "started": "x"}))
    lock = rd.RunLock(tmp_path).acquire()
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    lock._fd, fd = None, lock._fd
    os.close(fd)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / ".lock").write_text(json.dumps({"pid": live.pid, "host": rd.hostname(), "started": "x"}))
        with pytest.raises(RunLockedError, match=f"pid {live.pid}"):
            rd.RunLock(tmp_path).acquire()
        (tmp_path / ".lock").write_text(json.dumps({"pid": dead.pid, "host": "other-node", "started": "x"}))
        with pytest.raises(RunLockedError, match="other-node"):  # another host's pid cannot be checked: trusted
            rd.RunLock(tmp_path).acquire()
    finally:
        live.kill()
        live.wait()


def test_second_train_of_the_same_experiment_does_not_share_the_run(tmp_path):
    """Policy (utils/run_dir.py): the run of a live process is never shared; the second start gets a clear error."""
    cfg = _cfg(tmp_path)
    run = rd.create_run_dir(cfg, lock=True, move_latest=False)
    try:
        code = ("import sys; from corr3d.config import load_config; from corr3d.utils.run_dir import create_run_dir; "
                "create_run_dir(load_config('base', sys.argv[1:]), lock=True)")
        other = subprocess.run([sys.executable, "-c", code, f"output_dir={tmp_path / 'runs'}", "experiment=demo"],
                               cwd=REPO, capture_output=True, text=True, timeout=120)
        assert other.returncode != 0 and "RunLockedError" in other.stderr and f"pid {os.getpid()}" in other.stderr
        assert [p.name for p in (tmp_path / "runs" / "demo").iterdir() if not p.name.startswith(".")] == [run.name]
        # a different config is a different run: its own directory, no conflict
        other_cfg = _cfg(tmp_path, "seed=5")
        assert rd.create_run_dir(other_cfg, lock=True).resolve() != run.resolve()
    finally:
        rd.release_run(run)
    # once the holder is gone the same command resumes the unfinished run
    assert rd.create_run_dir(cfg, lock=True).resolve() == run.resolve()
    rd.release_run(run)


def test_same_process_may_relock_its_own_run(tmp_path):
    cfg = _cfg(tmp_path)
    run = rd.create_run_dir(cfg, lock=True)
    assert rd.create_run_dir(cfg, lock=True) == run  # a retry in the same process (tests, sweeps) is not blocked
    rd.release_run(run)


def test_latest_moves_only_when_asked_and_resume_does_not_need_it(tmp_path):
    cfg = _cfg(tmp_path)
    good = rd.create_run_dir(cfg)
    rd.mark_done(good)
    latest = tmp_path / "runs" / "demo" / "latest"
    assert latest.resolve() == good.resolve()
    failed = rd.create_run_dir(cfg, move_latest=False)  # a start that then fails never moves latest
    assert failed != good and latest.resolve() == good.resolve()
    assert rd.find_resumable_run(tmp_path / "runs" / "demo", cfg) == failed.resolve()
    assert rd.create_run_dir(cfg, move_latest=False).resolve() == failed.resolve()


def test_concurrent_fresh_starts_never_get_the_same_directory(tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    runs = {rd._new_run_dir(exp) for _ in range(5)}  # same second: suffixes, each mkdir atomic
    assert len(runs) == 5 and all(r.is_dir() for r in runs)
