"""``make eval`` with one bad dataset (issue 14): that task is recorded as failed, the others still produce metrics;
a header-only pair list gives n/a (null) metrics, never 0."""
from __future__ import annotations

import json
import os
import pickle

import pytest

from corr3d.config import load_config


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bad_tracking_file_fails_its_task_and_eval_carries_on(tmp_path):
    from corr3d.eval.run import EvaluationFailed, run_eval

    marker = tmp_path / "pwned"
    bad = tmp_path / "tapvid_davis.pkl"
    bad.write_bytes(pickle.dumps({"v": _RunsShell(marker)}))
    pf = tmp_path / "PF-dataset-PASCAL"
    pf.mkdir()
    (pf / "test_pairs_pf_different_views.csv").write_text("source_image,target_image,class,XA,YA,XB,YB\n")
    cfg = load_config("base", ["model.backbone=test_vit.r160_in1k", "model.weights=random",
                               f"eval.out_dir={tmp_path / 'eval'}", f"data_root={tmp_path / 'nodata'}",
                               f"output_dir={tmp_path / 'runs'}", "eval.tasks=[tracking,semantic]",
                               "eval.models=[pretrained]", "eval.real_data=true", "eval.offline.enabled=false",
                               f"eval.tracking.data={bad}", f"eval.semantic.pfpascal_dir={pf}",
                               "eval.semantic.pfpascal_views=[different]", "eval.device=cpu"])
    with pytest.raises(EvaluationFailed, match="tracking/pretrained, semantic/pretrained"):  # exits non-zero after writing the rest
        run_eval(cfg)
    out = tmp_path / "eval"
    assert not marker.exists()  # the crafted pickle never ran
    failed = json.loads((out / "parts" / "tracking__pretrained.json").read_text())
    assert failed["status"] == "failed" and failed["error"]["type"] in ("DataFileError", "DatasetFormatError")
    assert str(bad) in failed["error"]["message"]
    # a dataset with zero pairs measures nothing: an error naming the task, never a number over nothing
    empty = json.loads((out / "parts" / "semantic__pretrained.json").read_text())
    assert empty["status"] == "failed" and empty["error"]["type"] == "EmptySelectionError"
    assert "semantic: no item could be measured" in empty["error"]["message"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert not any(k.startswith(("tracking/", "semantic/")) for k in metrics.get("pretrained", {}))
    assert "tracking FAILED for pretrained" in (out / "report.md").read_text()
