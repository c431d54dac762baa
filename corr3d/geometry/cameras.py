"""Pinhole cameras in the project's conventions.

- Pixel coordinates are continuous: the top-left image corner is (0, 0), the centre of pixel (row r, col c) is
  (c + 0.5, r + 0.5); ``intrinsics`` puts the principal point at (W/2, H/2), the image centre.
- Poses are OpenCV object(world)->camera 4x4 matrices: X_cam = R @ X_obj + t, x right, y down, z forward.
- Depth is the camera-space z (distance along the optical axis), not the ray length.

Functions accept numpy arrays (float64 maths) and torch tensors (computed in torch, same dtype/device).
"""
from __future__ import annotations

import numpy as np

from corr3d.geometry.pixels import pixel_centres, torch_of


def _is_torch(x) -> bool:
    return torch_of(x) is not None


def _like(value, ref):
    """``value`` (numpy) converted to the array type, dtype and device of ``ref``."""
    torch = torch_of(ref)
    if torch is not None:
        return torch.as_tensor(np.asarray(value), dtype=ref.dtype, device=ref.device)
    return np.asarray(value, dtype=np.float64)


def intrinsics(focal: float, width: int, height: int, cx: float | None = None, cy: float | None = None) -> np.ndarray:
    """3x3 K with square pixels; principal point at the image centre unless given."""
    cx = width / 2.0 if cx is None else cx
    cy = height / 2.0 if cy is None else cy
    return np.array([[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def scale_intrinsics(K, sx: float, sy: float | None = None) -> np.ndarray:
    """K for an image resized by (sx, sy); exact under the continuous pixel convention (corner at 0)."""
    sy = sx if sy is None else sy
    return np.diag([sx, sy, 1.0]) @ np.asarray(K, dtype=np.float64)


def invert_pose(pose):
    """Inverse of a rigid 4x4 (or batch ...x4x4) transform without a general matrix inverse."""
    torch = torch_of(pose)
    if torch is not None:
        R, t = pose[..., :3, :3], pose[..., :3, 3:]
        Rt = R.transpose(-1, -2)
        out = torch.zeros_like(pose)
        out[..., :3, :3] = Rt
        out[..., :3, 3:] = -Rt @ t
        out[..., 3, 3] = 1
        return out
    pose = np.asarray(pose, dtype=np.float64)
    R, t = pose[..., :3, :3], pose[..., :3, 3:]
    Rt = np.swapaxes(R, -1, -2)
    out = np.zeros_like(pose)
    out[..., :3, :3] = Rt
    out[..., :3, 3:] = -Rt @ t
    out[..., 3, 3] = 1.0
    return out


def camera_center(pose):
    """Camera position in object space, -R^T t."""
    if _is_torch(pose):
        return -(pose[..., :3, :3].transpose(-1, -2) @ pose[..., :3, 3:])[..., 0]
    pose = np.asarray(pose, dtype=np.float64)
    return -(np.swapaxes(pose[..., :3, :3], -1, -2) @ pose[..., :3, 3:])[..., 0]


def transform_points(points, pose):
    """(N,3) points mapped by a 4x4 rigid transform."""
    if not _is_torch(points):
        points = np.asarray(points, dtype=np.float64)
        pose = np.asarray(pose, dtype=np.float64)
    else:
        pose = _like(pose, points) if not _is_torch(pose) else pose.to(points)
    return points @ pose[:3, :3].T + pose[:3, 3]


def project(points, K, pose):
    """Object-space points (N,3) -> continuous pixel coordinates uv (N,2) and camera depth z (N,).

    Points behind the camera get uv computed with their (negative) z; callers filter on z > 0.
    """
    cam = transform_points(points, pose)
    torch = torch_of(cam)
    if torch is not None:
        K = K.to(cam) if _is_torch(K) else _like(K, cam)
    else:
        K = np.asarray(K, dtype=np.float64)
    z = cam[:, 2]
    denom = z + (z == 0) * 1e-12  # no division by zero for points exactly on the camera plane
    x = cam[:, 0] / denom
    y = cam[:, 1] / denom
    u = K[0, 0] * x + K[0, 1] * y + K[0, 2]
    v = K[1, 1] * y + K[1, 2]
    uv = torch.stack([u, v], dim=-1) if torch is not None else np.stack([u, v], axis=-1)
    return uv, z


def pixel_rays(uv, K, pose):
    """Ray origins (N,3) and directions (N,3) in object space through continuous pixels ``uv``.

    Directions are NOT normalised: their camera-space z component is 1, so a hit at parameter t has depth t.
    """
    uv = np.asarray(uv, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    pose = np.asarray(pose, dtype=np.float64)
    homog = np.concatenate([uv, np.ones((len(uv), 1))], axis=1)
    cam_dirs = homog @ np.linalg.inv(K).T  # z == 1 exactly (last row of K^-1 is [0, 0, 1])
    R = pose[:3, :3]
    dirs = cam_dirs @ R  # R^T applied to row vectors
    origins = np.broadcast_to(camera_center(pose), dirs.shape)
    return np.ascontiguousarray(origins), dirs


def unproject(uv, depth, K, pose):
    """Continuous pixels (N,2) with camera depth (N,) -> object-space points (N,3)."""
    torch = torch_of(uv)
    if torch is not None:
        dt = uv.dtype
        K = K.to(uv) if _is_torch(K) else _like(K, uv)
        pose = pose.to(uv) if _is_torch(pose) else _like(pose, uv)
        x = (uv[:, 0] - K[0, 2] - K[0, 1] * (uv[:, 1] - K[1, 2]) / K[1, 1]) / K[0, 0]
        y = (uv[:, 1] - K[1, 2]) / K[1, 1]
        cam = torch.stack([x * depth, y * depth, depth.to(dt)], dim=-1)
        return (cam - pose[:3, 3]) @ pose[:3, :3]
    uv = np.asarray(uv, dtype=np.float64)
    depth = np.asarray(depth, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    pose = np.asarray(pose, dtype=np.float64)
    y = (uv[:, 1] - K[1, 2]) / K[1, 1]
    x = (uv[:, 0] - K[0, 2] - K[0, 1] * y) / K[0, 0]
    cam = np.stack([x * depth, y * depth, depth], axis=-1)
    return (cam - pose[:3, 3]) @ pose[:3, :3]


def depth_to_xyz(depth, K, pose, mask=None) -> np.ndarray:
    """(H, W) camera depth -> (H, W, 3) float32 object-space points, 0 where depth <= 0 (or outside ``mask``)."""
    depth = np.asarray(depth)
    h, w = depth.shape
    valid = depth > 0 if mask is None else (np.asarray(mask, dtype=bool) & (depth > 0))
    out = np.zeros((h, w, 3), dtype=np.float32)
    rows, cols = np.nonzero(valid)
    uv = pixel_centres(rows, cols, dtype=np.float64)
    out[rows, cols] = unproject(uv, depth[rows, cols], K, pose).astype(np.float32)
    return out


def xyz_to_depth(xyz, pose, mask) -> np.ndarray:
    """(H, W, 3) object-space points -> (H, W) float32 camera depth (0 outside ``mask``)."""
    xyz = np.asarray(xyz, dtype=np.float64)
    pose = np.asarray(pose, dtype=np.float64)
    z = xyz @ pose[2, :3] + pose[2, 3]
    return np.where(mask, z, 0.0).astype(np.float32)
