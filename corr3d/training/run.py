"""The main job: measure equivariance of the pretrained backbone, finetune it, measure again, write a report.

``corr3d train dinov2_single_object`` (= ``make train EXP=dinov2_single_object``). Re-running the same command after
a kill resumes the unfinished run from ``checkpoints/last.ckpt``; the data stream is a function of (seed, rank,
epoch, index), so the resumed run ends in the same state as an uninterrupted one.

A resume must be justified (:func:`resume_checkpoint`): the newest checkpoint that loads with ``weights_only``, carries
this config's :func:`training_fingerprint`, fits the current model's trainable tensors and optimizer, and holds only
finite values; any other file is skipped with a warning naming it and the reason (never blocking a fresh start).
A run whose loss or weights become non-finite stops with :class:`corr3d.errors.TrainingDivergedError` and writes no
adapter and no ``DONE``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from corr3d.assets.experiment import experiment_objects
from corr3d.assets.objaverse import check_experiment_disjoint
from corr3d.assets.sh3d import write_attribution
from corr3d.data.datamodule import build_datamodule
from corr3d.eval.equivariance import (OracleModel, evaluation_object_specs,
                                      render_evaluation_objects)
from corr3d.eval.run import MODEL_ORDER, breakdown_tables, confidence, run_eval_part
from corr3d.eval.tasks.equivariance import TASK as EQUIVARIANCE
from corr3d.losses import build_loss
from corr3d.models import compared_model
from corr3d.models.backbones import TimmViTFamily
from corr3d.models.shared import Prefixes, shared_backbone_maps
from corr3d.training.callbacks import EquivarianceCallback, log_metrics_to_tensorboard
from corr3d.training.module import CHECKPOINT_FINGERPRINT_KEY, MultiviewFinetuneModule
from corr3d.training.report import write_feature_figures, write_training_report
from corr3d.utils.io import atomic_write_text, write_json
from corr3d.utils.run_dir import create_run_dir, mark_done, point_latest, release_run
from corr3d.utils.safe_load import non_finite_tensor, safe_checkpoint_load

log = logging.getLogger("corr3d.training.run")
RUN_DIR_ENV = "CORR3D_RUN_DIR"


def launch_rank() -> int:
    """Global rank of this process as set by Lightning's DDP launcher or SLURM (0 for the first process)."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def _setup_logging(run: Path) -> None:
    handler = logging.FileHandler(run / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    root = logging.getLogger("corr3d")
    root.setLevel(logging.INFO)
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
               for h in root.handlers):
        root.addHandler(logging.StreamHandler())
    root.addHandler(handler)


def _resolve_run_dir(cfg: DictConfig, run_dir: str | os.PathLike | None) -> Path:
    # rank 0 holds the run lock (utils/run_dir.py RunLock); ``latest`` moves in train() once the run has started
    rank0 = launch_rank() == 0
    if run_dir is not None:
        return create_run_dir(cfg, run_dir=run_dir, lock=rank0, move_latest=False)
    if not rank0 and os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])  # DDP child processes join the run rank 0 created
    return create_run_dir(cfg, lock=rank0, move_latest=False)


def _read_metrics(run: Path) -> dict:
    path = run / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _write_metrics(run: Path, metrics: dict) -> None:
    write_json(run / "metrics.json", metrics, sort_keys=True)


DOWNSTREAM_MODELS = ("pretrained", "pretrained_head_init", "finetuned")  # rows measured on equivariance.downstream


