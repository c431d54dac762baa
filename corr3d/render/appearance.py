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


def barycentric_weights(bary: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The corner weights (1-u-v, u, v) of open3d's barycentrics ``bary`` (N,2), each (N,1) float64."""
    bary = np.asarray(bary, dtype=np.float64)
    return (1.0 - (bary[:, 0] + bary[:, 1]))[:, None], bary[:, 0:1], bary[:, 1:2]


def interpolate(values: np.ndarray, corners: np.ndarray, weights) -> np.ndarray:
    """(N,C) float64 ``values`` (per vertex, (V,C)) at hits on triangles ``corners`` (N,3) with corner ``weights``
    (:func:`barycentric_weights`).

    Bit for bit ``(values[corners] * w[:, :, None]).sum(1)``, without its (N,3,C) temporary and its slow length-3
    reduction: numpy's sum adds the terms in order starting from +0.0 (so a -0.0 result becomes +0.0), which the
    leading ``0.0 +`` reproduces (tests/render/test_raycast.py compares the two).
    """
    w0, w1, w2 = weights
    return 0.0 + values[corners[:, 0]] * w0 + values[corners[:, 1]] * w1 + values[corners[:, 2]] * w2


def texel_table(image: np.ndarray) -> np.ndarray:
    """``image`` (H,W,C) as a flat table of texels for :func:`sample_bilinear`'s gathers: a uint8 RGB image becomes
    (H*W,) uint32, each texel padded to 4 bytes, because numpy gathers one 4-byte item ~10x faster than a 3-byte
    row; any other image is (H*W, C)."""
    h, w = image.shape[:2]
    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        padded = np.zeros((h, w, 4), dtype=np.uint8)
        padded[:, :, :3] = image
        return padded.reshape(-1).view(np.uint32)
    return image.reshape(h * w, -1)


def sample_bilinear(image: np.ndarray, uv: np.ndarray, texels: np.ndarray | None = None) -> np.ndarray:
    """(N,3) float colours in [0,1] of ``image`` (H,W,3; uint8, or float in [0,1]) at UVs (N,2), repeat wrapping.
    ``texels``: ``texel_table(image)`` when the caller keeps one (it is built here otherwise)."""
    h, w = image.shape[:2]
    x = uv[:, 0] * w - 0.5
    y = (1.0 - uv[:, 1]) * h - 0.5  # v = 0 is the bottom row
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    x1, y1 = x0 + 1, y0 + 1
    if x0.min(initial=0) < 0 or x1.max(initial=0) >= w:  # wrap (the integer modulo is slow; most UVs need none)
        x0, x1 = x0 % w, x1 % w
    if y0.min(initial=0) < 0 or y1.max(initial=0) >= h:
        y0, y1 = y0 % h, y1 % h
    # the 4 texels of every sample in one flat gather (the same values as 2-D fancy indexing, several times faster);
    # a uint8 image is converted after the gather: the same float32 values as converting the whole image first,
    # without touching every texel, and gathering from the 4x smaller uint8 array stays in cache
    texels = texel_table(image) if texels is None else texels
    row0, row1 = y0 * w, y1 * w
    corner = texels[np.stack([row0 + x0, row0 + x1, row1 + x0, row1 + x1], axis=1)]
    if corner.dtype == np.uint32:  # packed RGB0 texels: back to (N, 4, 3) uint8
        corner = corner.view(np.uint8).reshape(len(corner), 4, 4)[:, :, :3]
    if corner.dtype == np.uint8:
        corner = corner.astype(np.float32) / 255.0
    gx = 1 - fx
    top = corner[:, 0] * gx + corner[:, 1] * fx
    bottom = corner[:, 2] * gx + corner[:, 3] * fx
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
            self.texture = np.asarray(image.convert("RGB"), dtype=np.uint8)  # to float per sample (sample_bilinear)
            self.texels = texel_table(self.texture)  # built once per mesh
            self.uv = np.asarray(visual.uv, dtype=np.float64)

    def vertex_attributes(self) -> np.ndarray | None:
        """(V,k) float64 per-vertex values the albedo is interpolated from (UVs or vertex colours), or None when it
        is not (face colours, flat). The renderer interpolates them with its other per-vertex values in one pass."""
        if self.texture is not None:
            return self.uv
        if self.vertex_colors is not None:
            return self.vertex_colors.astype(np.float64)  # exact: the products below upcast float32 anyway
        return None

    def albedo(self, face_ids: np.ndarray, bary: np.ndarray) -> np.ndarray:
        """(N,3) float32 albedo in [0,1] at hits on ``face_ids`` with barycentrics (u, v) (weights 1-u-v, u, v)."""
        attributes = self.vertex_attributes()
        if attributes is not None:
            attributes = interpolate(attributes, self.faces[face_ids], barycentric_weights(bary))
        return self.albedo_at(face_ids, attributes)

    def albedo_at(self, face_ids: np.ndarray, attributes: np.ndarray | None) -> np.ndarray:
        """:meth:`albedo` from the hits' interpolated :meth:`vertex_attributes` ((N,k), or None when there are none)."""
        if self.texture is not None:
            color = sample_bilinear(self.texture, attributes, self.texels)
        elif self.vertex_colors is not None:
            color = attributes
        elif self.face_colors is not None:
            color = self.face_colors[face_ids]
        else:
            color = np.ones((len(face_ids), 3))
        return np.clip(color * self.factor, 0.0, 1.0).astype(np.float32)
