"""Gathering a sweep's results: rows from each cell's metrics.json, the report and the Fig. 3 correlation.

``corr3d.launch.sweep`` runs the cells (``runs/<experiment>/sweeps/<name>/<cell>/``, listed in the sweep
directory's ``sweep.json``); this module only reads what they wrote, so it lives with training and never imports
the launcher. Gathering writes ``results.csv`` (one row per cell: the axis values, each model's metrics with their
95% CI from the cell's metrics.json ``"ci"``, and the paired deltas ``finetuned-pretrained_head_init`` /
``finetuned-pretrained`` from ``"deltas"``), a plot per metric against the first numeric axis (error bars = CI) and
``report.md`` (tables, seed summaries and the correlation of APE with the other metrics across cells and models).
"""
from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import yaml

from corr3d.config import load_config
from corr3d.eval.stats import bootstrap_ci, paired_delta
from corr3d.eval.tasks import headline_metric_keys
from corr3d.utils.paths import safe_join
from corr3d.utils.report import _pyplot, markdown_table, write_csv, write_text
from corr3d.utils.run_dir import DONE_MARKER

log = logging.getLogger("corr3d.training.sweep_report")

MODELS = ("pretrained", "pretrained_head_init", "finetuned")
DELTAS = ("finetuned-pretrained_head_init", "finetuned-pretrained")
RESULTS_FILE = "results.csv"


# ---- cell names and state, shared with the sweep driver (corr3d.launch.sweep) -------------------------------------
def variant_label(value: str) -> str | None:
    """The ``_name`` of a variant-axis value (``{optim.lr: 1e-4, _name: lr1e-4}`` -> ``lr1e-4``); None otherwise."""
    if not value.startswith("{"):
        return None
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return None
    return str(parsed["_name"]) if isinstance(parsed, dict) and "_name" in parsed else None


