"""Surface colour (albedo) of ray hits: texture lookup through barycentric-interpolated UVs, or vertex/face colours.

Conventions follow trimesh/glTF: UV (0, 0) is the bottom-left of the texture image; textures repeat outside [0, 1];
glTF's baseColorFactor multiplies the texture. Sampling is bilinear between texel centres.
"""
from __future__ import annotations

import numpy as np
import trimesh

DEFAULT_ALBEDO = (0.7, 0.7, 0.7)


def _rgb01(color) -> np.ndarray:
    c = np.asarray(color, dtype=np.float64).ravel()[:3]
    return c / 255.0 if c.max() > 1.0 else c


def sample_bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """(N,3) float colours in [0,1] of ``image`` (H,W,3; uint8, or float in [0,1]) at UVs (N,2), repeat wrapping."""
    h, w = image.shape[:2]
    x = uv[:, 0] * w - 0.5
    y = (1.0 - uv[:, 1]) * h - 0.5  # v = 0 is the bottom row
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    x1, y1 = (x0 + 1) % w, (y0 + 1) % h
    x0, y0 = x0 % w, y0 % h
    img = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image
    top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
    bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


class Appearance:
    """Albedo lookup for one mesh; ``albedo(face_ids, bary)`` with bary = open3d's (u, v) barycentrics."""

    def __init__(self, mesh: trimesh.Trimesh):
        self.faces = np.asarray(mesh.faces, dtype=np.int64)
        self.uv = self.texture = self.vertex_colors = self.face_colors = None
        self.factor = np.ones(3)
        visual = mesh.visual
        if isinstance(visual, trimesh.visual.TextureVisuals):
            self._from_material(visual)
        elif isinstance(visual, trimesh.visual.ColorVisuals) and visual.kind == "vertex":
            self.vertex_colors = np.asarray(visual.vertex_colors[:, :3], dtype=np.float32) / 255.0
        elif isinstance(visual, trimesh.visual.ColorVisuals) and visual.kind == "face":
            self.face_colors = np.asarray(visual.face_colors[:, :3], dtype=np.float32) / 255.0
        else:
            self.factor = np.asarray(DEFAULT_ALBEDO)

    def _from_material(self, visual) -> None:
        material = visual.material
        image = getattr(material, "baseColorTexture", None)
        if image is None:
            image = getattr(material, "image", None)
        if isinstance(material, trimesh.visual.material.PBRMaterial):
            if material.baseColorFactor is not None:
                self.factor = _rgb01(material.baseColorFactor)
        elif image is None and material is not None:
            self.factor = _rgb01(material.main_color)
        if image is not None and visual.uv is not None and len(visual.uv):
            self.texture = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # converted once per mesh
            self.uv = np.asarray(visual.uv, dtype=np.float64)

    def albedo(self, face_ids: np.ndarray, bary: np.ndarray) -> np.ndarray:
        """(N,3) float32 albedo in [0,1] at hits on ``face_ids`` with barycentrics (u, v) (weights 1-u-v, u, v)."""
        corners = self.faces[face_ids]
        w = np.concatenate([1.0 - bary.sum(1, keepdims=True), bary], axis=1)[:, :, None]
        if self.texture is not None:
            uv = (self.uv[corners] * w).sum(1)
            color = sample_bilinear(self.texture, uv)
        elif self.vertex_colors is not None:
            color = (self.vertex_colors[corners] * w).sum(1)
        elif self.face_colors is not None:
            color = self.face_colors[face_ids]
        else:
            color = np.ones((len(face_ids), 3))
        return np.clip(color * self.factor, 0.0, 1.0).astype(np.float32)
