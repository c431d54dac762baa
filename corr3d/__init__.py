"""corr3d: measure, finetune and evaluate multiview equivariance of ViT features for 3D correspondence."""
from __future__ import annotations

__version__ = "0.1.0"


def load_model(backbone: str = "dinov2_s14", weights: str = "auto", adapter=None, **kwargs):
    """Build a feature model: ``corr3d.load_model("dinov2_s14", adapter="runs/x/latest/adapter.safetensors")``.

    Returns a ``corr3d.models.Corr3DModel`` with ``dense_features(images)`` -> (B, C, h, w) and
    ``point_features(images, points_xy)`` -> (B, N, C), both L2-normalised. Imported lazily so that
    ``import corr3d`` stays cheap.
    """
    from corr3d.models import load_model as _load_model  # deferred: `import corr3d` stays light

    return _load_model(backbone, weights=weights, adapter=adapter, **kwargs)
