"""The PF-PASCAL reader on bad input (issue 14): malformed files name themselves, no pairs gives n/a metrics, never
0."""
import math
from pathlib import Path

import pytest

from corr3d.errors import DataFileError
from corr3d.eval.datasets import pfpascal


def _pf_root(tmp_path, body: str) -> Path:
    root = tmp_path / "PF-dataset-PASCAL"
    root.mkdir()
    (root / "test_pairs_pf_different_views.csv").write_text(body)
    return root


def test_header_only_pfpascal_gives_no_pairs_and_nan_pck(tmp_path):
    from corr3d.eval.metrics.semantic import PCKMetric

    root = _pf_root(tmp_path, "source_image,target_image,class,XA,YA,XB,YB\n")
    assert pfpascal.load_pairs(root) == []
    out = PCKMetric((0.1,), []).compute()
    assert math.isnan(float(out["pck@0.10"])) and math.isnan(float(out["pck_img@0.10"]))
    assert float(out["num_pairs"]) == 0


@pytest.mark.parametrize("body,match", [
    ("", "unexpected header None"),
    ("foo,bar\n", "unexpected header"),
    ("source_image,target_image,class,XA,YA,XB,YB\na.jpg,b.jpg,1,1;2\n", "line 2: 4 columns"),
    ("source_image,target_image,class,XA,YA,XB,YB\na.jpg,b.jpg,cat,1,2,3,4\n", "line 2: could not convert"),
    ("source_image,target_image,class,XA,YA,XB,YB\na.jpg,b.jpg,0,1,2,3,4\n", "class id 0 outside"),
    ("source_image,target_image,class,XA,YA,XB,YB\na.jpg,b.jpg,1,1;x,2,3,4\n", "line 2"),
])
def test_malformed_pfpascal_names_file_and_line(tmp_path, body, match):
    root = _pf_root(tmp_path, body)
    with pytest.raises(DataFileError, match=match) as info:
        pfpascal.load_pairs(root)
    assert "test_pairs_pf_different_views.csv" in str(info.value)
