"""SweetHome3D furniture objects (``sh3d:<library>/<item>``): catalog parsing, extraction, orientation, attribution,
committed splits. The fixture tests write a tiny .sh3f zip in the package's on-disk format, so they run without the
Debian package; the tests of the real catalogs skip when ``/usr/share/sweethome3d/furniture`` is missing."""
from __future__ import annotations

import collections
import io
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from corr3d.assets import sh3d
from corr3d.assets.meshes import MeshLoadError
from corr3d.assets.objects import load_object, object_dir_name, parse_spec
from corr3d.errors import Corr3dUserError, UnknownNameError, UnsafePathError

# ----------------------------------------------------------------------------------------------- fixture library
PROPERTIES = """# PluginFurnitureCatalog.properties
#
# a comment with a trailing backslash is still a comment \\
id=SweetHome3D#TestModels
name=Test catalog
license=Creative Commons Attribution 3.0 Unported license  \xa9 Test
provider=www.example.org

id#1=Test#cube
name#1=Caf\\u00e9 cube
tags#1=Toy, \\
       Decoration
category#1=Bedroom
icon#1=/test/cube.png
model#1=/test/cube/cube.obj
width#1=40
depth#1=10
height#1=20
creator#1=Jos\xe9 \\: Ana
doorOrWindow#1=false

id#2=Test#tall-box
name#2=Tall box
category#2=Kitchen
model#2=/test/tall/tall.obj
width#2=10
depth#2=30
height#2=20
modelRotation#2=1 0 0 0 0 1 0 -1 0
creator#2=Test

name#3=Cube
category#3=Kitchen
model#3=/test/cube2/cube2.obj
width#3=1
depth#3=1
height#3=1
creator#3=Test

id#4=Test#broken
name#4=Broken
category#4=Kitchen
model#4=/test/broken/broken.obj
width#4=1
depth#4=1
height#4=1
creator#4=Test
"""

CC0_PROPERTIES = """id=SweetHome3D#FreeModels
license=Public domain
id#1=Free#ball
name#1=Ball
category#1=Miscellaneous
model#1=/free/ball/ball.obj
width#1=20
depth#1=20
height#1=20
creator#1=Nobody
"""


def box_obj(size, mtllib: str | None, material: str = "mat") -> str:
    """A box centred at 0 with per-face UVs (24 vertices, 12 triangles)."""
    sx, sy, sz = (np.asarray(size, dtype=float) / 2).tolist()
    lines = [f"mtllib {mtllib}"] if mtllib else []
    corners = np.array([[x, y, z] for x in (-sx, sx) for y in (-sy, sy) for z in (-sz, sz)])
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    lines += [f"vt {u} {v}" for u, v in [(0, 0), (1, 0), (1, 1), (0, 1)]]
    lines += ["g box", f"usemtl {material}"]
    for q, quad in enumerate(quads):
        lines += [f"v {x} {y} {z}" for x, y, z in corners[list(quad)]]
        base = 4 * q + 1
        lines += [f"f {base}/1 {base + 1}/2 {base + 2}/3", f"f {base}/1 {base + 2}/3 {base + 3}/4"]
    return "\n".join(lines) + "\n"


