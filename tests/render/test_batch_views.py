"""``data.render.views: authors`` reaches the renderer and the render cache key (corr3d's own views keep their
earlier hashes, so existing renders stay valid)."""
from __future__ import annotations

import numpy as np

from corr3d.geometry.icosphere import rig_poses
from corr3d.render.batch import render_rig, render_settings, settings_hash


def test_the_authors_views_change_the_rig_and_the_cache_key():
    corr3d_settings = render_settings({"views": "corr3d"})
    authors_settings = render_settings({"views": "authors"})
    assert settings_hash(corr3d_settings) == settings_hash(render_settings(None))   # unchanged for corr3d views
    assert settings_hash(authors_settings) != settings_hash(corr3d_settings)
    cameras, _ = render_rig(authors_settings)
    s = authors_settings
    want = rig_poses("authors", s["icosphere_subdivisions"], s["distance"], tuple(s["up"]))
    assert np.allclose(cameras.poses, want)
    assert not np.allclose(render_rig(corr3d_settings)[0].poses, want)
