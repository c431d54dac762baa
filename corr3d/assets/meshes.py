"""Mesh building blocks (UV-mapped parametric parts, texture atlas) and mesh-file loading with normalisation.

Every part carries per-vertex UVs in [0, 1] (trimesh/OpenGL convention: v = 0 is the BOTTOM row of the image) and
its own texture; ``assemble`` packs the textures side by side into one atlas so the result is a single
``trimesh.Trimesh`` with ``TextureVisuals`` (what ``load_object`` promises).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".off", ".stl")


class MeshLoadError(RuntimeError):
    """A mesh file that cannot be read, or holds no triangles."""


@dataclass
class Part:
    vertices: np.ndarray  # (V,3) float64
    faces: np.ndarray     # (F,3) int64
    uv: np.ndarray        # (V,2) in [0,1]
    texture: np.ndarray   # (H,W,3) uint8

    def transformed(self, matrix: np.ndarray) -> "Part":
        verts = self.vertices @ matrix[:3, :3].T + matrix[:3, 3]
        return Part(verts, self.faces, self.uv, self.texture)

    def moved(self, offset=(0, 0, 0), scale=1.0) -> "Part":
        return Part(self.vertices * np.asarray(scale, dtype=np.float64) + np.asarray(offset, dtype=np.float64),
                    self.faces, self.uv, self.texture)


def grid_faces(rows: int, cols: int) -> np.ndarray:
    """Two triangles per cell of a (rows x cols) vertex grid stored row-major."""
    r, c = np.meshgrid(np.arange(rows - 1), np.arange(cols - 1), indexing="ij")
    a = (r * cols + c).ravel()
    b, d = a + 1, a + cols
    e = d + 1
    return np.concatenate([np.stack([a, d, b], 1), np.stack([b, d, e], 1)]).astype(np.int64)


def parametric_part(fn, nu: int, nv: int, texture: np.ndarray) -> Part:
    """Surface ``fn(u, v) -> (..., 3)`` sampled on an (nv+1) x (nu+1) grid with uv = (u, v) in [0, 1]²."""
    v, u = np.meshgrid(np.linspace(0, 1, nv + 1), np.linspace(0, 1, nu + 1), indexing="ij")
    verts = fn(u, v).reshape(-1, 3)
    uv = np.stack([u.ravel(), v.ravel()], axis=1)
    return Part(verts, grid_faces(nv + 1, nu + 1), uv, texture)


def revolution_part(radius, height, texture: np.ndarray, segments: int = 96, samples: int = 64) -> Part:
    """Surface of revolution about +y of the profile polyline (radius[k], height[k]) (resampled by arc length).

    A profile starting/ending at radius 0 closes the surface at the poles (degenerate triangles there are harmless
    for ray casting).
    """
    radius, height = np.asarray(radius, dtype=np.float64), np.asarray(height, dtype=np.float64)
    seg = np.hypot(np.diff(radius), np.diff(height))
    arc = np.concatenate([[0.0], np.cumsum(seg)]) / max(seg.sum(), 1e-12)

    def fn(u, v):
        r = np.interp(v, arc, radius)
        y = np.interp(v, arc, height)
        theta = 2 * np.pi * u
        return np.stack([r * np.cos(theta), y, -r * np.sin(theta)], axis=-1)

    return parametric_part(fn, segments, samples, texture)


def _frames(points: np.ndarray, closed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rotation-minimising normal/binormal frames along a polyline (parallel transport)."""
    tang = np.gradient(points, axis=0)
    if closed:
        tang = np.roll(points, -1, 0) - np.roll(points, 1, 0)
    tang /= np.linalg.norm(tang, axis=1, keepdims=True)
    ref = np.array([0.0, 1.0, 0.0]) if abs(tang[0, 1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    normal = np.cross(tang[0], ref)
    normal /= np.linalg.norm(normal)
    normals = [normal]
    for t in tang[1:]:
        n = normals[-1] - (normals[-1] @ t) * t
        normals.append(n / np.linalg.norm(n))
    normals = np.array(normals)
    return normals, np.cross(tang, normals)


def tube_part(curve, radius, texture: np.ndarray, sides: int = 32, closed: bool = False, caps: bool = True) -> Part:
    """Tube of (possibly varying) ``radius`` around the polyline ``curve`` (N,3); uv = (along, around)."""
    curve = np.asarray(curve, dtype=np.float64)
    if closed:
        curve = np.concatenate([curve, curve[:1]])  # repeat the start so the uv seam has its own vertices
    normals, binormals = _frames(curve, closed=False)
    if closed:  # close the frame twist smoothly: spread the mismatch angle along the curve
        angle = np.arctan2(normals[-1] @ binormals[0], normals[-1] @ normals[0])
        spread = -angle * np.linspace(0, 1, len(curve))
        n0, b0 = normals.copy(), binormals.copy()
        normals = np.cos(spread)[:, None] * n0 + np.sin(spread)[:, None] * b0
        binormals = -np.sin(spread)[:, None] * n0 + np.cos(spread)[:, None] * b0
    radius = np.broadcast_to(np.asarray(radius, dtype=np.float64), (len(curve),))
    theta = np.linspace(0, 2 * np.pi, sides + 1)
    ring = np.cos(theta)[None, :, None] * normals[:, None] + np.sin(theta)[None, :, None] * binormals[:, None]
    verts = (curve[:, None] + radius[:, None, None] * ring).reshape(-1, 3)
    v, u = np.meshgrid(theta / (2 * np.pi), np.linspace(0, 1, len(curve)), indexing="xy")
    uv = np.stack([u.ravel(), v.ravel()], axis=1)
    part = Part(verts, grid_faces(len(curve), sides + 1), uv, texture)
    if caps and not closed:
        part = merge_parts([part, _disc(curve[0], ring[0] * radius[0], texture),
                            _disc(curve[-1], ring[-1] * radius[-1], texture)])
    return part


def _disc(center: np.ndarray, rim_offsets: np.ndarray, texture: np.ndarray) -> Part:
    """Fan-triangulated flat cap: ``center`` plus rim points ``center + rim_offsets``."""
    verts = np.concatenate([center[None], center + rim_offsets])
    n = len(rim_offsets)
    faces = np.stack([np.zeros(n - 1, int), np.arange(1, n), np.arange(2, n + 1)], 1)
    span = np.abs(rim_offsets).max() + 1e-12
    basis = np.linalg.svd(rim_offsets - rim_offsets.mean(0))[2][:2]
    uv = 0.5 + 0.5 * (verts - center) @ basis.T / span
    return Part(verts, faces.astype(np.int64), np.clip(uv, 0, 1), texture)


def extrusion_part(polygon, depth: float, texture: np.ndarray, kernel=(0.0, 0.0), wall_samples: int = 8) -> Part:
    """Prism over a polygon in the xy-plane that is star-shaped w.r.t. ``kernel`` (caps fan from it), along z."""
    poly = np.asarray(polygon, dtype=np.float64)
    loop = np.concatenate([poly, poly[:1]])
    perim = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(loop, axis=0), axis=1))])
    perim /= perim[-1]
    zs = np.linspace(-depth / 2, depth / 2, wall_samples + 1)
    verts = np.stack([np.repeat(loop[None, :, 0], len(zs), 0), np.repeat(loop[None, :, 1], len(zs), 0),
                      np.repeat(zs[:, None], len(loop), 1)], axis=-1).reshape(-1, 3)
    v, u = np.meshgrid((zs + depth / 2) / depth, perim, indexing="ij")
    walls = Part(verts, grid_faces(len(zs), len(loop)), np.stack([u.ravel(), v.ravel()], 1), texture)
    kernel = np.asarray(kernel, dtype=np.float64)
    caps = []
    for z in (-depth / 2, depth / 2):
        center = np.array([kernel[0], kernel[1], z])
        rim = np.concatenate([loop - kernel, np.zeros((len(loop), 1))], axis=1)
        cap = _disc(center, rim, texture)
        lo, hi = poly.min(0), poly.max(0)
        cap.uv = (cap.vertices[:, :2] - lo) / np.maximum(hi - lo, 1e-12)
        caps.append(cap)
    return merge_parts([walls] + caps)