def measure_equivariance(model, cfg: DictConfig, object_dirs: Sequence[Path], label: str,
                         per_object: dict | None = None, parts_dir: Path | None = None,
                         cache: bool = False) -> dict[str, float]:
    """Equivariance on the held-out objects (and the real_pairs task when ``equivariance.real_pairs``, and the tasks of
    ``equivariance.downstream`` for the rows of ``DOWNSTREAM_MODELS``) of compared model ``label``, through
    ``make eval``'s part pipeline (``corr3d.eval.run.run_eval_part``): the parts go to ``<parts_dir>/`` for the CIs
    and paired deltas. With ``cache``, a reference row measured by an earlier run under the same fingerprint
    (``eval.part_cache``) is reused: another lr or seed does not measure pretrained again."""
    tasks = [("equivariance", [EQUIVARIANCE.dataset(object_dirs, controls=False)], "held-out objects, no controls")]
    if cfg.equivariance.real_pairs:
        tasks.append(("real_pairs", None, ""))
    if label in DOWNSTREAM_MODELS:   # make eval's parts of the before/after rows (Fig. 10/11 sweeps)
        tasks += [(str(task), None, "") for task in cfg.equivariance.downstream]
    results: dict[str, float] = {}
    for task, datasets, variant in tasks:
        part = run_eval_part(cfg, task, label, model=model, parts_dir=parts_dir, datasets=datasets, adapter=None,
                             variant=variant, cache=cache)
        results.update({k: v for k, v in part["metrics"].items() if v is not None})
        results[f"{task}/eval_seconds"] = round(sum(part["timings"].values()), 1)
        if per_object is not None:
            per_object.update({row["object"]: {k: v for k, v in row.items() if k != "object"}
                               for row in part["tables"].get("equivariance__objects", [])})
    log.info("%s: %s", label, ", ".join(f"{k}={v:.2f}" for k, v in results.items()))
    return results


def untrained_is_pretrained(model_cfg: DictConfig) -> bool:
    """Whether the untrained adapter computes exactly the pretrained features: LoRA starts with B = 0 and an
    identity-initialised head copies its input (tests/models/test_factory.py checks the maps are bit-identical)."""
    return model_cfg.head.init == "identity" and model_cfg.unfreeze_blocks == 0


def copy_row(metrics: dict, parts_dir: Path, source: str, target: str) -> None:
    """Give ``target`` the row, per-object results and per-item parts of ``source`` (identical models)."""
    metrics[target] = dict(metrics[source])
    if source in metrics.get("per_object", {}):
        metrics["per_object"][target] = copy.deepcopy(metrics["per_object"][source])
    for path in Path(parts_dir).glob(f"*/{source}.json"):
        atomic_write_text(path.with_name(f"{target}.json"), path.read_text())


def read_parts(parts_dir: Path) -> dict[str, dict[str, list[dict]]]:
    """{task: {model: items}} from ``<parts_dir>/<task>/<model>.json``."""
    out: dict[str, dict[str, list[dict]]] = {}
    for path in sorted(Path(parts_dir).glob("*/*.json")):
        out.setdefault(path.parent.name, {})[path.stem] = json.loads(path.read_text())
    return out


def reference_model(name: str, cfg: DictConfig):
    """A floor / ceiling model of ``equivariance.reference_models``: a compared model or the ground-truth oracle."""
    if name == "oracle":
        return OracleModel()
    return compared_model(name, cfg.model, seed=cfg.seed)


def add_confidence(metrics: dict, parts_dir: Path, cfg: DictConfig) -> dict:
    """metrics.json's ``"ci"`` and ``"deltas"`` (finetuned − pretrained, finetuned − pretrained_head_init,
    pretrained_head_init − pretrained, random/oracle − pretrained) from the per-item parts."""
    models = {k: v for k, v in metrics.items() if k in MODEL_LABELS}
    items = read_parts(parts_dir)
    metrics["ci"], metrics["deltas"] = confidence(items, models, cfg.eval.n_boot, cfg.eval.seed)
    metrics["breakdowns"] = breakdown_tables(items, cfg.eval.n_boot, cfg.eval.seed)
    return metrics


MODEL_LABELS = MODEL_ORDER   # the rows of metrics.json that are models (the others: per_object, train, ci ...)


