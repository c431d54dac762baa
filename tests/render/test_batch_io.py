"""Writing a rendered object: PNGs are PIL's bytes and are checked on read-back, depth.npz holds the same arrays as
``np.savez_compressed`` would."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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
