"""Reporting helpers shared by evaluation and training reports.

- :func:`write_csv` / :func:`write_text`: atomic writers (temporary file + rename); JSON: ``corr3d.utils.io.write_json``.
- :func:`markdown_table`: rows (list of dicts) -> GitHub Markdown table.
- :func:`before_after_rows` / :func:`before_after_table`: metrics of a baseline vs other models with deltas.
- :func:`plot_grouped_bars` / :func:`plot_lines`: matplotlib figures written as PNG (Agg backend, headless).
- :func:`flatten` / :func:`unflatten`: nested dicts <-> flat ``a/b/c`` keys.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence


from corr3d.utils.io import atomic_write, atomic_write_text, json_default


def to_jsonable(obj: Any) -> Any:
    """Round-trip through JSON (numpy/torch scalars -> floats, NaN kept as NaN)."""
    return json.loads(json.dumps(obj, default=json_default))


def write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return path


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def _columns(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None) -> list[str]:
    if columns is not None:
        return list(columns)
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> Path:
    """Rows of dicts -> CSV (union of keys as header, in first-seen order; missing cells empty)."""
    cols = _columns(rows, columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt_csv(row.get(k, "")) for k in cols})
    return write_text(path, buf.getvalue())


def _fmt_csv(value: Any) -> Any:
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            return value.item()
        except (ValueError, AttributeError):
            return value
    return value


def format_value(value: Any, digits: int = 2) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return "nan"
    if number.is_integer() and abs(number) >= 1000:
        return f"{int(number)}"
    return f"{number:.{digits}f}"


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, digits: int = 2,
                   headers: Mapping[str, str] | None = None) -> str:
    """A GitHub-flavoured Markdown table; numbers formatted with ``digits`` decimals."""
    cols = _columns(rows, columns)
    if not cols:
        return "_(no data)_\n"
    headers = headers or {}
    head = "| " + " | ".join(headers.get(c, c) for c in cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    body = ["| " + " | ".join(format_value(row.get(c), digits).replace("|", "\\|") for c in cols) + " |"
            for row in rows]
    return "\n".join([head, sep, *body]) + "\n"


def flatten(tree: Mapping[str, Any], prefix: str = "", sep: str = "/") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, path, sep))
        else:
            out[path] = value
    return out


def unflatten(flat: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(sep)
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def before_after_rows(metrics: Mapping[str, Mapping[str, float]], baseline: str,
                      keys: Iterable[str] | None = None, lower_is_better: Iterable[str] = ()) -> list[dict[str, Any]]:
    """One row per metric key: the baseline's value, every other model's value and its delta to the baseline.

    ``metrics`` maps model name -> flat metrics. ``lower_is_better`` holds substrings of keys where a negative delta
    is an improvement (marked in the ``better`` column with the models that improved).
    """
    models = list(metrics)
    others = [m for m in models if m != baseline]
    if keys is None:
        seen: dict[str, None] = {}
        for name in models:
            for key in metrics[name]:
                seen.setdefault(key, None)
        keys = list(seen)
    lower = tuple(lower_is_better)
    rows = []
    for key in keys:
        row: dict[str, Any] = {"metric": key}
        base = metrics.get(baseline, {}).get(key)
        row[baseline] = base
        improved = []
        for name in others:
            value = metrics[name].get(key)
            row[name] = value
            if value is not None and base is not None:
                try:
                    delta = float(value) - float(base)
                except (TypeError, ValueError):
                    continue
                row[f"Δ {name}"] = delta
                sign = -1.0 if any(s in key for s in lower) else 1.0
                if sign * delta > 0:
                    improved.append(name)
        if others:
            row["better"] = ", ".join(improved)
        rows.append(row)
    return rows


def before_after_table(metrics: Mapping[str, Mapping[str, float]], baseline: str, keys: Iterable[str] | None = None,
                       lower_is_better: Iterable[str] = (), digits: int = 2) -> str:
    rows = before_after_rows(metrics, baseline, keys, lower_is_better)
    return markdown_table(rows, digits=digits)


def _pyplot():
    import matplotlib  # deferred: import cost (~0.4 s), only plots need it

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # deferred: import cost (~0.4 s), only plots need it

    return plt


def plot_grouped_bars(values: Mapping[str, Mapping[str, float]], path: str | os.PathLike, title: str = "",
                      ylabel: str = "", keys: Sequence[str] | None = None) -> Path:
    """Grouped bar chart: one group per metric key, one bar per series (e.g. model). PNG, atomic."""
    plt = _pyplot()
    series = list(values)
    if keys is None:
        seen: dict[str, None] = {}
        for s in series:
            for k in values[s]:
                seen.setdefault(k, None)
        keys = list(seen)
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(keys) * max(len(series), 1) * 0.6 + 2), 3.6))
    for i, s in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(keys))]
        ys = [float(values[s].get(k, float("nan"))) for k in keys]
        bars = ax.bar(xs, ys, width=width, label=s)
        for bar, y in zip(bars, ys):
            if math.isfinite(y):
                ax.annotate(f"{y:.1f}", (bar.get_x() + bar.get_width() / 2, y), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels(keys, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save_figure(fig, path)


def plot_lines(x: Sequence[float], series: Mapping[str, Sequence[float]], path: str | os.PathLike, title: str = "",
               xlabel: str = "", ylabel: str = "", logx: bool = False) -> Path:
    """Line plot of several series over a shared x (e.g. PCK vs alpha, metric vs training step)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, ys in series.items():
        ax.plot(list(x), [float(y) for y in ys], marker="o", label=name)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save_figure(fig, path)


