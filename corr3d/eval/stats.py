"""Confidence intervals for metrics that are weighted means of per-item results.

Every task returns per-item dicts ``{"id", "unit", "weight", <metric key>: value}`` (see the tasks in corr3d/eval/)
such that a headline metric = sum(weight * value) / sum(weight) over the items that carry the key. Items of one
unit (an object, a video, an image pair) are not independent, so intervals are computed over UNITS: each unit is
summarised by sum(weight * value) and sum(weight), and the metric is the ratio of their totals.

Two interval methods (``CI_METHODS``), both over units:

- ``"t"`` (the default): the ratio estimator's linearised (Taylor / delta-method) standard error over units and
  the Student t quantile with n_units − 1 degrees of freedom. With equal unit weights this is exactly the textbook
  t-interval of the unit means. Deterministic (no resampling). docs/ci_coverage.md measures why it is the default:
  on the 56-object benchmark's per-object results, subsets of 10-12 units (the offline suites) get 95% percentile
  bootstrap intervals that hold the true mean only ~89% of the time; the t-interval ~94-95%.
- ``"percentile"`` (the default before): cluster percentile bootstrap, resampling UNITS with replacement and
  recomputing the weighted mean (a ratio estimator) for every resample; the 2.5 / 97.5 percentiles. All resamples
  are drawn at once (an ``(n_boot, n_units)`` count matrix), so 2000 resamples cost milliseconds.

``paired_delta`` compares two models on the same items: items are matched by ``id``; the percentile method draws
the same units for both models in every resample, the t method takes the standard error of the per-unit
difference of the two linearised residuals. Because both models are scored on identical items, per-item difficulty
cancels and the interval is much narrower than two separate ones. A delta is ``significant`` only when its
interval excludes 0.

``binned_table`` breaks a metric down by a per-item field (relative rotation in degrees, SPair viewpoint
difficulty), each bin with its own interval over the units that have items in it.
"""
from __future__ import annotations

import bisect
import logging
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy.special import stdtrit

log = logging.getLogger(__name__)

CI_LEVEL = 0.95
CI_METHODS = ("t", "percentile")
DEFAULT_CI_METHOD = "t"
# per-item fields that describe the item (the pair's relative rotation, SPair's viewpoint difficulty) rather than
# score it: never a metric, but what ``binned_table`` breaks metrics down by
DESCRIPTOR_FIELDS = ("rotation_deg", "viewpoint")
ROTATION_BINS = (0.0, 15.0, 30.0, 60.0, 180.0)   # degrees, Probe3D's relative-rotation bins


