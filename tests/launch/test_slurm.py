"""The SLURM launcher against a real single-node cluster (munged + slurmctld + slurmd started by the fixture).

Every job goes through the functions users call (``submit_train`` / ``submit_eval``), with CPU processes standing in
for GPUs: a 2-task DDP training run, the same run interrupted by an admin's ``scontrol requeue`` and by the pre-timeout
signal, and an evaluation array with its gather job.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm
JOB_TIMEOUT = 240  # seconds per job; a tiny job takes 15-40 s on a loaded 2-core machine



def tiny_config(tmp_path: Path, *overrides: str):
    from corr3d.config import load_config

    return load_config("dinov2_single_object", [
        f"output_dir={tmp_path / 'runs'}", f"data_root={tmp_path / 'data'}",
        "model.backbone=test_vit.r160_in1k", "model.weights=random", "model.target_res=64",
        "data.render.width=64", "data.render.height=64", "data.render.focal=70.0", "data.num_workers=0",
        "data.pairs.num_points=100", "data.pairs_per_epoch=2", "data.augment.enabled=false",
        "equivariance.objects=[]", "equivariance.real_pairs=false", "data.train_objects=[procedural:hemisphere_textured]",
        "trainer.max_steps=6", "trainer.checkpoint_every_n_steps=2", "trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu",
        "launcher.name=slurm", "launcher.cpus_per_task=1", "launcher.mem_gb=1", "launcher.time_min=15",
        *overrides])


def logs_of(log_root: Path, lines: int = 40) -> str:
    parts = []
    for path in sorted(Path(log_root).glob("*/*_log.*")):
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        parts.append(f"--- {path.name}\n" + "\n".join(tail))
    return "\n".join(parts)


def attempts(run: Path) -> list[dict]:
    path = run / "slurm" / "attempts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(what)


def submit_and_wait_for_checkpoint(cluster, cfg):
    from corr3d.launch.slurm import submit_train

    job = submit_train(cfg)
    run = Path(cfg.output_dir).resolve() / cfg.experiment / "latest"
    run = run.resolve()
    try:
        wait_until(lambda: (run / "checkpoints" / "last.ckpt").exists(), JOB_TIMEOUT, "no checkpoint")
    except TimeoutError:
        pytest.fail(f"no checkpoint; job {cluster.job_state(job.job_id)}\n{logs_of(run / 'slurm')}")
    assert not (run / "DONE").exists(), "the run finished before it could be interrupted; raise max_steps"
    return job, run


def assert_finished(cluster, job, run: Path, max_steps: int) -> dict:
    state = cluster.wait_for_job(job.job_id, JOB_TIMEOUT)
    assert state == "COMPLETED", f"job {job.job_id} {state}\n{logs_of(run / 'slurm')}"
    assert (run / "DONE").exists() and (run / "checkpoints" / "last.ckpt").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == max_steps
    return metrics


@pytest.mark.timeout(300)
def test_two_task_ddp_training_job(cluster, job_env, tmp_path):
    from corr3d.launch.slurm import submit_train

    cfg = tiny_config(tmp_path)
    job = submit_train(cfg)
    run = (tmp_path / "runs" / cfg.experiment / "latest").resolve()
    assert_finished(cluster, job, run, max_steps=6)
    jobs = json.loads((run / "slurm" / "jobs.json").read_text())
    assert jobs[0]["job_ids"] == [job.job_id] and jobs[0]["tasks_per_node"] == 2
    logs = logs_of(run / "slurm")
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in logs, logs  # Lightning took both ranks from srun
    assert [a["event"] for a in attempts(run)] == ["start"]


def wait_for_progress(cluster, job, run: Path, starts: int) -> None:
    """Wait until attempt number ``starts`` has written a checkpoint of its own (so it is mid-run, resumed)."""
    def progressed():
        begun = [a for a in attempts(run) if a["event"] == "start"]
        last = run / "checkpoints" / "last.ckpt"
        if len(begun) < starts or not last.exists():
            return False
        started = time.mktime(time.strptime(begun[-1]["time"], "%Y-%m-%dT%H:%M:%S"))
        return last.stat().st_mtime > started + 1
    try:
        wait_until(progressed, JOB_TIMEOUT, "no progress")
    except TimeoutError:
        pytest.fail(f"attempt {starts} made no checkpoint; job {cluster.job_state(job.job_id)}\n"
                    f"{attempts(run)}\n{logs_of(run / 'slurm')}")
    assert not (run / "DONE").exists(), "the run finished before it could be interrupted; raise max_steps"


@pytest.mark.timeout(420)
def test_interrupted_training_resumes_same_run(cluster, job_env, tmp_path):
    """Pre-timeout signal (submitit checkpoints and requeues), then an admin's ``scontrol requeue``: each restart
    continues the same run directory from its last checkpoint and the run ends at max_steps."""
    max_steps = 150  # ~15 s of steps on 2 cores: room to interrupt twice
    cfg = tiny_config(tmp_path, f"trainer.max_steps={max_steps}", "trainer.checkpoint_every_n_steps=5")
    job, run = submit_and_wait_for_checkpoint(cluster, cfg)
    # what SLURM sends launcher.signal_delay_s before the time limit (submitit's --signal=USR2@<delay>)
    cluster.client("scancel", "--signal=USR2", job.job_id)
    wait_for_progress(cluster, job, run, starts=2)
    cluster.client("scontrol", "requeue", job.job_id)
    assert_finished(cluster, job, run, max_steps=max_steps)
    history = attempts(run)
    assert [a["event"] for a in history] == ["start", "requeue", "start", "start"], history
    assert [a["resume"] for a in history if a["event"] == "start"] == [False, True, True], history
    assert {a["job_id"] for a in history} == {job.job_id} and history[-1]["restart_count"] == 2
    assert "Restored all states from the checkpoint" in logs_of(run / "slurm", lines=1000)
    assert len(json.loads((run / "slurm" / "jobs.json").read_text())) == 1  # one submission, three attempts


@pytest.mark.timeout(420)
def test_eval_array_gathers_parts(cluster, job_env, tmp_path):
    from corr3d.launch.slurm import submit_eval
    from corr3d.models import load_model

    adapter = load_model("test_vit.r160_in1k", weights="random").save_adapter(tmp_path / "adapter.safetensors")
    cfg = tiny_config(tmp_path, "eval.tasks=[semantic]", "eval.models=[pretrained,finetuned]", f"eval.ckpt={adapter}",
                      f"eval.out_dir={tmp_path / 'eval'}", "eval.device=cpu", "eval.real_data=false")
    array, gather = submit_eval(cfg)
    assert [job.job_id.split("_")[1] for job in array] == ["0", "1"]  # one array, one task per part
    out = tmp_path / "eval"
    state = cluster.wait_for_job(gather.job_id, JOB_TIMEOUT * 2)
    assert state == "COMPLETED", f"gather {state}\n{logs_of(out / 'slurm')}"
    parts = sorted(p.name for p in (out / "parts").glob("*.json"))
    assert parts == ["semantic__finetuned.json", "semantic__pretrained.json"], logs_of(out / "slurm")
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"pretrained", "finetuned", "ci", "deltas", "protocols", "breakdowns"}  # + CIs, paired deltas
    assert all(any(k.startswith("offline/semantic/") for k in metrics[m]) for m in ("pretrained", "finetuned"))
    assert "finetuned" in (out / "report.md").read_text()
    record = json.loads((out / "slurm" / "jobs.json").read_text())[-1]
    assert record["gather_job_id"] == gather.job_id and record["suite_job_id"]  # suite generated once, up front


@pytest.mark.timeout(300)
def test_render_array_renders_every_chunk(cluster, job_env, tmp_path):
    from corr3d.launch.slurm import submit_render
    from corr3d.render.store import RenderedObject

    cfg = tiny_config(tmp_path, "data.render.width=32", "data.render.height=32", "data.render.focal=35.0",
                      "data.render.icosphere_subdivisions=0")
    specs = ["procedural:hemisphere", "procedural:sphere_astronaut", "procedural:torus_coffee"]
    jobs = submit_render(cfg, specs=specs, chunk_size=2)
    assert len(jobs) == 2
    root = tmp_path / "data" / "rendered"
    for job in jobs:
        state = cluster.wait_for_job(job.job_id, JOB_TIMEOUT)
        assert state == "COMPLETED", f"{job.job_id} {state}\n{logs_of(root / 'slurm')}"
    records = [json.loads(p.read_text()) for p in sorted((root / "slurm" / "chunks").glob("chunk_*.json"))]
    assert [[r["spec"] for r in chunk] for chunk in records] == [specs[:2], specs[2:]]
    for record in (r for chunk in records for r in chunk):
        assert record["status"] == "done", record
        assert RenderedObject.open(root / record["dir"]).num_views == 12  # icosphere level 0
