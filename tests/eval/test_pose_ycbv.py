"""YCB-V one-shot pose: ADD / ADD-S / AUC against hand-computed cases, the protocol's geometry, and an end-to-end run
on the BOP-format offline suite (through eval/run.py) with a tiny model."""
from __future__ import annotations

import numpy as np
import pytest

from corr3d.eval.pose_ycbv import (
    add_distance,
    add_s_distance,
    adds_distance,
    auc_score,
    backproject,
    box_grid,
    summarise,
)
from tests.helpers.config import config_section
from tests.helpers.poses import pose, rot_z




def test_add_and_adds_hand_computed():
    square = np.array([[1.0, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0]])
    # a pure 3-mm shift: every point moves 3 mm (ADD = 3); ADD-S: nearest shifted point is also 3 mm away here
    assert add_distance(pose(t=(0, 0, 3)), pose(), square) == pytest.approx(3.0)
    assert adds_distance(pose(t=(0, 0, 3)), pose(), square) == pytest.approx(3.0)
    # a 90 deg turn maps the square onto itself: ADD = |p - Rp| = sqrt(2) for every point, ADD-S = 0
    assert add_distance(pose(rot_z(90)), pose(), square) == pytest.approx(np.sqrt(2))
    assert adds_distance(pose(rot_z(90)), pose(), square) == pytest.approx(0.0, abs=1e-12)
    assert add_s_distance(pose(rot_z(90)), pose(), square, symmetric=False) == pytest.approx(np.sqrt(2))
    assert add_s_distance(pose(rot_z(90)), pose(), square, symmetric=True) == pytest.approx(0.0, abs=1e-12)


def test_auc_hand_computed():
    """Distances 0, 50, 200 mm with a 100-mm range: the accuracy curve P(d < t) on [0, 100] is 1/3 on (0, 50] and
    2/3 on (50, 100], so its normalised area is (1/3 * 50 + 2/3 * 50) / 100 = 0.5."""
    scores = [auc_score(d, 100.0) for d in (0.0, 50.0, 200.0)]
    assert scores == [100.0, 50.0, 0.0] and np.mean(scores) == pytest.approx(50.0)
    # the same area by integrating the step curve numerically
    d = np.array([0.0, 50.0, 200.0])
    t = np.linspace(0, 100, 200001)
    curve = (d[None, :] < t[:, None]).mean(1)
    assert np.trapezoid(curve, t) / 100 * 100 == pytest.approx(50.0, abs=0.01)
    assert auc_score(float("inf"), 100.0) == 0.0


def test_summarise_averages_per_object_then_over_objects():
    rows = [{"id": "a", "object": 1, "rot_err_deg": 0.5, "trans_err_cm": 0.5, "add_s_mm": 0.0, "diameter_mm": 100},
            {"id": "b", "object": 1, "rot_err_deg": 9.0, "trans_err_cm": 9.0, "add_s_mm": 100.0, "diameter_mm": 100},
            {"id": "c", "object": 2, "rot_err_deg": 2.0, "trans_err_cm": 2.0, "add_s_mm": 5.0, "diameter_mm": 100}]
    metrics, tables = summarise(rows, config_section("eval.pose_ycbv"), "p/")
    assert metrics["p/acc@1cm1deg"] == pytest.approx((50.0 + 0.0) / 2)
    assert metrics["p/acc@3cm3deg"] == pytest.approx((50.0 + 100.0) / 2)
    assert metrics["p/add_s_auc"] == pytest.approx((50.0 + 95.0) / 2)
    assert metrics["p/add_s@0.1d"] == pytest.approx((50.0 + 100.0) / 2)
    items = tables["items"]
    assert {it["unit"] for it in items} == {"obj_000001", "obj_000002"}
    for key in ("p/acc@1cm1deg", "p/add_s_auc", "p/add_s@0.1d"):
        w = np.array([it["weight"] for it in items])
        v = np.array([it[key] for it in items])
        assert (w * v).sum() / w.sum() == pytest.approx(metrics[key])  # headline = weighted item mean


def test_backproject_inverts_projection_and_box_grid():
    K = np.array([[300.0, 0, 128.0], [0, 300.0, 96.0], [0, 0, 1]])
    X = np.array([[10.0, -20.0, 500.0], [0.0, 0.0, 800.0]])
    uv = (X @ K.T)[:, :2] / X[:, 2:]
    np.testing.assert_allclose(backproject(uv, X[:, 2], K), X)
    pts = box_grid((10, 20, 30, 40), (192, 256), 4, 0.0)
    assert pts[:, 0].min() >= 10 and pts[:, 0].max() < 40 and pts[:, 1].min() >= 20 and pts[:, 1].max() < 60


