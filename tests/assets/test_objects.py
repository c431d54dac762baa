"""Procedural object library, mesh files (GLB/OBJ/PLY), normalisation, objaverse cache specs."""
import gzip
import json

import numpy as np
import pytest
import trimesh
from PIL import Image

from corr3d.assets.meshes import MeshLoadError
from corr3d.assets.objects import (
    PROCEDURAL_OBJECTS,
    load_object,
    object_dir_name,
    parse_spec,
    procedural_object,
    procedural_split,
)


def _extent_ok(mesh):
    lo, hi = mesh.bounds
    assert (hi - lo).max() == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose((lo + hi) / 2, 0.0, atol=1e-9)


def test_library_size_and_disjoint_split():
    assert len(PROCEDURAL_OBJECTS) >= 20 and len(set(PROCEDURAL_OBJECTS)) == len(PROCEDURAL_OBJECTS)
    train, held_out = procedural_split()
    assert not set(train) & set(held_out)
    assert set(train) | set(held_out) == set(PROCEDURAL_OBJECTS)
    assert "hemisphere" in train and len(held_out) >= 8 and len(train) >= 10


@pytest.mark.parametrize("name", PROCEDURAL_OBJECTS)
def test_every_procedural_object_loads_normalised_and_textured(name):
    mesh = load_object(f"procedural:{name}")
    assert len(mesh.faces) > 0 and np.isfinite(mesh.vertices).all()
    _extent_ok(mesh)
    assert mesh.metadata["spec"] == f"procedural:{name}"
    if name == "vertex_color_blob":
        assert mesh.visual.kind == "vertex"
    else:
        assert isinstance(mesh.visual, trimesh.visual.TextureVisuals)
        uv = mesh.visual.uv
        assert uv.shape == (len(mesh.vertices), 2) and uv.min() >= 0 and uv.max() <= 1
        assert mesh.visual.material.image is not None


def test_procedural_determinism_by_seed():
    a, b = procedural_object("blob_noise", 3), procedural_object("blob_noise", 3)
    np.testing.assert_array_equal(a.vertices, b.vertices)
    np.testing.assert_array_equal(np.asarray(a.visual.material.image), np.asarray(b.visual.material.image))
    c = procedural_object("blob_noise", 4)
    assert not np.array_equal(np.asarray(a.visual.material.image), np.asarray(c.visual.material.image))
    assert not np.allclose(a.vertices, c.vertices)
    spec_mesh = load_object("procedural:blob_noise:3")
    assert spec_mesh.metadata["spec"] == "procedural:blob_noise:3"


def test_spec_parsing_and_dir_names():
    assert parse_spec("procedural:torus_checker:7") == ("procedural", "torus_checker", 7)
    assert parse_spec("procedural:hemisphere") == ("procedural", "hemisphere", 0)
    assert parse_spec("objaverse:abc") == ("objaverse", "abc", 0)
    assert parse_spec("/x/y.glb")[0] == "file"
    names = {object_dir_name(s) for s in ["procedural:a", "procedural:a:1", "objaverse:a", "/x/a.glb", "/y/a.glb"]}
    assert len(names) == 5
    with pytest.raises(KeyError):
        load_object("procedural:no_such_shape")


def _textured_box(offset=(3.0, 1.0, -2.0), scale=5.0):
    mesh = trimesh.creation.box(extents=(1.0, 0.5, 0.25))
    mesh.vertices = mesh.vertices * scale + offset
    tex = np.zeros((16, 16, 3), np.uint8)
    tex[..., 0] = 255
    mesh.visual = trimesh.visual.TextureVisuals(uv=np.random.default_rng(0).random((len(mesh.vertices), 2)),
                                                image=Image.fromarray(tex))
    return mesh


@pytest.mark.parametrize("suffix", ["glb", "obj", "ply"])
def test_mesh_files_load_normalised_with_record(tmp_path, suffix):
    mesh = _textured_box()
    if suffix == "ply":  # PLY carries vertex colours
        mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=np.tile([10, 200, 30, 255], (8, 1)))
    path = tmp_path / f"box.{suffix}"
    mesh.export(path)
    loaded = load_object(str(path))
    _extent_ok(loaded)
    norm = loaded.metadata["normalization"]
    assert norm["scale"] == pytest.approx(1 / 5.0)
    np.testing.assert_allclose(norm["center"], [3.0, 1.0, -2.0], atol=1e-6)
    if suffix == "ply":
        assert loaded.visual.kind == "vertex"
        np.testing.assert_array_equal(loaded.visual.vertex_colors[0, :3], [10, 200, 30])
    else:
        assert isinstance(loaded.visual, trimesh.visual.TextureVisuals) and loaded.visual.uv is not None


def test_multi_geometry_glb_is_merged(tmp_path):
    scene = trimesh.Scene([_textured_box((0, 0, 0), 1.0), _textured_box((2, 0, 0), 1.0)])
    scene.export(tmp_path / "two.glb")
    mesh = load_object(str(tmp_path / "two.glb"))
    assert len(mesh.faces) == 24
    _extent_ok(mesh)


@pytest.mark.parametrize("content", [b"", b"glTF\x02\x00\x00\x00garbage" * 3, b"not a mesh at all"])
def test_corrupt_or_empty_files_raise_mesh_load_error(tmp_path, content):
    path = tmp_path / "bad.glb"
    path.write_bytes(content)
    with pytest.raises(MeshLoadError):
        load_object(str(path))
    with pytest.raises(MeshLoadError):
        load_object(str(tmp_path / "missing.glb"))


def test_objaverse_spec_reads_the_local_cache(tmp_path, monkeypatch):
    import objaverse

    base = tmp_path / "hf-objaverse-v1"
    (base / "glbs" / "000-001").mkdir(parents=True)
    _textured_box().export(base / "glbs" / "000-001" / "uid123.glb")
    with gzip.open(base / "object-paths.json.gz", "wt") as f:
        json.dump({"uid123": "glbs/000-001/uid123.glb"}, f)
    monkeypatch.setattr(objaverse, "_VERSIONED_PATH", str(base))
    mesh = load_object("objaverse:uid123")
    _extent_ok(mesh)
    with pytest.raises(MeshLoadError):
        load_object("objaverse:not_cached")