def box_part(size, texture: np.ndarray, subdivisions: int = 8) -> Part:
    """Axis-aligned box of ``size`` (x,y,z) centred at 0; each face carries the whole texture (unshared vertices)."""
    sx, sy, sz = (np.asarray(size, dtype=np.float64) / 2).tolist()
    faces = []
    # (origin corner, u axis, v axis) per face, chosen so the texture is upright on the four sides
    specs = [((-sx, -sy, sz), (2 * sx, 0, 0), (0, 2 * sy, 0)), ((sx, -sy, -sz), (-2 * sx, 0, 0), (0, 2 * sy, 0)),
             ((sx, -sy, sz), (0, 0, -2 * sz), (0, 2 * sy, 0)), ((-sx, -sy, -sz), (0, 0, 2 * sz), (0, 2 * sy, 0)),
             ((-sx, sy, sz), (2 * sx, 0, 0), (0, 0, -2 * sz)), ((-sx, -sy, -sz), (2 * sx, 0, 0), (0, 0, 2 * sz))]
    for origin, du, dv in specs:
        o, a, b = (np.asarray(x, dtype=np.float64) for x in (origin, du, dv))
        faces.append(parametric_part(lambda u, v: o + u[..., None] * a + v[..., None] * b,
                                     subdivisions, subdivisions, texture))
    return merge_parts(faces)


