"""Small rigid-transform builders shared by the pose-metric tests."""
from __future__ import annotations

import numpy as np


def rot_z(deg: float) -> np.ndarray:
    """(3, 3) rotation by ``deg`` degrees about the z axis."""
    a = np.radians(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def pose(R=np.eye(3), t=(0.0, 0.0, 0.0)) -> np.ndarray:
    """(4, 4) homogeneous transform with rotation ``R`` and translation ``t``."""
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T
