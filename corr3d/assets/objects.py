"""Object specs and the procedural object library (deterministic by seed, no downloads).

Specs:
- ``procedural:<name>`` or ``procedural:<name>:<seed>`` — a shape of ``PROCEDURAL_OBJECTS`` (seed 0 by default;
  the seed changes textures, colours and deformations, never the kind of shape);
- ``objaverse:<uid>`` — a GLB from the local objaverse cache (``~/.objaverse/hf-objaverse-v1``);
- ``sh3d:<library>/<item>`` — a real OBJ+MTL model of the Debian package ``sweethome3d-furniture``
  (:mod:`corr3d.assets.sh3d`; rotated by its catalog's ``modelRotation``: y up, front towards +z);
- a path to a mesh file (GLB/GLTF/OBJ/PLY ...).

``load_object`` returns one ``trimesh.Trimesh`` centred with max extent 1 (``mesh.metadata["normalization"]``
records the map from the original coordinates), textured (``TextureVisuals``) or coloured (``ColorVisuals``).
Objects are y-up like glTF/Objaverse.
"""
from __future__ import annotations

import gzip
import json
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import skimage.data
import trimesh
from PIL import Image
from scipy.ndimage import zoom  # scipy and skimage at module level: trimesh already loads scipy,
from scipy.spatial import cKDTree  # and skimage loads lazily (both ~0.05 s more than trimesh alone)
from skimage.color import hsv2rgb

from corr3d.assets.meshes import (
    MeshLoadError,
    Part,
    assemble,
    box_part,
    extrusion_part,
    load_mesh_file,
    merge_parts,
    normalize_mesh,
    parametric_part,
    revolution_part,
    tube_part,
)
from corr3d.assets.objaverse import validate_uid
from corr3d.assets.sh3d import SPEC_PREFIX as SH3D_PREFIX
from corr3d.assets.sh3d import load_sh3d, parse_item
from corr3d.errors import Corr3dUserError
from corr3d.utils.optional import import_extra
from corr3d.utils.paths import ensure_within, safe_name

TEXTURE_SIZE = 256
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry", "colorwheel",
          "hubble_deep_field", "retina")
GRAY_PHOTOS = ("brick", "grass", "gravel", "camera", "moon")


