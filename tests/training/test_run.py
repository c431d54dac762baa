"""End-to-end training: outputs, DDP over 2 CPU processes, SIGKILL + resume == uninterrupted run."""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.tiny import REPO, corr3d_command, shared_offline_suite, subprocess_env, tiny_train_overrides


def test_copy_row_copies_the_row_per_object_results_and_parts(tmp_path):
    from corr3d.training.run import copy_row

    for task in ("equivariance", "real_pairs"):
        (tmp_path / task).mkdir()
        (tmp_path / task / "pretrained.json").write_text(json.dumps([{"id": task, "unit": "u", "ape": 1.5}]))
    metrics = {"pretrained": {"equivariance/ape": 1.5}, "per_object": {"pretrained": {"obj": {"ape": 1.5}}}}
    copy_row(metrics, tmp_path, "pretrained", "pretrained_head_init")
    assert metrics["pretrained_head_init"] == metrics["pretrained"]
    assert metrics["per_object"]["pretrained_head_init"] == {"obj": {"ape": 1.5}}
    metrics["per_object"]["pretrained_head_init"]["obj"]["ape"] = 9.0   # a copy, not the same object
    assert metrics["per_object"]["pretrained"]["obj"]["ape"] == 1.5
    for task in ("equivariance", "real_pairs"):
        assert (tmp_path / task / "pretrained_head_init.json").read_text() == \
            (tmp_path / task / "pretrained.json").read_text()


def test_build_module_signs_its_checkpoints_with_the_config_fingerprint():
    from corr3d.config import load_config
    from corr3d.training.module import CHECKPOINT_FINGERPRINT_KEY
    from corr3d.training.run import build_module, training_fingerprint
    from tests.helpers.models import tiny_model

    cfg = load_config("dinov2_single_object", ["optim.lr=1e-3"])
    module = build_module(cfg, tiny_model(16))
    assert module.fingerprint == training_fingerprint(cfg) and module.lr == 1e-3
    checkpoint = {"state_dict": {f"model.{k}": v for k, v in module.model.state_dict().items()}}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint[CHECKPOINT_FINGERPRINT_KEY] == module.fingerprint
    assert set(checkpoint["state_dict"]) == {f"model.{n}" for n, p in module.model.named_parameters()
                                             if p.requires_grad}


def _run_train(root: Path, *extra: str, timeout: int = 400) -> subprocess.CompletedProcess:
    cmd = corr3d_command("train", "dinov2_single_object", *tiny_train_overrides(root), *extra)
    result = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _latest(root: Path) -> Path:
    return (root / "runs" / "dinov2_single_object" / "latest").resolve()


