"""Multiview rendering with exact per-pixel geometry (ray casting), storage and batch rendering.

``render_views`` (in-memory), ``render_object`` / ``ensure_rendered`` (on disk, atomic; see ``corr3d.render.store``
for the directory format).
"""
from corr3d.render.raycast import PAPER_LIGHTS, Lighting, RaycastRenderer, render_views


def render_object(spec, out_dir, render_cfg=None):
    # deferred: circular (corr3d.render.batch imports this package)
    from corr3d.render.batch import render_object as _render_object

    return _render_object(spec, out_dir, render_cfg)


def ensure_rendered(specs, root, render_cfg=None, workers=None, progress=False):
    # deferred: circular (corr3d.render.batch imports this package)
    from corr3d.render.batch import ensure_rendered as _ensure_rendered

    return _ensure_rendered(specs, root, render_cfg, workers=workers, progress=progress)


__all__ = ["PAPER_LIGHTS", "Lighting", "RaycastRenderer", "render_views", "render_object", "ensure_rendered"]
