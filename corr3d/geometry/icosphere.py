"""Icosphere viewpoints and look-at poses (the paper's 42 cameras: level-1 icosphere at distance 2).

Two rigs of 42 views (``data.render.views``):
- ``corr3d``: the classic icosahedron (vertices at (0, +-1, +-phi)...) subdivided once; relative to the up axis it is
  rotated (elevations 0, +-18, +-30, +-31.7, +-54, +-58.3, +-90 deg).
- ``authors``: the authors' ``data/obj_poses.npy`` (3DCorrEnhance). Their directions are the vertices of Blender's
  ico sphere primitive (subdivisions=2 in Blender's count), which has a 5-fold vertex at each pole of the z axis:
  elevations 0, +-26.6, +-31.7, +-58.3, +-90 deg; every camera looks at the origin with image up = +z projected
  (no roll; at the poles image down is -y). Their frame is Blender's z-up object frame; glTF objects are imported
  into Blender with y_gltf -> z_blender, so in corr3d's y-up object frame the same cameras are obtained by the
  shortest rotation taking +z to ``up`` (x unchanged, -y_blender -> +z_gltf).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from corr3d.geometry.cameras import intrinsics, invert_pose

DEFAULT_UP = (0.0, 1.0, 0.0)  # glTF/Objaverse objects are y-up; keeps rendered objects upright in the images


def _icosahedron() -> tuple[np.ndarray, np.ndarray]:
    phi = (1.0 + 5.0 ** 0.5) / 2.0
    verts = np.array([[-1, phi, 0], [1, phi, 0], [-1, -phi, 0], [1, -phi, 0],
                      [0, -1, phi], [0, 1, phi], [0, -1, -phi], [0, 1, -phi],
                      [phi, 0, -1], [phi, 0, 1], [-phi, 0, -1], [-phi, 0, 1]], dtype=np.float64)
    faces = np.array([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11],
                      [1, 5, 9], [5, 11, 4], [11, 10, 2], [10, 7, 6], [7, 1, 8],
                      [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9],
                      [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]], dtype=np.int64)
    return verts / np.linalg.norm(verts, axis=1, keepdims=True), faces


def icosphere(subdivisions: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Unit icosphere (vertices (V,3), faces (F,3)); vertex order is deterministic (parents first)."""
    verts, faces = _icosahedron()
    verts = list(verts)
    for _ in range(subdivisions):
        midpoint: dict[tuple[int, int], int] = {}

        def mid(a: int, b: int) -> int:
            key = (min(a, b), max(a, b))
            if key not in midpoint:
                m = verts[a] + verts[b]
                verts.append(m / np.linalg.norm(m))
                midpoint[key] = len(verts) - 1
            return midpoint[key]

        new_faces = []
        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new_faces += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
        faces = np.array(new_faces, dtype=np.int64)
    return np.array(verts), faces


def icosphere_directions(subdivisions: int = 1) -> np.ndarray:
    """(V,3) unit directions: 12, 42, 162, ... for subdivisions 0, 1, 2."""
    return icosphere(subdivisions)[0]