def png_bytes() -> bytes:
    buf = io.BytesIO()
    img = np.zeros((8, 8, 3), np.uint8)
    img[:4, :, 0] = 255
    img[4:, :, 2] = 255
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def library(tmp_path, monkeypatch):
    """A folder holding ``Test.sh3f`` (CC-BY) and ``Free.sh3f`` (CC0) as the Debian package lays them out; the
    cache goes to tmp_path/cache."""
    folder = tmp_path / "furniture"
    folder.mkdir()
    with zipfile.ZipFile(folder / "Test.sh3f", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("PluginFurnitureCatalog.properties", PROPERTIES.encode("latin-1"))
        z.writestr("test/cube.png", png_bytes())  # the catalog icon, beside the model folder
        z.writestr("test/cube/cube.obj", box_obj((4, 2, 1), "cube.mtl", "textured"))
        # a map_Kd with the author's absolute path: found by its base name, as trimesh and SweetHome3D do
        z.writestr("test/cube/cube.mtl", "newmtl textured\nKd 1 1 1\n"
                                         "map_Kd C:/Documents and Settings/ana/My Pictures/Cube Tex.png\n")
        z.writestr("test/cube/Cube Tex.png", png_bytes())
        z.writestr("test/cube/LICENSE.txt", "Downloaded from http://www.example.org/cube\n")
        # z-up file (extents x=1, y=3 (depth), z=2 (height)), a stale mtllib name, a texture the zip lacks
        z.writestr("test/tall/tall.obj", box_obj((1, 3, 2), "tall_sh3d.mtl", "plain"))
        z.writestr("test/tall/tall.mtl", "newmtl plain\nKd 0.2 0.6 0.2\nmap_Kd missing.jpg\n")
        z.writestr("test/cube2/cube2.obj", box_obj((1, 1, 1), "cube2.mtl"))
        z.writestr("test/cube2/cube2.mtl", "newmtl mat\nKd 0.5 0.5 0.5\n")
        z.writestr("test/broken/broken.obj", "this is not an OBJ file\n")
        z.writestr("test/broken/broken.mtl", "")
    with zipfile.ZipFile(folder / "Free.sh3f", "w") as z:
        z.writestr("PluginFurnitureCatalog.properties", CC0_PROPERTIES.encode("latin-1"))
        z.writestr("free/ball/ball.obj", box_obj((1, 1, 1), "ball.mtl"))
        z.writestr("free/ball/ball.mtl", "newmtl mat\nKd 0.9 0.1 0.1\n")
    monkeypatch.setenv(sh3d.DIR_ENV, str(folder))
    monkeypatch.setenv("CORR3D_CACHE", str(tmp_path / "cache"))
    return folder


# ----------------------------------------------------------------------------------------------- fixture tests
def test_properties_format():
    props = sh3d.parse_properties("# c\n! c\na=1\nb : 2\nc 3\nd=x\\\n   y\\\\\ne\\:f=\\u00e9\\t\\=\nempty=\n"
                                  "cont=one \\\n  # not a comment\n")
    assert props == {"a": "1", "b": "2", "c": "3", "d": "xy\\", "e:f": "\u00e9\t=", "empty": "",
                     "cont": "one # not a comment"}


def test_catalog_of_the_fixture(library):
    items = {e.spec: e for e in sh3d.catalog()}
    assert sorted(items) == ["sh3d:Free/ball", "sh3d:Test/broken", "sh3d:Test/cube-1", "sh3d:Test/cube-3",
                             "sh3d:Test/tall-box"]
    cube = items["sh3d:Test/cube-1"]  # "cube" twice in one library (id of #1, name of #3): both get their index
    assert cube.name == "Café cube" and cube.creator == "José : Ana" and cube.tags == ("Toy", "Decoration")
    assert (cube.library, cube.index, cube.id, cube.category) == ("Test", 1, "Test#cube", "Bedroom")
    assert cube.size_cm == (40.0, 10.0, 20.0) and cube.model == "test/cube/cube.obj"
    assert cube.licence == "CC-BY 3.0" and cube.licence_url == "https://creativecommons.org/licenses/by/3.0/"
    assert cube.cc_by and cube.textured and cube.textures == ("test/cube/Cube Tex.png",)
    assert cube.source_url == "http://www.example.org/cube" and cube.model_rotation == sh3d.IDENTITY
    tall = items["sh3d:Test/tall-box"]
    assert not tall.textured and tall.mtl == ("test/tall/tall.mtl",)  # stale mtllib: the OBJ's own MTL
    np.testing.assert_array_equal(tall.rotation, [[1, 0, 0], [0, 0, 1], [0, -1, 0]])
    ball = items["sh3d:Free/ball"]
    assert ball.licence == "CC0 1.0" and not ball.cc_by
    assert sh3d.catalog() == sh3d.catalog()  # cached


def _cache_file():
    return sh3d.catalog_cache_path(str(sh3d.furniture_dir()), sh3d._fingerprint(sh3d.library_files()))


def test_catalog_is_cached_on_disk_and_a_bad_cache_is_rebuilt(library, monkeypatch, caplog):
    sh3d._catalog.cache_clear()  # as in a new process
    parsed = sh3d.catalog()
    path = _cache_file()
    assert path.is_file() and path.parent == library.parent / "cache" / "sh3d"
    sh3d._catalog.cache_clear()
    with monkeypatch.context() as m:  # a new process reads the file and opens no zip
        m.setattr(sh3d, "read_library", lambda *_: pytest.fail("the catalog was parsed although it is cached"))
        cached = sh3d.catalog()
    assert cached == parsed and {hash(e) for e in cached}  # tuples restored: equal and hashable entries
    for garbage in ("{not json", '{"version": 1, "entries": [{"bogus": 1}]}', "[]", ""):
        path.write_text(garbage)
        sh3d._catalog.cache_clear()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=sh3d.__name__):
            assert sh3d.catalog() == parsed
        assert "ignoring the unreadable sh3d catalog cache" in caplog.text
        assert json.loads(path.read_text())["version"] == sh3d.CATALOG_CACHE_VERSION  # rewritten whole
    path.write_text(json.dumps({"version": sh3d.CATALOG_CACHE_VERSION + 1, "entries": []}))  # another format
    sh3d._catalog.cache_clear()
    assert sh3d.catalog() == parsed
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp file left


