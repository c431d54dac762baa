"""Cluster / paired bootstrap and t-intervals against plain-loop / scipy references and hand-computed cases."""
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
    got = bootstrap_ci(items, "m", n_boot=300, seed=5, method="percentile")
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
    value, lo, hi = bootstrap_ci(items, "m", n_boot=4000, method="percentile")
    assert (value, lo, hi) == (5.0, 0.0, 10.0)
    # the per-item spread inside a unit does not matter, only the unit means: no unit-level spread -> no width
    same = [{"id": f"{u}{k}", "unit": u, "m": float(k)} for u in "abcd" for k in range(4)]
    assert bootstrap_ci(same, "m", method="percentile")[1:] == (1.5, 1.5)
    assert bootstrap_ci(same, "m", method="t")[1:] == (1.5, 1.5)


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
    d = paired_delta(a, b, "m", n_boot=400, seed=3, method="percentile")
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


# ------------------------------------------------------------------------------------------------ t-interval
T_1 = 12.706204736174698   # t quantile 0.975 with 1 degree of freedom (tables)


def test_default_is_the_t_interval_and_the_hand_case():
    from corr3d.eval.stats import DEFAULT_CI_METHOD

    assert DEFAULT_CI_METHOD == "t"
    # two units with means 0 and 10 (equal weight): mean 5, sd 7.071, SE = 7.071 / sqrt(2) = 5
    items = [{"id": f"a{k}", "unit": "a", "m": 0.0} for k in range(3)] + \
            [{"id": f"b{k}", "unit": "b", "m": 10.0} for k in range(3)]
    value, lo, hi = bootstrap_ci(items, "m")
    assert value == 5.0
    assert lo == pytest.approx(5.0 - T_1 * 5.0, rel=1e-12) and hi == pytest.approx(5.0 + T_1 * 5.0, rel=1e-12)


def test_t_interval_with_equal_unit_weights_is_scipys_t_interval_of_the_unit_means():
    from scipy import stats as sps

    rng = np.random.default_rng(7)
    items, means = [], []
    for u in range(11):
        values = rng.normal(30, 8, size=4)
        weights = np.array([1.0, 2.0, 3.0, 4.0])[rng.permutation(4)]  # same total per unit: unit means count equally
        means.append(float((weights * values).sum() / weights.sum()))
        items += [{"id": f"{u}/{k}", "unit": f"u{u}", "weight": float(w), "m": float(v)}
                  for k, (w, v) in enumerate(zip(weights, values))]
    value, lo, hi = bootstrap_ci(items, "m", method="t")
    want_lo, want_hi = sps.t.interval(0.95, len(means) - 1, loc=np.mean(means), scale=sps.sem(means))
    assert value == pytest.approx(np.mean(means), rel=1e-12)
    assert (lo, hi) == pytest.approx((want_lo, want_hi), rel=1e-12)


def _reference_t(items, key):
    """Plain loops: the ratio estimator's linearised variance over units (survey-sampling textbook form)."""
    from scipy import stats as sps

    units = sorted({it["unit"] for it in items if key in it})
    num = {u: 0.0 for u in units}
    den = {u: 0.0 for u in units}
    for it in items:
        if key in it:
            num[it["unit"]] += it.get("weight", 1) * it[key]
            den[it["unit"]] += it.get("weight", 1)
    n = len(units)
    theta = sum(num.values()) / sum(den.values())
    mean_den = sum(den.values()) / n
    var = sum(((num[u] - theta * den[u]) / mean_den) ** 2 for u in units) / (n - 1) / n
    q = sps.t.ppf(0.975, n - 1)
    return theta, theta - q * var ** 0.5, theta + q * var ** 0.5


def test_weighted_t_interval_matches_the_loop_reference_and_the_bootstrap_spread():
    rng = np.random.default_rng(8)
    items = _items(rng, n_units=12)
    np.testing.assert_allclose(bootstrap_ci(items, "m", method="t"), _reference_t(items, "m"), rtol=1e-12)
    # the linearised SE is the ratio's sampling SD: with many units it matches the bootstrap resamples' SD
    from corr3d.eval.stats import _collect, _ratio, _unit_sums, resample_counts

    many = _items(np.random.default_rng(9), n_units=400)
    value, lo, hi = bootstrap_ci(many, "m", method="t")
    units, weights, values = _collect(many, "m")
    order = sorted(set(units))
    boot = _ratio(resample_counts(len(order), 4000, 0), *_unit_sums(units, weights, values, order))
    assert (hi - lo) / 2 / 1.966 == pytest.approx(boot.std(), rel=0.06)   # t_{399} = 1.966


