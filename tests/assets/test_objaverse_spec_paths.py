"""Objaverse uids become directory names: nothing they say may leave the render root (issue 14)."""
import gzip
import json

import pytest

from corr3d.assets import objaverse
from corr3d.errors import UnsafePathError


def test_uid_lists_accept_shard_prefixes_but_refuse_traversal(tmp_path):
    assert objaverse.parse_uid("000-123/abcdef.glb") == "abcdef"
    assert objaverse.parse_uid("objaverse:abcdef\t/cache/abcdef.glb") == "abcdef"
    with pytest.raises(UnsafePathError):
        objaverse.parse_uid("../../victim/important")
    lst = tmp_path / "uids.txt"
    lst.write_text("# header\nabc\n../../etc/passwd\n")
    with pytest.raises(UnsafePathError) as info:
        objaverse.read_uid_file(lst)
    assert "line 3" in str(info.value) and str(lst) in str(info.value)


def test_objaverse_index_entry_pointing_outside_the_cache_is_refused(tmp_path, monkeypatch):
    pytest.importorskip("objaverse")
    cache = tmp_path / "hf-objaverse-v1"
    cache.mkdir()
    (tmp_path / "victim.glb").write_bytes(b"x")
    with gzip.open(cache / "object-paths.json.gz", "wt") as fh:
        json.dump({"abc": "../victim.glb"}, fh)
    monkeypatch.setattr("objaverse._VERSIONED_PATH", str(cache))
    with pytest.raises(UnsafePathError):
        objaverse.cached_object_path("abc")
