"""make bench's evaluation group: the side-by-side of one-shot pose matching reports identical matches."""
from corr3d.perf.eval import mutual_nn_speedup


def test_mutual_nn_bench_compares_identical_matches():
    out = mutual_nn_speedup(128, 400, 16)
    assert out["pose_mutual_nn_identical"] is True
    assert out["pose_mutual_nn_authors_s"] > 0 and out["pose_mutual_nn_corr3d_s"] > 0
    assert out["pose_mutual_nn_speedup_vs_authors_x"] > 0


def test_eval_subset_names_the_first_objects_scenes_and_parses(tmp_path):
    from corr3d.config import load_config
    from corr3d.perf.eval import BENCH_POSE_OBJECTS, BENCH_VIDEOS, eval_subset

    names = [f"07{i:02d}-thing{i}-others" for i in range(6)]
    for name in reversed(names):
        (tmp_path / "onepose" / "lowtexture_test_data" / name).mkdir(parents=True)
    for scene in ("000051", "000048", "000050"):
        (tmp_path / "bop" / "ycbv" / "test" / scene).mkdir(parents=True)
    (tmp_path / "bop" / "ycbv" / "test" / "models_info.json").touch()  # files are not scenes
    base = [f"eval.offline.dir={tmp_path}"]
    subset = eval_subset(load_config("base", base))
    assert set(subset) == {"pose", "pose_ycbv", "tracking", "semantic"}
    cfg = load_config("base", base + [o for overrides in subset.values() for o in overrides])
    assert list(cfg.eval.pose.objects) == names[:BENCH_POSE_OBJECTS]
    assert list(cfg.eval.pose_ycbv.scenes) == [48]
    assert cfg.eval.tracking.max_videos == BENCH_VIDEOS
    assert cfg.eval.semantic.max_pairs > 0
    assert eval_subset(load_config("base", base), quick=True) == {}