@pytest.mark.slow
def test_training_run_leaves_every_output(tmp_path):
    result = _run_train(tmp_path)
    run = _latest(tmp_path)
    for name in ("config.yaml", "env.json", "metrics.json", "report.md", "adapter.safetensors", "adapter.json",
                 "DONE", "checkpoints/last.ckpt", "equivariance.png", "train.log"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    for label in ("pretrained", "pretrained_head_init", "finetuned", "random"):
        assert 0 < metrics[label]["equivariance/ape"] < 100
        assert 0 <= metrics[label]["equivariance/pcdp@0.05"] <= metrics[label]["equivariance/pcdp@0.2"] <= 100
        items = json.loads((run / "parts" / "equivariance" / f"{label}.json").read_text())
        assert len(items) == 2 and {it["unit"] for it in items} == {"procedural_sphere_astronaut"}
    assert metrics["oracle"]["equivariance/ape"] < 3.0   # ground truth as features: the protocol's ceiling
    assert metrics["train"]["global_step"] == 6
    for name in ("finetuned-pretrained", "finetuned-pretrained_head_init", "pretrained_head_init-pretrained",
                 "random-pretrained"):
        d = metrics["deltas"][name]["equivariance/ape"]
        a, b = name.split("-", 1)
        assert d["delta"] == pytest.approx(metrics[a]["equivariance/ape"] - metrics[b]["equivariance/ape"])
    assert "equivariance/ape" in result.stdout  # the before/after table is printed
    report = (run / "report.md").read_text()
    assert "Δ finetuned − pretrained_head_init" in report and "Validity: floors and ceilings" in report
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    # the adapter loads with no training code and reproduces the finetuned model's features
    import corr3d

    model = corr3d.load_model(None, adapter=run / "adapter.safetensors")
    images = torch.rand(1, 3, 64, 64)
    assert model.dense_features(images).shape[1] == model.embed_dim


@pytest.mark.slow
def test_downstream_tasks_are_measured_before_and_after_with_paired_deltas(tmp_path, tmp_path_factory):
    suite = shared_offline_suite(tmp_path_factory, ["semantic"])
    _run_train(tmp_path, "equivariance.downstream=[semantic]", f"eval.offline.dir={suite}",
               "eval.semantic.max_pairs=3", "equivariance.reference_models=[random]", "trainer.max_steps=2")
    run = _latest(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    key = "offline/semantic/pck@0.10"
    for label in ("pretrained", "pretrained_head_init", "finetuned"):
        assert 0 <= metrics[label][key] <= 100
        items = json.loads((run / "parts" / "semantic" / f"{label}.json").read_text())
        assert items and all("unit" in it for it in items)
    assert key not in metrics["random"]   # the reference rows measure equivariance (and real_pairs) only
    delta = metrics["deltas"]["finetuned-pretrained"][key]
    assert delta["delta"] == pytest.approx(metrics["finetuned"][key] - metrics["pretrained"][key])
    assert delta["lo"] <= delta["delta"] <= delta["hi"]
    report = (run / "report.md").read_text()
    assert "## Downstream tasks" in report and f"| {key} |" in report.replace("`", "")


@pytest.mark.slow
def test_ddp_two_cpu_processes_draw_different_pairs_and_save_once(tmp_path):
    _run_train(tmp_path, "trainer.devices=2", "trainer.strategy=ddp", "trainer.max_steps=4",
               "data.pairs_per_epoch=4")
    runs = [p for p in (tmp_path / "runs" / "dinov2_single_object").iterdir() if p.name != "latest"]
    assert len(runs) == 1, runs  # rank 1 joined rank 0's run directory
    run = runs[0]
    pairs = {}
    for rank in (0, 1):
        lines = [json.loads(x) for x in (run / f"pairs_rank{rank}.jsonl").read_text().splitlines()]
        assert {line["rank"] for line in lines} == {rank}
        pairs[rank] = [tuple(p) for line in lines for p in line["pairs"]]
    assert len(pairs[0]) == len(pairs[1]) == 4
    assert pairs[0] != pairs[1]
    assert len(list(run.glob("adapter*.safetensors"))) == 1 and (run / "DONE").exists()
    assert json.loads((run / "metrics.json").read_text())["train"]["global_step"] == 4


def _kill_after_new_checkpoint(cmd: list[str], root: Path, seen: set) -> set:
    """Start ``cmd``, SIGKILL it as soon as a checkpoint not in ``seen`` appears; return all checkpoints then."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    found: set = set()
    while time.time() < deadline and proc.poll() is None:
        found = {p.name for p in (root / "runs").glob("dinov2_single_object/*/checkpoints/step*.ckpt")}
        if found - seen:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before a new checkpoint appeared"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return found


def _trained_tensors(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter.safetensors"))


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_to_the_same_state(tmp_path):
    # checkpoints every 3 steps, epochs of 4: resumes land both inside epochs and on their boundaries
    steps, epoch = 24, 4
    args = [f"trainer.max_steps={steps}", f"data.pairs_per_epoch={epoch}", "trainer.checkpoint_every_n_steps=3"]
    reference = tmp_path / "reference"
    _run_train(reference, *args)

    killed = tmp_path / "killed"
    cmd = corr3d_command("train", "dinov2_single_object", *tiny_train_overrides(killed), *args)
    first = _kill_after_new_checkpoint(cmd, killed, seen=set())
    run = _latest(killed)
    _kill_after_new_checkpoint(cmd, killed, seen=first)   # the resumed run, killed again
    assert _latest(killed) == run
    assert not (run / "DONE").exists(), "killed too late: the run had already finished"

    _run_train(killed, *args)
    assert _latest(killed) == run  # same run directory, resumed
    assert "resuming from" in (run / "train.log").read_text()
    a, b = _trained_tensors(_latest(reference)), _trained_tensors(run)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    done = json.loads((run / "metrics.json").read_text())
    assert done["train"]["global_step"] == steps
    # the baselines were measured in other processes (other PYTHONHASHSEEDs) than the reference's: same numbers
    ref = json.loads((_latest(reference) / "metrics.json").read_text())
    for label in ("pretrained", "pretrained_head_init", "random", "oracle"):
        strip = (lambda m: {k: v for k, v in m.items() if not k.endswith("seconds")})
        assert strip(done[label]) == strip(ref[label]), label
    assert (_latest(reference) / "parts" / "equivariance" / "pretrained.json").read_text() == \
        (run / "parts" / "equivariance" / "pretrained.json").read_text()
