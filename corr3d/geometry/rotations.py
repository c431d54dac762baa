"""Rotation utilities: angles between camera orientations."""
from __future__ import annotations

import numpy as np


def rotation_angle_deg(R) -> float:
    """Angle (degrees) of a 3x3 rotation matrix, robust to round-off near 0 and 180 degrees."""
    R = np.asarray(R, dtype=np.float64)
    cos = np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.degrees(np.arccos(cos)))


def relative_rotation_deg(pose_a, pose_b) -> float:
    """Angle (degrees) of the rotation taking camera a's orientation to camera b's (accepts 4x4 or 3x3)."""
    Ra = np.asarray(pose_a, dtype=np.float64)[:3, :3]
    Rb = np.asarray(pose_b, dtype=np.float64)[:3, :3]
    return rotation_angle_deg(Rb @ Ra.T)


def relative_rotation_matrix_deg(poses) -> np.ndarray:
    """(V,V) pairwise relative rotation angles (degrees) of a stack of poses."""
    R = np.asarray(poses, dtype=np.float64)[:, :3, :3]
    rel = np.einsum("aij,bkj->abik", R, R)  # R_a @ R_b^T
    cos = np.clip((np.trace(rel, axis1=2, axis2=3) - 1.0) / 2.0, -1.0, 1.0)
    return np.degrees(np.arccos(cos))


def viewing_angle_deg(pose_a, pose_b) -> float:
    """Angle (degrees) between the two cameras' optical axes."""
    za = np.asarray(pose_a, dtype=np.float64)[2, :3]
    zb = np.asarray(pose_b, dtype=np.float64)[2, :3]
    return float(np.degrees(np.arccos(np.clip(za @ zb, -1.0, 1.0))))