def test_paired_t_interval_is_the_t_interval_of_per_unit_differences():
    from scipy import stats as sps

    rng = np.random.default_rng(10)
    a = [{"id": f"{u}", "unit": f"u{u}", "m": float(rng.normal(20, 5))} for u in range(10)]
    b = [{**it, "m": it["m"] + float(rng.normal(1.0, 0.5))} for it in a]
    d = paired_delta(b, a, "m")
    diff = [y["m"] - x["m"] for x, y in zip(a, b)]
    want = sps.t.interval(0.95, len(diff) - 1, loc=np.mean(diff), scale=sps.sem(diff))
    assert d["delta"] == pytest.approx(np.mean(diff)) and (d["lo"], d["hi"]) == pytest.approx(want, rel=1e-12)
    assert d["significant"] is True and d["n_units"] == 10
    # weighted: the delta's residual is the difference of the two models' linearised residuals
    rng = np.random.default_rng(11)
    a = _items(rng, n_units=9)
    b = [{**it, "m": it["m"] + rng.normal(0.3, 1.0), "weight": it["weight"] + 1} for it in a]
    d = paired_delta(a, b, "m")
    ta, tb = _reference_t(a, "m")[0], _reference_t(b, "m")[0]
    units = sorted({it["unit"] for it in a})

    def residuals(items, theta):
        num = {u: sum(it["weight"] * it["m"] for it in items if it["unit"] == u) for u in units}
        den = {u: sum(it["weight"] for it in items if it["unit"] == u) for u in units}
        return [(num[u] - theta * den[u]) / (sum(den.values()) / len(units)) for u in units]

    r = np.subtract(residuals(a, ta), residuals(b, tb))
    half = sps.t.ppf(0.975, len(units) - 1) * np.sqrt((r ** 2).sum() / (len(units) * (len(units) - 1)))
    assert d["delta"] == pytest.approx(ta - tb, rel=1e-12)
    assert (d["lo"], d["hi"]) == pytest.approx((ta - tb - half, ta - tb + half), rel=1e-12)


def test_intervals_are_deterministic_and_methods_are_checked():
    rng = np.random.default_rng(12)
    items = _items(rng)
    other = [{**it, "m": it["m"] + 1.0 + rng.normal(0, 1)} for it in items]
    # t: no resampling, so neither seed nor n_boot matters
    assert bootstrap_ci(items, "m", n_boot=10, seed=1) == bootstrap_ci(items, "m", n_boot=5000, seed=2)
    assert paired_delta(other, items, "m", seed=1) == paired_delta(other, items, "m", seed=2)
    # percentile: a pure function of the seed
    assert bootstrap_ci(items, "m", seed=3, method="percentile") == bootstrap_ci(items, "m", seed=3,
                                                                                 method="percentile")
    assert bootstrap_ci(items, "m", seed=3, method="percentile") != bootstrap_ci(items, "m", seed=4,
                                                                                 method="percentile")
    for call in (lambda: bootstrap_ci(items, "m", method="bca"), lambda: paired_delta(items, items, "m", method="x"),
                 lambda: ci_table({"a": items}, ["m"], method="studentized")):
        with pytest.raises(ValueError, match="unknown CI method"):
            call()
    # the old method stays available through the tables
    assert ci_table({"a": items}, ["m"], method="percentile")["a"]["m"] == list(
        bootstrap_ci(items, "m", method="percentile")[1:])
    old = delta_table({"a": other, "b": items}, [("a", "b")], ["m"], method="percentile")["a-b"]["m"]
    assert old == paired_delta(other, items, "m", method="percentile")


# ------------------------------------------------------------------------------------------------ bins
def test_descriptor_fields_are_not_metrics():
    from corr3d.eval.stats import metric_keys

    items = [{"id": "1", "unit": "x", "weight": 2.0, "m": 1.0, "rotation_deg": 12.0, "viewpoint": 1, "ok": True}]
    assert metric_keys(items) == ["m"]


