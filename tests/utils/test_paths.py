"""Identifiers -> paths: '..', absolute paths, separators and symlinks never address anything outside the root."""
import os

import pytest

from corr3d.errors import Corr3dUserError, UnsafePathError
from corr3d.utils.paths import ensure_within, is_within, safe_join, safe_name

BAD = ["..", ".", "../x", "../../victim/important", "/etc", "/tmp/x", "a/b", "a\\b", "", "~root", ".hidden",
       "x\x00y", "a" * 201, "sp ace", "semi;colon"]


@pytest.mark.parametrize("name", BAD)
def test_unsafe_names_are_refused(name):
    with pytest.raises(UnsafePathError) as info:
        safe_name(name, "experiment name")
    assert "experiment name" in str(info.value) and info.value.fix
    assert isinstance(info.value, Corr3dUserError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", ["dinov2_single_object", "run-1", "a.b", "8476c4170df24cf5bbe6967222d1a42d", "A9"])
def test_plain_names_pass(name):
    assert safe_name(name) == name


def test_safe_join_stays_inside_and_refuses_symlink_escapes(tmp_path):
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    assert safe_join(root, "a", "b") == root / "a" / "b"
    (root / "link").symlink_to(outside)  # a symlink planted inside the root pointing out of it
    with pytest.raises(UnsafePathError, match="outside"):
        safe_join(root, "link")
    with pytest.raises(UnsafePathError):
        safe_join(root, "link", "child")
    (root / "inner").mkdir()
    (root / "alias").symlink_to(root / "inner")  # symlinks that stay inside are fine
    assert safe_join(root, "alias") == root / "alias"
    with pytest.raises(UnsafePathError):
        safe_join(root, "..")
    with pytest.raises(UnsafePathError):
        safe_join(root, str(outside))


def test_is_within_resolves_dotdot_and_prefix_siblings(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    assert is_within(root, root / "x" / ".." / "y")
    assert not is_within(root, root / ".." / "data2")  # a sibling sharing the prefix is not inside
    assert not is_within(root, os.path.join(root, "..", "..", "etc"))
    with pytest.raises(UnsafePathError):
        ensure_within(root, tmp_path / "data2" / "f")
