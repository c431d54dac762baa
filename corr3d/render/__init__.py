"""Multiview rendering with exact per-pixel geometry (ray casting), storage and batch rendering.

``render_views`` (in-memory), ``render_object`` / ``ensure_rendered`` (on disk, atomic; see ``corr3d.render.store``
for the directory format).
"""
from corr3d.render.batch import ensure_rendered, render_object
from corr3d.render.raycast import PAPER_LIGHTS, Lighting, RaycastRenderer, render_views

__all__ = ["PAPER_LIGHTS", "Lighting", "RaycastRenderer", "render_views", "render_object", "ensure_rendered"]
