"""The evaluation task interface (corr3d/eval/tasks): one module per task, found by the registry, and a new task
reaches ``make eval``, its report and its protocol labels without touching eval/run.py."""
from __future__ import annotations

import json

import pytest

import corr3d.eval.run as run
from corr3d.config import load_config
from corr3d.config_schema import EVAL_TASKS
from corr3d.eval.tasks import TASK_NAMES, Dataset, EvalTask, get_task, offline_parts, registry
from corr3d.eval.tasks.base import PROTOCOL_LABELS
from corr3d.eval.offline_suite import PARTS


def _cfg(tmp_path, *extra):
    return load_config("base", ["model.backbone=test_vit.r160_in1k", "model.weights=random", "model.target_res=64",
                                f"output_dir={tmp_path / 'runs'}", f"data_root={tmp_path / 'data'}",
                                "eval.device=cpu", "eval.n_boot=50", f"eval.out_dir={tmp_path / 'eval'}", *extra])


@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_task_module_declares_the_interface(name, tmp_path):
    task = get_task(name)
    assert isinstance(task, EvalTask) and task.name == name
    assert task.headline and all(isinstance(leaf, str) and not leaf.startswith(name) for leaf in task.headline)
    cfg = _cfg(tmp_path)
    task.settings(cfg)   # its config section exists
    assert all(src.part in PARTS for src in task.offline_sources)
    for ds in task.datasets(cfg, [], suite=lambda parts: {k: tmp_path / k for k in (
            "onepose_data", "onepose_sfm", "tapvid", "pfpascal", "spair", "bop_ycbv_test", "bop_ycbv_models")}):
        assert isinstance(ds, Dataset) and ds.prefix.endswith("/") and ds.source in ("real", "offline", "rendered")
        label, detail = task.protocol(cfg, ds)
        assert label in PROTOCOL_LABELS and isinstance(detail, str)


def test_the_schema_and_the_registry_name_the_same_tasks():
    assert set(EVAL_TASKS) == set(registry()) == set(TASK_NAMES)
    assert list(registry())[:3] == ["pose", "tracking", "semantic"]   # report order: the paper's Table 1 first


def test_offline_parts_follow_the_tasks():
    assert offline_parts(["pose", "pose_ycbv", "semantic", "equivariance"]) == ["onepose", "bop", "semantic"]
    assert offline_parts(["real_pairs"]) == []
    with pytest.raises(ValueError, match="unknown eval task 'nope'"):
        offline_parts(["nope"])


class CountingTask(EvalTask):
    """A task added the way a user would: its module (here: this class), nothing in eval/run.py."""

    name = "counting"
    order = 9
    section = "seed"
    headline = ("score",)
    oracle = False

    def settings(self, cfg):
        return cfg

    def datasets(self, cfg, messages, suite=None):
        return [Dataset("toy_a", "counting/", "real"), Dataset("toy_b", "counting/b/", "real")]

    def run(self, cfg, model, dataset, desc):
        scale = 2.0 if dataset.name == "toy_b" else 1.0
        items = [{"id": f"x{i}", "unit": f"u{i}", "weight": 1.0, f"{dataset.prefix}score": scale * i}
                 for i in range(5)]
        return {f"{dataset.prefix}score": 2.0 * scale}, {"items": items, "skipped": [("x9", "unreadable")]}

    def protocol(self, cfg, dataset):
        return "official", f"toy protocol {dataset.name}"


def test_a_new_task_reaches_make_eval_through_the_registry(tmp_path, monkeypatch):
    tasks = {**registry(), "counting": CountingTask()}
    monkeypatch.setattr(run, "registry", lambda: tasks)
    monkeypatch.setattr("corr3d.eval.tasks.registry", lambda: tasks)
    # eval.workers=1: the task is registered by monkeypatching this process; spawned workers import the package's
    # own task modules (a task added as a module under corr3d/eval/tasks/ reaches them like the others)
    result = run.run_eval(_with_task(_cfg(tmp_path, "eval.models=[pretrained,random]", "eval.workers=1")))
    assert result["metrics"]["pretrained"]["counting/score"] == 2.0
    assert result["metrics"]["random"]["counting/b/score"] == 4.0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["protocols"]["counting/b/"] == {"protocol": "official", "detail": "toy protocol toy_b"}
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "## counting" in report and "`counting/`: **official** — toy protocol toy_a" in report
    assert "counting: toy_a: x9 not evaluated — unreadable" in report
    items = json.loads((tmp_path / "eval" / "parts" / "counting" / "pretrained.json").read_text())
    assert {it["id"] for it in items} >= {"toy_a/x0", "toy_b/x4"}   # two datasets of one task: ids qualified
    assert "counting/score" in metrics["ci"]["pretrained"]


def _with_task(cfg):
    """eval.tasks=[counting]: the schema validates names at load time, so set it after loading."""
    from omegaconf import OmegaConf

    OmegaConf.set_struct(cfg, False)
    cfg.eval.tasks = ["counting"]
    return cfg


def test_pose_objects_select_in_each_set_among_its_names(tmp_path, monkeypatch):
    """eval.pose.objects may name real objects and suite objects: the real set must have every name, the offline
    suite keeps the names it has (none: the whole suite)."""
    from corr3d.eval.tasks import pose as pose_task

    (tmp_path / "0700-pooltable-others").mkdir()
    seen = []
    monkeypatch.setattr(pose_task.onepose, "list_objects", lambda data, sfm, names, *a: seen.append(names) or [])
    monkeypatch.setattr(pose_task, "evaluate_objects", lambda *a, **k: ({}, {}))
    for names, offline_selection in (("[0801-lowtexture-mug,0700-pooltable-others]", ["0700-pooltable-others"]),
                                     ("[0801-lowtexture-mug]", None)):
        seen.clear()
        cfg = _cfg(tmp_path, f"eval.pose.objects={names}")
        for source in ("real", "offline"):
            get_task("pose").run(cfg, object(), Dataset("x", "pose/", source, {"data_dir": tmp_path,
                                                                               "sfm_dir": tmp_path}), "d")
        assert seen == [list(cfg.eval.pose.objects), offline_selection]
