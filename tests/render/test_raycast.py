"""The ray-cast renderer's per-pixel outputs are exact and mutually consistent (small renders: fast)."""
import numpy as np
import pytest
import trimesh
from PIL import Image

from corr3d.assets.objects import load_object
from corr3d.geometry import IcosphereCameras, camera_center, pixel_grid, project, relative_rotation_matrix_deg
from corr3d.render import Lighting, RaycastRenderer, render_views

SIZE, FOCAL = 96, 105.0  # the paper's 512 px / f = 560 field of view, scaled down


@pytest.fixture(scope="module")
def knot():
    cams = IcosphereCameras(width=SIZE, height=SIZE, focal=FOCAL)
    mesh = load_object("procedural:knot_immuno")
    renderer = RaycastRenderer(mesh)
    views = [renderer.render(cams.K, p, SIZE, SIZE) for p in cams.poses]
    out = {k: np.stack([v[k] for v in views]) for k in views[0]}
    return cams, renderer, out


def _bilinear(image, uv):
    """Sample (H,W,C) at continuous pixel coords (pixel centres at +0.5); returns values and the 4 corner rows/cols."""
    x, y = uv[:, 0] - 0.5, uv[:, 1] - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    h, w = image.shape[:2]
    inside = (x0 >= 0) & (y0 >= 0) & (x0 + 1 < w) & (y0 + 1 < h)
    x0, y0 = np.clip(x0, 0, w - 2), np.clip(y0, 0, h - 2)
    corners = [image[y0, x0], image[y0, x0 + 1], image[y0 + 1, x0], image[y0 + 1, x0 + 1]]
    value = (corners[0] * (1 - fx) + corners[1] * fx) * (1 - fy) + (corners[2] * (1 - fx) + corners[3] * fx) * fy
    return value, corners, inside


def test_cross_view_xyz_consistency(knot):
    """View i's xyz projected into view j lands where view j sees the same surface point."""
    cams, renderer, out = knot
    rng = np.random.default_rng(0)
    angles = relative_rotation_matrix_deg(cams.poses)
    pairs = [(i, j) for i in range(42) for j in range(42) if i != j and angles[i, j] <= 90]
    errors, exact_errors = [], []
    for k in rng.choice(len(pairs), 12, replace=False):
        i, j = pairs[k]
        points = out["xyz"][i][out["mask"][i]].astype(np.float64)
        uv, z = project(points, cams.K, cams.poses[j])
        # exact: re-cast view j's rays through the (continuous) projected locations
        hit_xyz, hit = renderer.surface_points(cams.K, cams.poses[j], uv)
        visible = hit & (np.linalg.norm(hit_xyz - points, axis=1) < 0.01)  # not occluded in view j
        assert visible.mean() > 0.2
        exact_errors.append(np.linalg.norm(hit_xyz[visible] - points[visible], axis=1))
        # stored maps: bilinear interpolation of view j's xyz map where the 4 neighbours see the same surface
        value, corners, inside = _bilinear(out["xyz"][j].astype(np.float64), uv)
        depth_j = out["depth"][j][..., None]
        _, dcorners, _ = _bilinear(depth_j, uv)
        smooth = inside & np.all([np.abs(d[:, 0] - z) < 0.01 for d in dcorners], axis=0)
        smooth &= np.all([d[:, 0] > 0 for d in dcorners], axis=0)
        errors.append(np.linalg.norm(value[smooth] - points[smooth], axis=1))
    exact_errors, errors = np.concatenate(exact_errors), np.concatenate(errors)
    assert len(errors) > 1000
    # errors are bimodal: the same point (float32 round-off) or an occluding nearby surface (self-occlusion at
    # grazing angles); a misalignment of K/poses/xyz would fill the gap between the two modes
    same = exact_errors < 1e-5
    assert same.mean() > 0.95 and exact_errors[same].mean() < 1e-6
    assert ((exact_errors > 1e-5) & (exact_errors < 1e-3)).mean() < 0.005
    assert errors.mean() < 1e-3, errors.mean()


def test_xyz_projects_back_to_its_pixel_centre_and_depth_is_z(knot):
    cams, _, out = knot
    for v in (0, 7, 29):
        mask = out["mask"][v]
        xyz = out["xyz"][v][mask].astype(np.float64)
        uv, z = project(xyz, cams.K, cams.poses[v])
        np.testing.assert_allclose(uv, pixel_grid(SIZE, SIZE)[mask], atol=2e-4)
        np.testing.assert_allclose(out["depth"][v][mask], z, atol=1e-6)  # depth = distance along the optical axis
        ray_len = np.linalg.norm(xyz - camera_center(cams.poses[v]), axis=1)
        scale = np.linalg.norm(np.concatenate([(uv - SIZE / 2) / FOCAL, np.ones((len(uv), 1))], 1), axis=1)
        np.testing.assert_allclose(ray_len, z * scale, atol=1e-5)  # and not the ray length