def build_trainer(cfg: DictConfig, run: Path, plugins=None, extra_callbacks=()) -> L.Trainer:
    t = cfg.trainer
    checkpoint = ModelCheckpoint(dirpath=run / "checkpoints", filename="step{step:06d}", auto_insert_metric_name=False,
                                 save_last=True, save_top_k=-1, every_n_train_steps=t.checkpoint_every_n_steps)
    return L.Trainer(
        default_root_dir=run, max_steps=t.max_steps, max_epochs=-1, accelerator=t.accelerator,
        devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy, precision=trainer_precision(t.precision, t.accelerator),
        gradient_clip_val=cfg.optim.grad_clip, log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic, logger=TensorBoardLogger(str(run), name="tensorboard", version=""),
        callbacks=[checkpoint, LearningRateMonitor(logging_interval="step"), TQDMProgressBar(refresh_rate=1),
                   *extra_callbacks],
        plugins=plugins, num_sanity_val_steps=0, limit_val_batches=0, enable_model_summary=False,
    )


def trainer_precision(precision: str, accelerator: str = "auto") -> str:
    """``trainer.precision``; ``auto``: bf16 autocast (``bf16-mixed``) when training runs on CUDA, else 32-true."""
    if precision != "auto":
        return precision
    cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if cuda else "32-true"


def build_module(cfg: DictConfig, model):
    loss_fn = build_loss(cfg.loss)  # loss.name: smooth_ap (paper) | infonce | diff_procrustes
    return MultiviewFinetuneModule(model, loss_fn, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                   image_log_every_n_steps=cfg.trainer.image_log_every_n_steps,
                                   # frozen-block activations are per view only when views are never augmented
                                   cache_frozen_prefix=cfg.trainer.cache_frozen_prefix
                                   and not cfg.data.augment.enabled,
                                   fingerprint=training_fingerprint(cfg))


# the sections whose values define the trained model and its optimisation trajectory (the step budget does not:
# a sweep continues a shorter cell's checkpoint, launch/sweep.py warm_start) ...
FINGERPRINT_SECTIONS = ("seed", "model", "loss", "optim", "data")
# ... less the data keys that only say where files are or how fast they are read
_UNFINGERPRINTED_DATA_KEYS = ("rendered_dir", "mvimgnet_dir", "num_workers")
_UNFINGERPRINTED_RENDER_KEYS = ("workers", "png_compression")


