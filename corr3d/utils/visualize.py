"""Pictures users look at in TensorBoard and reports: PCA colouring of dense features, correspondences."""
from __future__ import annotations

import numpy as np
import torch


def pca_rgb(feature_maps: list[torch.Tensor]) -> list[np.ndarray]:
    """Colour several (C, h, w) maps with ONE shared 3-component PCA (as in the paper's Fig. 2), uint8 (h, w, 3)."""
    flat = torch.cat([m.flatten(1).T for m in feature_maps]).float()
    centred = flat - flat.mean(0, keepdim=True)
    _, _, v = torch.pca_lowrank(centred, q=3, center=False)
    proj = centred @ v[:, :3]
    lo, hi = proj.quantile(0.01, dim=0), proj.quantile(0.99, dim=0)
    proj = ((proj - lo) / (hi - lo).clamp(min=1e-6)).clamp(0, 1)
    out, start = [], 0
    for m in feature_maps:
        n = m.shape[1] * m.shape[2]
        out.append((proj[start:start + n].reshape(m.shape[1], m.shape[2], 3).numpy() * 255).astype(np.uint8))
        start += n
    return out


def correspondence_figure(image0: np.ndarray, image1: np.ndarray, points0: np.ndarray, pred1: np.ndarray,
                          true1: np.ndarray, max_lines: int = 40, title: str = ""):
    """Side-by-side views; lines from source points to predicted matches (green if within 5% of the edge, else red),
    true matches as white crosses."""
    import matplotlib  # deferred: import cost (~0.4 s), only figures need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: import cost (~0.4 s), only figures need it

    h, w = image0.shape[:2]
    canvas = np.concatenate([image0, image1], axis=1)
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    ax.imshow(canvas)
    n = min(max_lines, len(points0))
    error = np.linalg.norm(pred1[:n] - true1[:n], axis=1) / min(h, w)
    for k in range(n):
        colour = "lime" if error[k] < 0.05 else "red"
        ax.plot([points0[k, 0], pred1[k, 0] + w], [points0[k, 1], pred1[k, 1]], color=colour, linewidth=0.7)
    ax.scatter(true1[:n, 0] + w, true1[:n, 1], marker="x", c="white", s=12, linewidths=0.8)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
