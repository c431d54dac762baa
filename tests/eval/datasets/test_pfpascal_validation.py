"""The PF-PASCAL reader validates its inputs (issue 21): fixtures in the exact on-disk format with one field broken;
each error names the file, the field and the fix. The documented conventions (1-based MATLAB coordinates,
negative/NaN for missing keypoints) stay accepted."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from corr3d.eval.datasets import pfpascal
from tests.helpers.errors import raises_format_error as _raises

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
