"""The SPair reader validates its inputs (issue 21): fixtures in the exact on-disk format with one field broken;
each error names the file, the field and the fix. Negative/NaN for missing keypoints stay accepted."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from corr3d.errors import UnknownNameError
from corr3d.eval.datasets import spair
from tests.helpers.errors import raises_format_error as _raises


def _spair(tmp_path: Path, images: bool = True, layout: list[str] | None = None, **fields) -> Path:
    """SPair-71k with one pair annotation (real keys, 0-based pixels) of two 64x48 dog images."""
    root = tmp_path / "SPair-71k"
    ann_dir = root / "PairAnnotation" / "test"
    ann_dir.mkdir(parents=True)
    if images:
        (root / "JPEGImages" / "dog").mkdir(parents=True)
        for name in ("s0", "s1"):
            Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(root / "JPEGImages" / "dog" / f"{name}.jpg")
    ann = {"pair_id": 1, "filename": "000001-s0-s1:dog", "category": "dog", "src_imname": "s0.jpg",
           "trg_imname": "s1.jpg", "src_imsize": [64, 48, 3], "trg_imsize": [64, 48, 3],
           "src_bndbox": [2, 3, 50, 40], "trg_bndbox": [0, 0, 63, 47], "src_kps": [[1, 2], [63, 47]],
           "trg_kps": [[5, 6], [7, 8]], "kps_ids": ["0", "3"], "viewpoint_variation": 1, "scale_variation": 0,
           "truncation": 0, "occlusion": 0, "mirror": 0}
    ann.update(fields)
    ann = {k: v for k, v in ann.items() if v is not None}
    (ann_dir / "000001-s0-s1:dog.json").write_text(json.dumps(ann))
    if layout is not None:
        (root / "Layout" / "large").mkdir(parents=True)
        (root / "Layout" / "large" / "test.txt").write_text("\n".join(layout) + "\n")
    return root


def test_spair_fixture_in_the_real_format_loads(tmp_path):
    (pair,) = spair.load_pairs(_spair(tmp_path))
    np.testing.assert_allclose(pair.src_kps, [[1.5, 2.5], [63.5, 47.5]])
    assert pair.valid.all() and pair.meta["viewpoint_variation"] == 1


@pytest.mark.parametrize("fields,match", [
    ({"trg_kps": [[5, 6], [70, 8]]},
     r"trg_kps: 1 of 2 points outside the 64x48 image \(e\.g\. #1 at \(70, 8\)\).*0-based"),
    ({"src_kps": [[1, 2], [3, 60]]}, r"src_kps: 1 of 2 points outside the 64x48 image"),
    ({"trg_kps": [[5, 6]]}, r"src_kps/trg_kps: 2 source and 1 target keypoints"),
    ({"kps_ids": ["0"]}, r"kps_ids: 1 ids for 2 keypoints"),
    ({"trg_bndbox": [40, 3, 20, 30]}, r"trg_bndbox: empty box"),
    ({"src_bndbox": [2, 3, 50, 90]}, r"src_bndbox: box .* extends outside the 64x48 image"),
    ({"src_bndbox": [2, 3, 50]}, r"src_bndbox: shape \(3,\), expected 4"),
    ({"trg_imsize": [0, 48, 3]}, r"trg_imsize: \[0.0, 48.0, 3.0\] is not \[width, height, channels\]"),
    ({"trg_kps": [[5, 6], ["x", 8]]}, r"trg_kps: not a numeric array"),
])
def test_spair_broken_field_names_file_and_field(tmp_path, fields, match):
    root = _spair(tmp_path, **fields)
    with _raises(match, "000001-s0-s1:dog.json"):
        spair.load_pairs(root)


def test_spair_without_imsize_checks_against_the_image_header(tmp_path):
    root = _spair(tmp_path, src_imsize=None, trg_imsize=None, trg_kps=[[5, 6], [7, 50]])
    with _raises(r"trg_kps: 1 of 2 points outside the 64x48 image"):
        spair.load_pairs(root)


def test_spair_pair_listed_in_layout_without_annotation_names_the_layout(tmp_path):
    root = _spair(tmp_path, layout=["000001-s0-s1:dog", "000002-s1-s0:dog"])
    with _raises("pair '000002-s1-s0:dog' is listed in", "Layout/large/test.txt"):
        spair.load_pairs(root)


def test_spair_category_filter(tmp_path):
    root = _spair(tmp_path)
    pairs = spair.load_pairs(root, categories=["dog", "cat"])
    assert [p.category for p in pairs] == ["dog"]
    assert pairs.skipped == [("cat", f"no SPair category 'cat' in {root / 'PairAnnotation' / 'test'}")]
    with pytest.raises(UnknownNameError, match=r"SPair category filter \[cat, horse\] matches nothing.*available: dog"):
        spair.load_pairs(root, categories=["cat", "horse"])
    assert spair.load_pairs(root).skipped == []