def slug(text: str) -> str:
    """``text`` reduced to ``[A-Za-z0-9.+-]`` runs joined by ``_``: cell names and plot file names are paths."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "x"


def is_done(run: Path) -> bool:
    return (Path(run) / DONE_MARKER).exists()


# ---- gathering --------------------------------------------------------------------------------------------------
def _number(text: str):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return text
    return int(value) if value.is_integer() and "." not in str(text) and "e" not in str(text).lower() else value


def cell_row(cell: str, assignment: Mapping[str, str], run: Path, keys: Sequence[str]) -> dict:
    """One results.csv row: axis values, status, per model ``<model>/<key>`` (+ ``_lo``/``_hi``), deltas."""
    row: dict = {"cell": cell, **{k: _number(variant_label(v) or v) for k, v in assignment.items()}}
    path = Path(run) / "metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else {}
    row["status"] = "done" if is_done(run) else ("partial" if metrics else "missing")
    train = metrics.get("train", {})
    row["steps"] = train.get("global_step")
    row["wall_seconds"] = train.get("wall_seconds")
    row["peak_rss_mb"] = train.get("peak_rss_mb")
    ci = metrics.get("ci") or {}
    deltas = metrics.get("deltas") or {}
    if not ci and metrics.get("per_object"):
        ci, deltas = per_object_intervals(metrics, keys)
    for model in MODELS:
        values = metrics.get(model, {})
        for key in keys:
            if key not in values:
                continue
            row[f"{model}/{key}"] = values[key]
            lo_hi = ci.get(model, {}).get(key)
            if lo_hi:
                row[f"{model}/{key}_lo"], row[f"{model}/{key}_hi"] = lo_hi
    for name, by_key in deltas.items():
        if name not in DELTAS:
            continue
        for key in keys:
            d = by_key.get(key)
            if d:
                row[f"{name}/{key}"] = d["delta"]
                row[f"{name}/{key}_lo"], row[f"{name}/{key}_hi"] = d["lo"], d["hi"]
                row[f"{name}/{key}_significant"] = bool(d["significant"])
    for model in MODELS[1:]:  # deltas computable without CIs (older metrics.json)
        for key in keys:
            ref = "pretrained_head_init" if model == "finetuned" else "pretrained"
            name = f"{model}-{ref}/{key}"
            if name not in row and f"{model}/{key}" in row and f"{ref}/{key}" in row:
                row[name] = row[f"{model}/{key}"] - row[f"{ref}/{key}"]
    return row


def per_object_items(metrics: Mapping, model: str) -> list[dict]:
    """Items in the ``corr3d.eval.stats`` convention from a run's ``per_object`` block: one item per held-out
    object (its own unit), weighted by its number of evaluated points, so the weighted mean is the pooled metric."""
    per = metrics.get("per_object", {}).get(model, {})
    return [{"id": obj, "unit": obj, "weight": float(vals.get("equivariance/num_points", 1.0)), **vals}
            for obj, vals in sorted(per.items())]


def per_object_intervals(metrics: Mapping, keys: Sequence[str], n_boot: int = 2000, seed: int = 0
                         ) -> tuple[dict, dict]:
    """("ci", "deltas") in the metrics.json shape, for runs written before training recorded them: cluster
    bootstrap over the held-out objects with ``corr3d.eval.stats``. Keys without per-object values get none."""
    items = {m: per_object_items(metrics, m) for m in MODELS}
    ci = {m: {} for m in MODELS if items[m]}
    for model in ci:
        for key in keys:
            if any(key in it for it in items[model]):
                _, lo, hi = bootstrap_ci(items[model], key, n_boot=n_boot, seed=seed)
                ci[model][key] = [lo, hi]
    deltas: dict = {}
    # a run without a conv head has no separate untrained-head row: its reference is the pretrained model
    head_ref = "pretrained_head_init" if items["pretrained_head_init"] else "pretrained"
    for name, (a, b) in {"finetuned-pretrained_head_init": ("finetuned", head_ref),
                         "finetuned-pretrained": ("finetuned", "pretrained")}.items():
        if not items[a] or not items[b]:
            continue
        for key in keys:
            if any(key in it for it in items[a]):
                try:
                    deltas.setdefault(name, {})[key] = paired_delta(items[a], items[b], key, n_boot=n_boot,
                                                                    seed=seed)
                except ValueError as err:  # an object scored for one model only: no paired interval
                    log.warning("no paired delta %s %s: %s", name, key, err)
    return ci, deltas


def sweep_rows(sweep_dir: Path) -> tuple[dict, list[dict]]:
    manifest = json.loads((Path(sweep_dir) / "sweep.json").read_text())
    keys = _report_keys(manifest)
    rows = [cell_row(c["name"], c["overrides"], safe_join(sweep_dir, c["name"], what="sweep cell name"), keys)
            for c in manifest["cells"]]
    return manifest, rows


def _report_keys(manifest: dict) -> list[str]:
    cfg = load_config(manifest["experiment"] if manifest["experiment"] != "base" else "base", manifest["overrides"])
    # the cells have one scope per task: the other scope's columns stay empty (and out of the report)
    return list(dict.fromkeys([str(k) for k in cfg.sweep.metrics] + headline_metric_keys(cfg.equivariance.downstream)))


def gather_sweep(sweep_dir: str | Path) -> Path:
    """Write results.csv, plots and report.md for the sweep in ``sweep_dir``; returns the directory."""
    sweep_dir = Path(sweep_dir)
    manifest, rows = sweep_rows(sweep_dir)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    write_csv(sweep_dir / RESULTS_FILE, rows, columns)
    try:
        write_sweep_report(sweep_dir, manifest, rows)
    except Exception as err:  # the CSV is the product; a plotting problem must not lose it
        log.warning("sweep report failed: %s", err)
    return sweep_dir


def _fmt_ci(row: dict, key: str, digits: int = 2) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = f"{value:+.{digits}f}" if "-" in key.split("/")[0] else f"{value:.{digits}f}"
    lo, hi = row.get(f"{key}_lo"), row.get(f"{key}_hi")
    if lo is not None and hi is not None:
        text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    if row.get(f"{key}_significant"):
        text += " *"
    return text


def seed_summary(rows: Sequence[dict], axes: Sequence[str], key: str) -> list[dict]:
    """Mean and standard deviation over the ``seed`` axis of ``key`` for each setting of the other axes."""
    others = [a for a in axes if a != "seed"]
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        if row.get(key) is None:
            continue
        groups.setdefault(tuple(row.get(a) for a in others), []).append(float(row[key]))
    out = []
    for combo, values in groups.items():
        out.append({**dict(zip(others, combo)), "n_seeds": len(values), f"{key} mean": float(np.mean(values)),
                    f"{key} sd": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")})
    return out


def write_sweep_report(sweep_dir: Path, manifest: dict, rows: list[dict]) -> Path:
    axes = list(manifest["axes"])
    keys = _report_keys(manifest)
    lines = [f"# Sweep `{manifest['name']}` of `{manifest['experiment']}`", "",
             f"Axes: {', '.join(f'`{k}` = {v}' for k, v in manifest['axes'].items()) or 'none'}; "
             f"overrides: {' '.join(manifest['overrides']) or 'none'}.", "",
             "Values are the held-out metrics (equivariance: APE % lower is better, PCDP % higher; real_pairs; the "
             "tasks of equivariance.downstream) with their 95% "
             "CI (t-interval over units) in brackets where the run recorded one; Δ columns are paired deltas "
             "(`*`: the CI excludes 0). `head_init` = pretrained + untrained head.", ""]
    for key in [k for k in keys if any(r.get(f"{m}/{k}") is not None for r in rows for m in MODELS)]:
        table = []
        for row in rows:
            entry = {"cell": row["cell"], **{a: row.get(a) for a in axes}, "status": row["status"]}
            for model, label in (("pretrained", "pretrained"), ("pretrained_head_init", "head_init"),
                                 ("finetuned", "finetuned")):
                entry[label] = _fmt_ci(row, f"{model}/{key}")
            entry["Δ ft−head_init"] = _fmt_ci(row, f"finetuned-pretrained_head_init/{key}")
            entry["Δ ft−pretrained"] = _fmt_ci(row, f"finetuned-pretrained/{key}")
            table.append(entry)
        lines += [f"## `{key}`", "", markdown_table(table), ""]
        plot = plot_sweep(sweep_dir, axes, rows, key)
        if plot is not None:
            lines += [f"![{key}]({plot.name})", ""]
        if "seed" in axes:
            summary = seed_summary(rows, axes, f"finetuned/{key}")
            if summary:
                lines += ["Across seeds (finetuned):", "", markdown_table(summary), ""]
    corr = correlation_rows(rows, keys)
    if corr:
        lines += ["## Correlation of APE with the other metrics across cells and models", "",
                  markdown_table(corr, digits=3), ""]
    return write_text(sweep_dir / "report.md", "\n".join(lines))


def _numeric_axis(axes: Sequence[str], rows: Sequence[dict]) -> str | None:
    for axis in axes:
        if axis != "seed" and all(isinstance(r.get(axis), (int, float)) for r in rows):
            return axis
    return None


def plot_sweep(sweep_dir: Path, axes: Sequence[str], rows: Sequence[dict], key: str) -> Path | None:
    """``key`` against the first numeric axis (or the cells in order), one line per model and per setting of the
    remaining axes, error bars = 95% CI."""
    x_axis = _numeric_axis(axes, rows)
    others = [a for a in axes if a != x_axis]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(a) for a in others), []).append(row)
    drawn = False
    for combo, members in groups.items():
        members = sorted(members, key=lambda r: r.get(x_axis) if x_axis else 0)
        xs = [r.get(x_axis) for r in members] if x_axis else list(range(len(members)))
        suffix = ", ".join(f"{a}={v}" for a, v in zip(others, combo))
        for model, style in (("finetuned", "-o"), ("pretrained_head_init", "--s"), ("pretrained", ":^")):
            full = f"{model}/{key}"
            pts = [(x, r) for x, r in zip(xs, members) if r.get(full) is not None]
            if not pts:
                continue
            if model != "finetuned" and len({round(r[full], 6) for _, r in pts}) == 1 and len(groups) > 1:
                continue  # a constant baseline repeated per group only clutters the plot
            y = [r[full] for _, r in pts]
            err = None
            if all(r.get(f"{full}_lo") is not None for _, r in pts):
                err = [[v - r[f"{full}_lo"] for v, (_, r) in zip(y, pts)],
                       [r[f"{full}_hi"] - v for v, (_, r) in zip(y, pts)]]
            ax.errorbar([x for x, _ in pts], y, yerr=err, fmt=style, capsize=3,
                        label=f"{model}" + (f" ({suffix})" if suffix else ""))
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    if x_axis and all(isinstance(x, (int, float)) and x > 0 for x in (r.get(x_axis) for r in rows)) \
            and max(r.get(x_axis) for r in rows) / max(min(r.get(x_axis) for r in rows), 1e-12) >= 50:
        ax.set_xscale("log")
    elif x_axis and any(r.get(x_axis) == 0 for r in rows) and max(r.get(x_axis) for r in rows) >= 50:
        ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel(x_axis or "cell")
    if not x_axis:
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r["cell"] for r in rows], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    path = Path(sweep_dir) / f"{slug(key)}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- Fig. 3: correlation of APE with the other metrics ---------------------------------------------------------
def pearson_spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(Pearson r, Spearman rho) of paired samples; NaN when fewer than 3 points or a constant series."""
    from scipy import stats  # deferred: heavy optional dependency, loaded only when used

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan"), float("nan")
    return float(stats.pearsonr(x, y)[0]), float(stats.spearmanr(x, y)[0])


def correlation_table(points: Sequence[Mapping[str, float]], x_key: str = "equivariance/ape",
                      y_keys: Sequence[str] | None = None) -> list[dict]:
    """Pearson and Spearman r of ``x_key`` against every other metric present in at least 3 points (Fig. 3)."""
    y_keys = y_keys or sorted({k for p in points for k in p if k != x_key and not k.endswith(("seconds", "num_points"))})
    out = []
    for key in y_keys:
        pairs = [(p[x_key], p[key]) for p in points if x_key in p and key in p]
        if len(pairs) < 3:
            continue
        r, rho = pearson_spearman([a for a, _ in pairs], [b for _, b in pairs])
        out.append({"metric": key, "n": len(pairs), "pearson_r": r, "spearman_r": rho})
    return out


def correlation_rows(rows: Sequence[dict], keys: Sequence[str], x_key: str = "equivariance/ape") -> list[dict]:
    points = []
    for row in rows:
        for model in MODELS:
            point = {k: row[f"{model}/{k}"] for k in keys if row.get(f"{model}/{k}") is not None}
            if point and point not in points:  # a baseline row shared by many cells is one point, not many
                points.append(point)
    return correlation_table(points, x_key, [k for k in keys if k != x_key]) if len(points) >= 3 else []

