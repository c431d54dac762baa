"""End to end: offline suite generation, loaders on it, run_eval / run_eval_part / gather_eval with a tiny model."""
from __future__ import annotations

import json

import pytest

from corr3d.config import load_config


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory):
    from corr3d.eval.offline_suite import ensure_offline_suite, is_complete

    root = tmp_path_factory.mktemp("bench")
    ensure_offline_suite(root)
    assert all(is_complete(root, p) for p in ("onepose", "tapvid", "semantic"))
    return root


def test_suite_is_readable_by_real_loaders(suite_dir):
    from corr3d.eval.datasets import onepose, pfpascal, spair, tapvid
    from corr3d.eval.offline_suite import suite_paths

    p = suite_paths(suite_dir)
    objs = onepose.list_objects(p["onepose_data"], p["onepose_sfm"])
    assert len(objs) == len(__import__("corr3d.eval.offline_suite.onepose", fromlist=["OBJECTS"]).OBJECTS)
    kps, idx = objs[0].ref.anno(objs[0].ref.anno_ids[0])
    K, T = objs[0].ref.K("0"), objs[0].ref.pose("0")
    from corr3d.geometry import project

    uv, _ = project(objs[0].keypoints3d[idx], K, T)     # annotations are exact projections of the SfM points
    assert abs(uv - kps).max() < 0.01
    videos = list(tapvid.iter_videos(p["tapvid"], "strided"))
    assert len(videos) == len(__import__("corr3d.eval.offline_suite.tapvid", fromlist=["VIDEOS"]).VIDEOS) and videos[0].occluded.any() and (~videos[0].occluded).any()
    assert len(pfpascal.load_pairs(p["pfpascal"], "different")) > 0
    assert len(spair.load_pairs(p["spair"])) > 0


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_run_eval_end_to_end(suite_dir, tmp_path):
    from corr3d.eval.run import gather_eval, run_eval, run_eval_part

    cfg = load_config("base", ["model.backbone=test_vit.r160_in1k", "model.weights=random",
                               f"eval.offline.dir={suite_dir}", f"eval.out_dir={tmp_path / 'eval'}",
                               f"data_root={tmp_path / 'nodata'}", f"output_dir={tmp_path / 'runs'}",
                               "eval.tasks=[pose,tracking,semantic]", "eval.pose.ransac_iters=300",
                               "eval.offline.semantic_image_size=128"])
    result = run_eval(cfg)
    out = tmp_path / "eval"
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["pretrained"]
    m = metrics["pretrained"]
    for key in ("offline/pose/acc@1cm1deg", "offline/pose/acc@5cm5deg", "offline/tracking/aj",
                "offline/tracking/delta_avg", "offline/tracking/oa", "offline/semantic/pck@0.10",
                "offline/semantic/pck_bbox@0.10", "offline/semantic/same/pck@0.10",
                "offline/semantic/spair/pck@0.10", "offline/semantic/spair/vp2/pck@0.10"):
        assert key in m and 0.0 <= m[key] <= 100.0, key
    assert result["metrics"] == metrics
    text = (out / "report.md").read_text()
    assert "offline/tracking" in text and "Missing data" in text and "tapvid_davis.pkl" in text
    assert (out / "csv" / "offline_tapvid__tracking_videos.csv").exists()
    assert (out / "csv" / "offline_onepose__pose_frames.csv").exists()
    assert any((out / "plots").glob("*.png"))
    # the SLURM fan-out path: one part, gathered elsewhere
    parts = tmp_path / "parts"
    part = run_eval_part(cfg, "tracking", "pretrained", parts_dir=parts)
    assert part["metrics"]["offline/tracking/aj"] == pytest.approx(m["offline/tracking/aj"])
    gathered = gather_eval(cfg, parts, tmp_path / "gathered")
    assert gathered["metrics"]["pretrained"]["offline/tracking/aj"] == pytest.approx(m["offline/tracking/aj"])


def test_unknown_task_is_rejected(tmp_path):
    from corr3d.eval.run import selected_tasks

    cfg = load_config("base", ["eval.tasks=[posse]"])
    with pytest.raises(ValueError, match="unknown eval task"):
        selected_tasks(cfg)