def look_at_pose(camera_position, target=(0.0, 0.0, 0.0), up=DEFAULT_UP) -> np.ndarray:
    """OpenCV object->camera 4x4 for a camera at ``camera_position`` looking at ``target``.

    Image "up" (-y) follows ``up`` projected onto the image plane; when the viewing direction is (anti)parallel to
    ``up`` a fixed fallback axis is used so the pose stays well defined and deterministic.
    """
    eye = np.asarray(camera_position, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - eye
    forward /= np.linalg.norm(forward)
    up = np.asarray(up, dtype=np.float64)
    up = up / np.linalg.norm(up)
    if abs(forward @ up) > 1.0 - 1e-9:
        up = np.array([0.0, 0.0, 1.0]) if abs(up[2]) < 0.9 else np.array([0.0, 1.0, 0.0])
        up = up - (up @ forward) * forward
    right = np.cross(forward, up)  # OpenCV: x = y × z with y = -up
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    R = np.stack([right, down, forward])
    pose = np.eye(4)
    pose[:3, :3] = R
    pose[:3, 3] = -R @ eye
    return pose


def icosphere_poses(subdivisions: int = 1, distance: float = 2.0, up=DEFAULT_UP) -> np.ndarray:
    """(V,4,4) object->camera poses on an icosphere of radius ``distance``, all looking at the origin."""
    return np.stack([look_at_pose(d * distance, up=up) for d in icosphere_directions(subdivisions)])


# -- the authors' rig ------------------------------------------------------------------------------------------
VIEWS = ("corr3d", "authors")
# Blender's ico sphere primitive (bmesh/operators/bmo_primitive.cc ``icovert``/``icoface``): 12 vertices of radius
# ~200 with 5-6 significant digits (so not exactly unit after /200) and the 20 faces in creation order.
_BLENDER_ICOVERT = np.array([
    [0.0, 0.0, -200.0], [144.72, -105.144, -89.443], [-55.277, -170.128, -89.443], [-178.885, 0.0, -89.443],
    [-55.277, 170.128, -89.443], [144.72, 105.144, -89.443], [55.277, -170.128, 89.443],
    [-144.72, -105.144, 89.443], [-144.72, 105.144, 89.443], [55.277, 170.128, 89.443], [178.885, 0.0, 89.443],
    [0.0, 0.0, 200.0]])
_BLENDER_ICOFACE = ((0, 1, 2), (1, 0, 5), (0, 2, 3), (0, 3, 4), (0, 4, 5), (1, 5, 10), (2, 1, 6), (3, 2, 7),
                    (4, 3, 8), (5, 4, 9), (1, 10, 6), (2, 6, 7), (3, 7, 8), (4, 8, 9), (5, 9, 10), (6, 10, 11),
                    (7, 6, 11), (8, 7, 11), (9, 8, 11), (10, 9, 11))
# The authors' view k is vertex AUTHORS_VIEW_ORDER[k] of ``blender_icosphere_directions``. Their file lists the
# vertices by ascending z, and the ties (mirror pairs, the equator) in an order that no sort rule reproduces
# (an unstable sort of Blender's vertex list), so the order is recorded here, read off data/obj_poses.npy.
AUTHORS_VIEW_ORDER = (0, 14, 20, 15, 12, 18, 21, 13, 17, 19, 16, 2, 4, 5, 1, 3, 26, 27, 28, 29, 30, 31, 22, 23, 24,
                      25, 10, 7, 8, 9, 6, 34, 36, 32, 33, 35, 37, 39, 40, 41, 38, 11)


def blender_icosphere_directions() -> np.ndarray:
    """(42, 3) unit directions of Blender's ico sphere (subdivisions=2): the 12 ``icovert`` vertices, then one new
    vertex per edge (edges in the order the faces create them), each edge midpoint pushed onto the unit sphere."""
    base = _BLENDER_ICOVERT / 200.0
    edges: dict[tuple[int, int], None] = {}
    for face in _BLENDER_ICOFACE:
        for a, b in zip(face, face[1:] + face[:1]):
            edges.setdefault((min(a, b), max(a, b)), None)
    mids = np.array([(base[a] + base[b]) / 2.0 for a, b in edges])
    mids /= np.linalg.norm(mids, axis=1, keepdims=True)
    dirs = np.concatenate([base, mids])
    return dirs / np.linalg.norm(dirs, axis=1, keepdims=True)


def rotation_z_to(up) -> np.ndarray:
    """Shortest rotation taking +z to the unit vector along ``up`` (180 deg about x when ``up`` is -z)."""
    up = np.asarray(up, dtype=np.float64)
    norm = np.linalg.norm(up)
    if up.shape != (3,) or not np.isfinite(norm) or norm == 0:
        raise ValueError(f"up must be a non-zero 3-vector, got {up!r}")
    up = up / norm
    z = np.array([0.0, 0.0, 1.0])
    axis = np.cross(z, up)
    s, c = np.linalg.norm(axis), float(z @ up)
    if s < 1e-12:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    k = axis / s
    K = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + s * K + (1.0 - c) * (K @ K)  # Rodrigues


def authors_poses(distance: float = 2.0, up=DEFAULT_UP) -> np.ndarray:
    """(42,4,4) OpenCV object->camera poses of the authors' rig (see the module docstring), in the object frame
    whose up axis is ``up``; with ``up`` = +z they are the authors' ``obj_poses.npy`` (to float32 round-off)."""
    dirs = blender_icosphere_directions()[list(AUTHORS_VIEW_ORDER)]
    # in the authors' z-up frame: look-at with up +z; at the poles look_at_pose's fallback (+y) gives their image
    # down = -y
    blender = np.stack([look_at_pose(d * distance, up=(0.0, 0.0, 1.0)) for d in dirs])
    to_obj = np.eye(4)
    to_obj[:3, :3] = rotation_z_to(up)
    # X_cam = P_blender @ X_blender and X_blender = R^T X_obj: a pose in the object frame is P_blender @ R^T
    return blender @ invert_pose(to_obj)


def rig_poses(views: str = "corr3d", subdivisions: int = 1, distance: float = 2.0, up=DEFAULT_UP) -> np.ndarray:
    """The poses of ``data.render.views``: ``corr3d`` (``icosphere_poses``) or ``authors`` (``authors_poses``;
    a fixed 42-view rig, so ``subdivisions`` must be 1)."""
    if views == "corr3d":
        return icosphere_poses(subdivisions, distance, up)
    if views == "authors":
        if subdivisions != 1:
            raise ValueError(f"views='authors' is the authors' fixed 42-view rig (icosphere_subdivisions=1), got "
                             f"icosphere_subdivisions={subdivisions}")
        return authors_poses(distance, up)
    raise ValueError(f"views must be one of {VIEWS}, got {views!r}")


@dataclass
class IcosphereCameras:
    """The paper's camera rig: icosphere viewpoints at a fixed distance with shared pinhole intrinsics."""

    subdivisions: int = 1
    distance: float = 2.0
    width: int = 512
    height: int = 512
    focal: float = 560.0
    up: tuple = DEFAULT_UP
    views: str = "corr3d"  # data.render.views: "corr3d" or "authors" (see rig_poses)
    poses: np.ndarray = field(init=False, repr=False)
    K: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        self.poses = rig_poses(self.views, self.subdivisions, self.distance, self.up)
        self.K = intrinsics(self.focal, self.width, self.height)

    @property
    def num_views(self) -> int:
        return len(self.poses)

    def __len__(self) -> int:
        return self.num_views
