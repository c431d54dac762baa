"""A real single-node SLURM cluster for the tests.

``munged``, ``slurmctld -D`` and ``slurmd -D`` run as child processes of the test session with a private config,
munge key and socket, free TCP ports and private state/spool/log directories, so the cluster touches nothing of the
machine's own SLURM/munge setup and two sessions on one machine do not collide. Clients find the cluster through
``SLURM_CONF``; :meth:`SlurmCluster.start` exports it and :meth:`SlurmCluster.stop` cancels the cluster's jobs and
stops the daemons by their PIDs.
"""
from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "scontrol", "squeue", "scancel", "sinfo")
DEBIAN_PACKAGES = "slurmctld slurmd slurm-client munge"
TERMINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                   "DEADLINE", "PREEMPTED"}


def _which(name: str) -> str | None:
    # the daemons live in /usr/sbin, which is not on every user's PATH
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def missing_programs() -> list[str]:
    return [name for name in (*DAEMONS, *CLIENTS) if _which(name) is None]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _total_memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 4096


class SlurmCluster:
    """One node (``localhost``) in one default partition, daemons owned by this object."""

    def __init__(self, root: Path, partition: str = "debug", cpus: int | None = None):
        self.root = Path(root)
        self.partition = partition
        # The test jobs are tiny and mostly wait on each other, so a few more CPUs than the machine has let a 2-task
        # DDP job and an eval array run on 1-2 core CI machines (config_overrides keeps slurmd from draining the node).
        self.cpus = cpus or max(4, os.cpu_count() or 1)
        self.memory_mb = int(_total_memory_mb() * 0.9)
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.processes: dict[str, subprocess.Popen] = {}
        self._old_slurm_conf: str | None = None

    # ---- configuration -------------------------------------------------------------------------------------------
    def _write_munge_key(self) -> Path:
        munge_dir = self.root / "munge"
        munge_dir.mkdir(parents=True, exist_ok=True)
        munge_dir.chmod(0o755)  # munged insists that clients can reach the socket directory
        key = munge_dir / "munge.key"
        subprocess.run([_which("mungekey"), "--create", f"--keyfile={key}", "--force"], check=True,
                       capture_output=True)
        key.chmod(0o600)
        return key

    def _slurm_conf_text(self) -> str:
        user = getpass.getuser()
        r = self.root
        return "\n".join([
            "ClusterName=corr3dtest",
            "SlurmctldHost=localhost",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            f"SlurmUser={user}",
            f"SlurmdUser={user}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
            f"AuthInfo=socket={self.munge_socket},cred_expire=10",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "MpiDefault=none",
            "ReturnToService=2",
            "SlurmdParameters=config_overrides",
            "SchedulerParameters=sched_interval=2",  # pick up requeued/dependent jobs quickly
            "KillWait=5",  # SIGTERM -> SIGKILL grace on cancel/requeue; keeps the requeue test short
            "MinJobAge=600",  # finished jobs stay visible to `scontrol show job` (no accounting database)
            "InactiveLimit=0",
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN",
            f"PartitionName={self.partition} Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
            "",
        ])

    # ---- lifecycle -----------------------------------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / f"{name}.out", "ab")
        self.processes[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                                cwd=self.root, start_new_session=True)
        log.close()

    def start(self, timeout: float = 60.0) -> "SlurmCluster":
        for sub in ("state", "spool"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        key = self._write_munge_key()
        self.conf.write_text(self._slurm_conf_text())
        m = self.root / "munge"
        self._spawn("munged", [_which("munged"), "-F", "-f", f"--socket={self.munge_socket}", f"--key-file={key}",
                               f"--log-file={m / 'munged.log'}", f"--pid-file={m / 'munged.pid'}",
                               f"--seed-file={m / 'munged.seed'}"])
        self._wait_for(lambda: self.munge_socket.exists(), timeout, "munged socket")
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._wait_for(lambda: self.client("scontrol", "ping", check=False).returncode == 0, timeout, "slurmctld")
        self._spawn("slurmd", [_which("slurmd"), "-D", "-N", "localhost", "-f", str(self.conf)])
        self._wait_for(lambda: self.node_state() in ("idle", "mixed", "allocated"), timeout, "idle node")
        self._old_slurm_conf = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = str(self.conf)  # submitit and every client the tests run read it
        return self

    def stop(self) -> None:
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            self.client("scancel", "--full", "--partition", self.partition, check=False)
            self._wait_for(lambda: not self.client("squeue", "-h", check=False).stdout.strip(), 30,
                           "empty queue", raise_on_timeout=False)
        for name in ("slurmd", "slurmctld", "munged"):  # reverse start order
            proc = self.processes.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._old_slurm_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = self._old_slurm_conf

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- queries -------------------------------------------------------------------------------------------------
    def client(self, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, check=check,
                              timeout=timeout)

    def node_state(self) -> str:
        out = self.client("sinfo", "-h", "-N", "-o", "%t", check=False)
        return out.stdout.strip().rstrip("*~#$@") if out.returncode == 0 else ""

    def job_info(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (works without an accounting database while MinJobAge lasts)."""
        out = self.client("scontrol", "show", "job", "-o", str(job_id), check=False)
        info: dict[str, str] = {}
        for item in out.stdout.split():
            key, _, value = item.partition("=")
            info.setdefault(key, value)
        return info

    def job_state(self, job_id: str) -> str:
        return self.job_info(job_id).get("JobState", "UNKNOWN")

    def wait_for_job(self, job_id: str, timeout: float, states=TERMINAL_STATES) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            if state in states:
                return state
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} still {self.job_state(job_id)} after {timeout:.0f}s\n{self.debug_tail()}")

    def debug_tail(self, lines: int = 30) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = self.root / name
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def _wait_for(self, predicate, timeout: float, what: str, raise_on_timeout: bool = True) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    out = (self.root / f"{name}.out").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{name} exited with {proc.returncode} while waiting for {what}:\n{out}\n"
                                       f"{self.debug_tail()}")
            if predicate():
                return
            time.sleep(0.2)
        if raise_on_timeout:
            raise TimeoutError(f"no {what} after {timeout:.0f}s\n{self.debug_tail()}")

