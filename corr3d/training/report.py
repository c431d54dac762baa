"""report.md for a training run: before/after tables with 95% CIs and paired deltas, validity, per-object
breakdown, plots.

The numbers come from metrics.json: per model the flat metrics, ``"ci"`` ({model: {key: [lo, hi]}}) and ``"deltas"``
({"<a>-<b>": {key: {delta, lo, hi, significant}}}), computed by ``corr3d.training.run.add_confidence`` from the
per-item parts (``<run>/parts/<task>/<model>.json``) with ``corr3d.eval.stats``."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from corr3d.eval.equivariance import (extract_view_features, nearest_neighbor_matches, open_rendered_objects,
                                      visible_correspondences)
from corr3d.eval.run import breakdown_section
from corr3d.eval.stats import validity
from corr3d.eval.tasks import headline_metric_keys
from corr3d.geometry.pixels import foreground_centres
from corr3d.geometry.rotations import relative_rotation_matrix_deg
from corr3d.utils.report import (
    CI_LEGEND,
    _pyplot,
    _save_figure,
    before_after_table,
    ci_comparison_rows,
    format_delta,
    format_value,
    markdown_table,
    plot_grouped_bars,
    plot_lines,
    write_text,
)
from corr3d.utils.torch_utils import eval_mode
from corr3d.utils.visualize import correspondence_figure, pca_rgb

log = logging.getLogger(__name__)

MODELS = ("pretrained", "pretrained_head_init", "pretrained_default_conv", "finetuned")
REFERENCES = ("random", "oracle")
DESCRIPTIONS = {"pretrained": "pretrained backbone, no head", "pretrained_head_init": "pretrained + untrained conv head",
                "pretrained_default_conv": "pretrained + untrained default-init 3x3 conv (the paper's starting point)",
                "finetuned": "after finetuning (LoRA + head)", "random": "random-init backbone (floor)",
                "oracle": "ground truth as features (ceiling)"}
# the deltas a training report shows: what training did, what the untrained head alone did
DELTAS = ("finetuned-pretrained", "finetuned-pretrained_head_init", "finetuned-pretrained_default_conv",
          "pretrained_head_init-pretrained", "pretrained_default_conv-pretrained")
SECTIONS = (("equivariance/", "Equivariance on held-out objects (APE % lower is better, PCDP % higher is better)"),
            ("real_pairs/", "Real photographs: real_pairs (PCK % higher is better, median error px lower is better)"))
LOWER_IS_BETTER = ("ape", "median_px")


def _scores(values: dict) -> dict[str, float]:
    """Quality numbers only (drop counts and timings)."""
    return {k: v for k, v in values.items()
            if isinstance(v, (int, float)) and not k.endswith(("num_points", "num_pairs", "seconds"))}


def _seconds(metrics: dict) -> str:
    """Evaluation wall time per model (equivariance + real_pairs), e.g. ``pretrained 41.2 s, finetuned 40.8 s``."""
    out = []
    for m in (*MODELS, *REFERENCES):
        values = metrics.get(m, {})
        secs = sum(v for k, v in values.items() if k.endswith("eval_seconds") and isinstance(v, (int, float)))
        if secs:
            out.append(f"{m} {secs:.1f} s")
    return ", ".join(out) or "?"


def per_object_rows(metrics: dict) -> list[dict]:
    per = metrics.get("per_object", {})
    before, after = per.get("pretrained", {}), per.get("finetuned", {})
    rows = []
    for obj in sorted(set(before) | set(after)):
        b, a = before.get(obj, {}).get("equivariance/ape"), after.get(obj, {}).get("equivariance/ape")
        rows.append({"object": obj, "APE pretrained": b, "APE finetuned": a,
                     "Δ": a - b if a is not None and b is not None else None})
    return rows


def plot_loss_curve(run: Path, path: Path) -> bool:
    """Training loss from the TensorBoard event files."""
    # local: only the loss plot uses it (import ~0.1 s)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    if "train/loss" not in events.Tags().get("scalars", []):
        return False
    scalars = events.Scalars("train/loss")
    plot_lines([s.step for s in scalars], {"train/loss": [s.value for s in scalars]}, path,
               title="SmoothAP training loss", xlabel="step", ylabel="loss")
    return True


def _lower(key: str) -> bool:
    return any(s in key for s in LOWER_IS_BETTER)


def downstream_keys(cfg: DictConfig, scores: dict) -> list[str]:
    """The headline metrics of ``equivariance.downstream``'s tasks that the rows have (real data or offline suite)."""
    measured = set(next(iter(scores.values()), {}))
    return [k for k in headline_metric_keys(cfg.equivariance.downstream) if k in measured]


