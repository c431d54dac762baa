"""PF-PASCAL and SPair readers validate their inputs (issue 21): fixtures in the exact on-disk formats with one field
broken; each error names the file, the field and the fix. The documented conventions (1-based MATLAB coordinates in
PF-PASCAL, negative/NaN for missing keypoints) stay accepted."""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from corr3d.errors import DatasetFormatError, UnknownNameError
from corr3d.eval.datasets import pfpascal, spair

HEADER = "source_image,target_image,class,XA,YA,XB,YB\n"
W, H = 60, 40  # PF fixture images: 60 wide, 40 high


def _pf(tmp_path: Path, row: str, mat: dict | None = None) -> Path:
    """PF-dataset-PASCAL with JPEGImages/a.jpg, b.jpg (60x40), the pair list and optionally Annotations/cat/b.mat."""
    root = tmp_path / "PF-dataset-PASCAL"
    (root / "JPEGImages").mkdir(parents=True)
    for name in ("a", "b"):
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
    (root / "test_pairs_pf_different_views.csv").write_text(HEADER + row + "\n")
    if mat is not None:
        from scipy.io import savemat

        (root / "Annotations" / "cat").mkdir(parents=True)
        savemat(root / "Annotations" / "cat" / "b.mat", mat)
    return root


def _row(xa="1;10;60", ya="1;20;40", xb="5;6;7", yb="8;9;10", src="a", trg="b", cls=8) -> str:
    return f"PF-dataset-PASCAL/JPEGImages/{src}.jpg,PF-dataset-PASCAL/JPEGImages/{trg}.jpg,{cls},{xa},{ya},{xb},{yb}"


@contextmanager
def _raises(match: str, *names: str):
    """pytest.raises(DatasetFormatError) whose message matches, names every one of ``names`` and comes with a fix."""
    with pytest.raises(DatasetFormatError, match=match) as info:
        yield info
    for name in names:
        assert name in str(info.value), (name, str(info.value))
    assert info.value.fix


# ----------------------------------------------------------------------------------------------------- PF-PASCAL
def test_pfpascal_conventions_are_accepted(tmp_path):
    """1-based pixels up to the last one (x = W, y = H), negative and NaN for missing keypoints."""
    root = _pf(tmp_path, _row(xa="1;60;-1;NaN", ya="1;40;-1;3", xb="5;6;7;8", yb="8;9;10;11"),
               mat={"bbox": np.array([[1, 1, 60, 40]])})
    (pair,) = pfpascal.load_pairs(root)
    assert pair.valid.tolist() == [True, True, False, False]
    np.testing.assert_allclose(pair.src_kps[:2], [[0.5, 0.5], [59.5, 39.5]])
    np.testing.assert_allclose(pair.trg_bbox, [0, 0, 60, 40])        # the whole image, continuous


@pytest.mark.parametrize("row,match,field", [
    (_row(xb="5;200;7"), r"outside the 60x40 image \(e\.g\. #1 at \(200, 9\)\)", "XB/YB (keypoints on b.jpg)"),
    (_row(ya="1;20;41.8"), r"outside the 60x40 image", "XA/YA (keypoints on a.jpg)"),
    (_row(xa="0.2;10;inf"), r"outside the 60x40 image", "line 2"),
])
def test_pfpascal_keypoint_outside_image_names_file_line_and_field(tmp_path, row, match, field):
    root = _pf(tmp_path, row)
    with _raises(match, "test_pairs_pf_different_views.csv", field, "1-based"):
        pfpascal.load_pairs(root)


def test_pfpascal_coordinate_lists_of_different_length_are_an_error(tmp_path):
    """Used to be truncated silently to the shortest list (keypoints dropped)."""
    root = _pf(tmp_path, _row(xb="5;6", yb="8;9"))
    with _raises("line 2: XA, YA, XB, YB hold 3, 3, 2, 2 coordinates", "test_pairs_pf_different_views.csv"):
        pfpascal.load_pairs(root)


def test_pfpascal_missing_image_is_named(tmp_path):
    root = _pf(tmp_path, _row(trg="nope"))
    with _raises("line 2: target image 'PF-dataset-PASCAL/JPEGImages/nope.jpg' not found"):
        pfpascal.load_pairs(root)


@pytest.mark.parametrize("bbox,match", [
    ([[30, 4, 10, 24]], "bbox: empty box"),                                  # x2 < x1
    ([[3, 4, 90, 24]], "bbox: box .* extends outside the 60x40 image"),
])
def test_pfpascal_bad_annotation_box_names_the_mat_file(tmp_path, bbox, match):
    root = _pf(tmp_path, _row(), mat={"bbox": np.array(bbox)})
    with _raises(match, str(root / "Annotations" / "cat" / "b.mat")):
        pfpascal.load_pairs(root)


def test_pfpascal_corrupt_mat_names_the_file(tmp_path):
    root = _pf(tmp_path, _row(), mat={"bbox": np.array([[3, 4, 30, 24]])})
    (root / "Annotations" / "cat" / "b.mat").write_bytes(b"MATLAB 5.0 MAT-file, garbage")
    with _raises("unreadable MATLAB annotation", "b.mat"):
        pfpascal.load_pairs(root)


# ----------------------------------------------------------------------------------------------------- SPair-71k
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
