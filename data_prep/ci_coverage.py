"""Coverage of corr3d's 95% intervals, by simulation on real per-object results (docs/ci_coverage.md).

A 95% interval should hold the true value 95% of the time. Whether the cluster percentile bootstrap (corr3d's
default before) does with the 10-12 units of the offline suites is checked here: the pool is the 56 held-out
objects of the ``dinov2_single_object`` benchmark, each reduced to its unit sums (sum weight·value, sum weight),
exactly what ``corr3d.eval.stats`` aggregates. A simulated experiment draws n units i.i.d. from the pool (with
replacement: the pool is the population, so its own ratio sum(num) / sum(den) is the true value, known exactly),
builds one item per drawn unit and asks each method for its 95% interval; coverage = fraction of draws whose
interval holds the true value. Paired-delta pools (finetuned − pretrained, random − pretrained per object) are
checked the same way through ``paired_delta``.

Methods: ``percentile`` and ``t`` are ``corr3d.eval.stats`` itself (``bootstrap_ci`` / ``paired_delta``);
``bca`` is ``scipy.stats.bootstrap(method="BCa")`` over the same unit sums (the ratio as a paired statistic).

    python data_prep/ci_coverage.py                 # the tables of docs/ci_coverage.md (~15 min on one core)
    python data_prep/ci_coverage.py --draws 200     # a quick look
    python data_prep/ci_coverage.py extract runs/dinov2_single_object/<run>   # rebuild the committed pool

Every draw is seeded (numpy ``default_rng`` from (seed, pool, n) and the draw index): same tables every run.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
from scipy import stats as sps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corr3d.eval.stats import CI_LEVEL, _collect, _unit_sums, bootstrap_ci, paired_delta  # noqa: E402

POOL = Path(__file__).with_name("ci_coverage_pool.json")
MODELS = ("pretrained", "random", "finetuned")
DELTAS = (("finetuned", "pretrained"), ("random", "pretrained"))
SIZES = (5, 10, 12, 20, 40, 56)
KEYS = ("equivariance/ape", "equivariance/pcdp@0.1")   # the headline APE and the middle PCDP threshold
METHODS = ("percentile", "bca", "t")


# ------------------------------------------------------------------------------------------------ pool
def extract(run_dir: Path, out: Path = POOL) -> dict:
    """Per-object unit sums of every metric key of ``parts/equivariance/<model>.json`` (the per-item results)."""
    items = {m: json.loads((run_dir / "parts" / "equivariance" / f"{m}.json").read_text()) for m in MODELS}
    ids = {m: sorted(str(it["id"]) for it in items[m]) for m in MODELS}
    if any(ids[m] != ids[MODELS[0]] for m in MODELS):
        raise ValueError(f"{run_dir}: the models were not scored on the same items; no paired pool")
    units = sorted({str(it["unit"]) for it in items[MODELS[0]]})
    keys = sorted(k for k in items[MODELS[0]][0] if k.startswith("equivariance/"))
    pool: dict = {"source": f"{run_dir.name}: parts/equivariance/<model>.json (per view-pair items, unit = object)",
                  "units": units, "models": {}}
    for m in MODELS:
        for key in keys:
            unit_ids, weights, values = _collect(items[m], key)
            if sorted(set(unit_ids)) != units:
                raise ValueError(f"{m} {key}: not every object carries the key")
            num, den = _unit_sums(unit_ids, weights, values, units)
            pool["models"].setdefault(m, {})[key] = {"num": num.tolist(), "den": den.tolist()}
    out.write_text(json.dumps(pool, indent=1) + "\n")
    return pool


# ------------------------------------------------------------------------------------------------ intervals
def _items(num: np.ndarray, den: np.ndarray, key: str) -> list[dict]:
    """One item per drawn unit (distinct unit names: two draws of one object are two independent units)."""
    return [{"id": f"u{k}", "unit": f"u{k}", "weight": float(d), key: float(n / d)}
            for k, (n, d) in enumerate(zip(num, den))]


def _ratio(num, den, axis=-1):
    return np.sum(num, axis=axis) / np.sum(den, axis=axis)


def _bca(arrays: tuple[np.ndarray, ...], seed: int, n_boot: int) -> tuple[float, float]:
    if len(arrays) == 2:
        statistic = _ratio
    else:
        def statistic(na, da, nb, db, axis=-1):
            return _ratio(na, da, axis) - _ratio(nb, db, axis)
    with warnings.catch_warnings():   # degenerate draws (all units equal): scipy warns and returns nan
        warnings.simplefilter("ignore")
        res = sps.bootstrap(arrays, statistic, paired=True, vectorized=True, n_resamples=n_boot, method="BCa",
                            confidence_level=CI_LEVEL, rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def interval(method: str, arrays: tuple[np.ndarray, ...], key: str, seed: int, n_boot: int) -> tuple[float, float]:
    """The 95% interval of ``method`` for one drawn set of units (ratio pool: (num, den); delta: a's then b's)."""
    if method == "bca":
        return _bca(arrays, seed, n_boot)
    if len(arrays) == 2:
        _, lo, hi = bootstrap_ci(_items(*arrays, key), key, n_boot=n_boot, seed=seed, method=method)
        return lo, hi
    d = paired_delta(_items(*arrays[:2], key), _items(*arrays[2:], key), key, n_boot=n_boot, seed=seed,
                     method=method)
    return d["lo"], d["hi"]


def pools(pool: dict, keys=KEYS) -> dict[str, tuple[np.ndarray, ...]]:
    out = {}
    for m in MODELS:
        for key in keys:
            s = pool["models"][m][key]
            out[f"{m} {key}"] = (np.asarray(s["num"]), np.asarray(s["den"]))
    for a, b in DELTAS:
        for key in keys:
            sa, sb = pool["models"][a][key], pool["models"][b][key]
            out[f"{a}−{b} {key}"] = tuple(np.asarray(x) for x in (sa["num"], sa["den"], sb["num"], sb["den"]))
    return out


def truth(arrays: tuple[np.ndarray, ...]) -> float:
    value = _ratio(arrays[0], arrays[1])
    return value - _ratio(arrays[2], arrays[3]) if len(arrays) == 4 else value


def coverage(arrays, key: str, n: int, draws: int, seed: int, n_boot: int, pool_index: int) -> dict[str, float]:
    rng = np.random.default_rng([seed, pool_index, n])
    target = truth(arrays)
    hits = dict.fromkeys(METHODS, 0)
    for d in range(draws):
        pick = rng.integers(0, len(arrays[0]), size=n)
        drawn = tuple(x[pick] for x in arrays)
        for method in METHODS:
            lo, hi = interval(method, drawn, key, seed=d, n_boot=n_boot)
            hits[method] += bool(lo <= target <= hi)     # a nan interval never covers
    return {m: h / draws for m, h in hits.items()}


# ------------------------------------------------------------------------------------------------ report
def simulate(pool: dict, draws: int, seed: int, n_boot: int, sizes=SIZES, keys=KEYS) -> str:
    table = {}
    for p, (name, arrays) in enumerate(pools(pool, keys).items()):
        key = name.split(" ", 1)[1]
        table[name] = {n: coverage(arrays, key, n, draws, seed, n_boot, p) for n in sizes}
        print(name, {n: table[name][n] for n in sizes}, file=sys.stderr, flush=True)
    lines = [f"Coverage (%) of nominal 95% intervals, {draws} seeded draws per cell, n_boot={n_boot}; "
             f"Monte Carlo SE of one cell ≈ {100 * np.sqrt(0.95 * 0.05 / draws):.1f} points.", "",
             "Summary over the %d pools (mean / min):" % len(table), "",
             "| method | " + " | ".join(f"n={n}" for n in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for m in METHODS:
        cells = [f"{100 * np.mean([t[n][m] for t in table.values()]):.1f} / "
                 f"{100 * np.min([t[n][m] for t in table.values()]):.1f}" for n in sizes]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Per pool (percentile / BCa / t):", "",
              "| pool | " + " | ".join(f"n={n}" for n in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for name, row in table.items():
        cells = [" / ".join(f"{100 * row[n][m]:.1f}" for m in METHODS) for n in sizes]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def full_data_change(pool: dict, n_boot: int, seed: int = 0) -> str:
    """The intervals of the whole 56-object pool under the old and the new default, side by side (every key)."""
    lines = ["| pool | value | percentile [lo, hi] | t [lo, hi] | width t / percentile |", "|---|---|---|---|---|"]
    for name, arrays in pools(pool, list(pool["models"][MODELS[0]])).items():
        key = name.split(" ", 1)[1]
        old = interval("percentile", arrays, key, seed, n_boot)
        new = interval("t", arrays, key, seed, n_boot)
        lines.append(f"| {name} | {truth(arrays):.2f} | [{old[0]:.2f}, {old[1]:.2f}] | [{new[0]:.2f}, {new[1]:.2f}] "
                     f"| {(new[1] - new[0]) / (old[1] - old[0]):.3f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", nargs="?", default="simulate", choices=("simulate", "extract"))
    ap.add_argument("run_dir", nargs="?", type=Path, help="extract: the run directory holding parts/equivariance")
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--keys", nargs="+", default=list(KEYS), help="metric keys of the pool to simulate")
    args = ap.parse_args(argv)
    if args.command == "extract":
        if args.run_dir is None:
            ap.error("extract needs the run directory")
        extract(args.run_dir)
        print(f"wrote {POOL}")
        return
    pool = json.loads(POOL.read_text())
    print(simulate(pool, args.draws, args.seed, args.n_boot, tuple(args.sizes), tuple(args.keys)))
    print()
    print(f"Whole pool ({len(pool['units'])} objects), 95% interval before (percentile) and after (t):")
    print()
    print(full_data_change(pool, args.n_boot))


if __name__ == "__main__":
    main()
