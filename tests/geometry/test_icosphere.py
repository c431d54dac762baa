"""The two 42-view rigs (``data.render.views``): corr3d's icosphere and the authors' obj_poses.npy."""
import numpy as np
import pytest

from corr3d.data.pairs import allowed_view_pairs
from corr3d.geometry.cameras import camera_center
from corr3d.geometry.icosphere import (IcosphereCameras, authors_poses, blender_icosphere_directions,
                                       icosphere_poses, rig_poses, rotation_z_to)

# (elevation, azimuth) in degrees of the authors' 42 cameras in their z-up frame, read off 3DCorrEnhance
# data/obj_poses.npy (commit 06a94d9): camera centre -R^T t, elevation asin(z/|c|), azimuth atan2(y, x).
AUTHORS_ELEV_AZIM = [
    (-90.0, 0.0), (-58.28, -108.0), (-58.28, 108.0), (-58.28, 36.0), (-58.28, -36.0), (-58.28, 180.0),
    (-31.72, 72.0), (-31.72, -72.0), (-31.72, -144.0), (-31.72, 144.0), (-31.72, 0.0), (-26.57, -108.0),
    (-26.57, 108.0), (-26.57, 36.0), (-26.57, -36.0), (-26.57, 180.0), (0.0, -126.0), (0.0, -162.0), (0.0, 162.0),
    (0.0, 126.0), (0.0, 90.0), (0.0, 54.0), (0.0, 18.0), (0.0, -18.0), (0.0, -54.0), (0.0, -90.0), (26.57, 0.0),
    (26.57, -144.0), (26.57, 144.0), (26.57, 72.0), (26.57, -72.0), (31.72, 180.0), (31.72, 36.0), (31.72, -36.0),
    (31.72, -108.0), (31.72, 108.0), (58.28, 0.0), (58.28, -144.0), (58.28, 144.0), (58.28, 72.0), (58.28, -72.0),
    (90.0, 0.0)]


def _elev_azim(poses, up_index=2, x_index=0, y_index=1, y_sign=1.0):
    c = camera_center(poses)
    c = c / np.linalg.norm(c, axis=1, keepdims=True)
    elev = np.degrees(np.arcsin(np.clip(c[:, up_index], -1, 1)))
    azim = np.degrees(np.arctan2(y_sign * c[:, y_index], c[:, x_index]))
    return elev, azim


def _angle_diff(a, b):
    return np.abs((np.asarray(a) - np.asarray(b) + 180.0) % 360.0 - 180.0)


def test_authors_rig_matches_their_elevations_and_azimuths_in_their_frame():
    poses = authors_poses(distance=2.0, up=(0.0, 0.0, 1.0))
    elev, azim = _elev_azim(poses)
    want = np.array(AUTHORS_ELEV_AZIM)
    assert np.abs(elev - want[:, 0]).max() < 0.006
    pole = np.abs(want[:, 0]) == 90.0
    assert _angle_diff(azim[~pole], want[~pole, 1]).max() < 0.006
    np.testing.assert_allclose(np.linalg.norm(camera_center(poses), axis=1), 2.0, atol=1e-12)
    # object->camera, OpenCV: the origin sits at (0, 0, distance) in every camera
    np.testing.assert_allclose(poses[:, :3, 3], np.tile([0.0, 0.0, 2.0], (42, 1)), atol=1e-12)


def test_authors_rig_has_no_roll_and_their_pole_orientation():
    poses = authors_poses(up=(0.0, 0.0, 1.0))
    right, down = poses[:, 0, :3], poses[:, 1, :3]
    np.testing.assert_allclose(right[:, 2], 0.0, atol=1e-12)        # image x axis horizontal: no roll
    side = np.abs(poses[:, 2, 2]) < 1 - 1e-9
    assert (down[side, 2] < 0).all()                                # image down points to -z (up is up)
    np.testing.assert_allclose(down[[0, 41]], [[0, -1, 0], [0, -1, 0]], atol=1e-12)   # poles: image down = -y
    np.testing.assert_allclose(right[[0, 41]], [[-1, 0, 0], [1, 0, 0]], atol=1e-12)


def test_authors_rig_has_5_fold_poles_and_376_pairs_within_70_deg():
    dirs = blender_icosphere_directions()
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0, atol=1e-12)
    poses = authors_poses()
    cos = (dirs @ dirs.T)[0]                                        # vertex 0 is the -z pole
    assert np.sum(np.degrees(np.arccos(np.clip(cos, -1, 1))) < 35.0) - 1 == 5
    assert len(allowed_view_pairs(poses, 70.0)) == 376
    assert len(allowed_view_pairs(icosphere_poses(1, 2.0), 70.0)) == 428
    assert len(allowed_view_pairs(poses, 120.0)) == 988


def test_authors_rig_in_y_up_frame_is_the_gltf_import_of_their_z_up_frame():
    # Blender imports glTF (x, y, z) as (x, -z, y): a Blender-frame camera centre (x, y, z) is (x, z, -y) in glTF
    z_up = camera_center(authors_poses(up=(0.0, 0.0, 1.0)))
    y_up = camera_center(authors_poses(up=(0.0, 1.0, 0.0)))
    np.testing.assert_allclose(y_up, np.stack([z_up[:, 0], z_up[:, 2], -z_up[:, 1]], axis=1), atol=1e-12)
    elev, _ = _elev_azim(authors_poses(), up_index=1)
    np.testing.assert_allclose(elev, np.array(AUTHORS_ELEV_AZIM)[:, 0], atol=0.006)
    # the images are the same: the relative rotations between views do not depend on the frame
    a, b = authors_poses(up=(0.0, 0.0, 1.0)), authors_poses()
    np.testing.assert_allclose(a[:, :3, :3] @ a[5, :3, :3].T, b[:, :3, :3] @ b[5, :3, :3].T, atol=1e-12)


def test_rotation_z_to():
    for up in ([0, 1, 0], [0, 0, 1], [0, 0, -1], [1, 2, 3], [0, -1, 0]):
        R = rotation_z_to(up)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
        np.testing.assert_allclose(R @ [0, 0, 1], np.asarray(up) / np.linalg.norm(up), atol=1e-12)
    with pytest.raises(ValueError, match="non-zero 3-vector"):
        rotation_z_to([0, 0, 0])


def test_cameras_views_option_keeps_corr3d_default_and_rejects_bad_values():
    np.testing.assert_array_equal(IcosphereCameras().poses, icosphere_poses(1, 2.0))
    np.testing.assert_array_equal(IcosphereCameras(views="authors").poses, authors_poses(2.0))
    assert IcosphereCameras(views="authors", distance=3.0).num_views == 42
    with pytest.raises(ValueError, match="views must be one of"):
        rig_poses("blender")
    with pytest.raises(ValueError, match="icosphere_subdivisions=1"):
        IcosphereCameras(views="authors", subdivisions=2)
