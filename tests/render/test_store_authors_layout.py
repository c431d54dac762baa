"""Opening renders in the authors' exact layout: data/obj_poses.npy three levels above
data/objaverse_renderings/000-xxx/<uid>/{color,depth,mask}_%06d.png, no K.npy (their K is fixed in code)."""
import numpy as np
import pytest

from corr3d.assets.objects import load_object
from corr3d.geometry.icosphere import authors_poses
from corr3d.render import render_views
from corr3d.render.store import RenderedObject, paper_K, write_blenderproc_layout

SIZE = 64


class _Memory(RenderedObject):
    def rgb(self, i):
        return self.meta["views"]["rgb"][i]

    def mask(self, i):
        return self.meta["views"]["mask"][i]

    def depth(self, i):
        return self.meta["views"]["depth"][i]


@pytest.fixture(scope="module")
def authors_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("3DCorrEnhance")
    K = paper_K(SIZE, SIZE)
    poses = authors_poses(2.0, up=(0.0, 0.0, 1.0))  # their obj_poses.npy frame (Blender, z-up)
    views = render_views(load_object("procedural:blob_noise"), K, poses, SIZE, SIZE)
    obj = _Memory(path=root, object_id="blob", K=K, poses=poses, width=SIZE, height=SIZE, meta={"views": views})
    uid = root / "data" / "objaverse_renderings" / "000-023" / "8476c4170df24cf5bbe6967222d1a42d"
    write_blenderproc_layout(obj, uid, convention="opencv")  # their poses: OpenCV object->camera
    (uid / "obj_poses.npy").rename(root / "data" / "obj_poses.npy")
    (uid / "K.npy").unlink()
    return root, uid, obj


def test_opens_with_their_shared_obj_poses_three_levels_up(authors_tree):
    root, uid, obj = authors_tree
    assert not (uid / "obj_poses.npy").exists() and not (uid.parent / "obj_poses.npy").exists()
    bp = RenderedObject.open(uid)
    assert bp.layout == "blenderproc" and bp.num_views == 42 and bp.meta["pose_convention"] == "opencv"
    np.testing.assert_allclose(bp.poses, obj.poses, atol=1e-12)
    np.testing.assert_allclose(bp.K, paper_K(SIZE, SIZE))  # no K.npy: the paper's K scaled to the image
    m = obj.mask(7)
    np.testing.assert_array_equal(bp.mask(7), m)
    np.testing.assert_allclose(bp.depth(7)[m], obj.depth(7)[m], atol=5.1e-4)  # uint16 millimetres


def test_poses_can_be_passed_as_a_path_and_missing_poses_say_where_they_were_looked_for(authors_tree, tmp_path):
    root, uid, obj = authors_tree
    bp = RenderedObject.open(uid, poses=root / "data" / "obj_poses.npy")
    np.testing.assert_allclose(bp.poses, obj.poses, atol=1e-12)
    lone = tmp_path / "a" / "b" / "c" / "d"
    lone.mkdir(parents=True)
    for name in ("color_000000.png", "mask_000000.png", "depth_000000.png"):
        (lone / name).write_bytes((uid / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="three levels up"):
        RenderedObject.open(lone)
