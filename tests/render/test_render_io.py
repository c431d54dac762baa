"""Writing a rendered object: PNGs are PIL's bytes and are checked on read-back, depth.npz holds the same arrays as
``np.savez_compressed`` would; the render bench finds (or skips) the sh3d objects."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from corr3d.assets import sh3d
from corr3d.perf import render as bench
from corr3d.render import batch


def _images():
    rng = np.random.default_rng(0)
    rgb = np.zeros((40, 56, 3), np.uint8)
    rgb[8:30, 10:40] = rng.integers(0, 256, (22, 30, 3))
    mask = (rgb.sum(-1) > 0).astype(np.uint8) * 255
    return rgb, mask


@pytest.mark.parametrize("level", [0, 1, 9])
def test_png_bytes_are_pils_and_decode_to_the_array(tmp_path, level):
    for i, array in enumerate(_images()):
        ours, theirs = tmp_path / f"ours{i}.png", tmp_path / f"theirs{i}.png"
        batch._write_png(ours, array, level)
        Image.fromarray(array).save(theirs, compress_level=level)
        assert ours.read_bytes() == theirs.read_bytes()
        with Image.open(ours) as img:
            np.testing.assert_array_equal(np.asarray(img), array)


def test_png_that_reads_back_differently_is_an_error(tmp_path, monkeypatch):
    rgb, _ = _images()
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: real(self)[:-7])  # a short write (full disk...)
    with pytest.raises(OSError, match="differ"):
        batch._write_png(tmp_path / "rgb.png", rgb, 1)
    monkeypatch.setattr(Path, "read_bytes", lambda self: (_ for _ in ()).throw(PermissionError("gone")))
    with pytest.raises(OSError, match="cannot be read back"):
        batch._write_png(tmp_path / "rgb.png", rgb, 1)


def test_depth_npz_holds_the_arrays_savez_compressed_would(tmp_path):
    rng = np.random.default_rng(1)
    depths = {f"view_{i:03d}": np.where(rng.random((24, 32)) < 0.3, rng.random((24, 32)), 0).astype(np.float32)
              for i in range(5)}
    depths["view_001"][3, 4] = -0.0
    batch._save_depths(tmp_path / "ours.npz", depths)
    np.savez_compressed(tmp_path / "theirs.npz", **depths)
    with np.load(tmp_path / "ours.npz") as ours, np.load(tmp_path / "theirs.npz") as theirs:
        assert ours.files == theirs.files == list(depths)
        for name in depths:
            assert ours[name].dtype == theirs[name].dtype and ours[name].shape == theirs[name].shape
            assert ours[name].tobytes() == theirs[name].tobytes() == depths[name].tobytes()


def test_bench_skips_sh3d_without_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv(sh3d.DIR_ENV, str(tmp_path))  # a folder without .sh3f libraries
    assert bench.sh3d_specs(3) == []


@pytest.mark.skipif(not any(sh3d.DEFAULT_DIR.glob("*.sh3f")) if sh3d.DEFAULT_DIR.is_dir() else True,
                    reason=f"{sh3d.DEFAULT_DIR} is missing")
def test_bench_takes_the_first_training_objects(monkeypatch):
    monkeypatch.delenv(sh3d.DIR_ENV, raising=False)
    assert bench.sh3d_specs(2) == sh3d.load_split("train")[:2]


@pytest.mark.slow
def test_bench_import_probe_reports_one_time_costs():
    out = bench.import_seconds(with_sh3d=False)
    assert out["renderer_imports_dash"] is False
    assert out["import_open3d_renderer_s"] > 0 and out["import_open3d_plain_s"] > 0
    assert out["import_corr3d_render_s"] > 0
