"""BOP reader on a hand-written scene (exact file names / JSON fields of the real format) and on the offline suite."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from corr3d.eval.datasets import bop


def _write_scene(root, K=(500.0, 0, 319.5, 0, 500.0, 239.5, 0, 0, 1)):
    scene = root / "test" / "000048"
    for sub in ("rgb", "depth", "mask_visib"):
        (scene / sub).mkdir(parents=True)
    Image.fromarray(np.full((4, 6, 3), 7, np.uint8)).save(scene / "rgb" / "000001.png")
    Image.fromarray(np.array([[0, 10, 20, 30, 40, 50]] * 4, dtype=np.uint16)).save(scene / "depth" / "000001.png")
    mask = np.zeros((4, 6), np.uint8)
    mask[1:3, 2:5] = 255
    Image.fromarray(mask).save(scene / "mask_visib" / "000001_000000.png")
    R = np.eye(3)
    (scene / "scene_gt.json").write_text(json.dumps(
        {"1": [{"cam_R_m2c": R.reshape(-1).tolist(), "cam_t_m2c": [1.0, 2.0, 800.0], "obj_id": 14}]}))
    (scene / "scene_camera.json").write_text(json.dumps({"1": {"cam_K": list(K), "depth_scale": 0.1}}))
    (scene / "scene_gt_info.json").write_text(json.dumps(
        {"1": [{"bbox_obj": [2, 1, 3, 2], "bbox_visib": [2, 1, 3, 2], "px_count_all": 6, "px_count_valid": 6,
                "px_count_visib": 6, "visib_fract": 0.75}]}))
    models = root / "models"
    models.mkdir()
    import trimesh

    trimesh.creation.box(extents=(10, 20, 30)).export(models / "obj_000014.ply")
    (models / "models_info.json").write_text(json.dumps(
        {"14": {"diameter": 37.4, "min_x": -5, "symmetries_discrete": [np.eye(4).reshape(-1).tolist()]}}))
    (root / "test_targets_bop19.json").write_text(json.dumps(
        [{"im_id": 1, "inst_count": 1, "obj_id": 14, "scene_id": 48}]))
    return scene


def test_reads_the_bop_layout(tmp_path):
    _write_scene(tmp_path)
    assert bop.data_present(tmp_path / "test", tmp_path / "models")
    (scene,) = bop.list_scenes(tmp_path / "test")
    assert scene.scene_id == 48 and scene.image_ids == [1]
    assert scene.image(1).shape == (4, 6, 3)
    np.testing.assert_allclose(scene.depth(1)[0], [0, 1, 2, 3, 4, 5])       # value * depth_scale = mm
    K = scene.K(1)
    assert K[0, 2] == 320.0 and K[1, 2] == 240.0                          # +0.5: continuous pixel convention
    (inst,) = scene.instances(1)
    assert inst.obj_id == 14 and inst.gt_idx == 0 and inst.bbox_visib == (2, 1, 3, 2) and inst.visib_fract == 0.75
    np.testing.assert_allclose(inst.pose[:3, 3], [1, 2, 800])
    assert scene.mask_visib(1, 0).sum() == 6
    model = bop.load_object_model(tmp_path / "models", 14)
    assert model.symmetric and model.diameter == 37.4 and np.abs(model.points).max() == 15
    assert bop.read_targets(tmp_path / "test_targets_bop19.json") == {(48, 1, 14)}
    assert bop.read_targets(tmp_path / "absent.json") is None


def test_missing_data_message_names_paths_and_source(tmp_path):
    assert not bop.data_present(tmp_path / "test", tmp_path / "models") if (tmp_path / "test").exists() else True
    msg = bop.DOWNLOAD_HINT.format(test_dir=tmp_path / "t", models_dir=tmp_path / "m")
    assert str(tmp_path / "t") in msg and "ycbv_test_bop19" in msg and "ycbv_models" in msg and "bop.felk.cvut.cz" in msg
    with pytest.raises(FileNotFoundError):
        bop.list_scenes(tmp_path)


def test_offline_suite_is_consistent_bop(tmp_path_factory):
    """The generated set: depth lifts visible-mask pixels onto the model surface under the GT pose."""
    from corr3d.eval.offline_suite import ensure_offline_suite
    from corr3d.eval.pose_ycbv import backproject, mask_grid

    root = tmp_path_factory.getbasetemp() / "bop_suite"
    paths = ensure_offline_suite(root, ["bop"])
    scenes = bop.list_scenes(paths["bop_ycbv_test"])
    assert [s.scene_id for s in scenes] == [48, 49, 50, 51]
    info = bop.load_models_info(paths["bop_ycbv_models"])
    assert sorted(info) == [1, 2, 3, 4, 5, 6] and "symmetries_continuous" in info[3]
    scene = scenes[0]
    depth, K = scene.depth(3), scene.K(3)
    import trimesh
    from scipy.spatial import cKDTree

    for inst in scene.instances(3):
        mesh = trimesh.load(paths["bop_ycbv_models"] / f"obj_{inst.obj_id:06d}.ply", process=False, force="mesh")
        surface, _ = trimesh.sample.sample_surface(mesh, 200000, seed=0)
        pts = mask_grid(scene.mask_visib(3, inst.gt_idx), depth, 3)
        assert len(pts) > 20
        cam = backproject(pts, depth[pts[:, 1].astype(int), pts[:, 0].astype(int)], K)
        obj = (cam - inst.pose[:3, 3]) @ inst.pose[:3, :3]
        dist, _ = cKDTree(surface).query(obj)
        # lifted pixels lie on the model surface (measured: median ~0.2 mm; depth is quantised to 0.1 mm and the
        # surface sample spacing is ~0.3 mm)
        assert np.median(dist) < 1.0 and np.percentile(dist, 90) < 2.0
