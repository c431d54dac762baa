"""The local single-node SLURM cluster the launch tests submit to (one per test module), and the jobs' environment."""
from __future__ import annotations

import pytest

from tests.helpers.slurm_cluster import DEBIAN_PACKAGES, SlurmCluster, missing_programs


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = missing_programs()
    if missing:
        pytest.skip(f"SLURM/munge programs missing ({', '.join(missing)}); `make setup-test` installs the Debian "
                    f"packages {DEBIAN_PACKAGES}")
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as slurm:
        yield slurm


@pytest.fixture
def job_env(monkeypatch):
    """What the jobs inherit from this process (sbatch exports the submitting environment)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
