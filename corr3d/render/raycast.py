"""Exact multiview rendering by ray casting (open3d RaycastingScene).

One ray per pixel through the pixel CENTRE (x + 0.5, y + 0.5). Ray directions have camera-space z = 1, so the hit
parameter is the depth. Per pixel:
- mask: the ray hits the mesh;
- xyz: the object-space hit, interpolated from the hit triangle's vertices with the hit's barycentrics (float64);
- depth: camera z of that xyz (so depth and xyz agree exactly);
- rgb: the same hit shaded: albedo (texture via UVs / vertex colours) x (ambient + Lambert from point lights),
  two-sided (normals face the camera, since downloaded meshes often have inconsistent winding), no shadows.
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh

from corr3d.geometry import camera_center, pixel_grid
from corr3d.render.appearance import Appearance, barycentric_weights, interpolate

# The authors' BlenderProc lights (their data_utils/blenderproc.py): point lights at
# (1,-1,1) E200, (-1,-1,-1) E200 and (1,0,1) E20 (the 4th light call re-configures the 3rd light). Their camera stays
# at the world origin with an OpenCV-identity cam2world, and each view MOVES THE OBJECT by its obj_pose, so the world
# frame is the OpenCV camera frame (x right, y down, z forward; object centre at z = 2): the lights are fixed to
# the camera. PAPER_LIGHTS are those positions in the camera frame (``follow_camera``, the default).
PAPER_LIGHTS = ((1.0, -1.0, 1.0, 200.0), (-1.0, -1.0, -1.0, 200.0), (1.0, 0.0, 1.0, 20.0))
# corr3d's former object-fixed lights (the same numbers read as Blender z-up world -> y-up object space), for
# ``follow_camera: false``
OBJECT_LIGHTS = ((1.0, 1.0, 1.0, 200.0), (-1.0, -1.0, 1.0, 200.0), (1.0, 1.0, 0.0, 20.0))
SMOOTH_NORMAL_MAX_DEG = 45.0  # beyond this from the face normal, interpolated normals are artefacts of sharp edges


@dataclass
class Lighting:
    """Lambert + ambient with point lights; intensity_k = diffuse * E_k / max(E) * |P_k|² / |P_k - x|².

    The inverse-square falloff is normalised at the object centre, so a unit-extent object sees light weights of
    about E_k / max(E); ``ambient`` lifts the unlit side (the paper's renders have no light from behind).
    ``mode``: "lambert" or "unlit" (colour = albedo; for tests and flat-colour data).
    ``follow_camera``: light positions are in the OpenCV camera frame and move with the camera (the authors'
    renders; distances normalised at the object centre seen from the light); false: fixed in object space.
    """

    lights: tuple = PAPER_LIGHTS
    ambient: float = 0.3
    diffuse: float = 0.5
    mode: str = "lambert"
    follow_camera: bool = True
    positions: np.ndarray = field(init=False, repr=False)
    weights: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        arr = np.asarray(self.lights, dtype=np.float64).reshape(-1, 4)
        self.positions = arr[:, :3]
        self.weights = self.diffuse * arr[:, 3] / max(arr[:, 3].max(), 1e-12) if len(arr) else arr[:, 3]

    def object_positions(self, pose=None) -> np.ndarray:
        """(L, 3) light positions in object space for a view with object->camera ``pose``."""
        if not self.follow_camera:
            return self.positions
        if pose is None:
            raise ValueError("camera-fixed lights need the view's pose")
        pose = np.asarray(pose, dtype=np.float64)
        return (self.positions - pose[:3, 3]) @ pose[:3, :3]   # R^T (p_cam - t)

    def shade(self, points: np.ndarray, normals: np.ndarray, pose=None) -> np.ndarray:
        """(N,) irradiance factor at object-space ``points`` with unit ``normals`` (``pose``: the view's
        object->camera pose, needed for camera-fixed lights)."""
        if self.mode == "unlit":
            return np.ones(len(points))
        total = np.full(len(points), self.ambient)
        for pos, weight in zip(self.object_positions(pose), self.weights):
            to_light = pos - points
            dist2 = np.einsum("ij,ij->i", to_light, to_light)
            cos = np.einsum("ij,ij->i", normals, to_light) / np.sqrt(dist2)
            total += weight * np.clip(cos, 0.0, None) * (pos @ pos) / dist2
        return total


FOOTPRINT_MARGIN_PX = 2  # rays this far outside a view's projected convex hull are still cast (float slack)
_DEFERRED = "open3d.visualization"


def import_open3d() -> types.ModuleType:
    """``open3d`` without running ``open3d.visualization`` until something uses it.

    ``import open3d`` imports ``open3d.visualization`` unconditionally, which imports plotly and dash (its
    ``draw_plotly``): about half of open3d's import time, and several seconds per render worker on a loaded machine,
    for a package the ray caster never touches. Before open3d's first import, ``open3d.visualization`` is registered
    in ``sys.modules`` as an empty module of the real package (same spec and ``__path__``) whose module
    ``__getattr__`` runs the real package code in place on the first attribute anyone asks for, so
    ``open3d.visualization.draw_geometries`` etc. still work, only later. Nothing changes when open3d is already
    imported or its layout is not the expected one (then the plain import runs).
    """
    if "open3d" not in sys.modules and _DEFERRED not in sys.modules:
        spec = importlib.util.find_spec("open3d")  # a top-level spec: does not run open3d/__init__.py
        init = Path(spec.origin).parent / "visualization" / "__init__.py" if spec and spec.origin else None
        if init is not None and init.is_file():
            sys.modules[_DEFERRED] = _deferred_module(_DEFERRED, init)
    import open3d

    deferred = sys.modules.get(_DEFERRED)
    if deferred is not None and not hasattr(open3d, "visualization"):
        open3d.visualization = deferred  # an import found in sys.modules does not set the parent's attribute
    return open3d


def _deferred_module(name: str, init: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)

    def load_on_first_use(attr: str):
        del module.__dict__["__getattr__"]  # the real code runs once; its own missing names raise normally
        spec.loader.exec_module(module)
        return getattr(module, attr)

    module.__getattr__ = load_on_first_use
    return module


@contextlib.contextmanager
def single_threaded_blas():
    """Run numpy's OpenBLAS on one thread inside the block (the previous count is restored).

    The renderer's matrix products are (N,3) @ (3,3) and (N,3) @ (3,): memory-bound, and OpenBLAS's thread team
    made them 20x slower (185 ms instead of 8 ms per 512² view) on a 2-core machine shared with other processes.
    The results are bit-identical for any thread count (each output element is the same 3-term dot product), so
    this changes speed only. No-op where numpy's BLAS is not an OpenBLAS this can find (it is then merely slower).
    """
    libs = _openblas_thread_controls()
    previous = [get() for _, get in libs]
    for set_threads, _ in libs:
        set_threads(1)
    try:
        yield
    finally:
        for (set_threads, _), count in zip(libs, previous):
            set_threads(count)


_OPENBLAS_SYMBOLS = (("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
                     ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
                     ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
                     ("openblas_set_num_threads", "openblas_get_num_threads"))
_openblas_cache: list | None = None


def _openblas_thread_controls() -> list:
    """``[(set_num_threads, get_num_threads)]`` of the OpenBLAS libraries loaded in this process (Linux: read from
    /proc/self/maps, as threadpoolctl does; elsewhere none)."""
    global _openblas_cache
    if _openblas_cache is None:
        _openblas_cache = []
        try:
            with open("/proc/self/maps") as maps:
                paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower()})
        except OSError:
            paths = []
        for path in paths:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for set_name, get_name in _OPENBLAS_SYMBOLS:
                if hasattr(lib, set_name) and hasattr(lib, get_name):
                    _openblas_cache.append((getattr(lib, set_name), getattr(lib, get_name)))
                    break
    return _openblas_cache


class RaycastRenderer:
    """Holds the acceleration structure and appearance of one mesh; ``render(K, pose, w, h)`` per view."""

    def __init__(self, mesh: trimesh.Trimesh, lighting: Lighting | None = None):
        o3d = import_open3d()  # deferred: slow import, needed only to render

        self.vertices = np.asarray(mesh.vertices, dtype=np.float64)
        self.faces = np.asarray(mesh.faces, dtype=np.int64)
        if len(self.faces) == 0:
            raise ValueError("cannot render a mesh without faces")
        self.vertex_normals = np.asarray(mesh.vertex_normals, dtype=np.float64)
        self.appearance = Appearance(mesh)
        # every per-vertex value a view interpolates (position, normal, UV or colour), gathered once per hit: one
        # (N, 6+k) pass instead of three; each column is computed exactly as on its own (`interpolate`)
        attributes = self.appearance.vertex_attributes()
        self._vertex_table = np.ascontiguousarray(np.concatenate(
            [self.vertices, self.vertex_normals] + ([] if attributes is None else [attributes]), axis=1))
        self.lighting = lighting or Lighting()
        self.scene = o3d.t.geometry.RaycastingScene()
        self.scene.add_triangles(o3d.core.Tensor(self.vertices.astype(np.float32)),
                                 o3d.core.Tensor(self.faces.astype(np.uint32)))
        self._o3d = o3d
        self._grid_key, self._grid = None, None
        self._hull = _hull_points(self.vertices[np.unique(self.faces)])

    def _cast_uv(self, K, pose, uv: np.ndarray, cam_dirs: np.ndarray | None = None):
        """Rays through continuous pixels ``uv`` (N,2): (hit (N,), face ids, barycentrics, face normals, dirs)."""
        R = np.asarray(pose, dtype=np.float64)[:3, :3]
        with single_threaded_blas():
            if cam_dirs is None:
                cam_dirs = np.concatenate([uv, np.ones((len(uv), 1))], 1) @ np.linalg.inv(np.asarray(K, np.float64)).T
            dirs = cam_dirs @ R  # camera -> object rotation (R^T) applied to row vectors
        rays = np.empty((len(dirs), 6), dtype=np.float32)
        rays[:, :3] = camera_center(pose)
        rays[:, 3:] = dirs
        out = self.scene.cast_rays(self._o3d.core.Tensor.from_numpy(rays))
        hit = np.isfinite(out["t_hit"].numpy())
        faces = out["primitive_ids"].numpy()[hit].astype(np.int64)
        bary = out["primitive_uvs"].numpy()[hit].astype(np.float64)
        normals = out["primitive_normals"].numpy()[hit].astype(np.float64)
        return hit, faces, bary, normals, dirs[hit]

    def cast(self, K, pose, width: int, height: int):
        """Per-pixel ray hits: (hit mask (H,W), face ids (N,), barycentrics (N,2), face normals (N,3), dirs (N,3)).

        Only the pixels of the view's footprint (:meth:`footprint`) are cast: every other ray misses. The hits come
        in row-major pixel order, as when casting the whole image, and each ray's result does not depend on the
        other rays cast with it, so the output is identical to casting every pixel (tests/render/test_raycast.py).
        """
        key = (np.asarray(K, dtype=np.float64).tobytes(), width, height)
        if self._grid_key != key:  # per-pixel camera-frame directions are shared by all views of a rig
            uv = pixel_grid(width, height).reshape(-1, 2)
            with single_threaded_blas():
                self._grid = (np.concatenate([uv, np.ones((len(uv), 1))], 1)
                              @ np.linalg.inv(np.asarray(K, np.float64)).T).reshape(height, width, 3)
            self._grid_key = key
        (y0, y1), (x0, x1) = self.footprint(K, pose, width, height)
        hit = np.zeros((height, width), dtype=bool)
        if y0 >= y1 or x0 >= x1:  # the object is outside the image
            return hit, np.zeros(0, np.int64), np.zeros((0, 2)), np.zeros((0, 3)), np.zeros((0, 3))
        window = self._grid[y0:y1, x0:x1].reshape(-1, 3)
        window_hit, faces, bary, normals, dirs = self._cast_uv(K, pose, None, cam_dirs=window)
        hit[y0:y1, x0:x1] = window_hit.reshape(y1 - y0, x1 - x0)
        return hit, faces, bary, normals, dirs

    def footprint(self, K, pose, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """``((y0, y1), (x0, x1))``: the pixel window (end-exclusive) whose centres lie within the view's projection
        of the mesh's convex hull, widened by ``FOOTPRINT_MARGIN_PX``; the whole image when some hull point is not
        in front of the camera (the projection is then unbounded).

        A ray that hits the mesh hits a triangle, whose projection lies in the convex hull of its projected
        vertices when they are in front of the camera, so a pixel centre outside the window sees nothing.
        """
        pose = np.asarray(pose, dtype=np.float64)
        K = np.asarray(K, dtype=np.float64)
        with single_threaded_blas():
            cam = self._hull @ pose[:3, :3].T + pose[:3, 3]
            z = cam[:, 2]
            if len(cam) == 0 or not np.all(z > 1e-9) or not np.all(np.isfinite(cam)):
                return (0, height), (0, width)
            pix = (cam / z[:, None]) @ K.T
        lo = pix[:, :2].min(0) - FOOTPRINT_MARGIN_PX
        hi = pix[:, :2].max(0) + FOOTPRINT_MARGIN_PX
        # pixel i has its centre at i + 0.5: the window holds the i with lo <= i + 0.5 <= hi
        first = np.clip(np.ceil(lo - 0.5), 0, [width, height]).astype(int)
        last = np.clip(np.floor(hi - 0.5) + 1, 0, [width, height]).astype(int)
        return (int(first[1]), int(last[1])), (int(first[0]), int(last[0]))

    def surface_points(self, K, pose, uv) -> tuple[np.ndarray, np.ndarray]:
        """First surface point (N,3) seen through arbitrary continuous pixels ``uv`` (N,2), and the hit mask (N,)."""
        hit, faces, bary, _, _ = self._cast_uv(K, pose, np.asarray(uv, dtype=np.float64).reshape(-1, 2))
        xyz = np.zeros((len(hit), 3))
        xyz[hit] = self._interpolate_vertices(faces, bary)
        return xyz, hit

    def _interpolate_vertices(self, faces: np.ndarray, bary: np.ndarray) -> np.ndarray:
        return interpolate(self.vertices, self.faces[faces], barycentric_weights(bary))

    def render(self, K, pose, width: int, height: int, background=(0, 0, 0)) -> dict[str, np.ndarray]:
        hit, faces, bary, face_normals, dirs = self.cast(K, pose, width, height)
        corners = self.faces[faces]
        table = interpolate(self._vertex_table, corners, barycentric_weights(bary))
        xyz, smooth = table[:, :3], table[:, 3:6]
        attributes = table[:, 6:] if table.shape[1] > 6 else None
        pose = np.asarray(pose, dtype=np.float64)
        with single_threaded_blas():
            depth = xyz @ pose[2, :3] + pose[2, 3]
        normals = self._shading_normals(smooth, face_normals, dirs)
        color = self.appearance.albedo_at(faces, attributes) * self.lighting.shade(xyz, normals, pose)[:, None]
        pixels = np.flatnonzero(hit)  # flat indices: cheaper to scatter through than the (H,W) boolean mask
        rgb = np.empty((height * width, 3), dtype=np.uint8)
        rgb[:] = np.asarray(background, dtype=np.uint8)
        rgb[pixels] = np.clip(np.round(color * 255.0), 0, 255).astype(np.uint8)
        xyz_map = np.zeros((height * width, 3), dtype=np.float32)
        xyz_map[pixels] = xyz
        depth_map = np.zeros(height * width, dtype=np.float32)
        depth_map[pixels] = depth
        return {"rgb": rgb.reshape(height, width, 3), "mask": hit, "depth": depth_map.reshape(height, width),
                "xyz": xyz_map.reshape(height, width, 3)}

    def _shading_normals(self, smooth, face_normals, dirs) -> np.ndarray:
        """The interpolated vertex normals ``smooth`` (N,3; normalised here, in place), except across sharp edges;
        flipped to face the camera (two-sided)."""
        smooth /= np.maximum(np.linalg.norm(smooth, axis=1, keepdims=True), 1e-12)
        facing = np.sign(-np.einsum("ij,ij->i", face_normals, dirs))[:, None]
        facing[facing == 0] = 1.0
        face_normals = face_normals * facing
        smooth = smooth * np.sign(np.einsum("ij,ij->i", smooth, face_normals))[:, None]
        sharp = np.einsum("ij,ij->i", smooth, face_normals) < np.cos(np.radians(SMOOTH_NORMAL_MAX_DEG))
        smooth[sharp] = face_normals[sharp]
        return smooth


def _hull_points(points: np.ndarray) -> np.ndarray:
    """The vertices of the convex hull of ``points`` (all of them when qhull cannot build one: flat or too few)."""
    if len(points) < 5 or not np.all(np.isfinite(points)):
        return points
    from scipy.spatial import ConvexHull, QhullError  # deferred: only renderers need it

    try:
        return points[ConvexHull(points).vertices]
    except (QhullError, ValueError):
        return points


def render_views(mesh: trimesh.Trimesh, K, poses, width: int, height: int, lighting: Lighting | None = None,
                 background=(0, 0, 0)) -> dict[str, np.ndarray]:
    """Render every pose: rgb uint8 (V,H,W,3), mask bool (V,H,W), depth float32 (V,H,W), xyz float32 (V,H,W,3)."""
    renderer = RaycastRenderer(mesh, lighting)
    views = [renderer.render(K, pose, width, height, background) for pose in np.asarray(poses)]
    return {key: np.stack([v[key] for v in views]) for key in ("rgb", "mask", "depth", "xyz")}
