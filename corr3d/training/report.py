"""report.md for a training run: before/after equivariance table, per-object breakdown, plots."""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from corr3d.utils.report import before_after_table, markdown_table, plot_grouped_bars, plot_lines, write_text

log = logging.getLogger(__name__)

MODELS = ("pretrained", "pretrained_head_init", "finetuned")
DESCRIPTIONS = {"pretrained": "pretrained backbone, no head", "pretrained_head_init": "pretrained + untrained conv head",
                "finetuned": "after finetuning (LoRA + head)"}


def _scores(values: dict) -> dict[str, float]:
    """Quality numbers only (drop counts and timings)."""
    return {k: v for k, v in values.items()
            if isinstance(v, (int, float)) and not k.endswith(("num_points", "seconds"))}


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
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    if "train/loss" not in events.Tags().get("scalars", []):
        return False
    scalars = events.Scalars("train/loss")
    plot_lines([s.step for s in scalars], {"train/loss": [s.value for s in scalars]}, path,
               title="SmoothAP training loss", xlabel="step", ylabel="loss")
    return True


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
             f"peak memory: {train.get('peak_rss_mb', '?')} MB", "",
             "## Equivariance before and after (APE % lower is better, PCDP % higher is better)", "",
             "; ".join(f"`{m}` = {DESCRIPTIONS[m]}" for m in scores), ""]
    if scores:
        parts += [before_after_table(scores, "pretrained" if "pretrained" in scores else next(iter(scores)),
                                     lower_is_better=("ape",)), ""]
        eq_keys = [k for k in next(iter(scores.values())) if k.startswith("equivariance/")]
        plot_grouped_bars(scores, run / "equivariance.png", title="held-out objects", ylabel="%", keys=eq_keys)
        parts += ["![equivariance](equivariance.png)", ""]
    rows = per_object_rows(metrics)
    if rows:
        parts += ["## Per held-out object", "", markdown_table(rows), ""]
    try:
        if plot_loss_curve(run, run / "loss.png"):
            parts += ["## Training loss", "", "![loss](loss.png)", ""]
    except Exception as err:  # a report must never fail a finished run
        log.warning("could not plot the loss curve: %s", err)
    return write_text(run / "report.md", "\n".join(parts))
