"""Cluster / paired bootstrap against a plain-loop reference and hand-computed cases."""
from __future__ import annotations

import time

import numpy as np
import pytest

from corr3d.eval.stats import bootstrap_ci, ci_table, delta_table, paired_delta, weighted_mean


def _items(rng, n_units=7, per_unit=(1, 6), shift=0.0):
    items = []
    for u in range(n_units):
        level = rng.normal(20, 5)
        for k in range(rng.integers(*per_unit)):
            items.append({"id": f"u{u}/p{k}", "unit": f"u{u}", "weight": float(rng.integers(1, 50)),
                          "m": level + rng.normal(0, 2) + shift})
    return items


def _reference_ci(items, key, n_boot, seed):
    """Plain loops: draw units row by row exactly as stats.resample_counts documents, pool their items."""
    items = [it for it in items if key in it]
    units = sorted({it["unit"] for it in items})
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(units), size=(n_boot, len(units)))
    samples = []
    for row in draws:
        num = den = 0.0
        for k in row:
            for it in items:
                if it["unit"] == units[k]:
                    num += it.get("weight", 1) * it[key]
                    den += it.get("weight", 1)
        samples.append(num / den)
    num = sum(it.get("weight", 1) * it[key] for it in items)
    den = sum(it.get("weight", 1) for it in items)
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return num / den, lo, hi


def test_bootstrap_matches_plain_loop_reference():
    items = _items(np.random.default_rng(0))
    items.append({"id": "nokey", "unit": "u0", "weight": 3.0})  # lacks the key: skipped
    got = bootstrap_ci(items, "m", n_boot=300, seed=5)
    want = _reference_ci(items, "m", 300, 5)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[1] < got[0] < got[2]


def test_value_is_the_weighted_mean_and_weight_defaults_to_one():
    items = [{"id": "a", "unit": "x", "m": 1.0}, {"id": "b", "unit": "x", "m": 3.0, "weight": 3},
             {"id": "c", "unit": "y", "m": None}, {"id": "d", "unit": "y", "m": float("nan")}]
    assert weighted_mean(items, "m") == pytest.approx((1 + 9) / 4)
    value, lo, hi = bootstrap_ci(items, "m")
    assert value == pytest.approx(2.5) and np.isnan(lo) and np.isnan(hi)  # one unit: no spread between units
    d = paired_delta(items, [{**it, "m": 0.0 if it["m"] is not None else None} for it in items], "m")
    assert d["delta"] == pytest.approx(2.5) and np.isnan(d["lo"]) and d["significant"] is False


def test_one_unit_resampled_drives_the_interval():
    # two units with constant values 0 and 10, equal weight: each resample is 0, 5 or 10 with probs 1/4, 1/2, 1/4
    items = [{"id": f"a{k}", "unit": "a", "m": 0.0} for k in range(3)] + \
            [{"id": f"b{k}", "unit": "b", "m": 10.0} for k in range(3)]
    value, lo, hi = bootstrap_ci(items, "m", n_boot=4000)
    assert (value, lo, hi) == (5.0, 0.0, 10.0)
    # the per-item spread inside a unit does not matter, only the unit means: no unit-level spread -> no width
    same = [{"id": f"{u}{k}", "unit": u, "m": float(k)} for u in "abcd" for k in range(4)]
    assert bootstrap_ci(same, "m")[1:] == (1.5, 1.5)


def test_constant_shift_gives_a_zero_width_significant_delta():
    rng = np.random.default_rng(1)
    base = _items(rng)
    shifted = [{**it, "m": it["m"] + 0.7} for it in base]
    d = paired_delta(shifted, base, "m")
    assert d["delta"] == pytest.approx(0.7)
    assert d["lo"] == pytest.approx(0.7) and d["hi"] == pytest.approx(0.7)
    assert d["significant"] is True
    # the unpaired CIs of the same two lists overlap widely: pairing is what resolves the shift
    _, lo_a, hi_a = bootstrap_ci(shifted, "m")
    _, lo_b, hi_b = bootstrap_ci(base, "m")
    assert lo_a < hi_b and (hi_a - lo_a) > 1.0
    zero = paired_delta(base, base, "m")
    assert zero["delta"] == 0 and zero["significant"] is False


def test_paired_delta_matches_loop_reference_and_is_exact_difference():
    rng = np.random.default_rng(2)
    a = _items(rng, n_units=9)
    b = [{**it, "m": it["m"] + rng.normal(0.3, 1.0), "weight": it["weight"] + 1} for it in reversed(a)]
    d = paired_delta(a, b, "m", n_boot=400, seed=3)
    assert d["delta"] == pytest.approx(weighted_mean(a, "m") - weighted_mean(b, "m"))
    units = sorted({it["unit"] for it in a})
    draws = np.random.default_rng(3).integers(0, len(units), size=(400, len(units)))
    bmap = {it["id"]: it for it in b}
    samples = []
    for row in draws:
        pool = [it for k in row for it in a if it["unit"] == units[k]]
        ma = sum(it["weight"] * it["m"] for it in pool) / sum(it["weight"] for it in pool)
        mb = sum(bmap[it["id"]]["weight"] * bmap[it["id"]]["m"] for it in pool) / \
            sum(bmap[it["id"]]["weight"] for it in pool)
        samples.append(ma - mb)
    lo, hi = np.percentile(samples, [2.5, 97.5])
    assert d["lo"] == pytest.approx(lo, rel=1e-12) and d["hi"] == pytest.approx(hi, rel=1e-12)
    assert d["n_units"] == 9 and d["n_items"] == len(a)


