"""Object specs become directory names: nothing they say may leave the render root (issue 14)."""
import pytest

from corr3d.assets.objects import object_dir_name, parse_spec
from corr3d.errors import Corr3dUserError, UnsafePathError

ESCAPES = ["objaverse:../../victim/important", "objaverse:/abs/path", "objaverse:..", "objaverse:a/b",
           "objaverse:", "objaverse:*", "procedural:../../../x", "procedural:/etc", "procedural:..",
           "procedural:a/b:3", "procedural:"]


@pytest.mark.parametrize("spec", ESCAPES)
def test_escaping_specs_are_refused(spec):
    with pytest.raises(UnsafePathError):
        object_dir_name(spec)


def test_valid_specs_keep_their_directory_names():
    assert object_dir_name("procedural:sphere_checker:3") == "procedural_sphere_checker_s3"
    uid = "8476c4170df24cf5bbe6967222d1a42d"
    assert object_dir_name(f"objaverse:{uid}") == f"objaverse_{uid}"
    name = object_dir_name("/some/where/../mesh file.glb")  # a file spec: sanitised stem + hash, no separators
    assert "/" not in name and ".." not in name and name.startswith("file_mesh_file_")


def test_bad_seed_is_a_clear_error():
    with pytest.raises(Corr3dUserError, match="seed 'x' is not an integer"):
        parse_spec("procedural:sphere_checker:x")
