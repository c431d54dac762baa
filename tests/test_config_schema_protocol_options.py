"""The issue-22 protocol options: each config choice set equals the constant of the module that implements it."""
import dataclasses

import pytest

from corr3d import config_schema as schema
from corr3d.data.pairs import POINT_SAMPLING
from corr3d.eval.tracking import NORMALIZE
from corr3d.geometry.icosphere import VIEWS
from corr3d.models.features import POS_EMBED_INTERP, PRECISIONS


def _choices(cls, name):
    return next(f for f in dataclasses.fields(cls) if f.name == name).metadata["choices"]


@pytest.mark.parametrize("cls, name, source, default", [
    (schema.RenderConfig, "views", VIEWS, "corr3d"),
    (schema.PairsConfig, "point_sampling", POINT_SAMPLING, "distinct"),
    (schema.ModelConfig, "pos_embed_interp", POS_EMBED_INTERP, "exact"),
    (schema.TrackingEvalConfig, "normalize", NORMALIZE, "before_sampling"),
    (schema.EvalConfig, "precision", PRECISIONS, "fp32"),
])
def test_choices_match_their_module_and_defaults(cls, name, source, default):
    assert tuple(_choices(cls, name)) == tuple(source)
    assert getattr(cls(), name) == default
