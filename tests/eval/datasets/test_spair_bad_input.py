"""The SPair reader on bad input (issue 14): malformed annotations name themselves, an empty split gives no pairs."""
import json

import pytest

from corr3d.errors import DataFileError
from corr3d.eval.datasets import spair


@pytest.mark.parametrize("content", ["{not json", json.dumps({"category": "cat"}), json.dumps([1, 2])])
def test_malformed_spair_annotation_names_the_file(tmp_path, content):
    ann = tmp_path / "SPair-71k" / "PairAnnotation" / "test"
    ann.mkdir(parents=True)
    (ann / "0-a-b:cat.json").write_text(content)
    with pytest.raises(DataFileError, match="malformed SPair pair annotation") as info:
        spair.load_pairs(tmp_path / "SPair-71k")
    assert "0-a-b:cat.json" in str(info.value)


def test_empty_spair_split_gives_no_pairs(tmp_path):
    (tmp_path / "PairAnnotation" / "test").mkdir(parents=True)
    assert spair.load_pairs(tmp_path) == []
    assert not spair.data_present(tmp_path)
