"""Small torch helpers shared by training and evaluation."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, TypeVar

M = TypeVar("M")


@contextmanager
def eval_mode(model: M) -> Iterator[M]:
    """``model`` in eval mode for the block, its previous train/eval mode restored afterwards (also on error).

    Objects without ``train``/``eval`` (ground-truth oracles) pass through unchanged. As ``Module.train(mode)``,
    restoring sets every submodule to the model's previous top-level mode."""
    was_training = getattr(model, "training", None)
    if hasattr(model, "eval"):
        model.eval()
    try:
        yield model
    finally:
        if was_training is not None and hasattr(model, "train"):
            model.train(was_training)