def training_fingerprint(cfg: DictConfig) -> str:
    """Hash of what a checkpoint's state depends on: ``seed``, ``model``, ``loss``, ``optim`` and ``data`` (less file
    locations and reader speed). Stored in every checkpoint (``MultiviewFinetuneModule.on_save_checkpoint``); a
    resume takes only checkpoints with the same fingerprint."""
    sections = {key: OmegaConf.to_container(cfg[key], resolve=True) if isinstance(cfg[key], DictConfig)
                else cfg[key] for key in FINGERPRINT_SECTIONS if key in cfg}
    data = sections.get("data", {})
    for key in _UNFINGERPRINTED_DATA_KEYS:
        data.pop(key, None)
    for key in _UNFINGERPRINTED_RENDER_KEYS:
        data.get("render", {}).pop(key, None)
    return hashlib.sha256(json.dumps(sections, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _resume_problem(ckpt, fingerprint: str | None, module) -> str | None:
    """Why a loaded checkpoint cannot continue this run (None: it can)."""
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        return "not a Lightning checkpoint (no state_dict)"
    if fingerprint is not None:
        found = ckpt.get(CHECKPOINT_FINGERPRINT_KEY)
        if found is None:
            return "it has no config fingerprint (written by another program or an older corr3d)"
        if found != fingerprint:
            return f"it was written under another config (fingerprint {found}, this config's is {fingerprint})"
    state = ckpt["state_dict"]
    if module is not None:
        expected = {f"model.{n}": tuple(p.shape) for n, p in module.model.named_parameters() if p.requires_grad}
        missing = sorted(set(expected) - set(state))
        if missing:
            return f"it lacks trainable tensors of this model: {missing[:4]}"
        wrong = [f"{k} {tuple(state[k].shape)} != {expected[k]}" for k in expected
                 if tuple(getattr(state[k], "shape", ())) != expected[k]]
        if wrong:
            return f"its tensors have other shapes than this model's (found != expected): {wrong[:3]}"
        groups = [g for opt in ckpt.get("optimizer_states") or [] if isinstance(opt, dict)
                  for g in opt.get("param_groups", [])]
        count = sum(len(g.get("params", [])) for g in groups)
        if groups and count != len(expected):
            return f"its optimizer state holds {count} parameters, this model trains {len(expected)}"
    bad = non_finite_tensor(state)
    if bad is not None:
        return f"tensor {bad[0]} holds {bad[1]} non-finite values"
    return None


def resume_checkpoint(run: Path, fingerprint: str | None = None, module=None) -> Path | None:
    """The newest checkpoint of ``run`` that justifies a resume: it loads (a kill during a save can leave a truncated
    file behind), carries ``fingerprint`` (when given), fits ``module``'s trainable tensors (when given) and is
    finite. Every other file is skipped with a warning that names it and the reason."""
    candidates = sorted((run / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        try:
            # weights_only: a checkpoint found in a run directory must never execute code (utils/safe_load.py)
            ckpt = safe_checkpoint_load(path)
        except Exception as err:  # truncated or corrupt: try the next one
            log.warning("skipping unreadable checkpoint %s: %s", path, err)
            continue
        problem = _resume_problem(ckpt, fingerprint, module)
        del ckpt
        if problem is None:
            return path
        log.warning("skipping checkpoint %s: %s", path, problem)
    return None


def measure_untrained(cfg: DictConfig, run: Path, eval_dirs: Sequence[Path], parts_dir: Path, metrics: dict,
                      model) -> None:
    """The rows training does not change: pretrained, the floor / ceiling / controls of
    ``equivariance.reference_models`` and ``pretrained_head_init`` (``model``: training's starting point); each is
    skipped when the run already has it (resume) and reused from ``eval.part_cache`` when measured before."""
    if "pretrained" not in metrics:
        baseline = compared_model("pretrained", cfg.model, seed=cfg.seed)
        per_object: dict = {}
        metrics["pretrained"] = measure_equivariance(baseline, cfg, eval_dirs, "pretrained", per_object, parts_dir,
                                                     cache=True)
        metrics.setdefault("per_object", {})["pretrained"] = per_object
        metrics["weights"] = f"{baseline.weights_info.source}: {baseline.weights_info.label}"
        del baseline
        _write_metrics(run, metrics)
    for name in cfg.equivariance.reference_models:
        if name not in metrics:  # floor (random init) and ceiling (oracle) of the validity section
            reference = reference_model(name, cfg)
            metrics[name] = measure_equivariance(reference, cfg, eval_dirs, name, parts_dir=parts_dir,
                                                      cache=True)
            del reference
            _write_metrics(run, metrics)

    if cfg.model.head.num_layers > 0 and "pretrained_head_init" not in metrics:
        if untrained_is_pretrained(cfg.model) and "pretrained" in metrics:
            copy_row(metrics, parts_dir, "pretrained", "pretrained_head_init")   # same features: measured once
        else:
            # the untrained conv head alone changes the features: report it so training is not credited for it
            per_object = {}
            metrics["pretrained_head_init"] = measure_equivariance(model, cfg, eval_dirs, "pretrained_head_init",
                                                                   per_object, parts_dir, cache=True)
            metrics.setdefault("per_object", {})["pretrained_head_init"] = per_object
        _write_metrics(run, metrics)


def train(cfg: DictConfig, run_dir: str | os.PathLike | None = None, trainer_plugins=None) -> Path:
    """Run (or resume) the experiment ``cfg``; returns its run directory."""
    check_experiment_disjoint(cfg)   # refuse to train on the held-out evaluation objects (before any run dir)
    run = _resolve_run_dir(cfg, run_dir)
    os.environ[RUN_DIR_ENV] = str(run)
    rank0 = launch_rank() == 0
    if rank0:
        _setup_logging(run)
        log.info("run directory: %s", run)
    started = time.perf_counter()
    eval_dirs = render_evaluation_objects(cfg) if rank0 and evaluation_object_specs(cfg) else []
    metrics = _read_metrics(run)

    parts_dir = run / "parts"
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    # training starts from exactly the model the "pretrained_head_init" row measures (same seed, same head init)
    model = compared_model("pretrained_head_init", cfg.model, seed=cfg.seed)
    kept_prefixes = None
    if rank0 and eval_dirs:
        # pretrained and the untrained heads share one backbone: its tokens are computed once per view; the tokens
        # before the adapted blocks are kept (on CPU) for the finetuned measurement after training
        kept_prefixes = Prefixes(int(cfg.eval.shared_features_mb * 2**20), TimmViTFamily.adapted_last_blocks(cfg.model),
                                 keep_for=model.backbone)
        with shared_backbone_maps(cfg.eval.shared_features_mb, prefixes=kept_prefixes):
            measure_untrained(cfg, run, eval_dirs, parts_dir, metrics, model)
        kept_prefixes.kept()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_module(cfg, model)
    module.pair_log_dir = str(run)
    datamodule = build_datamodule(cfg)
    callbacks = []
    # the datamodule renders every training / validation object once; the probe objects come from that same call
    val_dirs = datamodule.probe_dirs() if rank0 else []
    if val_dirs:
        callbacks.append(EquivarianceCallback(cfg, val_dirs, every_n_steps=cfg.trainer.val_every_n_steps,
                                              run_dir=run))
    trainer = build_trainer(cfg, run, plugins=trainer_plugins, extra_callbacks=callbacks)
    resume = resume_checkpoint(run, fingerprint=module.fingerprint, module=module)
    if resume is not None:
        log.info("resuming from %s", resume)
    if rank0:
        point_latest(Path(cfg.output_dir) / cfg.experiment, run)  # the run started: only now does `latest` move
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None,
                weights_only=True if resume else None)

    if trainer.global_rank != 0:
        return run
    # trainer.select_best: end with the weights of the best validation probe (data.val_objects; callbacks.py)
    probe = next((c for c in callbacks if isinstance(c, EquivarianceCallback)), None)
    selected = probe.restore_best(model) if probe is not None and cfg.trainer.select_best else None
    model.save_adapter(run / "adapter.safetensors")
    if eval_dirs:
        per_object = {}
        # the finetuned model's frozen blocks are pretrained's: it continues from their kept tokens (models/shared.py)
        with shared_backbone_maps(cfg.eval.shared_features_mb, prefixes=kept_prefixes):
            metrics["finetuned"] = measure_equivariance(model, cfg, eval_dirs, "finetuned", per_object, parts_dir)
        kept_prefixes = None
        metrics.setdefault("per_object", {})["finetuned"] = per_object
        add_confidence(metrics, parts_dir, cfg)
    metrics["train"] = {"global_step": trainer.global_step,
                        "wall_seconds": round(time.perf_counter() - started, 1),
                        "peak_rss_mb": _peak_rss_mb()}
    if selected is not None:
        metrics["train"]["selected_step"] = selected["step"]
    if eval_dirs:  # PCA maps and predicted-vs-true matches of the same views through each model (report.md)
        write_feature_figures(run, cfg, eval_dirs, {
            "pretrained": compared_model("pretrained", cfg.model, seed=cfg.seed),
            "pretrained_head_init": compared_model("pretrained_head_init", cfg.model, seed=cfg.seed),
            "finetuned": model})
    _write_metrics(run, metrics)
    log_metrics_to_tensorboard(trainer, metrics)
    report = write_training_report(run, metrics, cfg)
    # CC-BY real objects (trained on or evaluated on) are credited beside the report
    write_attribution(experiment_objects(cfg).all(), run)
    mark_done(run)
    release_run(run)
    print(report.read_text().split("## Per held-out object")[0])
    log.info("done: %s", run)
    return run


def _peak_rss_mb() -> float:
    import resource  # deferred: Linux-only module

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if torch.cuda.is_available():
        peak = max(peak, torch.cuda.max_memory_allocated() / 2**20)
    return round(peak, 1)
