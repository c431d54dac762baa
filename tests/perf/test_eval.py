"""make bench's evaluation group: the side-by-side of one-shot pose matching reports identical matches."""
from corr3d.perf.eval import mutual_nn_speedup


def test_mutual_nn_bench_compares_identical_matches():
    out = mutual_nn_speedup(128, 400, 16)
    assert out["pose_mutual_nn_identical"] is True
    assert out["pose_mutual_nn_authors_s"] > 0 and out["pose_mutual_nn_corr3d_s"] > 0
    assert out["pose_mutual_nn_speedup_vs_authors_x"] > 0