def test_mask_matches_hits_and_background(knot):
    _, _, out = knot
    mask = out["mask"]
    assert mask.any(axis=(1, 2)).all()
    np.testing.assert_array_equal(mask, out["depth"] > 0)
    np.testing.assert_array_equal(mask, np.abs(out["xyz"]).sum(-1) > 0)
    assert (out["rgb"][~mask] == 0).all()  # black background
    assert out["rgb"][mask].max() > 0


def test_sphere_silhouette_is_analytic():
    """A pixel is foreground iff its ray passes within the sphere (polygon tolerance at the rim)."""
    mesh = load_object("procedural:sphere_checker")  # radius 0.5 after normalisation, 96 segments
    cams = IcosphereCameras(subdivisions=0, width=SIZE, height=SIZE, focal=FOCAL)
    out = render_views(mesh, cams.K, cams.poses[:3], SIZE, SIZE)
    for v in range(3):
        grid = pixel_grid(SIZE, SIZE).reshape(-1, 2)
        dirs = np.concatenate([(grid - SIZE / 2) / FOCAL, np.ones((len(grid), 1))], 1) @ cams.poses[v][:3, :3]
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        c = camera_center(cams.poses[v])
        miss = np.linalg.norm(np.cross(dirs, -c), axis=1).reshape(SIZE, SIZE)  # ray distance to the centre
        mask = out["mask"][v]
        assert mask[miss < 0.5 * 0.997].all()
        assert not mask[miss > 0.5].any()


def test_colour_aligns_with_geometry_vertex_colours():
    """Unlit vertex colours = position: the rendered colour at each pixel equals its xyz (linear on triangles)."""
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=np.c_[
        np.round((mesh.vertices + 0.5) * 255).astype(np.uint8), np.full(len(mesh.vertices), 255, np.uint8)])
    cams = IcosphereCameras(subdivisions=0, width=64, height=64, focal=70.0)
    out = render_views(mesh, cams.K, cams.poses[:4], 64, 64, lighting=Lighting(mode="unlit"))
    for v in range(4):
        m = out["mask"][v]
        expected = (out["xyz"][v][m] + 0.5) * 255
        assert np.abs(out["rgb"][v][m].astype(float) - expected).max() < 1.5  # vertex-colour rounding + 8-bit


def test_colour_aligns_with_geometry_texture_uv():
    """A square whose UV = position, textured with a (R = u, G = v) gradient: colour encodes the hit point.

    Also pins the UV convention: v = 0 is the bottom row of the texture image (trimesh/glTF)."""
    n = 256
    u = (np.arange(n) + 0.5) / n
    tex = np.zeros((n, n, 3), np.uint8)
    tex[..., 0] = np.round(u[None, :] * 255)
    tex[..., 1] = np.round(u[::-1, None] * 255)  # top image row = v close to 1
    verts = np.array([[-0.5, -0.5, 0], [0.5, -0.5, 0], [0.5, 0.5, 0], [-0.5, 0.5, 0]], float)
    mesh = trimesh.Trimesh(verts, [[0, 1, 2], [0, 2, 3]], process=False)
    mesh.visual = trimesh.visual.TextureVisuals(uv=verts[:, :2] + 0.5, image=Image.fromarray(tex))
    cams = IcosphereCameras(subdivisions=0, width=64, height=64, focal=60.0)
    from corr3d.geometry import look_at_pose

    pose = look_at_pose([0.3, -0.2, 2.0])
    out = render_views(mesh, cams.K, pose[None], 64, 64, lighting=Lighting(mode="unlit"))
    m = out["mask"][0]
    xyz = out["xyz"][0][m]
    inner = (np.abs(xyz[:, :2]) < 0.49).all(1)  # away from the clamp-free texture border
    rgb = out["rgb"][0][m].astype(float)[inner]
    np.testing.assert_allclose(rgb[:, 0], (xyz[inner, 0] + 0.5) * 255, atol=1.5)
    np.testing.assert_allclose(rgb[:, 1], (xyz[inner, 1] + 0.5) * 255, atol=1.5)


def test_lambert_shading_follows_the_lights():
    mesh = load_object("procedural:hemisphere")  # plain albedo: brightness = shading only
    from corr3d.geometry import look_at_pose

    lit = Lighting(lights=((0.0, 0.0, 3.0, 100.0),), ambient=0.1, diffuse=0.8, follow_camera=False)  # object-fixed
    front = render_views(mesh, np.array([[60, 0, 32], [0, 60, 32], [0, 0, 1.0]]),
                         np.stack([look_at_pose([0, 0, 2.0]), look_at_pose([0, 0, -2.0])]), 64, 64, lighting=lit)
    b_front = front["rgb"][0][front["mask"][0]].mean()
    b_back = front["rgb"][1][front["mask"][1]].mean()
    assert b_front > 2 * b_back
    assert front["rgb"][1][front["mask"][1]].max() <= np.ceil(0.1 * 200 / 255 * 255) + 1  # ambient only