def comparison_section(metrics: dict, scores: dict, prefix: str, keys: list[str] | None = None) -> list[str]:
    """Values with CIs for the trained / baseline models and the paired deltas of ``DELTAS`` (``keys``: these
    metrics, else every one under ``prefix``)."""
    if keys is None:
        keys = [k for k in next(iter(scores.values())) if k.startswith(prefix)]
    if not keys:
        return []
    ci, deltas = metrics.get("ci", {}), metrics.get("deltas", {})
    if not ci and not deltas:  # an older metrics.json: plain before/after
        return [before_after_table(scores, "pretrained" if "pretrained" in scores else next(iter(scores)),
                                   keys, lower_is_better=LOWER_IS_BETTER), ""]
    names = [d for d in DELTAS if d in deltas]
    return [markdown_table(ci_comparison_rows(scores, ci, deltas, [m for m in MODELS if m in scores], keys,
                                              names)), ""]


def validity_rows(metrics: dict, prefixes: tuple[str, ...]) -> list[dict]:
    keys = [k for k in _scores(metrics.get("pretrained", {})) if k.startswith(prefixes)]
    rows = []
    for key in keys:
        v = validity(key, metrics, metrics.get("deltas", {}), _lower(key), metrics.get("ci", {}))
        rows.append({"metric": key, "oracle": format_value(v["oracle"]), "pretrained": format_value(v["pretrained"]),
                     "CI ± (pretrained)": format_value(v["ci_half_width"]),
                     "random": format_value(v["random"]), "Δ pretrained − random": format_delta(v["pretrained-random"]),
                     "verdict": v["verdict"]})
    return rows


# ---- figures: the same views through each compared model (PNG files embedded in report.md) ----------------------
FIGURE_MODELS = ("pretrained", "pretrained_head_init", "finetuned")


def figure_view_pair(poses, target_deg: float = 45.0) -> tuple[int, int]:
    """View 0 and the view whose rotation from it is closest to ``target_deg`` (a pair every model should match)."""

    angles = relative_rotation_matrix_deg(np.asarray(poses))[0]
    angles[0] = np.inf
    return 0, int(np.argmin(np.abs(angles - target_deg)))


def write_feature_figures(run: Path, cfg: DictConfig, object_dirs, models: dict, num_lines: int = 40) -> list[Path]:
    """``features.png``: PCA colouring (one 3-component PCA per model, shared by both views, as the paper's Fig. 2)
    of the same two views of the first held-out object through each model; ``matches_<model>.png``: predicted
    (line; green within 5% of the image edge) vs true (white cross) matches of the same source points.
    Returns the written files; never raises (a report must not fail a finished run)."""
    try:
        return _feature_figures(Path(run), cfg, list(object_dirs), models, num_lines)
    except Exception as err:
        log.warning("could not draw the feature figures: %s", err)
        return []


def _feature_figures(run: Path, cfg: DictConfig, object_dirs: list, models: dict, num_lines: int) -> list[Path]:
    if not object_dirs or not models:
        return []
    obj = open_rendered_objects(object_dirs[:1])[0]
    i, j = figure_view_pair(obj.poses)
    images = [np.asarray(obj.rgb(i)), np.asarray(obj.rgb(j))]
    rng = np.random.default_rng(int(cfg.seed))
    src, gt = visible_correspondences(obj, i, j, num_lines, float(cfg.equivariance.visibility_tol), rng)
    candidates = foreground_centres(obj.mask(j), int(cfg.equivariance.target_stride))
    names = [m for m in FIGURE_MODELS if m in models]
    plt = _pyplot()
    fig, axes = plt.subplots(len(names) + 1, 2, figsize=(6, 3 * (len(names) + 1)))
    for col, image in enumerate(images):
        axes[0, col].imshow(image)
        axes[0, col].set_title(f"{obj.object_id} view {(i, j)[col]}", fontsize=8)
    written = []
    for row, name in enumerate(names, start=1):
        model = models[name]
        with eval_mode(model):
            maps = extract_view_features(model, images, 2)
            maps = [m.float().cpu() for m in maps]
            for col, rgb in enumerate(pca_rgb(maps)):
                axes[row, col].imshow(rgb, interpolation="nearest")
                axes[row, col].set_title(f"{name}: PCA of features", fontsize=8)
            if len(src):
                pred = nearest_neighbor_matches(model, maps[0], maps[1], src, candidates, (obj.height, obj.width))
                error = np.linalg.norm(pred - gt, axis=1) / min(obj.height, obj.width)
                match_fig = correspondence_figure(images[0], images[1], src, pred, gt, max_lines=num_lines,
                                                  title=f"{name}: predicted (lines) vs true (x); "
                                                        f"{100 * np.mean(error < 0.05):.0f}% within 5%")
                written.append(_save_figure(match_fig, run / f"matches_{name}.png"))
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.tight_layout()
    written.insert(0, _save_figure(fig, run / "features.png"))
    return written