def _save_figure(fig, path: str | os.PathLike) -> Path:
    import matplotlib.pyplot as plt  # deferred: import cost (~0.4 s), only plots need it

    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    finally:
        plt.close(fig)


# ------------------------------------------------------------------------------------------------ CIs and deltas
SIGNIFICANT_MARK = "✱"


def format_ci(value: Any, lo_hi: Sequence[float] | None = None, digits: int = 2) -> str:
    """``18.31 [17.90, 18.75]`` (value and its 95% CI); the bare value when there is no CI."""
    text = format_value(value, digits)
    if value is None or not lo_hi or not all(math.isfinite(float(x)) for x in lo_hi):
        return text
    return f"{text} [{format_value(lo_hi[0], digits)}, {format_value(lo_hi[1], digits)}]"


def format_delta(delta: Mapping[str, Any] | None, digits: int = 2) -> str:
    """``-0.52 [-0.80, -0.21] ✱`` for a paired delta (``corr3d.eval.stats.paired_delta``); ✱ = significant."""
    if not delta:
        return ""

    def signed(x) -> str:
        x = round(float(x), digits)
        return f"{x + 0.0:+.{digits}f}"  # + 0.0: no "-0.00"

    if any(delta.get(k) is None or not math.isfinite(float(delta[k])) for k in ("lo", "hi")):
        return f"{signed(delta['delta'])} (no CI: one unit)"
    text = f"{signed(delta['delta'])} [{signed(delta['lo'])}, {signed(delta['hi'])}]"
    return text + (f" {SIGNIFICANT_MARK}" if delta.get("significant") else "")


def ci_comparison_rows(metrics: Mapping[str, Mapping[str, float]], ci: Mapping[str, Mapping[str, Sequence[float]]],
                       deltas: Mapping[str, Mapping[str, Mapping[str, Any]]], models: Sequence[str],
                       keys: Iterable[str], delta_names: Sequence[str], digits: int = 2) -> list[dict[str, str]]:
    """One row per metric: each model's ``value [lo, hi]`` and each paired delta ``Δ a−b`` with its CI and mark."""
    rows = []
    for key in keys:
        row = {"metric": key}
        for model in models:
            row[model] = format_ci(metrics.get(model, {}).get(key), ci.get(model, {}).get(key), digits)
        for name in delta_names:
            row[f"Δ {name.replace('-', ' − ', 1)}"] = format_delta(deltas.get(name, {}).get(key), digits)
        rows.append(row)
    return rows


CI_LEGEND = (f"Values: metric [95% CI: t-interval over the task's independent units]. Δ a − b: paired difference on "
             f"identical items [95% paired t-interval over units]; {SIGNIFICANT_MARK} = significant (the CI excludes "
             f"0). Coverage of the method: docs/ci_coverage.md.")
