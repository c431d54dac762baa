"""The equivariance metric on bad input (issue 14): NaN errors are refused, nothing measured gives n/a, never 0."""
import math

import pytest
import torch


def test_equivariance_metric_refuses_nan_and_is_nan_over_nothing():
    from corr3d.eval.metrics.equivariance import EquivarianceMetric

    m = EquivarianceMetric()
    assert math.isnan(float(m.compute()["equivariance/ape"]))
    with pytest.raises(ValueError, match="non-finite"):
        m.update(torch.tensor([0.1, float("nan")]))
