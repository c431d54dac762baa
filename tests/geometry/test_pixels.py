import numpy as np
import torch

from corr3d.geometry import project
from corr3d.geometry.pixels import (
    containing_pixel,
    foreground_centres,
    pixel_centres,
    pixel_grid,
    pixel_grid_tensor,
    visible_pixels,
)


def test_centres_by_hand():
    np.testing.assert_array_equal(pixel_centres(np.array([0, 2]), np.array([3, 1])), [[3.5, 0.5], [1.5, 2.5]])
    assert pixel_centres(np.array([1]), np.array([1])).dtype == np.float32
    assert pixel_centres(np.array([1]), np.array([1]), dtype=np.float64).dtype == np.float64
    t = pixel_centres(torch.tensor([0, 2]), torch.tensor([3, 1]))
    assert t.dtype == torch.float32 and t.tolist() == [[3.5, 0.5], [1.5, 2.5]]


def test_foreground_centres_stride():
    mask = np.zeros((4, 6), dtype=bool)
    mask[1, 2] = mask[2, 2] = mask[2, 4] = True
    np.testing.assert_array_equal(foreground_centres(mask), [[2.5, 1.5], [2.5, 2.5], [4.5, 2.5]])
    np.testing.assert_array_equal(foreground_centres(mask, stride=2), [[2.5, 2.5], [4.5, 2.5]])


def test_grids_agree_and_step():
    grid = pixel_grid(4, 3)
    assert grid.shape == (3, 4, 2) and grid[0, 0].tolist() == [0.5, 0.5] and grid[2, 3].tolist() == [3.5, 2.5]
    np.testing.assert_array_equal(pixel_grid(5, 4, step=2).reshape(-1, 2), [[x, y] for y in (0.5, 2.5)
                                                                            for x in (0.5, 2.5, 4.5)])
    for step in (1, 3):
        np.testing.assert_array_equal(pixel_grid_tensor((7, 5), step=step).numpy(),
                                      pixel_grid(5, 7, step).reshape(-1, 2))


def test_containing_pixel_inverts_centres():
    rows, cols = np.array([0, 5, 9]), np.array([7, 0, 3])
    r, c = containing_pixel(pixel_centres(rows, cols))
    np.testing.assert_array_equal(r, rows) and np.testing.assert_array_equal(c, cols)
    r, c = containing_pixel(np.array([[0.999, 2.0], [-0.01, 0.0]]))
    assert r.tolist() == [2, 0] and c.tolist() == [0, -1]


def _visible_loop(uv, z, points, mask, xyz_map, focal, tol):
    """Straightforward per-point version of the visibility rule."""
    out = []
    h, w = mask.shape
    for k in range(len(points)):
        col, row = int(np.floor(uv[k, 0])), int(np.floor(uv[k, 1]))
        if z[k] <= 0 or not (0 <= col < w and 0 <= row < h) or not mask[row, col]:
            continue
        if np.linalg.norm(xyz_map[row, col] - points[k]) < tol + 2.0 * z[k] / focal:
            out.append((k, row, col))
    return out


def test_visibility_matches_a_loop_with_occlusion():
    rng = np.random.default_rng(0)
    h, w, focal = 24, 32, 40.0
    K = np.array([[focal, 0, w / 2], [0, focal, h / 2], [0, 0, 1.0]])
    pose = np.eye(4)
    pose[2, 3] = 2.0  # camera looks down +z at the origin from 2 units away
    # the view sees a plane z = 0 on its left half; its right half shows a nearer plane z = -0.5 (an occluder)
    points = np.concatenate([rng.uniform(-0.8, 0.8, (300, 2)), np.zeros((300, 1))], 1)
    points = np.concatenate([points, [[0.0, 0.0, -3.0]]])  # behind the camera
    grid = pixel_grid(w, h)
    depth = np.where(grid[..., 0] < w / 2, 2.0, 1.5)
    xyz_map = np.concatenate([(grid - [w / 2, h / 2]) / focal * depth[..., None], (depth - 2.0)[..., None]], -1)
    mask = np.ones((h, w), dtype=bool)
    mask[:3] = False
    uv, z = project(points, K, pose)
    idx, rows, cols = visible_pixels(uv, z, points, mask, xyz_map, focal, tol=0.02)
    expected = _visible_loop(uv, z, points, mask, xyz_map, focal, 0.02)
    assert [(int(a), int(b), int(c)) for a, b, c in zip(idx, rows, cols)] == expected
    assert 50 < len(expected) < 300  # the occluded half and the masked rows are out, the rest in
    assert np.all(uv[idx, 0] < w / 2 + 1)