def test_mismatched_ids_or_units_raise():
    a = [{"id": "1", "unit": "x", "m": 1.0}, {"id": "2", "unit": "y", "m": 2.0}]
    with pytest.raises(ValueError, match="identical items"):
        paired_delta(a, a[:1], "m")
    with pytest.raises(ValueError, match="identical items"):
        paired_delta(a, [a[0], {**a[1], "id": "3"}], "m")
    with pytest.raises(ValueError, match="unit"):
        paired_delta(a, [a[0], {**a[1], "unit": "z"}], "m")
    with pytest.raises(ValueError, match="duplicate"):
        paired_delta(a + a[:1], a, "m")


def test_tables_and_speed():
    rng = np.random.default_rng(4)
    pre = _items(rng, n_units=1000, per_unit=(20, 21))
    fin = [{**it, "m": it["m"] - 0.5 + rng.normal(0, 0.2)} for it in pre]
    start = time.perf_counter()
    ci = ci_table({"pretrained": pre, "finetuned": fin}, ["m"])
    deltas = delta_table({"pretrained": pre, "finetuned": fin, "random": []},
                         [("finetuned", "pretrained"), ("random", "pretrained")], ["m"])
    assert time.perf_counter() - start < 5.0           # 20k items x 2000 resamples, three times
    assert ci["pretrained"]["m"][0] < weighted_mean(pre, "m") < ci["pretrained"]["m"][1]
    assert list(deltas) == ["finetuned-pretrained"]
    d = deltas["finetuned-pretrained"]["m"]
    assert d["significant"] and d["hi"] < 0 and d["lo"] > -0.6


def test_validity_flags_floor_and_ceiling():
    from corr3d.eval.stats import validity

    metrics = {"pretrained": {"pck": 60.0, "ape": 18.0}, "random": {"pck": 40.0, "ape": 25.0},
               "oracle": {"pck": 99.0, "ape": 5.0}}
    deltas = {"random-pretrained": {"pck": {"delta": -20.0, "lo": -25.0, "hi": -15.0, "significant": True},
                                    "ape": {"delta": 7.0, "lo": -1.0, "hi": 12.0, "significant": False}}}
    ok = validity("pck", metrics, deltas, lower_is_better=False)
    assert ok["verdict"] == "ok" and ok["discriminates"]
    assert ok["pretrained-random"] == {"delta": 20.0, "lo": 15.0, "hi": 25.0, "significant": True}
    bad = validity("ape", metrics, deltas, lower_is_better=True)
    assert "does not discriminate" in bad["verdict"] and "oracle far from perfect" in bad["verdict"]
    # random significantly BETTER than pretrained is the clearest failure
    better = {"random-pretrained": {"pck": {"delta": 5.0, "lo": 2.0, "hi": 8.0, "significant": True}}}
    assert validity("pck", metrics, better, False)["verdict"] == "does not discriminate"
    assert validity("pck", {"pretrained": {"pck": 1.0}}, {}, False)["verdict"] == "no random floor measured"
    # precision: a pretrained CI wider than +-3 points is flagged (hand-computed half-widths 2.5 and 3.5)
    assert validity("pck", metrics, deltas, False, {"pretrained": {"pck": [57.5, 62.5]}})["verdict"] == "ok"
    wide = validity("pck", metrics, deltas, False, {"pretrained": {"pck": [56.0, 63.0]}})
    assert wide["ci_half_width"] == 3.5 and wide["verdict"] == "CI ±3.5 > ±3" and wide["discriminates"]
    assert validity("median_px", {"pretrained": {"median_px": 9.0}, "random": {"median_px": 20.0}},
                    {"random-pretrained": {"median_px": {"delta": 11.0, "lo": 5.0, "hi": 15.0, "significant": True}}},
                    True, {"pretrained": {"median_px": [2.0, 30.0]}})["verdict"] == "ok"   # pixels: not checked


def test_one_unit_delta_is_stored_without_interval_and_not_flagged_significant():
    from corr3d.eval.stats import validity
    from corr3d.utils.report import format_delta

    a = [{"id": "p", "unit": "stereo", "m": 3.0}]
    b = [{"id": "p", "unit": "stereo", "m": 1.0}]
    d = delta_table({"random": a, "pretrained": b}, [("random", "pretrained")], ["m"])["random-pretrained"]["m"]
    assert d["lo"] is None and d["hi"] is None and d["significant"] is False and d["delta"] == 2.0
    assert format_delta(d) == "+2.00 (no CI: one unit)"
    v = validity("m", {"pretrained": {"m": 1.0}, "random": {"m": 3.0}}, {"random-pretrained": {"m": d}}, False)
    assert v["verdict"] == "no CI (one unit)" and v["pretrained-random"]["lo"] is None
