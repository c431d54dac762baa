"""A sweep as a SLURM array on the local test cluster: one array task per cell, then the gather job writes
results.csv; finished cells are not resubmitted."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.helpers.tiny import tiny_train_overrides

pytestmark = pytest.mark.slurm
JOB_TIMEOUT = 300


def _logs(root: Path) -> str:
    return "\n".join(f"--- {p}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-30:])
                     for p in sorted(root.glob("*/*_log.*")))


@pytest.mark.timeout(900)
def test_sweep_array_runs_each_cell_and_gathers(cluster, job_env, tmp_path):
    from corr3d.launch.sweep import SweepPlan, submit_sweep

    overrides = [*tiny_train_overrides(tmp_path, max_steps=1, pairs_per_epoch=1), "launcher.name=slurm",
                 "launcher.cpus_per_task=1", "launcher.mem_gb=1", "launcher.time_min=15", "data.augment.enabled=false"]
    plan = SweepPlan("dinov2_single_object", ["trainer.max_steps=0,1"], overrides, name="arr")
    array, gather = submit_sweep(plan)
    assert [job.job_id.split("_")[1] for job in array] == ["0", "1"]  # one array, one task per cell
    state = cluster.wait_for_job(gather.job_id, JOB_TIMEOUT * 2)
    root = plan.root
    assert state == "COMPLETED", f"gather {state}\n{_logs(root / 'slurm')}"
    with open(root / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["cell"], r["status"], r["steps"]) for r in rows] == [("max_steps-0", "done", "0"),
                                                                    ("max_steps-1", "done", "1")], _logs(root / "slurm")
    assert all(float(r["finetuned/equivariance/ape"]) > 0 for r in rows)
    record = json.loads((root / "slurm" / "jobs.json").read_text())[-1]
    assert record["cells"] == ["max_steps-0", "max_steps-1"] and record["gather_job_id"] == gather.job_id
    # re-submitting a finished sweep submits no training task, only a new gather
    array2, gather2 = submit_sweep(SweepPlan("dinov2_single_object", ["trainer.max_steps=0,1"], overrides, name="arr"))
    assert array2 == []
    assert cluster.wait_for_job(gather2.job_id, JOB_TIMEOUT) == "COMPLETED"