def _value(item: Mapping[str, Any], key: str) -> float | None:
    """The item's value for ``key``; None when absent, None or not finite (such items do not enter the mean)."""
    value = item.get(key)
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _unit_sums(units: Sequence[str], weights: np.ndarray, values: np.ndarray,
               order: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per unit (in ``order``): sum(weight * value) and sum(weight)."""
    index = {u: k for k, u in enumerate(order)}
    idx = np.fromiter((index[u] for u in units), dtype=np.int64, count=len(units))
    num = np.bincount(idx, weights=weights * values, minlength=len(order))
    den = np.bincount(idx, weights=weights, minlength=len(order))
    return num, den


def resample_counts(n_units: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_units) multiplicities: row b says how often each unit was drawn in resample b.

    Drawn as ``rng.integers(0, n_units, (n_boot, n_units))`` (the draws a plain loop would make, row by row)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_units, size=(n_boot, n_units))
    flat = draws + (np.arange(n_boot) * n_units)[:, None]
    return np.bincount(flat.ravel(), minlength=n_boot * n_units).reshape(n_boot, n_units).astype(np.float64)


def _ratio(counts: np.ndarray, num: np.ndarray, den: np.ndarray) -> np.ndarray:
    top, bottom = counts @ num, counts @ den
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1.0), np.nan)


def _interval(samples: np.ndarray) -> tuple[float, float]:
    alpha = 100.0 * (1.0 - CI_LEVEL) / 2.0
    lo, hi = np.nanpercentile(samples, [alpha, 100.0 - alpha])
    return float(lo), float(hi)


def _check_method(method: str) -> str:
    if method not in CI_METHODS:
        raise ValueError(f"unknown CI method {method!r}: use one of {', '.join(CI_METHODS)}")
    return method


def _linearized(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Per-unit residuals (num_i − θ·den_i) / mean(den) of the ratio estimator θ = sum(num) / sum(den).

    To first order θ̂ − θ is their mean, so their sample variance / n is θ̂'s variance (the survey-sampling ratio
    estimator's linearisation). With equal unit weights a residual is simply unit mean − θ̂."""
    theta = num.sum() / den.sum()
    return (num - theta * den) / den.mean()


def _t_interval(center: float, residuals: np.ndarray) -> tuple[float, float]:
    """center ± t_{n−1} · SE, SE² = sum(r²) / (n (n − 1)) (the residuals sum to 0: this is var(r) / n)."""
    n = len(residuals)
    se = math.sqrt(float(np.sum(residuals ** 2)) / (n * (n - 1)))
    q = float(stdtrit(n - 1, 0.5 + CI_LEVEL / 2.0))
    return center - q * se, center + q * se


def _collect(items: Iterable[Mapping[str, Any]], key: str):
    units, weights, values = [], [], []
    for item in items:
        value = _value(item, key)
        if value is None:
            continue
        units.append(str(item["unit"]))
        weights.append(float(item.get("weight", 1.0)))
        values.append(value)
    return units, np.asarray(weights, dtype=np.float64), np.asarray(values, dtype=np.float64)


def weighted_mean(items: Iterable[Mapping[str, Any]], key: str) -> float:
    """sum(weight * value) / sum(weight) over the items that carry ``key`` (nan when none do)."""
    _, weights, values = _collect(items, key)
    total = weights.sum()
    return float((weights * values).sum() / total) if total > 0 else float("nan")


def bootstrap_ci(items: Sequence[Mapping[str, Any]], key: str, n_boot: int = 2000,
                 seed: int = 0, method: str = DEFAULT_CI_METHOD) -> tuple[float, float, float]:
    """(value, lo, hi): the weighted mean of ``key`` and its 95% interval over the units ``item["unit"]``.

    ``method``: ``"t"`` (linearised t-interval; ``n_boot`` and ``seed`` unused) or ``"percentile"`` (cluster
    percentile bootstrap of ``n_boot`` resamples drawn from ``seed``); see the module docstring. Items lacking
    ``key`` (or with a None / non-finite value) are skipped. nan when no item carries the key; the interval is
    (nan, nan) with fewer than 2 units (one unit says nothing about the spread between units)."""
    _check_method(method)
    units, weights, values = _collect(items, key)
    if not units or weights.sum() <= 0:
        return float("nan"), float("nan"), float("nan")
    order = sorted(set(units))
    num, den = _unit_sums(units, weights, values, order)
    value = float(num.sum() / den.sum())
    if len(order) < 2:
        return value, float("nan"), float("nan")
    if method == "t":
        lo, hi = _t_interval(value, _linearized(num, den))
    else:
        lo, hi = _interval(_ratio(resample_counts(len(order), int(n_boot), seed), num, den))
    return value, lo, hi


def _by_id(items: Iterable[Mapping[str, Any]], label: str) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for item in items:
        key = str(item["id"])
        if key in out:
            raise ValueError(f"duplicate item id {key!r} in {label}")
        out[key] = item
    return out


def paired_delta(items_a: Sequence[Mapping[str, Any]], items_b: Sequence[Mapping[str, Any]], key: str,
                 n_boot: int = 2000, seed: int = 0, method: str = DEFAULT_CI_METHOD) -> dict[str, Any]:
    """Delta a − b of the weighted means of ``key`` over the SAME items, with a paired 95% CI over units
    (``method`` as in ``bootstrap_ci``: the t-interval of the per-unit residual differences, or the paired cluster
    percentile bootstrap).

    Items are matched by ``id``; both lists must hold the same ids (else ValueError: the models were not scored on
    the same items) and a matched pair must share its unit. Items where either side lacks the key are dropped from
    both sides. Each model keeps its own weights, so ``delta`` equals metric(a) − metric(b) exactly.
    Returns ``{"delta", "lo", "hi", "significant", "n_items", "n_units"}``; with fewer than 2 units the interval is
    (nan, nan) and the delta is never significant."""
    _check_method(method)
    a, b = _by_id(items_a, "items_a"), _by_id(items_b, "items_b")
    if a.keys() != b.keys():
        only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
        raise ValueError(f"paired_delta needs identical items: {len(only_a)} ids only in a (e.g. {only_a[:3]}), "
                         f"{len(only_b)} only in b (e.g. {only_b[:3]})")
    units, wa, va, wb, vb = [], [], [], [], []
    for item_id in sorted(a):
        x, y = a[item_id], b[item_id]
        if str(x["unit"]) != str(y["unit"]):
            raise ValueError(f"item {item_id!r} has unit {x['unit']!r} in a but {y['unit']!r} in b")
        xv, yv = _value(x, key), _value(y, key)
        if xv is None or yv is None:
            continue
        units.append(str(x["unit"]))
        wa.append(float(x.get("weight", 1.0)))
        wb.append(float(y.get("weight", 1.0)))
        va.append(xv)
        vb.append(yv)
    nan = float("nan")
    if not units:
        return {"delta": nan, "lo": nan, "hi": nan, "significant": False, "n_items": 0, "n_units": 0}
    order = sorted(set(units))
    num_a, den_a = _unit_sums(units, np.asarray(wa), np.asarray(va), order)
    num_b, den_b = _unit_sums(units, np.asarray(wb), np.asarray(vb), order)
    delta = float(num_a.sum() / den_a.sum() - num_b.sum() / den_b.sum())
    if len(order) < 2:
        return {"delta": delta, "lo": nan, "hi": nan, "significant": False, "n_items": len(units), "n_units": 1}
    if method == "t":   # both models' residuals on the same unit: unit difficulty cancels in their difference
        lo, hi = _t_interval(delta, _linearized(num_a, den_a) - _linearized(num_b, den_b))
    else:
        counts = resample_counts(len(order), int(n_boot), seed)  # the same units for both models
        lo, hi = _interval(_ratio(counts, num_a, den_a) - _ratio(counts, num_b, den_b))
    return {"delta": delta, "lo": lo, "hi": hi, "significant": bool(lo > 0 or hi < 0),
            "n_items": len(units), "n_units": len(order)}


# ------------------------------------------------------------------------------------------------ tables
def metric_keys(items: Iterable[Mapping[str, Any]]) -> list[str]:
    """The numeric metric keys the items carry (everything except id / unit / weight, ``DESCRIPTOR_FIELDS`` and
    non-numbers)."""
    seen: dict[str, None] = {}
    for item in items:
        for key, value in item.items():
            if key in ("id", "unit", "weight", *DESCRIPTOR_FIELDS) or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)):
                seen.setdefault(key, None)
    return list(seen)