# ----------------------------------------------------------------------------------------------- textures
def _palette(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` saturated, well separated colours (float 0..1): random hues, alternating lightness."""
    hues = (rng.random() + np.arange(n) / n + rng.uniform(-0.05, 0.05, n)) % 1.0
    sat = rng.uniform(0.55, 0.95, n)
    val = np.where(np.arange(n) % 2 == 0, rng.uniform(0.75, 1.0, n), rng.uniform(0.35, 0.6, n))
    hsv = np.stack([hues, sat, val], axis=1)
    return hsv2rgb(hsv[None])[0]


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def _uv_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    t = (np.arange(size) + 0.5) / size
    return np.meshgrid(t, t)


def checker_texture(rng, size: int = TEXTURE_SIZE) -> np.ndarray:
    cells = int(rng.integers(4, 11))
    u, v = _uv_grid(size)
    idx = (np.floor(u * cells) + np.floor(v * cells)).astype(int) % 2
    return _to_u8(_palette(rng, 2)[idx])


def stripes_texture(rng, size: int = TEXTURE_SIZE) -> np.ndarray:
    u, v = _uv_grid(size)
    angle = rng.uniform(0, np.pi)
    freq = int(rng.integers(3, 9))
    colors = _palette(rng, int(rng.integers(2, 5)))
    phase = (np.cos(angle) * u + np.sin(angle) * v) * freq
    # integer frequency along u keeps the stripes continuous across a wrap-around seam for angle ~ 0
    idx = np.floor(phase * len(colors)).astype(int) % len(colors)
    return _to_u8(colors[idx])


def noise_texture(rng, size: int = TEXTURE_SIZE, octaves: int = 4, mild: bool = False) -> np.ndarray:
    """Fractal value noise mapped through a colour ramp (``mild``: low-contrast greyish variant)."""
    field = np.zeros((size, size))
    for o in range(octaves):
        cells = 4 * 2 ** o
        grid = rng.random((cells + 1, cells + 1))
        grid[-1], grid[:, -1] = grid[0], grid[:, 0]  # periodic, so the texture wraps seamlessly
        field += zoom(grid, size / (cells + 1), order=3)[:size, :size] / 2 ** o
    field = (field - field.min()) / max(np.ptp(field), 1e-9)
    if mild:
        base = rng.uniform(0.55, 0.75)
        tint = 1.0 + rng.uniform(-0.08, 0.08, 3)
        return _to_u8(((base + 0.25 * (field - 0.5))[..., None] * tint))
    colors = _palette(rng, 4)
    pos = field * (len(colors) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(colors) - 2)
    frac = (pos - lo)[..., None]
    return _to_u8(colors[lo] * (1 - frac) + colors[lo + 1] * frac)


def voronoi_texture(rng, size: int = TEXTURE_SIZE) -> np.ndarray:
    """Cells with random colours and dark borders (distance to nearest vs second-nearest site)."""
    sites = rng.random((int(rng.integers(20, 60)), 2))
    u, v = _uv_grid(size)
    dist, idx = cKDTree(sites).query(np.stack([u.ravel(), v.ravel()], 1), k=2)
    colors = _palette(rng, len(sites))
    border = np.clip((dist[:, 1] - dist[:, 0]) * size / 4.0, 0, 1)[:, None]
    return _to_u8((colors[idx[:, 0]] * (0.25 + 0.75 * border)).reshape(size, size, 3))


@lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    img = np.asarray(getattr(skimage.data, name)())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


def photo_texture(rng, name: str | None = None, size: int = 512) -> np.ndarray:
    """A scikit-image photograph (random colour one unless named), centre-cropped square and resized."""
    name = name or PHOTOS[int(rng.integers(len(PHOTOS)))]
    img = _photo(name)
    if name in GRAY_PHOTOS:  # tint grey photos so they are not all alike
        img = (img * (0.6 + 0.4 * _palette(rng, 1)[0])).astype(np.uint8)
    h, w = img.shape[:2]
    s = min(h, w)
    crop = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR))


TEXTURES: dict[str, Callable] = {"checker": checker_texture, "stripes": stripes_texture, "noise": noise_texture,
                                 "voronoi": voronoi_texture, "photo": photo_texture}


def texture(kind: str, rng) -> np.ndarray:
    """``kind`` is a pattern name, ``photo``, a scikit-image photo name, or ``plain`` (light grey)."""
    if kind == "plain":
        return np.full((8, 8, 3), 200, np.uint8)
    if kind in PHOTOS or kind in GRAY_PHOTOS:
        return photo_texture(rng, kind)
    return TEXTURES[kind](rng)


# ----------------------------------------------------------------------------------------------- deformations
def bumpy(part: Part, rng, amplitude: float, waves: int = 6, max_freq: float = 4.0) -> Part:
    """Radial displacement by a sum of random plane waves over the direction (smooth, seam-consistent)."""
    verts = part.vertices
    norm = np.linalg.norm(verts, axis=1, keepdims=True)
    dirs = verts / np.maximum(norm, 1e-12)
    scale = np.ones(len(verts))
    for _ in range(waves):
        k = rng.normal(size=3)
        k *= rng.uniform(1.0, max_freq) / np.linalg.norm(k)
        scale += amplitude / waves * np.sin(dirs @ k * np.pi + rng.uniform(0, 2 * np.pi))
    return Part(verts * scale[:, None], part.faces, part.uv, part.texture)


def twisted(part: Part, turns: float) -> Part:
    """Twist about the y axis, linear in height."""
    v = part.vertices
    y = (v[:, 1] - v[:, 1].min()) / max(np.ptp(v[:, 1]), 1e-12) - 0.5
    a = 2 * np.pi * turns * y
    c, s = np.cos(a), np.sin(a)
    verts = np.stack([c * v[:, 0] + s * v[:, 2], v[:, 1], -s * v[:, 0] + c * v[:, 2]], axis=1)
    return Part(verts, part.faces, part.uv, part.texture)


def rotated(part: Part, axis: str, degrees: float) -> Part:
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    R = {"x": [[1, 0, 0], [0, c, -s], [0, s, c]], "y": [[c, 0, s], [0, 1, 0], [-s, 0, c]],
         "z": [[c, -s, 0], [s, c, 0], [0, 0, 1]]}[axis]
    m = np.eye(4)
    m[:3, :3] = R
    return part.transformed(m)


# ----------------------------------------------------------------------------------------------- shapes
def sphere(tex, r=0.5, seg=96):
    t = np.linspace(-np.pi / 2, np.pi / 2, 33)
    return revolution_part(r * np.cos(t), r * np.sin(t), tex, segments=seg, samples=48)


def hemisphere(tex, r=0.5):
    """Dome (y >= 0) closed by a flat disc base — the paper's single training object is a hemisphere."""
    t = np.linspace(0, np.pi / 2, 25)
    prof_r = np.concatenate([np.linspace(0, r, 8)[:-1], r * np.cos(t)])
    prof_y = np.concatenate([np.zeros(7), r * np.sin(t)])
    return revolution_part(prof_r, prof_y, tex, segments=128, samples=64)


def cylinder(tex, r=0.3, h=1.0):
    return revolution_part([0, r, r, 0], [-h / 2, -h / 2, h / 2, h / 2], tex, samples=48)


def cone(tex, r=0.4, h=1.0):
    return revolution_part([0, r, 0], [-h / 2, -h / 2, h / 2], tex, samples=48)


def capsule(tex, r=0.25, h=0.6):
    t = np.linspace(-np.pi / 2, 0, 16)
    bottom_r, bottom_y = r * np.cos(t), -h / 2 + r * np.sin(t)
    return revolution_part(np.concatenate([bottom_r, bottom_r[::-1]]),
                           np.concatenate([bottom_y, -bottom_y[::-1]]), tex, samples=64)


def torus(tex, R=0.5, r=0.18, sides=48, segments=128, radius_fn=None):
    t = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    curve = np.stack([R * np.cos(t), np.zeros_like(t), R * np.sin(t)], 1)
    radius = r if radius_fn is None else radius_fn(np.linspace(0, 1, segments + 1))
    return tube_part(curve, radius, tex, sides=sides, closed=True)


def star_polygon(points=5, outer=0.5, inner=0.22):
    a = np.linspace(0, 2 * np.pi, 2 * points, endpoint=False) + np.pi / 2
    r = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


def gear_polygon(teeth=12, outer=0.5, inner=0.4, samples=8):
    a = np.linspace(0, 2 * np.pi, teeth * samples, endpoint=False)
    r = np.where((a * teeth / (2 * np.pi)) % 1.0 < 0.5, outer, inner)
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


def _builders() -> dict[str, Callable[[np.random.Generator], list[Part]]]:
    T = texture
    return {
        "hemisphere": lambda g: [hemisphere(T("plain", g))],
        "hemisphere_textured": lambda g: [hemisphere(noise_texture(g, mild=True))],
        "sphere_astronaut": lambda g: [sphere(T("astronaut", g))],
        "sphere_checker": lambda g: [sphere(T("checker", g))],
        "blob_noise": lambda g: [bumpy(sphere(T("noise", g)), g, 0.25)],
        "blob_voronoi": lambda g: [bumpy(sphere(T("voronoi", g)), g, 0.35, max_freq=3)],
        "spiky_sphere_chelsea": lambda g: [bumpy(sphere(T("chelsea", g), seg=128), g, 0.12, waves=12,
                                                 max_freq=9)],
        "torus_checker": lambda g: [torus(T("checker", g))],
        "torus_coffee": lambda g: [rotated(torus(T("coffee", g), r=0.22), "x", 60)],
        "torus_lumpy": lambda g: [torus(T("voronoi", g), radius_fn=lambda s: 0.14 + 0.06 * np.sin(6 * np.pi * s))],
        "box_chelsea": lambda g: [box_part((1.0, 0.7, 0.5), T("chelsea", g))],
        "box_stripes": lambda g: [box_part((0.6, 1.0, 0.6), T("stripes", g))],
        "cube_twisted": lambda g: [twisted(box_part((0.5, 1.0, 0.5), T("checker", g), subdivisions=24), 0.3)],
        "cylinder_rocket": lambda g: [cylinder(T("rocket", g), r=0.3, h=0.9)],
        "cone_voronoi": lambda g: [cone(T("voronoi", g))],
        "capsule_stripes": lambda g: [rotated(capsule(T("stripes", g)), "z", 35)],
        "star_prism": lambda g: [extrusion_part(star_polygon(), 0.25, T("checker", g))],
        "gear_astronaut": lambda g: [extrusion_part(gear_polygon(), 0.2, T("astronaut", g))],
        "vase_coffee": lambda g: [revolution_part(
            [0, 0.18, 0.3, 0.22, 0.12, 0.18, 0.0], [-0.5, -0.5, -0.2, 0.15, 0.35, 0.5, 0.5], T("coffee", g))],
        "pawn_noise": lambda g: [revolution_part(
            [0, 0.3, 0.3, 0.12, 0.09, 0.2, 0.12, 0.16, 0.0], [-0.5, -0.5, -0.4, -0.3, 0.05, 0.1, 0.15, 0.35, 0.5],
            T("noise", g))],
        "knot_immuno": lambda g: [_trefoil(T("immunohistochemistry", g))],
        "helix_stripes": lambda g: [_helix(T("stripes", g))],
        "snowman": lambda g: [sphere(T("noise", g), 0.3).moved((0, -0.25, 0)),
                              sphere(T("voronoi", g), 0.2).moved((0, 0.2, 0)),
                              rotated(cone(T("checker", g), 0.05, 0.2), "x", 90).moved((0, 0.22, 0.25))],
        "table": lambda g: [box_part((1.0, 0.08, 0.6), T("brick", g)).moved((0, 0.3, 0))] + [
            cylinder(T("stripes", g), 0.04, 0.6).moved((x, -0.03, z)) for x in (-0.42, 0.42) for z in (-0.22, 0.22)],
        "mushroom": lambda g: [hemisphere(T("voronoi", g), 0.5).moved((0, 0.05, 0), (1, 0.6, 1)),
                               cylinder(T("grass", g), 0.12, 0.5).moved((0, -0.2, 0))],
        "mug_cat": lambda g: [cylinder(T("cat", g), 0.3, 0.7),
                              rotated(torus(T("checker", g), 0.18, 0.05), "x", 90).moved((0.3, 0, 0))],
        "dumbbell": lambda g: [sphere(T("checker", g), 0.25).moved((-0.45, 0, 0)),
                               sphere(T("noise", g), 0.25).moved((0.45, 0, 0)),
                               rotated(cylinder(T("rocket", g), 0.07, 0.9), "z", 90)],
        "rocket_ship": lambda g: [cylinder(T("rocket", g), 0.15, 0.6), cone(T("stripes", g), 0.15, 0.3).moved(
            (0, 0.45, 0))] + [rotated(box_part((0.02, 0.25, 0.2), T("checker", g)), "y", a).transformed(
                _translate_rot(a, 0.2)) for a in (0, 120, 240)],
        "house": lambda g: [box_part((0.8, 0.5, 0.6), T("brick", g)).moved((0, -0.15, 0)),
                            extrusion_part([(-0.5, 0), (0.5, 0), (0, 0.35)], 0.7, T("stripes", g),
                                           kernel=(0, 0.1)).moved((0, 0.1, 0))],
        "arch_gravel": lambda g: [_arch(T("gravel", g))],
        "tori_chain": lambda g: [torus(T("checker", g), 0.25, 0.07).moved((-0.3, 0, 0)),
                                 rotated(torus(T("hubble_deep_field", g), 0.25, 0.07), "x", 90),
                                 torus(T("voronoi", g), 0.25, 0.07).moved((0.3, 0, 0))],
        "vertex_color_blob": None,  # vertex-coloured (ColorVisuals) variant, built separately
    }


def _translate_rot(angle_deg: float, dist: float) -> np.ndarray:
    m = np.eye(4)
    a = np.radians(angle_deg)
    m[:3, 3] = [dist * np.sin(a), -0.2, dist * np.cos(a)]
    return m


def _trefoil(tex):
    t = np.linspace(0, 2 * np.pi, 400, endpoint=False)
    curve = np.stack([np.sin(t) + 2 * np.sin(2 * t), np.cos(t) - 2 * np.cos(2 * t), -np.sin(3 * t)], 1) * 0.15
    return tube_part(curve, 0.08, tex, sides=32, closed=True)


def _helix(tex):
    t = np.linspace(0, 6 * np.pi, 300)
    curve = np.stack([0.35 * np.cos(t), t / (6 * np.pi) - 0.5, 0.35 * np.sin(t)], 1)
    return tube_part(curve, 0.06, tex, sides=24)


def _arch(tex):
    t = np.linspace(0, np.pi, 120)
    curve = np.stack([0.4 * np.cos(t), 0.5 * np.sin(t) - 0.2, np.zeros_like(t)], 1)
    return tube_part(curve, np.linspace(0.12, 0.06, len(t)) + 0.04 * np.sin(t * 4) ** 2, tex, sides=40)


def _vertex_color_blob(rng) -> trimesh.Trimesh:
    part = bumpy(sphere(np.zeros((1, 1, 3), np.uint8)), rng, 0.2)
    mesh = trimesh.Trimesh(part.vertices, part.faces, process=False)
    d = part.vertices / np.linalg.norm(part.vertices, axis=1, keepdims=True)
    freq = rng.uniform(2, 5, 3)
    colors = 0.5 + 0.5 * np.sin(d * freq * np.pi + rng.uniform(0, 2 * np.pi, 3))
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=_to_u8(colors))
    return mesh


PROCEDURAL_OBJECTS: list[str] = list(_builders())

# held-out objects never used for training (different shapes AND textures from the train set's dominant ones)
_EVAL_OBJECTS = ("sphere_astronaut", "torus_coffee", "box_chelsea", "cone_voronoi", "gear_astronaut", "vase_coffee",
                 "knot_immuno", "mug_cat", "house", "tori_chain")


def procedural_split() -> tuple[list[str], list[str]]:
    """(train names, held-out evaluation names), disjoint; the paper's hemisphere is a training object."""
    evaluation = [n for n in PROCEDURAL_OBJECTS if n in _EVAL_OBJECTS]
    return [n for n in PROCEDURAL_OBJECTS if n not in _EVAL_OBJECTS], evaluation


def procedural_object(name: str, seed: int = 0) -> trimesh.Trimesh:
    """Build (un-normalised) procedural object ``name``; identical for identical (name, seed)."""
    if name not in PROCEDURAL_OBJECTS:
        raise KeyError(f"unknown procedural object {name!r}; known: {', '.join(PROCEDURAL_OBJECTS)}")
    rng = np.random.default_rng([int(seed), zlib.crc32(name.encode())])
    if name == "vertex_color_blob":
        return _vertex_color_blob(rng)
    return assemble(_builders()[name](rng))


# ----------------------------------------------------------------------------------------------- specs
def parse_spec(spec: str) -> tuple[str, str, int]:
    """``(kind, value, seed)`` with kind in {procedural, objaverse, sh3d, file}.

    Procedural names, Objaverse uids and sh3d ``<library>/<item>`` become directory names (:func:`object_dir_name`),
    so they are validated here (:class:`corr3d.errors.UnsafePathError` for ``..``, separators, absolute paths): a
    spec from a config or an object list can never address a directory outside the render root.
    """
    spec = str(spec)
    if spec.startswith("procedural:"):
        rest = spec.split(":", 1)[1]
        name, _, seed = rest.partition(":")
        safe_name(name, "procedural object name", fix=f"use one of: {', '.join(PROCEDURAL_OBJECTS)}")
        try:
            seed_value = int(seed) if seed else 0
        except ValueError:
            raise Corr3dUserError(f"object spec {spec!r}: seed {seed!r} is not an integer",
                                  fix="write procedural:<name> or procedural:<name>:<integer seed>") from None
        return "procedural", name, seed_value
    if spec.startswith("objaverse:"):
        return "objaverse", validate_uid(spec.split(":", 1)[1]), 0
    if spec.startswith(SH3D_PREFIX):
        library, item = parse_item(spec[len(SH3D_PREFIX):])
        return "sh3d", f"{library}/{item}", 0
    return "file", spec, 0


def objaverse_path(uid: str) -> Path:
    """Local path of an Objaverse GLB via the objaverse package's cache (no download: the cache must hold it)."""

    objaverse = import_extra("objaverse")  # deferred: the [objaverse] extra, only Objaverse objects need it

    base = Path(objaverse._VERSIONED_PATH)
    index = base / "object-paths.json.gz"
    if index.exists():
        with gzip.open(index, "rt") as f:
            rel = json.load(f).get(uid)
        if rel and (base / rel).is_file():
            return ensure_within(base, base / rel, "objaverse index entry")
    hits = list((base / "glbs").glob(f"*/{uid}.glb"))
    if hits:
        return hits[0]
    raise MeshLoadError(f"objaverse object {uid} is not in the local cache {base} (download it first)")


def load_object(spec: str) -> trimesh.Trimesh:
    """The object of ``spec``, centred with unit max extent; ``metadata`` holds spec and normalisation."""
    kind, value, seed = parse_spec(spec)
    if kind == "procedural":
        mesh = procedural_object(value, seed)
    elif kind == "objaverse":
        mesh = load_mesh_file(objaverse_path(value))
    elif kind == "sh3d":
        mesh = load_sh3d(value)
    else:
        mesh = load_mesh_file(value)
    mesh = normalize_mesh(mesh)
    mesh.metadata["spec"] = str(spec)
    return mesh


def object_dir_name(spec: str) -> str:
    """A filesystem-safe, unique directory name for a spec."""
    kind, value, seed = parse_spec(spec)
    if kind == "procedural":
        return f"procedural_{value}" + (f"_s{seed}" if seed else "")
    if kind == "objaverse":
        return f"objaverse_{value}"
    if kind == "sh3d":
        return "sh3d_" + value.replace("/", "_")
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(value).stem)[:60]
    return f"file_{stem}_{zlib.crc32(str(Path(value).resolve()).encode()):08x}"


__all__ = ["PROCEDURAL_OBJECTS", "procedural_split", "procedural_object", "load_object", "parse_spec",
           "object_dir_name", "objaverse_path", "texture", "MeshLoadError", "merge_parts", "parametric_part"]
