import pytest
import torch

from corr3d.utils.torch_utils import eval_mode


def test_eval_mode_restores_the_previous_mode():
    model = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(2, 2))
    for before in (True, False):
        model.train(before)
        with eval_mode(model) as inside:
            assert inside is model and not model.training and not model[0].training
        assert model.training is before and model[0].training is before


def test_eval_mode_restores_on_error_and_passes_plain_objects():
    model = torch.nn.Linear(2, 2).train()
    with pytest.raises(RuntimeError):
        with eval_mode(model):
            raise RuntimeError("boom")
    assert model.training
    oracle = object()
    with eval_mode(oracle) as inside:
        assert inside is oracle