def _binned_items():
    # (unit, rotation_deg, weight, value); hand-computed bins below
    rows = [("a", 10.0, 1, 1.0), ("b", 0.0, 1, 3.0),                  # 0-15: units a, b -> 2
            ("a", 15.0, 2, 5.0), ("a", 29.9, 1, 8.0),                 # 15-30: unit a only -> (10 + 8) / 3 = 6
            ("c", 180.0, 1, 7.0), ("d", 60.0, 3, 9.0)]                # 60-180: (7 + 27) / 4 = 8.5; 30-60 empty
    items = [{"id": f"{k}", "unit": u, "weight": float(w), "m": v, "rotation_deg": r}
             for k, (u, r, w, v) in enumerate(rows)]
    items.append({"id": "nopose", "unit": "e", "m": 100.0})                     # no rotation: in no bin
    items.append({"id": "nokey", "unit": "a", "rotation_deg": 5.0, "other": 1.0})  # no metric: in no bin
    return items


def test_binned_table_hand_computed():
    from corr3d.eval.stats import binned_table

    table = binned_table({"pretrained": _binned_items(), "empty": []}, "m")
    got = table["pretrained"]
    assert list(got) == ["0-15", "15-30", "30-60", "60-180"]
    # 0-15: unit means 1 and 3 (weights 1, 1): 2 +- t_1 * 1
    assert got["0-15"]["value"] == 2.0 and got["0-15"]["n"] == 2 and got["0-15"]["n_units"] == 2
    assert (got["0-15"]["lo"], got["0-15"]["hi"]) == pytest.approx((2 - T_1, 2 + T_1), rel=1e-12)
    # 15-30: the edge 15 belongs to the upper bin; one unit -> no interval
    assert got["15-30"] == {"value": 6.0, "lo": None, "hi": None, "n": 2, "n_units": 1}
    assert got["30-60"] == {"value": None, "lo": None, "hi": None, "n": 0, "n_units": 0}
    # 60-180 (180 itself included): theta 8.5, residuals (7 - 8.5) / 2 and (27 - 25.5) / 2 = -+0.75, SE 0.75
    assert got["60-180"]["value"] == 8.5 and got["60-180"]["n"] == 2
    assert (got["60-180"]["lo"], got["60-180"]["hi"]) == pytest.approx((8.5 - T_1 * 0.75, 8.5 + T_1 * 0.75))
    assert all(v["n"] == 0 for v in table["empty"].values())
    # a bin is exactly bootstrap_ci on its items (the full metric's aggregation), here with the percentile method
    pct = binned_table({"m": _binned_items()}, "m", bins=(0, 30, 180), n_boot=500, seed=3, method="percentile")["m"]
    low = [it for it in _binned_items() if it.get("rotation_deg", 99) < 30]
    assert [pct["0-30"][k] for k in ("value", "lo", "hi")] == list(bootstrap_ci(low, "m", 500, 3, "percentile"))


def test_binned_table_categorical_and_bad_input():
    from corr3d.eval.stats import binned_table

    items = [{"id": f"{k}", "unit": f"img{k % 3}", "m": float(k), "viewpoint": k % 2 * 2} for k in range(6)]
    got = binned_table({"spair": items}, "m", bins=None, field="viewpoint")["spair"]
    assert list(got) == ["0", "2"]
    assert got["0"]["value"] == pytest.approx((0 + 2 + 4) / 3) and got["0"]["n"] == 3 and got["0"]["n_units"] == 3
    assert got["2"]["value"] == pytest.approx((1 + 3 + 5) / 3)
    with pytest.raises(ValueError, match="outside the bins"):
        binned_table({"x": [{"id": "1", "unit": "a", "m": 1.0, "rotation_deg": 190.0}]}, "m")
    for bad in ((0,), (0, 30, 30), (60, 0), (0, float("nan"))):
        with pytest.raises(ValueError, match="strictly increasing"):
            binned_table({"x": []}, "m", bins=bad)
    with pytest.raises(ValueError, match="unknown CI method"):
        binned_table({"x": []}, "m", method="bca")
