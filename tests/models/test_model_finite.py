"""Issue 21: a model whose features are NaN/inf must not evaluate to numbers (an all-NaN adapter measured APE 26.32).

``Corr3DModel.forward`` in eval mode (every evaluation runs under ``eval_mode``) checks its output map with
``assert_finite``; the check is one reduction over the map, negligible next to the forward pass (measured below)."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from corr3d.errors import Corr3dUserError, NonFiniteFeaturesError
from corr3d.models.model import assert_finite
from corr3d.utils.torch_utils import eval_mode
from tests.helpers.models import tiny_model


def _nan_model():
    model = tiny_model(16, head={"num_layers": 1, "init": "default"})
    with torch.no_grad():
        model.head[0].weight.fill_(float("nan"))
    return model


def test_assert_finite_names_what_and_passes_finite_tensors():
    x = torch.ones(2, 3)
    assert assert_finite(x, "x") is x
    x[0, 1], x[1, 2] = float("nan"), float("-inf")
    with pytest.raises(NonFiniteFeaturesError, match="features of m hold 2 non-finite") as info:
        assert_finite(x, "features of m")
    assert isinstance(info.value, Corr3dUserError) and "lower optim.lr" in info.value.fix


def test_evaluation_refuses_nan_features_naming_the_model():
    model = _nan_model()
    images, points = torch.rand(2, 3, 48, 48), torch.rand(2, 5, 2) * 48
    with eval_mode(model), torch.no_grad():
        for call in (lambda: model(images), lambda: model.dense_features(images),
                     lambda: model.point_features(images, points)):
            with pytest.raises(NonFiniteFeaturesError, match=r"features of model test_vit \(random: random"):
                call()
    # the dense-feature path every benchmark task uses (corr3d/eval/features.py)
    from corr3d.eval.features import extract_maps

    with eval_mode(model), pytest.raises(NonFiniteFeaturesError):
        extract_maps(model, [np.zeros((48, 48, 3), dtype=np.uint8)])
    # training mode is left to the training module's own loss/weight check (no sync per forward there)
    assert torch.isnan(model(images)).all()


def test_an_adapter_trained_to_nan_cannot_be_loaded_or_evaluated(tmp_path):
    """Through the files: an all-NaN adapter never gets as far as producing features."""
    from safetensors.torch import load_file, save_file

    import corr3d
    from corr3d.errors import NonFiniteTensorError

    path = tiny_model(16, head={"num_layers": 1, "init": "default"}).save_adapter(tmp_path / "run")
    save_file({k: torch.full_like(v, float("nan")) for k, v in load_file(str(path)).items()}, str(path))
    with pytest.raises(NonFiniteTensorError, match=str(path)):
        corr3d.load_model(None, adapter=path)


def test_finite_check_overhead_is_negligible():
    """The check costs a small fraction of the forward pass that produced the map (min of several repeats)."""
    model = tiny_model(16, target_res=256, head={"num_layers": 1, "init": "default"}).eval()
    images = torch.rand(4, 3, 256, 256)

    def best(fn, repeats=7):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    with torch.no_grad():
        fmap = model(images)
        model.check_finite = False
        try:
            forward = best(lambda: model(images))
        finally:
            model.check_finite = True
        check = best(lambda: assert_finite(fmap, "features"))
    assert fmap.shape == (4, 64, 32, 32)
    assert check < 0.05 * forward, (check, forward)
