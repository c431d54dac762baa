"""The part cache (``eval.part_cache``, issue 23): a part measured under a fingerprint is measured once, whatever
run asks for it again; what changes a part's numbers changes its fingerprint; resume=false and a corrupt entry
measure again."""
from __future__ import annotations

import pytest

import corr3d.eval.run as run
from corr3d.config import load_config


def _cfg(tmp_path, out: str, *extra):
    return load_config("base", ["model.backbone=test_vit.r160_in1k", "model.weights=random", "model.target_res=64",
                                "model.lora.blocks=1", f"output_dir={tmp_path / 'runs'}",
                                f"data_root={tmp_path / 'data'}", "eval.device=cpu", "eval.n_boot=50",
                                f"eval.out_dir={tmp_path / out}", "eval.tasks=[real_pairs]", *extra])


@pytest.fixture
def calls(monkeypatch):
    seen: list[str] = []

    def evaluate(model, cfg, items=None, **_):
        seen.append(type(model).__name__)
        rows = [{"id": f"p{i}", "unit": f"u{i}", "weight": 1.0, "real_pairs/pck@0.05": float(i)} for i in range(4)]
        items.extend(rows)
        return {"real_pairs/pck@0.05": 1.5}

    monkeypatch.setattr("corr3d.eval.tasks.real_pairs.evaluate_real_pairs", evaluate)
    return seen


def test_a_second_evaluation_elsewhere_reuses_the_reference_parts(tmp_path, calls):
    first = run.run_eval(_cfg(tmp_path, "a", "eval.models=[pretrained,random,oracle]"))
    assert len(calls) == 3
    second = run.run_eval(_cfg(tmp_path, "b", "eval.models=[pretrained,random,oracle]"))
    assert len(calls) == 3 and second["metrics"] == first["metrics"] and second["ci"] == first["ci"]
    assert (tmp_path / "b" / "parts" / "real_pairs" / "random.json").exists()   # the output dir is complete


@pytest.mark.parametrize("change", ["seed=7", "model.target_res=96", "eval.seed=3", "eval.real_pairs.num_points=50"])
def test_what_changes_the_numbers_changes_the_fingerprint(tmp_path, calls, change):
    run.run_eval(_cfg(tmp_path, "a", "eval.models=[random]"))
    run.run_eval(_cfg(tmp_path, "b", "eval.models=[random]", change))
    assert len(calls) == 2


@pytest.mark.parametrize("change", ["optim.lr=0.5", "trainer.max_steps=7", "loss.temperature=0.2",
                                    "data.train_objects=[procedural:sphere_astronaut]", "eval.n_boot=60",
                                    "experiment=other", "equivariance.downstream=[tracking]",
                                    "data.augment.enabled=false", "trainer.cache_frozen_prefix=true"])
def test_what_only_training_reads_does_not(tmp_path, calls, change):
    run.run_eval(_cfg(tmp_path, "a", "eval.models=[pretrained,random]"))
    run.run_eval(_cfg(tmp_path, "b", "eval.models=[pretrained,random]", change))
    assert len(calls) == 2


def test_pretrained_does_not_depend_on_the_seed_but_the_random_floor_does():
    cfg = load_config("base", ["model.backbone=test_vit.r160_in1k", "model.weights=random"])
    other = load_config("base", ["model.backbone=test_vit.r160_in1k", "model.weights=random", "seed=5"])
    fp = run.part_fingerprint
    assert fp(cfg, "pose", "pretrained", adapter=None) == fp(other, "pose", "pretrained", adapter=None)
    assert fp(cfg, "pose", "random", adapter=None) != fp(other, "pose", "random", adapter=None)
    assert fp(cfg, "pose", "pretrained_head_init", adapter=None) != fp(other, "pose", "pretrained_head_init",
                                                                        adapter=None)
    assert fp(cfg, "pose", "random", adapter=None) != fp(cfg, "pose", "random", adapter=None, variant="x")


def test_resume_false_and_a_corrupt_entry_measure_again(tmp_path, calls):
    run.run_eval(_cfg(tmp_path, "a", "eval.models=[pretrained]"))
    run.run_eval(_cfg(tmp_path, "b", "eval.models=[pretrained]", "eval.resume=false"))
    assert len(calls) == 2
    for entry in (tmp_path / "runs" / ".part_cache").rglob("*.json"):
        entry.write_text("{not json")
    run.run_eval(_cfg(tmp_path, "c", "eval.models=[pretrained]"))
    assert len(calls) == 3
    run.run_eval(_cfg(tmp_path, "d", "eval.models=[pretrained]", "eval.part_cache=null"))
    assert len(calls) == 4
