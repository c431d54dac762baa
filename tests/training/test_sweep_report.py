"""Gathering a sweep (corr3d/training/sweep_report.py): the manifest's cells stay inside the sweep directory, and
the Fig. 3 correlation helper against scipy-free hand computations."""
from __future__ import annotations

import json

import numpy as np
import pytest

from corr3d.training.sweep_report import correlation_table, gather_sweep, pearson_spearman


def test_pearson_spearman_against_hand_values():
    x = [1.0, 2.0, 3.0, 4.0]
    y = [2.0, 4.0, 5.0, 4.5]
    r, rho = pearson_spearman(x, y)
    xm, ym = np.mean(x), np.mean(y)
    expected_r = sum((a - xm) * (b - ym) for a, b in zip(x, y)) / np.sqrt(
        sum((a - xm) ** 2 for a in x) * sum((b - ym) ** 2 for b in y))
    assert r == pytest.approx(expected_r, rel=1e-12)
    # ranks of y: 1, 2.5?  no ties: y ranks = 1, 3, 4, 2 -> rho = 1 - 6 * sum d^2 / (n (n^2 - 1))
    d2 = (1 - 1) ** 2 + (2 - 2) ** 2 + (3 - 4) ** 2 + (4 - 3) ** 2
    assert rho == pytest.approx(1 - 6 * d2 / (4 * 15), rel=1e-12)
    table = correlation_table([{"equivariance/ape": a, "pck": b} for a, b in zip(x, y)])
    assert table == [{"metric": "pck", "n": 4, "pearson_r": pytest.approx(r), "spearman_r": pytest.approx(rho)}]


def test_gather_refuses_a_manifest_cell_outside_the_sweep(tmp_path):
    from corr3d.errors import UnsafePathError

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    manifest = {"experiment": "dinov2_single_object", "name": "t", "axes": {}, "overrides": [],
                "cells": [{"name": "../../etc", "overrides": {}}]}
    (sweep / "sweep.json").write_text(json.dumps(manifest))
    with pytest.raises(UnsafePathError):
        gather_sweep(sweep)
