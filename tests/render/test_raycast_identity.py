"""The fast renderer (footprint-window ray casting, fused interpolation, flat texture gathers, single-threaded BLAS)
gives byte-identical views to a straightforward reference kept here: the renderer as it was before those changes
(every pixel cast, ``(values[corners] * w).sum(1)`` interpolation, 2-D fancy-indexed bilinear sampling)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import trimesh
from PIL import Image

from corr3d.assets.objects import load_object
from corr3d.geometry import IcosphereCameras, camera_center, intrinsics, look_at_pose, pixel_grid
from corr3d.render import Lighting, RaycastRenderer
from corr3d.render.appearance import DEFAULT_ALBEDO, barycentric_weights, interpolate, sample_bilinear
from corr3d.render.raycast import SMOOTH_NORMAL_MAX_DEG, import_open3d, single_threaded_blas

SIZE, FOCAL = 96, 105.0  # the paper's 512 px / f = 560 field of view, scaled down


# ----------------------------------------------------------------------------------------------- the reference
def reference_bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    x = uv[:, 0] * w - 0.5
    y = (1.0 - uv[:, 1]) * h - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    x1, y1 = (x0 + 1) % w, (y0 + 1) % h
    x0, y0 = x0 % w, y0 % h
    img = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image
    top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
    bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def reference_render(r: RaycastRenderer, K, pose, width: int, height: int, background=(0, 0, 0)) -> dict:
    """One view, every pixel cast, from the renderer's mesh data (vertices, normals, appearance, lights)."""
    o3d = r._o3d
    pose = np.asarray(pose, dtype=np.float64)
    uv = pixel_grid(width, height).reshape(-1, 2)
    grid = np.concatenate([uv, np.ones((len(uv), 1))], 1) @ np.linalg.inv(np.asarray(K, np.float64)).T
    dirs = grid @ pose[:3, :3]
    rays = np.empty((len(dirs), 6), dtype=np.float32)
    rays[:, :3] = camera_center(pose)
    rays[:, 3:] = dirs
    out = r.scene.cast_rays(o3d.core.Tensor.from_numpy(rays))
    hit = np.isfinite(out["t_hit"].numpy())
    faces = out["primitive_ids"].numpy()[hit].astype(np.int64)
    bary = out["primitive_uvs"].numpy()[hit].astype(np.float64)
    face_normals = out["primitive_normals"].numpy()[hit].astype(np.float64)
    dirs = dirs[hit]
    hit = hit.reshape(height, width)
    weights = np.concatenate([1.0 - bary.sum(1, keepdims=True), bary], axis=1)[:, :, None]
    corners = r.faces[faces]
    xyz = (r.vertices[corners] * weights).sum(1)
    depth = xyz @ pose[2, :3] + pose[2, 3]
    # shading normals
    smooth = (r.vertex_normals[corners] * weights).sum(1)
    smooth /= np.maximum(np.linalg.norm(smooth, axis=1, keepdims=True), 1e-12)
    facing = np.sign(-np.einsum("ij,ij->i", face_normals, dirs))[:, None]
    facing[facing == 0] = 1.0
    face_normals = face_normals * facing
    smooth = smooth * np.sign(np.einsum("ij,ij->i", smooth, face_normals))[:, None]
    sharp = np.einsum("ij,ij->i", smooth, face_normals) < np.cos(np.radians(SMOOTH_NORMAL_MAX_DEG))
    smooth[sharp] = face_normals[sharp]
    # albedo
    a = r.appearance
    if a.texture is not None:
        color = reference_bilinear(a.texture, (a.uv[corners] * weights).sum(1))
    elif a.vertex_colors is not None:
        color = (a.vertex_colors[corners] * weights).sum(1)
    elif a.face_colors is not None:
        color = a.face_colors[faces]
    else:
        color = np.ones((len(faces), 3))
    albedo = np.clip(color * a.factor, 0.0, 1.0).astype(np.float32)
    color = albedo * r.lighting.shade(xyz, smooth, pose)[:, None]
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[:] = np.asarray(background, dtype=np.uint8)
    rgb[hit] = np.clip(np.round(color * 255.0), 0, 255).astype(np.uint8)
    xyz_map = np.zeros((height, width, 3), dtype=np.float32)
    xyz_map[hit] = xyz
    depth_map = np.zeros((height, width), dtype=np.float32)
    depth_map[hit] = depth
    return {"rgb": rgb, "mask": hit, "depth": depth_map, "xyz": xyz_map}


