"""corr3d.utils.reading: the shared pieces the dataset readers use (issue 21)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from corr3d.errors import Corr3dUserError, DataFileError, DatasetFormatError, UnknownNameError
from corr3d.utils.reading import ItemIterator, ItemList, apply_filter, check_pose, reading


def test_reading_names_the_file_and_the_missing_field(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"a": [1, 2]}))
    with pytest.raises(DatasetFormatError, match=r"ann.json: malformed pair file \(missing field 'b'\)") as info:
        with reading(path, "pair file", fix="copy it again"):
            json.loads(path.read_text())["b"]
    assert info.value.fix == "copy it again" and isinstance(info.value, (DataFileError, Corr3dUserError))
    for err in (IndexError("list index out of range"), ValueError("operands could not be broadcast together"),
                TypeError("'int' object is not subscriptable")):
        with pytest.raises(DatasetFormatError, match=f"{type(err).__name__}: {err}") as info:
            with reading(path, "pair file"):
                raise err
        assert str(path) in str(info.value)
    with pytest.raises(UnknownNameError):                         # already explained: passes through unchanged
        with reading(path):
            raise UnknownNameError("x")
    with pytest.raises(OSError):                                  # not a parsing error: not converted
        with reading(path):
            raise OSError("disk")


def test_apply_filter():
    available = ["a", "b", "c"]
    assert apply_filter(available, None, what="object", source="/d") == (available, [])
    assert apply_filter(available, ["c", "a", "z"], what="object", source="/d") == (
        ["a", "c"], [("z", "no object 'z' in /d")])
    with pytest.raises(UnknownNameError, match=r"object filter \[y, z\] matches nothing in /d; available: a, b, c") \
            as info:
        apply_filter(available, ["y", "z"], what="object", source="/d")
    assert info.value.fix


def test_item_list_and_iterator_carry_skipped():
    items = ItemList([1, 2], [("x", "why")])
    assert items == [1, 2] and items.skipped == [("x", "why")] and isinstance(items, list)

    def make(skipped):
        yield 1
        skipped.append(("late", "found while reading"))
        yield 2

    it = ItemIterator(make, [("early", "filter")])
    assert list(it) == [1, 2] and it.skipped == [("early", "filter"), ("late", "found while reading")]


def test_check_pose_forms():
    pose = np.eye(4)
    pose[:3, 3] = [1, 2, 3]
    np.testing.assert_allclose(check_pose("poses.txt", "pose", pose[:3]), pose)
    np.testing.assert_allclose(check_pose("poses.txt", "pose", pose.reshape(-1)), pose)
    with pytest.raises(DatasetFormatError, match="poses.txt: pose: 9 values"):
        check_pose("poses.txt", "pose", np.eye(3))
