"""TAP-Vid in both query modes and at tapnet's 256x256 (issue 22 item 7): one dataset element per variant, each with
its own key prefix and protocol label."""
from __future__ import annotations

import pytest

from corr3d.config import load_config
from corr3d.eval.tasks.tracking import TASK, parse_variant


def _datasets(tmp_path, *extra):
    tapvid = tmp_path / "tapvid_davis.pkl"
    tapvid.write_bytes(b"")
    cfg = load_config("base", [f"data_root={tmp_path}", f"eval.tracking.data={tapvid}", "eval.offline.enabled=false",
                               *extra])
    return cfg, TASK.datasets(cfg, [])


def test_the_headline_protocol_and_each_variant_are_datasets(tmp_path):
    cfg, ds = _datasets(tmp_path, "eval.tracking.variants=[strided,first,first@256]")
    assert [(d.name, d.prefix, d.paths["mode"], d.paths["resize"]) for d in ds] == [
        ("tapvid_davis", "tracking/", "strided", False),            # strided at full size = the headline itself
        ("tapvid_davis@first", "tracking/first/", "first", False),
        ("tapvid_davis@first_256", "tracking/first_256/", "first", True)]
    labels = [TASK.protocol(cfg, d) for d in ds]
    assert labels[0] == ("paper", "TAP-Vid strided queries (stride 5), frames 854x476")
    assert labels[1][0] == "official" and labels[2] == ("official", "TAP-Vid first queries (stride 5), frames 256x256")


def test_no_variants_measures_the_headline_only(tmp_path):
    _, ds = _datasets(tmp_path, "eval.tracking.variants=[]")
    assert [d.prefix for d in ds] == ["tracking/"]


def test_variant_syntax():
    assert parse_variant("first@256") == ("first", True) and parse_variant("strided") == ("strided", False)
    with pytest.raises(ValueError, match="eval.tracking.variants"):
        parse_variant("first@512")
