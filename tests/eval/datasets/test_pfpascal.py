"""The PF-PASCAL and SPair readers on real-format fixtures (one test loads both: the two semantic-matching sets)."""
from __future__ import annotations

import json

import numpy as np


def test_pfpascal_and_spair_fixtures(tmp_path):
    from PIL import Image
    from scipy.io import savemat

    from corr3d.eval.datasets import pfpascal, spair

    root = tmp_path / "PF-dataset-PASCAL"
    (root / "JPEGImages").mkdir(parents=True)
    for n in ("a", "b"):
        Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(root / "JPEGImages" / f"{n}.jpg")
    (root / "test_pairs_pf_different_views.csv").write_text(
        "source_image,target_image,class,XA,YA,XB,YB\n"
        "PF-dataset-PASCAL/JPEGImages/a.jpg,PF-dataset-PASCAL/JPEGImages/b.jpg,8,1;10;-1,2;20;-1,5;6;7,8;9;10\n")
    (root / "Annotations" / "cat").mkdir(parents=True)
    savemat(root / "Annotations" / "cat" / "b.mat", {"bbox": np.array([[3, 4, 30, 24]])})
    pairs = pfpascal.load_pairs(root, "different")
    assert len(pairs) == 1 and pairs[0].category == "cat"                   # class 8 of the VOC list
    p = pairs[0]
    assert np.allclose(p.src_kps[:2], [[0.5, 1.5], [9.5, 19.5]])             # 1-based -> continuous
    assert p.valid.tolist() == [True, True, False]
    assert np.allclose(p.trg_bbox, [2, 3, 30, 24]) and p.src_path.exists()
    sroot = tmp_path / "SPair-71k"
    (sroot / "PairAnnotation" / "test").mkdir(parents=True)
    ann = {"src_imname": "x.jpg", "trg_imname": "y.jpg", "category": "dog", "src_kps": [[1, 2], [3, 4]],
           "trg_kps": [[5, 6], [7, 8]], "src_bndbox": [0, 0, 10, 10], "trg_bndbox": [1, 2, 21, 12],
           "viewpoint_variation": 2, "kps_ids": ["0", "3"]}
    (sroot / "PairAnnotation" / "test" / "000001-x-y:dog.json").write_text(json.dumps(ann))
    assert spair.data_present(sroot)
    (q,) = spair.load_pairs(sroot)
    assert np.allclose(q.trg_kps, [[5.5, 6.5], [7.5, 8.5]]) and q.meta["viewpoint_variation"] == 2
    assert str(q.src_path).endswith("JPEGImages/dog/x.jpg")
