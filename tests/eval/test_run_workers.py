"""``eval.workers``: (task, model-group) parts measured by parallel processes give the numbers of one process."""
from __future__ import annotations

import json

import pytest

from corr3d.config import ConfigError, load_config


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory):
    from corr3d.eval.offline_suite import ensure_offline_suite

    root = tmp_path_factory.mktemp("bench")
    ensure_offline_suite(root, ["onepose", "tapvid"])
    return root


def _config(suite_dir, out, workers: str):
    return load_config("base", [
        "model.backbone=test_vit.r160_in1k", "model.weights=random", "model.target_res=128",
        f"eval.offline.dir={suite_dir}", f"eval.out_dir={out}", f"data_root={out / 'nodata'}",
        f"output_dir={out / 'runs'}", "eval.tasks=[pose,tracking,real_pairs]",
        "eval.models=[pretrained,pretrained_default_conv,random]", "eval.pose.ransac_iters=200",
        "eval.pose.objects=[0700-pooltable-others,0703-tabletennis-others]", "eval.tracking.max_videos=3",
        "eval.real_pairs.homography_images=[coins]", "eval.real_pairs.num_points=100", "eval.n_boot=200",
        "eval.device=cpu", "eval.part_cache=null", "eval.tracking.variants=[]", f"eval.workers={workers}"])


def _without_timings(metrics: dict) -> dict:
    return {model: ({k: v for k, v in values.items() if not k.endswith("_seconds")}
                    if model in ("pretrained", "pretrained_default_conv", "random") else values)
            for model, values in metrics.items()}


@pytest.mark.slow
@pytest.mark.eval_workers
@pytest.mark.timeout(900)
def test_parallel_parts_give_the_numbers_of_one_process(suite_dir, tmp_path):
    from corr3d.eval.run import run_eval

    outs = {}
    for workers in ("1", "2"):
        run_eval(_config(suite_dir, tmp_path / workers, workers))
        outs[workers] = _without_timings(json.loads((tmp_path / workers / "metrics.json").read_text()))
        parts = sorted(p.name for p in (tmp_path / workers / "parts").glob("*.json"))
        assert len(parts) == 9, parts          # 3 tasks x 3 models, each written by whichever worker measured it
    assert outs["1"] == outs["2"]             # values, CIs and paired deltas, to the last digit
    assert outs["2"]["deltas"]["random-pretrained"]["offline/tracking/aj"]["lo"] is not None


def test_parallel_units_are_scheduled_longest_first():
    from corr3d.eval.tasks import get_task, registry

    costs = {name: get_task(name).cost for name in registry()}
    assert all(c > 0 for c in costs.values())
    # pose (RANSAC over every query frame) is the longest part per model on 2 cores (make bench / the note)
    assert max(costs, key=costs.get) == "pose"


@pytest.mark.parametrize("value", ["0", "-1", "many", "1.5"])
def test_workers_must_be_auto_or_a_positive_integer(value):
    with pytest.raises(ConfigError, match="eval.workers"):
        load_config("base", [f"eval.workers={value}"])


@pytest.mark.eval_workers
def test_auto_workers_follow_the_cores_and_stay_at_one_on_a_gpu(monkeypatch):
    import torch

    from corr3d.eval import run

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert run.eval_workers(load_config("base", ["eval.device=cpu"])) == 2
    monkeypatch.setattr(torch, "get_num_threads", lambda: 64)
    assert run.eval_workers(load_config("base", ["eval.device=cpu"])) == run.MAX_AUTO_WORKERS
    assert run.eval_workers(load_config("base", ["eval.device=cpu", "eval.workers=3"])) == 3
    monkeypatch.setattr(run, "eval_device", lambda cfg: torch.device("cuda"))
    assert run.eval_workers(load_config("base", [])) == 1


def test_timing_table_sums_datasets_per_task_and_model():
    from corr3d.eval.run import timing_table

    timings = [{"model": "pretrained", "task": "pose", "dataset": "onepose", "seconds": 10.0},
               {"model": "pretrained", "task": "pose", "dataset": "offline_onepose", "seconds": 2.5},
               {"model": "random", "task": "pose", "dataset": "offline_onepose", "seconds": 30.0},
               {"model": "random", "task": "tracking", "dataset": "offline_tapvid", "seconds": 4.0}]
    rows = timing_table(timings, ["oracle", "pretrained", "random"])
    assert rows == [{"task": "pose", "pretrained": 12.5, "random": 30.0, "total": 42.5},
                    {"task": "tracking", "pretrained": "", "random": 4.0, "total": 4.0},
                    {"task": "total", "pretrained": 12.5, "random": 34.0, "total": 46.5}]


_POOL_THEN_WAIT = """
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
sys.path.insert(0, {repo!r})
from corr3d.eval import run
from tests.helpers.workers import record_pid_and_sleep
pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=run._init_worker,
                           initargs=(1, os.getpid()))
for _ in range(2):
    pool.submit(record_pid_and_sleep, {folder!r})
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")   # a zombie has exited; only its entry waits for its new parent to reap it


@pytest.mark.timeout(300)
def test_workers_of_a_killed_evaluation_exit_with_it(tmp_path):
    """SIGKILL gives the pool no chance to shut down: the workers notice their parent is gone and exit, so
    nothing keeps writing parts into an output directory whose lock has been released."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = str(Path(__file__).resolve().parents[2])
    parent = subprocess.Popen([sys.executable, "-c", _POOL_THEN_WAIT.format(repo=repo, folder=str(tmp_path))],
                              cwd=repo)
    deadline = time.time() + 240
    while len(list(tmp_path.glob("*.pid"))) < 2 and time.time() < deadline and parent.poll() is None:
        time.sleep(0.5)
    workers = [int(p.stem) for p in tmp_path.glob("*.pid")]
    assert len(workers) == 2 and all(_alive(pid) for pid in workers)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 30
    while any(_alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.5)
    survivors = [pid for pid in workers if _alive(pid)]
    for pid in survivors:   # do not leave them behind when the test fails
        os.kill(pid, signal.SIGKILL)
    assert survivors == []