def assert_identical(r: RaycastRenderer, K, poses, width, height, background=(0, 0, 0)) -> int:
    """Every view byte for byte (dtype, shape, bits: -0.0 vs 0.0 counts); returns the foreground pixel count."""
    pixels = 0
    for i, pose in enumerate(poses):
        new, ref = r.render(K, pose, width, height, background), reference_render(r, K, pose, width, height,
                                                                                  background)
        for key in ("rgb", "mask", "depth", "xyz"):
            assert new[key].dtype == ref[key].dtype and new[key].shape == ref[key].shape, (i, key)
            assert new[key].tobytes() == ref[key].tobytes(), f"view {i}: {key} differs from the reference"
        pixels += int(ref["mask"].sum())
    return pixels


# ----------------------------------------------------------------------------------------------- meshes
def _colored(kind: str) -> trimesh.Trimesh:
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    rng = np.random.default_rng(1)
    if kind == "vertex":
        mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=rng.integers(0, 256, (len(mesh.vertices), 4)))
    elif kind == "face":
        mesh.visual = trimesh.visual.ColorVisuals(mesh, face_colors=rng.integers(0, 256, (len(mesh.faces), 4)))
    else:
        mesh.visual = trimesh.visual.ColorVisuals(mesh)
    return mesh


def _wrapping_texture() -> trimesh.Trimesh:
    """A box whose UVs run outside [0, 1] (repeat wrapping on both axes)."""
    mesh = trimesh.creation.box((0.6, 0.8, 0.5))
    mesh.unmerge_vertices()  # a vertex per face corner, so each corner gets its own UV
    uv = np.random.default_rng(2).uniform(-1.5, 2.5, (len(mesh.vertices), 2))
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (13, 17, 3), dtype=np.uint8))
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, image=image)
    return mesh


@pytest.mark.parametrize("spec", ["procedural:sphere_astronaut", "procedural:knot_immuno", "procedural:hemisphere"])
def test_procedural_objects_render_identically_to_the_reference(spec):
    cams = IcosphereCameras(width=SIZE, height=SIZE, focal=FOCAL)
    r = RaycastRenderer(load_object(spec))
    assert assert_identical(r, cams.K, cams.poses, SIZE, SIZE) > 42 * 500


@pytest.mark.parametrize("kind", ["vertex", "face", "plain"])
def test_colour_kinds_and_lights_render_identically(kind):
    cams = IcosphereCameras(width=64, height=48, focal=70.0, subdivisions=0)
    for lighting in (Lighting(), Lighting(mode="unlit"), Lighting(follow_camera=False, ambient=0.1)):
        r = RaycastRenderer(_colored(kind), lighting)
        assert assert_identical(r, cams.K, cams.poses, 64, 48, background=(10, 200, 30)) > 0


def test_wrapped_texture_renders_identically():
    cams = IcosphereCameras(width=64, height=64, focal=70.0, subdivisions=0)
    assert assert_identical(RaycastRenderer(_wrapping_texture()), cams.K, cams.poses, 64, 64) > 0


def test_clipped_and_inside_views_render_identically():
    """The footprint window is clipped at the image border (object partly outside, close up) and is the whole image
    when the camera is inside the mesh's convex hull (no bounded projection)."""
    mesh = load_object("procedural:sphere_checker")
    r = RaycastRenderer(mesh)
    K = intrinsics(70.0, 64, 64)
    near = look_at_pose(np.array([0.0, 0.0, 0.9]))
    shifted = near.copy()
    shifted[0, 3] += 0.35  # object centre off to the side: part of it leaves the image
    inside = look_at_pose(np.array([0.0, 0.0, 0.05]))
    assert r.footprint(K, inside, 64, 64) == ((0, 64), (0, 64))
    (y0, y1), (x0, x1) = r.footprint(K, shifted, 64, 64)
    assert x1 == 64 and x0 > 0 and (y0, y1) == (0, 64)
    assert assert_identical(r, K, [near, shifted, inside], 64, 64) > 0
    far = look_at_pose(np.array([0.0, 0.0, 40.0]))  # a few pixels: the window is small and still holds every hit
    (y0, y1), (x0, x1) = r.footprint(K, far, 64, 64)
    assert (y1 - y0) * (x1 - x0) < 64 * 64 / 10
    assert assert_identical(r, K, [far], 64, 64) > 0