def test_pose_ycbv_offline_through_make_eval(tmp_path_factory, tmp_path):
    """`make eval` path: TASKS=pose_ycbv on the offline BOP suite -> metrics and per-item results."""
    from omegaconf import OmegaConf

    from corr3d.config import load_config
    from corr3d.eval.run import datasets_for, run_eval_part
    from tests.helpers.models import tiny_model

    root = tmp_path_factory.getbasetemp() / "bop_suite"
    cfg = load_config("base", [f"eval.offline.dir={root}", f"data_root={tmp_path}", "eval.tasks=[pose_ycbv]",
                               "eval.pose_ycbv.ransac_iters=200",
                               "eval.pose_ycbv.grid_step=8"])
    messages: list[str] = []
    ds = datasets_for(cfg, "pose_ycbv", messages)
    assert [d.name for d in ds] == ["offline_ycbv"]
    assert any("ycbv_test_bop19" in m and str(tmp_path) in m for m in messages)
    model = tiny_model(16, lora={"blocks": 0, "rank": 4, "alpha": None}, head={"num_layers": 0, "init": "default"})
    part = run_eval_part(cfg, "pose_ycbv", "pretrained", model=model)
    m = part["metrics"]
    assert 150 < m["offline/pose_ycbv/num_queries"] <= 4 * 18 * 3   # 4 scenes x 18 query images x 3 objects
    assert m["offline/pose_ycbv/num_objects"] == 6
    for key in ("acc@1cm1deg", "acc@5cm5deg", "add_s_auc", "add_s@0.1d"):
        assert 0.0 <= m[f"offline/pose_ycbv/{key}"] <= 100.0
    items = part["items"]
    assert len(items) == m["offline/pose_ycbv/num_queries"] and len({it["id"] for it in items}) == len(items)
    OmegaConf.to_container(cfg.eval.pose_ycbv)  # the config section is documented in base.yaml


def test_oracle_is_the_ceiling_on_the_offline_suite(tmp_path_factory):
    """Ground-truth matches through the same PnP: near-perfect on the synthetic BOP set (the protocol works)."""
    from corr3d.eval.offline_suite import ensure_offline_suite
    from corr3d.eval.pose_ycbv import evaluate_bop_dataset

    paths = ensure_offline_suite(tmp_path_factory.getbasetemp() / "bop_suite", ["bop"])
    metrics, tables = evaluate_bop_dataset(None, paths["bop_ycbv_test"], paths["bop_ycbv_models"],
                                           config_section("eval.pose_ycbv", ransac_iters=500), seed=0,
                                           ref_step=4, prefix="o/")
    assert metrics["o/add_s@0.1d"] > 95.0 and metrics["o/acc@5cm5deg"] > 90.0 and metrics["o/add_s_auc"] > 90.0
    assert len(tables["items"]) == metrics["o/num_queries"]
    # BOP19 AR of the ceiling ~ 100 (VSD from the suite's exact depth, the symmetric wine bottle through its symmetries)
    for key in ("ar", "ar_vsd", "ar_mssd", "ar_mspd", "ar_bop"):
        assert metrics[f"o/{key}"] > 97.0, key
    assert all(len(r["vsd"]) == 10 for r in tables["pose_ycbv_instances"])


def test_summarise_bop_ar_per_object_and_pooled():
    """AR items: the per-instance share of BOP settings passed; headline per object then over objects (like the
    other keys), ``ar_bop`` pooled over queries (bop_toolkit's aggregation)."""
    base = {"rot_err_deg": 0.0, "trans_err_cm": 0.0, "add_s_mm": 0.0, "diameter_mm": 100.0, "image_width": 640}
    rows = [{**base, "id": "a", "object": 1, "vsd": [0.0] * 10, "mssd_mm": 0.0, "mspd_px": 0.0},       # AR 1
            {**base, "id": "b", "object": 1, "vsd": [1.0] * 10, "mssd_mm": 1e3, "mspd_px": 1e3},       # AR 0
            {**base, "id": "c", "object": 2, "vsd": [0.22] * 10, "mssd_mm": 12.0, "mspd_px": 12.0}]   # 0.6/0.8/0.8
    metrics, tables = summarise(rows, config_section("eval.pose_ycbv"), "p/")
    c_ar = 100 * (0.6 + 0.8 + 0.8) / 3
    assert metrics["p/ar"] == pytest.approx((50.0 + c_ar) / 2)
    assert metrics["p/ar_vsd"] == pytest.approx((50.0 + 60.0) / 2)
    assert metrics["p/ar_mspd"] == pytest.approx((50.0 + 80.0) / 2)
    assert metrics["p/ar_bop"] == pytest.approx((100.0 + 0.0 + c_ar) / 3)
    items = tables["items"]
    w = np.array([it["weight"] for it in items])
    for key in ("p/ar", "p/ar_vsd", "p/ar_mssd", "p/ar_mspd"):
        assert (w * np.array([it[key] for it in items])).sum() / w.sum() == pytest.approx(metrics[key])
    # without VSD errors (no meshes): MSSD / MSPD only, no AR
    metrics, _ = summarise([{**r, "vsd": None} for r in rows], config_section("eval.pose_ycbv"), "p/")
    assert "p/ar" not in metrics and "p/ar_vsd" not in metrics and "p/ar_mssd" in metrics