def write_training_report(run: Path, metrics: dict, cfg: DictConfig) -> Path:
    run = Path(run)
    scores = {m: _scores(metrics[m]) for m in MODELS if m in metrics}
    train = metrics.get("train", {})
    parts = [f"# {cfg.experiment}: multiview-equivariance finetuning", "",
             f"- backbone: `{cfg.model.backbone}`; weights: {metrics.get('weights', cfg.model.weights)}",
             f"- LoRA rank {cfg.model.lora.rank} on the last {cfg.model.lora.blocks} blocks, "
             f"{cfg.model.head.num_layers} conv head layer(s) ({cfg.model.head.init} init)",
             f"- training objects: {', '.join(map(str, cfg.data.train_objects))}",
             f"- held-out evaluation objects: {', '.join(map(str, cfg.equivariance.objects))}",
             f"- feature grid: target_res {cfg.model.target_res} / downsample {cfg.model.downsample_factor}; "
             f"steps: {train.get('global_step', '?')}; wall time: {train.get('wall_seconds', '?')} s; "
             f"peak memory: {train.get('peak_rss_mb', '?')} MB",
             f"- equivariance protocol `{cfg.equivariance.protocol}`; sampling seed {cfg.eval.seed} "
             f"(stable per object: identical pairs in every process); evaluation time "
             f"{_seconds(metrics)}", "",
             "; ".join(f"`{m}` = {DESCRIPTIONS[m]}" for m in (*scores, *REFERENCES) if m in metrics), "",
             CI_LEGEND, ""]
    for prefix, title in SECTIONS if scores else ():
        section = comparison_section(metrics, scores, prefix)
        if section:
            parts += [f"## {title}", ""] + section
    if scores and (keys := downstream_keys(cfg, scores)):
        parts += ["## Downstream tasks (equivariance.downstream; Δ = paired over the task's units)", ""]
        parts += comparison_section(metrics, scores, "", keys)
    if scores:
        rows = validity_rows(metrics, tuple(p for p, _ in SECTIONS))
        if rows and any(m in metrics for m in REFERENCES):
            parts += ["## Validity: floors and ceilings", "",
                      "A metric random-init features do not significantly lose on does not measure what pretraining "
                      "learned (**does not discriminate**); the oracle must be near perfect; a pretrained CI wider "
                      "than ±3 points is flagged (**CI ±x > ±3**: too few units to resolve a few points).", "",
                      markdown_table(rows), ""]
        eq_keys = [k for k in next(iter(scores.values())) if k.startswith("equivariance/")]
        plot_grouped_bars(scores, run / "equivariance.png", title="held-out objects", ylabel="%", keys=eq_keys)
        parts += ["![equivariance](equivariance.png)", ""]
        parts += breakdown_section(metrics.get("breakdowns", {}), [*MODELS, *REFERENCES])
    rows = per_object_rows(metrics)
    if rows:
        parts += ["## Per held-out object", "", markdown_table(rows), ""]
    figures = [m for m in FIGURE_MODELS if (run / f"matches_{m}.png").exists()]
    if (run / "features.png").exists():
        parts += ["## Features and matches on a held-out object", "",
                  "The same two views through each model: PCA colouring of the dense features (rows), then the "
                  "predicted match of each source point (line; green if within 5% of the image edge) against its "
                  "true location (white x).", "", "![features](features.png)", ""]
        parts += [f"![matches {m}](matches_{m}.png)" for m in figures] + [""]
    val = run / "val_history.json"
    if val.exists():
        data = json.loads(val.read_text())
        if data.get("history"):
            rows = [{"step": h["step"], **{k: v for k, v in h.items() if k.startswith("equivariance/")
                                             and not k.endswith("num_points")}} for h in data["history"]]
            best = data.get("best") or {}
            parts += ["## Validation probe (data.val_objects)", "",
                      f"Best step by `{data.get('select_key')}`: {best.get('step')}"
                      + (" (selected: trainer.select_best)" if metrics.get("train", {}).get("selected_step")
                         is not None else ""), "", markdown_table(rows), ""]
    try:
        if plot_loss_curve(run, run / "loss.png"):
            parts += ["## Training loss", "", "![loss](loss.png)", ""]
    except Exception as err:  # a report must never fail a finished run
        log.warning("could not plot the loss curve: %s", err)
    return write_text(run / "report.md", "\n".join(parts))