def test_changed_library_gets_a_new_cache_key(library):
    sh3d._catalog.cache_clear()
    before = sh3d.catalog()
    old = _cache_file()
    with zipfile.ZipFile(library / "Free.sh3f", "w") as z:  # a new item: the file's size and mtime change
        z.writestr("PluginFurnitureCatalog.properties", (CC0_PROPERTIES + EXTRA_ITEM).encode("latin-1"))
        z.writestr("free/ball/ball.obj", box_obj((1, 1, 1), "ball.mtl"))
        z.writestr("free/ball/ball.mtl", "newmtl mat\nKd 0.9 0.1 0.1\n")
    sh3d._catalog.cache_clear()
    assert _cache_file() != old
    after = sh3d.catalog()
    assert len(after) == len(before) + 1 and "sh3d:Free/cube" in {e.spec for e in after}


EXTRA_ITEM = """id#2=Free#cube
name#2=Cube
category#2=Miscellaneous
model#2=/free/ball/ball.obj
width#2=1
depth#2=1
height#2=1
creator#2=Nobody
"""


def test_spec_loads_textured_normalised_and_cached(library):
    assert parse_spec("sh3d:Test/cube-1") == ("sh3d", "Test/cube-1", 0)
    assert object_dir_name("sh3d:Test/cube-1") == "sh3d_Test_cube-1"
    mesh = load_object("sh3d:Test/cube-1")
    assert isinstance(mesh.visual, trimesh.visual.TextureVisuals) and mesh.visual.material.image is not None
    assert np.asarray(mesh.visual.material.image).std() > 0  # the red/blue PNG, not a flat colour
    lo, hi = mesh.bounds
    assert (hi - lo).max() == pytest.approx(1.0) and np.allclose((lo + hi) / 2, 0)
    np.testing.assert_allclose(mesh.extents, [1.0, 0.5, 0.25], atol=1e-6)  # x=width, y=height, z=depth
    assert mesh.metadata["spec"] == "sh3d:Test/cube-1" and mesh.metadata["sh3d"]["creator"] == "José : Ana"
    obj = Path(mesh.metadata["source"])
    cache = library.parent / "cache" / "sh3d"
    assert obj.is_relative_to(cache) and obj.parent.name == "cube-1"
    assert sorted(p.name for p in obj.parent.iterdir()) == ["Cube_Tex.png", "cube.mtl", "cube.obj"]
    assert not [p for p in obj.parent.parent.iterdir() if p.name.startswith(".")]  # no temp folder left
    stamp = obj.stat().st_mtime_ns
    load_object("sh3d:Test/cube-1")
    assert obj.stat().st_mtime_ns == stamp  # extracted once