def merge_parts(parts: list[Part]) -> Part:
    """Concatenate parts that share one texture (the first part's)."""
    offsets = np.cumsum([0] + [len(p.vertices) for p in parts[:-1]])
    return Part(np.concatenate([p.vertices for p in parts]),
                np.concatenate([p.faces + o for p, o in zip(parts, offsets)]),
                np.concatenate([p.uv for p in parts]), parts[0].texture)


def assemble(parts: list[Part], tile: int = 512) -> trimesh.Trimesh:
    """One textured mesh from parts with different textures: textures side by side in a 1-row atlas.

    UVs are shrunk by half a texel inside each tile so bilinear sampling never bleeds into a neighbouring tile.
    """
    tiles, uvs = [], []
    n = len(parts)
    for k, part in enumerate(parts):
        tiles.append(np.asarray(Image.fromarray(part.texture).convert("RGB").resize((tile, tile), Image.BILINEAR)))
        margin = 0.5 / tile
        u = margin + np.clip(part.uv[:, 0], 0, 1) * (1 - 2 * margin)
        uvs.append(np.stack([(k + u) / n, np.clip(part.uv[:, 1], 0, 1) * (1 - 2 * margin) + margin], axis=1))
    atlas = np.concatenate(tiles, axis=1)
    merged = merge_parts([Part(p.vertices, p.faces, uv, p.texture) for p, uv in zip(parts, uvs)])
    mesh = trimesh.Trimesh(merged.vertices, merged.faces, process=False)
    mesh.visual = trimesh.visual.TextureVisuals(uv=merged.uv, image=Image.fromarray(atlas))
    return mesh


def normalize_mesh(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Centre the bounding box at the origin and scale its max extent to 1 (paper §3.1), in place.

    ``mesh.metadata["normalization"] = {"center": c, "scale": s}`` records x_normalised = (x_original - c) * s.
    """
    lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
    extent = float((hi - lo).max())
    if not np.isfinite(extent) or extent <= 0:
        raise MeshLoadError("mesh has a degenerate (zero or non-finite) extent")
    center = (lo + hi) / 2.0
    scale = 1.0 / extent
    mesh.vertices = (mesh.vertices - center) * scale
    prior = mesh.metadata.get("normalization")
    if prior:  # compose with an earlier normalisation so the record always maps from the ORIGINAL file
        center = np.asarray(prior["center"]) + center / prior["scale"]
        scale = prior["scale"] * scale
    mesh.metadata["normalization"] = {"center": [float(x) for x in center], "scale": float(scale)}
    return mesh


def load_mesh_file(path: str | Path) -> trimesh.Trimesh:
    """Read GLB/GLTF/OBJ/PLY/... into ONE mesh (scene graph transforms applied, textures packed into an atlas).

    Raises MeshLoadError for unreadable files or files without triangles.
    """
    path = Path(path)
    if not path.is_file():
        raise MeshLoadError(f"no such mesh file: {path}")
    try:
        scene = trimesh.load(str(path), force="scene", process=False)
        meshes = [g for g in scene.dump() if isinstance(g, trimesh.Trimesh) and len(g.faces) > 0]
    except Exception as err:  # trimesh raises many types for corrupt files; all mean "unreadable"
        raise MeshLoadError(f"cannot read {path.name}: {type(err).__name__}: {err}") from err
    if not meshes:
        raise MeshLoadError(f"{path.name} contains no triangles")
    mesh = meshes[0] if len(meshes) == 1 else _concatenate(meshes)
    mesh.metadata["source"] = str(path)
    return mesh


def _concatenate(meshes: list[trimesh.Trimesh]) -> trimesh.Trimesh:
    """Merge scene geometries; mixed textured/coloured parts become one TextureVisuals via trimesh's packer."""
    textured = [isinstance(m.visual, trimesh.visual.TextureVisuals) for m in meshes]
    if any(textured) and not all(textured):
        # trimesh cannot pack textures with vertex colours: give colour-only parts a uniform material colour
        meshes = [m if t else _as_uniform_texture(m) for m, t in zip(meshes, textured)]
    try:
        return trimesh.util.concatenate(meshes)
    except Exception:  # packing failures (odd images): fall back to baked vertex colours
        return trimesh.util.concatenate([_as_vertex_colors(m) for m in meshes])


def _as_uniform_texture(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    color = np.asarray(mesh.visual.main_color[:3], dtype=np.uint8)
    out = mesh.copy()
    out.visual = trimesh.visual.TextureVisuals(uv=np.full((len(mesh.vertices), 2), 0.5),
                                               image=Image.fromarray(np.tile(color, (4, 4, 1))))
    return out


def _as_vertex_colors(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    out = mesh.copy()
    out.visual = trimesh.visual.ColorVisuals(out, vertex_colors=mesh.visual.to_color().vertex_colors)
    return out
