"""corr3d.geometry: icosphere cameras, look-at poses, projection round trips, rotations."""
import numpy as np
import pytest
import torch

from corr3d.geometry import (
    camera_center,
    depth_to_xyz,
    icosphere_directions,
    icosphere_poses,
    intrinsics,
    invert_pose,
    look_at_pose,
    pixel_grid,
    project,
    relative_rotation_deg,
    relative_rotation_matrix_deg,
    scale_intrinsics,
    unproject,
    xyz_to_depth,
)


def test_icosphere_level1_has_42_uniform_directions():
    d = icosphere_directions(1)
    assert d.shape == (42, 3)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-12)
    ang = np.degrees(np.arccos(np.clip(d @ d.T, -1, 1)))
    np.fill_diagonal(ang, 360)
    np.testing.assert_allclose(ang.min(1), 31.7175, atol=1e-3)  # paper.md: 31.72 deg for every view
    assert len(icosphere_directions(0)) == 12 and len(icosphere_directions(2)) == 162
    assert len(np.unique(d.round(9), axis=0)) == 42


def test_icosphere_poses_look_at_origin_from_distance_2():
    poses = icosphere_poses(1, 2.0)
    R = poses[:, :3, :3]
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    np.testing.assert_allclose(poses[:, :3, 3], np.tile([0, 0, 2.0], (42, 1)), atol=1e-12)  # origin at z = +2
    np.testing.assert_allclose(camera_center(poses), 2 * icosphere_directions(1), atol=1e-12)


def test_look_at_opencv_orientation_and_up():
    pose = look_at_pose([0, 0, 2.0], up=(0, 1, 0))  # camera on +z looking toward -z, y up
    K = intrinsics(560, 512, 512)
    uv, z = project(np.array([[0, 0, 0], [0.1, 0, 0], [0, 0.1, 0]]), K, pose)
    np.testing.assert_allclose(uv[0], [256, 256])  # origin at the image centre (corner convention)
    assert uv[1, 0] > 256 and abs(uv[1, 1] - 256) < 1e-9  # +x object appears to the right
    assert uv[2, 1] < 256  # +y (up) appears higher in the image (smaller row)
    np.testing.assert_allclose(z, 2.0)
    top = look_at_pose([0, 2.0, 0], up=(0, 1, 0))  # degenerate: looking along -up, still a valid rotation
    np.testing.assert_allclose(top[:3, :3] @ top[:3, :3].T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(top[:3, 3], [0, 0, 2.0], atol=1e-12)


def test_intrinsics_and_pixel_centres():
    K = intrinsics(560.0, 512, 512)
    np.testing.assert_array_equal(K, [[560, 0, 256], [0, 560, 256], [0, 0, 1]])
    grid = pixel_grid(4, 3)
    assert grid.shape == (3, 4, 2)
    np.testing.assert_array_equal(grid[0, 0], [0.5, 0.5])
    np.testing.assert_array_equal(grid[2, 3], [3.5, 2.5])
    K2 = scale_intrinsics(K, 0.25)  # 512 -> 128: centre stays at the image centre
    np.testing.assert_allclose(K2, [[140, 0, 64], [0, 140, 64], [0, 0, 1]])


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_project_unproject_round_trip(backend):
    rng = np.random.default_rng(0)
    K = np.array([[500.0, 1.5, 250.0], [0, 520.0, 240.0], [0, 0, 1]])  # with skew, non-square
    pose = look_at_pose(rng.normal(size=3) * 3 + 0.1)
    points = rng.uniform(-0.5, 0.5, (100, 3))
    if backend == "torch":
        points_t = torch.tensor(points)
        uv, z = project(points_t, torch.tensor(K), torch.tensor(pose))
        back = unproject(uv, z, torch.tensor(K), torch.tensor(pose))
        assert isinstance(back, torch.Tensor)
        back = back.numpy()
        uv_np, z_np = project(points, K, pose)
        np.testing.assert_allclose(uv.numpy(), uv_np, atol=1e-9)
    else:
        uv, z = project(points, K, pose)
        back = unproject(uv, z, K, pose)
    np.testing.assert_allclose(back, points, atol=1e-10)


def test_depth_map_round_trip_and_depth_is_optical_axis_distance():
    K = intrinsics(100.0, 64, 48)
    pose = look_at_pose([1.0, 0.5, 1.5])
    depth = np.full((48, 64), 1.7, np.float32)
    depth[:10] = 0
    xyz = depth_to_xyz(depth, K, pose)
    assert (xyz[:10] == 0).all()
    np.testing.assert_allclose(xyz_to_depth(xyz, pose, depth > 0), depth, atol=1e-6)
    cam = xyz[10:].reshape(-1, 3) @ pose[:3, :3].T + pose[:3, 3]
    np.testing.assert_allclose(cam[:, 2], 1.7, atol=1e-6)  # z, not the ray length
    uv, _ = project(xyz[10:].reshape(-1, 3), K, pose)
    np.testing.assert_allclose(uv, pixel_grid(64, 48)[10:].reshape(-1, 2), atol=1e-4)


def test_rotations_and_inverse():
    a = look_at_pose([0, 0, 2.0])
    b = look_at_pose([2.0, 0, 0])
    assert relative_rotation_deg(a, a) == pytest.approx(0.0, abs=1e-6)
    assert relative_rotation_deg(a, b) == pytest.approx(90.0, abs=1e-9)
    assert relative_rotation_deg(a, b) == pytest.approx(relative_rotation_deg(b, a))
    poses = icosphere_poses(1)
    M = relative_rotation_matrix_deg(poses)
    assert M[3, 17] == pytest.approx(relative_rotation_deg(poses[3], poses[17]), abs=1e-6)
    np.testing.assert_allclose(invert_pose(poses) @ poses, np.broadcast_to(np.eye(4), poses.shape), atol=1e-12)
    inv_t = invert_pose(torch.tensor(poses[:2]))
    np.testing.assert_allclose(inv_t.numpy(), invert_pose(poses[:2]), atol=1e-12)

