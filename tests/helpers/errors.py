"""Assertions on the user errors that dataset readers raise."""
from __future__ import annotations

from contextlib import contextmanager

import pytest

from corr3d.errors import DatasetFormatError


@contextmanager
def raises_format_error(match: str, *names: str):
    """pytest.raises(DatasetFormatError) whose message matches, names every one of ``names`` and comes with a fix."""
    with pytest.raises(DatasetFormatError, match=match) as info:
        yield info
    for name in names:
        assert name in str(info.value), (name, str(info.value))
    assert info.value.fix
