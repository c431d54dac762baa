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


def image_to_tensor(image, device=None):
    """A photograph as the models take it: ``(1, 3, H, W)`` float RGB in [0, 1].

    ``image``: a path, a PIL image, or a numpy array ``(H, W, 3)`` / ``(H, W)`` (uint8 0..255, or float 0..1).
    ``corr3d.load_model("dinov2_s14").dense_features(corr3d.image_to_tensor("photo.jpg"))``.
    """
    import numpy as np  # deferred: `import corr3d` stays light

    from corr3d.eval.features import to_tensor

    if not isinstance(image, np.ndarray):
        from PIL import Image  # deferred: `import corr3d` stays light

        image = np.asarray(image.convert("RGB") if isinstance(image, Image.Image)
                           else Image.open(image).convert("RGB"))
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"image_to_tensor: expected an (H, W, 3) array, got shape {image.shape}")
    image = image[..., :3]
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and (image.min() < 0 or image.max() > 1):
            raise ValueError("image_to_tensor: float images must hold values in [0, 1]")
        image = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    return to_tensor(image, device)