def ci_table(items_by_model: Mapping[str, Sequence[Mapping[str, Any]]], keys: Iterable[str] | None = None,
             n_boot: int = 2000, seed: int = 0, method: str = DEFAULT_CI_METHOD) -> dict[str, dict[str, list[float]]]:
    """``{model: {key: [lo, hi]}}`` for every model and key (keys: default all the items carry)."""
    out: dict[str, dict[str, list[float]]] = {}
    for model, items in items_by_model.items():
        for key in (list(keys) if keys is not None else metric_keys(items)):
            _, lo, hi = bootstrap_ci(items, key, n_boot=n_boot, seed=seed, method=method)
            if math.isfinite(lo):
                out.setdefault(model, {})[key] = [lo, hi]
    return out


def delta_table(items_by_model: Mapping[str, Sequence[Mapping[str, Any]]], pairs: Iterable[tuple[str, str]],
                keys: Iterable[str] | None = None, n_boot: int = 2000, seed: int = 0,
                method: str = DEFAULT_CI_METHOD) -> dict[str, dict[str, dict[str, Any]]]:
    """``{"<a>-<b>": {key: paired_delta(a, b)}}`` for each (a, b) in ``pairs`` where both models have items.
    Pairs whose item ids differ (e.g. a task configured differently per model) are skipped, not guessed at."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for a, b in pairs:
        if not items_by_model.get(a) or not items_by_model.get(b):
            continue
        names = list(keys) if keys is not None else metric_keys(items_by_model[a])
        try:
            table = {k: paired_delta(items_by_model[a], items_by_model[b], k, n_boot=n_boot, seed=seed,
                                     method=method)
                     for k in names}
        except ValueError as err:
            log.warning("no paired delta %s-%s: %s", a, b, err)
            continue
        # JSON has no NaN: an undefined interval (one unit) is stored as null
        out[f"{a}-{b}"] = {k: {**v, "lo": _or_none(v["lo"]), "hi": _or_none(v["hi"])}
                           for k, v in table.items() if v["n_items"]}
    return out


def _or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


# ------------------------------------------------------------------------------------------------ bins
def _bin_label(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _numeric_bins(edges: Sequence[float]) -> list[tuple[str, float, float]]:
    edges = [float(e) for e in edges]
    if len(edges) < 2 or not all(math.isfinite(e) for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"bins must be at least 2 finite, strictly increasing edges, not {edges}")
    return [(f"{a:g}-{b:g}", a, b) for a, b in zip(edges, edges[1:])]


def binned_table(items_by_model: Mapping[str, Sequence[Mapping[str, Any]]], key: str,
                 bins: Sequence[float] | None = ROTATION_BINS, field: str = "rotation_deg", n_boot: int = 2000,
                 seed: int = 0, method: str = DEFAULT_CI_METHOD) -> dict[str, dict[str, dict[str, Any]]]:
    """``{model: {bin_label: {"value", "lo", "hi", "n", "n_units"}}}``: metric ``key`` over the items of each bin
    of the per-item ``field``, with the same aggregation and interval as the full metric (``bootstrap_ci`` on the
    bin's items: the weighted mean and its 95% interval over the units that have items in the bin).

    ``bins``: increasing edges (default Probe3D's relative-rotation bins 0-15, 15-30, 30-60, 60-180 degrees;
    labels ``"0-15"`` ...); a bin holds lo <= x < hi, the last one also x == hi. A value outside the edges is a
    ValueError (it would silently fall out of every bin). ``bins=None``: categorical, one bin per distinct value
    of ``field`` (e.g. SPair's ``viewpoint`` 0 / 1 / 2; labels ``"0"``, ``"1"``, ...). Items without ``field``
    (e.g. homography pairs: no camera rotation) or without ``key`` are in no bin. ``n``: items in the bin that carry
    ``key``; ``n_units``: their units. Empty bins and undefined values / intervals (one unit) are None, as JSON has
    no NaN."""
    _check_method(method)
    edges = None if bins is None else _numeric_bins(bins)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for model, items in items_by_model.items():
        grouped: dict[Any, list[Mapping[str, Any]]] = {}
        for item in items:
            x = item.get(field)
            if x is None or _value(item, key) is None:
                continue
            if edges is None:
                grouped.setdefault(x, []).append(item)
                continue
            x = float(x)
            if not edges[0][1] <= x <= edges[-1][2]:
                raise ValueError(f"item {item.get('id')!r} of {model!r}: {field}={x:g} outside the bins "
                                 f"[{edges[0][1]:g}, {edges[-1][2]:g}]")
            # the bin whose lo <= x < hi; the top edge itself belongs to the last bin (180 deg is a rotation)
            k = min(bisect.bisect_right([lo for _, lo, _ in edges], x) - 1, len(edges) - 1)
            grouped.setdefault(edges[k][0], []).append(item)
        if edges is None:
            labelled = {_bin_label(v): grouped[v] for v in sorted(grouped)}
            if len(labelled) != len(grouped):
                raise ValueError(f"{model!r}: distinct {field} values {sorted(grouped)} share a label")
        else:
            labelled = {lab: grouped.get(lab, []) for lab, _, _ in edges}
        table = out.setdefault(model, {})
        for label, members in labelled.items():
            value, lo, hi = bootstrap_ci(members, key, n_boot=n_boot, seed=seed, method=method)
            table[label] = {"value": _or_none(value), "lo": _or_none(lo), "hi": _or_none(hi), "n": len(members),
                            "n_units": len({str(it["unit"]) for it in members})}
    return out


# ------------------------------------------------------------------------------------------------ validity
# An oracle (ground truth as features / predictions) must come close to the perfect score, or the benchmark (its
# ground truth, its protocol) is broken: at least this many percent for percentage scores, at most this error for
# error metrics (APE in % of the shortest side, or pixels).
ORACLE_MIN_SCORE = 90.0
ORACLE_MAX_ERROR = 2.0
MAX_CI_HALF_WIDTH = 3.0   # points: a headline metric whose 95% CI is wider cannot resolve 3-point effects
DOES_NOT_DISCRIMINATE = "does not discriminate"


def ci_half_width(interval: Sequence[float] | None) -> float | None:
    """Half the width of a [lo, hi] interval; None without one (or with an open end)."""
    if not interval or interval[0] is None or interval[1] is None:
        return None
    lo, hi = float(interval[0]), float(interval[1])
    return (hi - lo) / 2.0 if math.isfinite(lo) and math.isfinite(hi) else None


def validity(key: str, metrics: Mapping[str, Mapping[str, float]],
             deltas: Mapping[str, Mapping[str, Mapping[str, Any]]], lower_is_better: bool,
             ci: Mapping[str, Mapping[str, Sequence[float]]] | None = None) -> dict[str, Any]:
    """Floor / ceiling check of one benchmark metric: oracle, pretrained and random side by side, the paired
    delta pretrained − random, and a verdict.

    ``does not discriminate`` when random init is not significantly worse than pretrained (the paired delta
    random − pretrained, from ``deltas["random-pretrained"]``, does not exclude 0 on the bad side): such a benchmark
    does not measure what pretraining learned. ``oracle far from perfect`` when the oracle misses
    ``ORACLE_MIN_SCORE`` / ``ORACLE_MAX_ERROR``. ``CI ±x > ±3`` when the pretrained model's 95% interval (from
    ``ci``) is wider than ``MAX_CI_HALF_WIDTH`` points on either side: too few units to resolve the effects the
    benchmark is used for (not checked for pixel errors). Missing models give ``no ... measured`` notes instead."""
    pre = metrics.get("pretrained", {}).get(key)
    rnd = metrics.get("random", {}).get(key)
    orc = metrics.get("oracle", {}).get(key)
    d = deltas.get("random-pretrained", {}).get(key)
    flags = []
    if pre is None or rnd is None:
        flags.append("no random floor measured")
    elif d is not None and (d["lo"] is None or not math.isfinite(d["lo"])):
        flags.append("no CI (one unit)")
    else:
        worse = d is not None and d["significant"] and (d["lo"] > 0 if lower_is_better else d["hi"] < 0)
        if not worse:
            flags.append(DOES_NOT_DISCRIMINATE)
    if orc is not None:
        ok = orc <= ORACLE_MAX_ERROR if lower_is_better else orc >= ORACLE_MIN_SCORE
        if not ok:
            flags.append("oracle far from perfect")
    half = ci_half_width((ci or {}).get("pretrained", {}).get(key))
    if half is not None and half > MAX_CI_HALF_WIDTH and not key.endswith("median_px"):
        flags.append(f"CI ±{half:.1f} > ±{MAX_CI_HALF_WIDTH:g}")
    flipped = None
    if d is not None:  # report pretrained − random (positive = pretrained higher)
        neg = (lambda x: None if x is None else -x)
        flipped = {"delta": -d["delta"], "lo": neg(d["hi"]), "hi": neg(d["lo"]), "significant": d["significant"]}
    return {"metric": key, "oracle": orc, "pretrained": pre, "random": rnd, "pretrained-random": flipped,
            "ci_half_width": half, "verdict": "; ".join(flags) if flags else "ok",
            "discriminates": bool(pre is not None and rnd is not None and DOES_NOT_DISCRIMINATE not in flags)}