def test_model_rotation_puts_the_catalog_height_on_y(library):
    mesh = load_object("sh3d:Test/tall-box")  # z-up file: modelRotation maps its z to y
    item = sh3d.entry("sh3d:Test/tall-box")
    width, depth, height = item.size_cm
    np.testing.assert_allclose(mesh.extents, np.array([width, height, depth]) / max(item.size_cm), atol=1e-6)
    assert mesh.metadata["source_rotation"] == [[1, 0, 0], [0, 0, 1], [0, -1, 0]]


def test_errors(library, tmp_path, monkeypatch):
    with pytest.raises(MeshLoadError):
        load_object("sh3d:Test/broken")
    with pytest.raises(UnknownNameError, match="cube-1"):
        load_object("sh3d:Test/cube")
    with pytest.raises(UnknownNameError, match="known: Free, Test"):
        load_object("sh3d:Nope/cube")
    for bad in ("sh3d:../x", "sh3d:Test/../../x", "sh3d:Test", "sh3d:/abs/x", "sh3d:Test/a/b"):
        with pytest.raises(UnsafePathError):
            object_dir_name(bad)
    monkeypatch.setenv(sh3d.DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(Corr3dUserError) as info:
        load_object("sh3d:Test/cube-1")
    assert str(tmp_path / "nowhere") in str(info.value) and "apt-get install sweethome3d-furniture" in info.value.fix


def test_attribution(library, tmp_path):
    specs = ["procedural:hemisphere", "sh3d:Free/ball", "sh3d:Test/cube-1\t/some/path", "sh3d:Test/cube-1"]
    lines = sh3d.attribution_lines(specs)
    assert len(lines) == 1 and "Café cube" in lines[0] and "José : Ana" in lines[0] and "Test" in lines[0]
    assert "CC-BY 3.0" in lines[0] and "creativecommons.org/licenses/by/3.0" in lines[0]
    out = sh3d.write_attribution(specs, tmp_path / "run")
    assert out == tmp_path / "run" / "ATTRIBUTION.md" and lines[0] in out.read_text()
    assert sh3d.attribution_lines(["sh3d:Free/ball", "procedural:hemisphere"]) == []
    assert sh3d.write_attribution(["sh3d:Free/ball"], tmp_path / "cc0") is None
    assert not (tmp_path / "cc0").exists()


def test_draw_splits_is_deterministic_and_disjoint_on_the_fixture(library):
    first, second = sh3d.draw_splits(), sh3d.draw_splits()
    assert first == second and set(first) == set(sh3d.SPLIT_NAMES)
    everything = [s for specs in first.values() for s in specs]
    assert len(everything) == len(set(everything))


def test_load_split_reads_first_column(tmp_path):
    (tmp_path / "sh3d_val.txt").write_text("# header\n\nsh3d:A/b\tclass\tName\tCC0 1.0\nsh3d:A/c\n")
    assert sh3d.load_split("val", tmp_path) == ["sh3d:A/b", "sh3d:A/c"]
    with pytest.raises(UnknownNameError):
        sh3d.load_split("nope", tmp_path)


# ----------------------------------------------------------------------------------------------- the real package
needs_package = pytest.mark.skipif(not any(sh3d.DEFAULT_DIR.glob("*.sh3f")) if sh3d.DEFAULT_DIR.is_dir() else True,
                                   reason=f"{sh3d.DEFAULT_DIR} is missing: apt-get install {sh3d.DEBIAN_PACKAGE}")


@pytest.fixture
def real(monkeypatch, tmp_path):
    monkeypatch.delenv(sh3d.DIR_ENV, raising=False)
    monkeypatch.setenv("CORR3D_CACHE", str(tmp_path / "cache"))
    return {e.spec: e for e in sh3d.catalog()}


@needs_package
def test_real_catalogs(real):
    per_library = collections.Counter(e.library for e in real.values())
    assert per_library == {"BlendSwap-CC-0": 175, "BlendSwap-CC-BY": 135, "KatorLegaz": 90, "Reallusion": 25,
                           "Scopia": 395}
    textured = collections.Counter(e.library for e in real.values() if e.textured)
    assert textured == {"BlendSwap-CC-0": 68, "BlendSwap-CC-BY": 51, "KatorLegaz": 6, "Reallusion": 25,
                        "Scopia": 236}
    assert {e.licence for e in real.values() if e.library == "BlendSwap-CC-0"} == {"CC0 1.0"}
    assert all(e.cc_by for e in real.values() if e.library != "BlendSwap-CC-0")
    assert all(e.name and e.creator and min(e.size_cm) > 0 for e in real.values())
    assert len({(e.library, e.slug) for e in real.values()}) == 820


@needs_package
def test_real_catalog_cache_equals_the_parse(monkeypatch, tmp_path):
    monkeypatch.delenv(sh3d.DIR_ENV, raising=False)
    monkeypatch.setenv("CORR3D_CACHE", str(tmp_path / "cache"))
    sh3d._catalog.cache_clear()
    parsed = sh3d.catalog()  # empty cache: parses the zips, writes the cache
    assert _cache_file().is_file()
    sh3d._catalog.cache_clear()
    cached = sh3d.catalog()
    assert cached == parsed and [type(v) for v in vars(cached[0]).values()] == [type(v) for v in
                                                                                  vars(parsed[0]).values()]


@needs_package
def test_committed_splits_are_the_drawn_ones_disjoint_and_large_enough(real):
    drawn = sh3d.draw_splits(real.values())
    committed = {name: sh3d.load_split(name) for name in sh3d.SPLIT_NAMES}
    assert committed == drawn, "rerun data_prep/sh3d_splits.py (and commit the files)"
    everything = [s for specs in committed.values() for s in specs]
    assert len(everything) == len(set(everything)), "splits share objects"
    classes = {name: collections.Counter(sh3d.object_class(real[s]) for s in specs)
               for name, specs in committed.items()}
    assert len(committed["test"]) >= 48 and len(classes["test"]) >= 10
    assert 12 <= len(committed["val"]) <= 20 and len(committed["train"]) >= 64
    assert len(committed["test_unseen_categories"]) >= 16 and len(classes["test_unseen_categories"]) >= 4
    assert not set(classes["test_unseen_categories"]) & (set(classes["train"]) | set(classes["val"])
                                                         | set(classes["test"]))
    assert 12 <= len(committed["untextured"]) <= 20
    for name, specs in committed.items():
        assert all(sh3d.eligible(real[s]) for s in specs)
        assert all(real[s].textured == (name != "untextured") for s in specs)
        assert all(real[s].library != "Reallusion" for s in specs)


# a few models per library, with and without modelRotation (z-up files, 90-degree turns, a person lying down)
ORIENTATION = ["sh3d:BlendSwap-CC-0/iphone", "sh3d:BlendSwap-CC-0/ammobox", "sh3d:BlendSwap-CC-BY/simpledesk",
               "sh3d:KatorLegaz/flashlight", "sh3d:KatorLegaz/newspaper", "sh3d:Reallusion/lyingdownmale01",
               "sh3d:Scopia/chair", "sh3d:Scopia/ext-chair", "sh3d:Scopia/pencil1"]


@needs_package
@pytest.mark.parametrize("spec", ORIENTATION)
def test_real_models_have_the_catalog_height_on_y(real, spec):
    mesh = load_object(spec)
    width, depth, height = real[spec].size_cm
    expected = np.array([width, height, depth]) / max(real[spec].size_cm)
    np.testing.assert_allclose(mesh.extents, expected, atol=0.05)


@needs_package
def test_real_spec_loads_as_a_textured_mesh(real):
    mesh = load_object("sh3d:BlendSwap-CC-BY/simpledesk")
    assert isinstance(mesh.visual, trimesh.visual.TextureVisuals)
    assert mesh.visual.material.image is not None and mesh.visual.uv.shape == (len(mesh.vertices), 2)
    assert mesh.extents.max() == pytest.approx(1.0)
    assert sh3d.attribution_lines(["sh3d:BlendSwap-CC-BY/simpledesk"])[0].startswith('- "Desk"')
