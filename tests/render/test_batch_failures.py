"""Render failures are never silent (issue 21): a zero-area mesh is a failed render (not a done one with no
foreground), failures are persisted in ``<root>/failed.json``, ``ensure_rendered`` reports them in ``.skipped`` and
``corr3d render`` exits non-zero listing them after trying every object."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from corr3d.errors import DatasetFormatError, RenderFailedError
from corr3d.render.batch import (
    FAILED,
    MIN_FOREGROUND_PIXELS,
    ensure_rendered,
    read_failed,
    read_manifest,
    render_batch,
    render_object,
)
from corr3d.render.store import RenderedObject

SMALL = {"width": 32, "height": 32, "focal": 35.0, "icosphere_subdivisions": 0, "workers": 1}
GOOD = "procedural:cone_voronoi"


def _zero_area_ply(path: Path) -> Path:
    """An ASCII PLY whose triangles are all degenerate (collinear vertices): non-zero extent, zero area."""
    vertices = [(0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (2.0, 0.0, 0.0), (0.5, 0.0, 0.0)]
    faces = [(0, 1, 2), (1, 2, 3), (0, 2, 3)]
    lines = ["ply", "format ascii 1.0", f"element vertex {len(vertices)}", "property float x", "property float y",
             "property float z", f"element face {len(faces)}", "property list uchar int vertex_indices", "end_header"]
    lines += [" ".join(map(str, v)) for v in vertices] + [f"3 {a} {b} {c}" for a, b, c in faces]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_zero_area_mesh_is_a_failed_render_and_listed_in_failed_json(tmp_path):
    flat = str(_zero_area_ply(tmp_path / "flat.ply"))
    root = tmp_path / "rendered"
    entries = render_batch([flat, GOOD], root, SMALL, workers=1, progress=False)
    assert entries[GOOD]["status"] == "done"
    assert entries[flat]["status"] == "failed"
    assert entries[flat]["error"].startswith("EmptyRenderError: no view shows the object: at most 0 foreground pixels")
    assert not (root / entries[flat]["dir"]).exists() and not list(root.glob(".tmp-*"))   # nothing published
    meta = json.loads((root / "procedural_cone_voronoi" / "meta.json").read_text())
    assert min(meta["foreground_pixels"]) >= MIN_FOREGROUND_PIXELS and len(meta["foreground_pixels"]) == 12
    on_disk = json.loads((root / FAILED).read_text())
    assert on_disk["version"] == 1 and [o["spec"] for o in on_disk["objects"]] == [flat]
    assert on_disk["objects"][0]["dir"] == entries[flat]["dir"] and "EmptyRenderError" in on_disk["objects"][0]["error"]
    assert read_failed(root) == on_disk["objects"]


def test_failed_json_follows_the_manifest_when_the_object_is_fixed(tmp_path):
    import trimesh

    path = _zero_area_ply(tmp_path / "obj.ply")
    root = tmp_path / "rendered"
    render_batch([str(path)], root, SMALL, workers=1, progress=False)
    assert [o["spec"] for o in read_failed(root)] == [str(path)]
    trimesh.creation.box(extents=(1.0, 0.5, 0.3)).export(path)          # the mesh is repaired
    entries = render_batch([str(path)], root, SMALL, workers=1, progress=False)
    assert entries[str(path)]["status"] == "done" and read_failed(root) == []
    assert read_manifest(root)[str(path)]["status"] == "done"


def test_ensure_rendered_reports_what_it_leaves_out(tmp_path):
    flat = str(_zero_area_ply(tmp_path / "flat.ply"))
    dirs = ensure_rendered([GOOD, flat], tmp_path / "rendered", SMALL)
    assert [d.name for d in dirs] == ["procedural_cone_voronoi"]
    ((spec, reason),) = dirs.skipped
    assert spec == flat and reason.startswith("EmptyRenderError: no view shows the object")
    with pytest.raises(RenderFailedError, match="none of the 1 objects could be rendered .*flat.ply: EmptyRender"):
        ensure_rendered([flat], tmp_path / "rendered", SMALL)
    assert issubclass(RenderFailedError, RuntimeError)   # what callers caught before


def test_corr3d_render_exits_non_zero_listing_the_failed_objects(tmp_path, capsys):
    from corr3d.cli import main

    flat = str(_zero_area_ply(tmp_path / "flat.ply"))
    root = tmp_path / "rendered"
    code = main(["render", "base", f"data.rendered_dir={root}", "data.train_objects=[procedural:hemisphere]",
                 f"data.val_objects=[{flat}]", "equivariance.objects=[]", "data.render.width=32",
                 "data.render.height=32", "data.render.focal=35.0", "data.render.icosphere_subdivisions=0",
                 "data.render.workers=1"])
    err = capsys.readouterr()
    assert code == 2
    assert "rendered 1/2 objects" in err.out
    assert "corr3d: error:" in err.err and f"1 of 2 objects failed to render: {flat}: EmptyRenderError" in err.err
    assert str(root / FAILED) in err.err and "fix:" in err.err
    assert [o["spec"] for o in read_failed(root)] == [flat]
    assert (root / "procedural_hemisphere" / "meta.json").is_file()            # the others were still rendered


def test_stored_render_without_foreground_or_with_bad_meta_is_refused(tmp_path):
    out = render_object(GOOD, tmp_path / "cone", SMALL)
    assert RenderedObject.open(out).num_views == 12
    meta_path = out / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["foreground_pixels"] = [0] * 12                     # e.g. written by a renderer before this check
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DatasetFormatError, match="foreground_pixels: the object covers at most 0 pixels") as info:
        RenderedObject.open(out)
    assert str(meta_path) in str(info.value) and "corr3d render" in info.value.fix
    del meta["foreground_pixels"], meta["num_views"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DatasetFormatError, match="malformed render meta.json \\(missing field 'num_views'\\)"):
        RenderedObject.open(out)
    meta["num_views"] = 12
    meta["poses"] = np.asarray(meta["poses"])[:5].tolist()
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DatasetFormatError, match=r"poses: shape \(5, 4, 4\), expected 12x4x4"):
        RenderedObject.open(out)
