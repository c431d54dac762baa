"""BOP reader validation (issue 21): the hand-written scene of test_bop.py (exact BOP file names and fields) with one
field broken per case; errors name the file and the field. Scene filters report what they skip."""
from __future__ import annotations

import json

import numpy as np
import pytest

from corr3d.errors import DatasetFormatError, UnknownNameError
from corr3d.eval.datasets import bop
from tests.eval.datasets.test_bop import _write_scene


def _edit(path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _gt0(data):
    return data["1"][0]


@pytest.mark.parametrize("file,change,match", [
    ("scene_camera.json", lambda d: d.update({"2": d.pop("1")}),
     r"scene_camera.json: image ids: 1 image\(s\) of scene_gt.json have no camera \(e.g. 1\)"),
    ("scene_camera.json", lambda d: d["1"].update(cam_K=[0, 0, 319.5, 0, 500, 239.5, 0, 0, 1]),
     r"scene_camera.json: image 1: cam_K: focal lengths fx=0, fy=500 must be positive"),
    ("scene_camera.json", lambda d: d["1"].update(cam_K=[500, 0, 319.5, 0, 500, 239.5]),
     r"image 1: cam_K: 6 values"),
    ("scene_camera.json", lambda d: d["1"].update(depth_scale=-0.1), r"image 1: depth_scale: -0.1 must be positive"),
    ("scene_gt.json", lambda d: _gt0(d).update(cam_R_m2c=[2, 0, 0, 0, 1, 0, 0, 0, 1]),
     r"scene_gt.json: image 1, instance 0: cam_R_m2c: not a rotation"),
    ("scene_gt.json", lambda d: _gt0(d).update(cam_t_m2c=[1.0, None, 800.0]),
     r"image 1, instance 0: cam_t_m2c: 1 non-finite value"),
    ("scene_gt.json", lambda d: _gt0(d).pop("cam_t_m2c"),
     r"malformed BOP scene_gt.json \(image 1, instance 0\) \(missing field 'cam_t_m2c'\)"),
    ("scene_gt.json", lambda d: _gt0(d).update(obj_id=-3), r"image 1, instance 0: obj_id: -3 is not a positive"),
    ("scene_gt_info.json", lambda d: d["1"].append(dict(d["1"][0])),
     r"scene_gt_info.json: image 1: 2 entries for the 1 instances of scene_gt.json"),
    ("scene_gt.json", lambda d: d.update({"x": []}), r"malformed BOP scene_gt.json \(ValueError: invalid literal"),
])
def test_broken_scene_field_names_file_and_field(tmp_path, file, change, match):
    scene = _write_scene(tmp_path)
    _edit(scene / file, change)
    with pytest.raises(DatasetFormatError, match=match) as info:
        bop.list_scenes(tmp_path / "test")
    assert str(scene / file) in str(info.value) and info.value.fix


def test_object_missing_from_models_info_names_the_file_and_ids(tmp_path):
    scene = _write_scene(tmp_path)
    _edit(scene / "scene_gt.json", lambda d: _gt0(d).update(obj_id=21))
    (s,) = bop.list_scenes(tmp_path / "test")
    info = bop.load_models_info(tmp_path / "models")
    obj_ids = sorted({i.obj_id for im in s.image_ids for i in s.instances(im)})
    with pytest.raises(DatasetFormatError, match=r"object 21: not in models_info.json \(it has objects 14\)") as err:
        [info[o] for o in obj_ids]                     # what eval/pose_ycbv.py's load_object_models does
    assert str(tmp_path / "models" / "models_info.json") in str(err.value) and "ycbv_models" in err.value.fix


def test_bad_models_info_and_model_file(tmp_path):
    _write_scene(tmp_path)
    models = tmp_path / "models"
    _edit(models / "models_info.json", lambda d: d["14"].update(diameter=0))
    with pytest.raises(DatasetFormatError, match=r"models_info.json: object 14: diameter: 0 must be a positive"):
        bop.load_models_info(models)
    _edit(models / "models_info.json", lambda d: d["14"].update(diameter=37.4))
    (models / "obj_000014.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 99\n")
    with pytest.raises(DatasetFormatError, match="unreadable model") as info:
        bop.load_object_model(models, 14)
    assert "obj_000014.ply" in str(info.value)


def test_scene_filter_reports_what_it_skips(tmp_path):
    _write_scene(tmp_path)
    (tmp_path / "test" / "000050" / "rgb").mkdir(parents=True)      # a scene folder without scene_gt.json
    scenes = bop.list_scenes(tmp_path / "test", [48, 49, 50])
    assert [s.scene_id for s in scenes] == [48]
    assert scenes.skipped == [("49", f"no BOP scene '49' in {tmp_path / 'test'}"),
                              ("50", f"scene folder {tmp_path / 'test'}/000050 has no scene_gt.json")]
    with pytest.raises(UnknownNameError, match=r"BOP scene filter \[7\] matches nothing .*available: 48"):
        bop.list_scenes(tmp_path / "test", [7])
    everything = bop.list_scenes(tmp_path / "test")
    assert [s.scene_id for s in everything] == [48] and everything.skipped == [("50", "no scene_gt.json in "
                                                                                f"{tmp_path / 'test' / '000050'}")]


def test_targets_that_match_no_annotation_are_reported(tmp_path):
    _write_scene(tmp_path)
    targets_file = tmp_path / "test_targets_bop19.json"
    targets_file.write_text(json.dumps([{"im_id": 1, "inst_count": 1, "obj_id": 14, "scene_id": 48},
                                        {"im_id": 1, "inst_count": 1, "obj_id": 5, "scene_id": 48},
                                        {"im_id": 7, "inst_count": 1, "obj_id": 14, "scene_id": 48},
                                        {"im_id": 1, "inst_count": 1, "obj_id": 14, "scene_id": 55}]))
    scenes = bop.list_scenes(tmp_path / "test")
    missing = bop.unmatched_targets(bop.read_targets(targets_file), scenes)
    assert [t for t, _ in missing] == ["000048/000001/obj_000005", "000048/000007/obj_000014"]
    assert "object 5 is not annotated in image 1" in missing[0][1] and "image 7 is not in" in missing[1][1]
    targets_file.write_text(json.dumps([{"im_id": 1, "obj_id": 14}]))
    with pytest.raises(DatasetFormatError, match="malformed BOP test targets \\(missing field 'scene_id'\\)"):
        bop.read_targets(targets_file)


def test_valid_scene_still_reads(tmp_path):
    _write_scene(tmp_path)
    (scene,) = bop.list_scenes(tmp_path / "test")
    assert scene.K(1)[0, 2] == 320.0 and np.isclose(scene.instances(1)[0].visib_fract, 0.75)
