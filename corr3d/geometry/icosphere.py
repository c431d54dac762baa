"""Icosphere viewpoints and look-at poses (the paper's 42 cameras: level-1 icosphere at distance 2)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from corr3d.geometry.cameras import intrinsics

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


@dataclass
class IcosphereCameras:
    """The paper's camera rig: icosphere viewpoints at a fixed distance with shared pinhole intrinsics."""

    subdivisions: int = 1
    distance: float = 2.0
    width: int = 512
    height: int = 512
    focal: float = 560.0
    up: tuple = DEFAULT_UP
    poses: np.ndarray = field(init=False, repr=False)
    K: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        self.poses = icosphere_poses(self.subdivisions, self.distance, self.up)
        self.K = intrinsics(self.focal, self.width, self.height)

    @property
    def num_views(self) -> int:
        return len(self.poses)

    def __len__(self) -> int:
        return self.num_views