def test_object_outside_the_image_renders_empty():
    r = RaycastRenderer(load_object("procedural:hemisphere"))
    K = intrinsics(70.0, 32, 32)
    pose = look_at_pose(np.array([0.0, 0.0, 2.0]))
    pose[0, 3] += 5.0  # far to the right of the view
    (y0, y1), (x0, x1) = r.footprint(K, pose, 32, 32)
    assert x0 == x1 == 32
    view = r.render(K, pose, 32, 32, background=(1, 2, 3))
    assert not view["mask"].any() and (view["rgb"] == [1, 2, 3]).all() and not view["depth"].any()
    assert assert_identical(r, K, [pose], 32, 32, background=(1, 2, 3)) == 0


# ----------------------------------------------------------------------------------------------- the pieces
def test_interpolate_matches_the_summed_products_bit_for_bit():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(500, 3))
    values[:50] = 0.0
    values[50:100] = -0.0  # numpy's sum starts at +0.0: a -0.0 result must come out +0.0
    corners = rng.integers(0, 500, (20000, 3))
    bary = rng.random((20000, 2)).astype(np.float32).astype(np.float64)
    bary[:2000] = 0.0
    weights = np.concatenate([1.0 - bary.sum(1, keepdims=True), bary], axis=1)[:, :, None]
    for table in (values, values.astype(np.float32), np.abs(values)):
        expected = (table[corners] * weights).sum(1)
        got = interpolate(table, corners, barycentric_weights(bary))
        assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes()
    assert np.signbit(interpolate(values, corners, barycentric_weights(bary))).any()  # -0.0 inputs were exercised


@pytest.mark.parametrize("low, high", [(0.0, 1.0), (-2.3, 3.1), (0.999, 1.0), (0.0, 0.001)])
def test_sample_bilinear_matches_fancy_indexing(low, high):
    rng = np.random.default_rng(4)
    uv = rng.uniform(low, high, (5000, 2))
    for image in (rng.integers(0, 256, (7, 11, 3), dtype=np.uint8), rng.random((16, 9, 3)).astype(np.float32)):
        assert sample_bilinear(image, uv).tobytes() == reference_bilinear(image, uv).tobytes()


def test_single_threaded_blas_keeps_results_and_restores_the_thread_count():
    from corr3d.render import raycast

    controls = raycast._openblas_thread_controls()
    before = [get() for _, get in controls]
    a = np.random.default_rng(5).normal(size=(100_003, 3))
    b = np.random.default_rng(6).normal(size=(3, 3))
    expected = a @ b
    with single_threaded_blas():
        assert all(get() == 1 for _, get in controls)
        inside = a @ b
    assert [get() for _, get in controls] == before
    assert inside.tobytes() == expected.tobytes()


def test_default_albedo_when_no_colours():
    r = RaycastRenderer(_colored("plain"), Lighting(mode="unlit"))
    view = r.render(intrinsics(40.0, 32, 32), look_at_pose(np.array([0.0, 0.0, 2.0])), 32, 32)
    np.testing.assert_array_equal(view["rgb"][view["mask"]][0], np.round(np.array(DEFAULT_ALBEDO) * 255))


def test_open3d_import_skips_visualization_until_used():
    """A fresh process: the renderer's open3d import loads neither open3d.visualization nor dash, ray casting works
    (without loading Vulkan), and open3d.visualization still loads (with dash) on first use."""
    code = textwrap.dedent("""
        import sys
        import numpy as np
        from corr3d.render.raycast import import_open3d
        o3d = import_open3d()
        assert "dash" not in sys.modules and "plotly" not in sys.modules, "visualization was imported"
        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(o3d.core.Tensor(np.array([[0, 0, 1], [1, 0, 1], [0, 1, 1]], np.float32)),
                            o3d.core.Tensor(np.array([[0, 1, 2]], np.uint32)))
        rays = o3d.core.Tensor(np.array([[0.1, 0.1, 0, 0, 0, 1]], np.float32))
        assert abs(scene.cast_rays(rays)["t_hit"].numpy()[0] - 1.0) < 1e-6
        # the Makefile installs no Vulkan packages: ray casting never loads the Vulkan loader
        assert "libvulkan" not in open("/proc/self/maps").read()
        import open3d
        assert open3d is o3d and "dash" not in sys.modules
        assert callable(o3d.visualization.draw_plotly)  # first use runs the real package
        assert "dash" in sys.modules
        import open3d.visualization.rendering
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
