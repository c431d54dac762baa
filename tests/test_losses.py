"""``build_loss`` passes each loss only the ``loss:`` keys its signature declares (corr3d/losses/__init__.py)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import corr3d.losses as losses
from corr3d.config import ConfigError, load_config
from corr3d.config_schema import LOSS_NAMES, LossConfig
from corr3d.losses import LOSSES, build_loss, loss_options


def _loss_with_margin(feat0, feat1, xyz0, xyz1, valid0=None, valid1=None, pos_radius=0.005, margin=0.0):
    return torch.tensor(float(margin)), {"pos_radius": pos_radius, "margin": margin}


def _loss_without_margin(feat0, feat1, xyz0, xyz1, valid0=None, valid1=None, pos_radius=0.005):
    return torch.tensor(0.0), {"pos_radius": pos_radius}


@pytest.fixture
def two_losses(monkeypatch):
    monkeypatch.setitem(LOSSES, "with_margin", _loss_with_margin)
    monkeypatch.setitem(LOSSES, "without_margin", _loss_without_margin)


def test_a_key_reaches_only_the_losses_that_declare_it(two_losses):
    batch = [torch.zeros(1, 2, 3)] * 4
    cfg = {"pos_radius": 0.02, "margin": 0.5}
    fn = build_loss({"name": "with_margin", **cfg})
    assert fn.keywords == cfg and fn(*batch)[1] == cfg
    other = build_loss({"name": "without_margin", **cfg})   # a new key for one loss does not break the others
    assert other.keywords == {"pos_radius": 0.02} and other(*batch)[1] == {"pos_radius": 0.02}


def test_a_key_no_loss_declares_is_a_config_error():
    with pytest.raises(ConfigError, match=r"unknown config key 'loss.temperatur'.*did you mean 'loss.temperature'"):
        build_loss({"name": "smooth_ap", "temperatur": 0.1})
    with pytest.raises(ConfigError, match=r"unknown config key 'loss.margin'"):   # the loader's error, unchanged
        load_config("base", ["loss.margin=0.5"])
    with pytest.raises(KeyError, match="unknown loss 'nope'"):
        build_loss({"name": "nope"})


def test_real_losses_get_the_same_arguments_as_before():
    """Every key of the ``loss:`` section is declared by every loss today: each gets the whole section, as before;
    ``block_elements`` (SmoothAP, InfoNCE) is no longer passed to the Procrustes loss, which never took it."""
    section = {k: v for k, v in dataclasses.asdict(LossConfig()).items() if k != "name"}
    assert set(LOSSES) == set(LOSS_NAMES)
    for name in LOSS_NAMES:
        assert build_loss({"name": name, **section}).keywords == section
    assert "block_elements" in loss_options(losses.smooth_ap_loss)
    assert "block_elements" not in build_loss({"name": "diff_procrustes", "block_elements": 64}).keywords
    assert build_loss({"name": "infonce", "block_elements": 64}).keywords == {"block_elements": 64}
