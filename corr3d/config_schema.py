"""The typed configuration schema: the one source of every config key's default, type and valid range.

``experiments/base.yaml`` documents the same keys with comments; ``tests/test_experiments.py`` checks that the two
hold the same keys, defaults and types, so a key added to one and not the other fails with the key's dotted path.
``corr3d.config.load_config`` composes ``OmegaConf.structured(Config)`` + base.yaml + experiment files + overrides.

A range is declared on a field with ``ranged(default, gt=..., ge=..., lt=..., le=...)`` and a closed set of values
with ``choice(default, CHOICES)`` (a list field: every entry must be one of them, each at most once);
``schema_violations`` reports each violation with its key and fix (``'<dotted key>' must be > 0, got -1``).
The sets are plain constants here so that validating a config never imports the modules that use them (torch,
timm, Lightning); ``tests/test_config_validation.py`` keeps each equal to its source. Relations between keys
(``loss.pos_radius < loss.neg_radius``, rotation limits vs the camera rig, backbone names, devices) are checked by
``corr3d.config.validate_config``. Dataclasses are not frozen: OmegaConf copies them into a DictConfig.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, get_type_hints

from corr3d.eval.tasks import TASK_NAMES

# ---- closed sets of values (each test-kept equal to the constant of the module that uses it) -----------------------
LOSS_NAMES = ("smooth_ap", "infonce", "diff_procrustes")                 # corr3d.losses.LOSSES
HEAD_INITS = ("default", "identity")                                     # corr3d.models.head.HEAD_INITS
EQUIVARIANCE_PROTOCOLS = ("fast", "paper")                               # corr3d.eval.equivariance.PROTOCOLS
EVAL_TASKS = TASK_NAMES                                                  # corr3d.eval.tasks: one module per task
EVAL_MODELS = ("oracle", "pretrained", "pretrained_head_init", "pretrained_default_conv", "random", "finetuned")     # eval.run.MODEL_ORDER
REFERENCE_MODELS = ("random", "oracle", "pretrained", "pretrained_head_init", "pretrained_default_conv")  # training/run.py reference_model
# Lightning's Trainer(precision=...) strings (lightning.fabric.plugins.precision.precision._PRECISION_INPUT_STR and
# its aliases; the integers 16/32/64 arrive as strings) and corr3d's "auto" (training/run.py trainer_precision)
LIGHTNING_PRECISIONS = ("transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true",
                        "bf16-mixed", "32-true", "64-true", "64", "32", "16", "bf16")
PRECISIONS = ("auto", *LIGHTNING_PRECISIONS)
# short names of corr3d.models.backbones.BACKBONES (any other timm model id is checked against timm's registry)
BACKBONE_NAMES = ("dinov2_s14", "dinov2_s14_reg", "dinov2_b14", "dinov2_b14_reg", "dinov2_l14", "dinov2_l14_reg",
                  "dinov2_g14", "dinov2_g14_reg", "clip_b16", "mae_b16", "deit3_b16", "dinov3_s16", "dinov3_splus16",
                  "dinov3_b16", "dinov3_l16", "dinov3_hplus16", "siglip2_b16", "siglip2_l16", "siglip2_so400m14",
                  "convnext_s", "convnext_b", "convnext_l")
BACKBONE_NAME_PATTERN = r"[A-Za-z0-9_.-]+"        # a plain name: never a path ('/' or '..')
EVAL_DEVICE_PATTERN = r"auto|cpu|mps|cuda(:[0-9]+)?"


def ranged(default: Any, *, gt: float | None = None, ge: float | None = None, lt: float | None = None,
           le: float | None = None) -> Any:
    """A field with a default and bounds (``gt``/``ge``: strictly greater / greater or equal; ``lt``/``le``: less)."""
    return field(default=default, metadata={"gt": gt, "ge": ge, "lt": lt, "le": le})


def choice(default: Any, choices: Sequence[str]) -> Any:
    """A field whose value (or, for a list default, each entry, at most once) must be one of ``choices``."""
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: list(default), metadata={"choices": tuple(choices)})
    return field(default=default, metadata={"choices": tuple(choices)})


def _list(*values: Any) -> Any:
    return field(default_factory=lambda: [list(v) if isinstance(v, (list, tuple)) else v for v in values])


@dataclass
class LoraConfig:
    rank: int = ranged(4, gt=0)
    blocks: int = ranged(4, ge=0)
    alpha: Optional[float] = None


@dataclass
class HeadConfig:
    num_layers: int = ranged(1, ge=0, le=8)
    init: str = choice("default", HEAD_INITS)


@dataclass
class ModelConfig:
    backbone: str = "dinov2_s14"
    weights: str = "auto"
    target_res: int = ranged(640, gt=0)
    downsample_factor: int = ranged(8, gt=0)
    layer: int = -1
    final_norm: bool = True
    lora: LoraConfig = field(default_factory=LoraConfig)
    unfreeze_blocks: int = ranged(0, ge=0)
    head: HeadConfig = field(default_factory=HeadConfig)
    timm_kwargs: Dict[str, Any] = field(default_factory=dict)
    pos_embed_interp: str = choice("exact", ("exact", "dinov2"))  # corr3d.models.features.POS_EMBED_INTERP


@dataclass
class LossConfig:
    name: str = choice("smooth_ap", LOSS_NAMES)
    pos_radius: float = ranged(0.005, gt=0)
    neg_radius: float = ranged(0.1, gt=0)
    temperature: float = ranged(0.01, gt=0)
    symmetric: bool = False


@dataclass
class OptimConfig:
    lr: float = ranged(1.0e-5, ge=0)
    weight_decay: float = ranged(1.0e-4, ge=0)
    grad_clip: float = ranged(1.0, ge=0)


@dataclass
class RenderConfig:
    width: int = ranged(512, gt=0)
    height: int = ranged(512, gt=0)
    focal: float = ranged(560.0, gt=0)
    distance: float = ranged(2.0, gt=0)
    icosphere_subdivisions: int = ranged(1, ge=0)
    views: str = choice("corr3d", ("corr3d", "authors"))        # corr3d.geometry.icosphere.VIEWS
    background: List[int] = _list(0, 0, 0)
    up: List[float] = _list(0.0, 1.0, 0.0)
    lights: List[List[float]] = _list([1.0, -1.0, 1.0, 200.0], [-1.0, -1.0, -1.0, 200.0], [1.0, 0.0, 1.0, 20.0])
    lights_follow_camera: bool = True
    ambient: float = 0.3
    diffuse: float = 0.5
    shading: str = choice("lambert", ("lambert", "unlit"))
    workers: int = ranged(2, ge=0)
    png_compression: int = ranged(1, ge=0, le=9)


@dataclass
class PairsConfig:
    max_rotation_deg: float = 120.0
    num_points: int = ranged(3000, gt=0)
    true_fraction: float = ranged(0.0, ge=0, le=1)
    point_sampling: str = choice("distinct", ("distinct", "paper_era", "authors_fixed"))  # data.pairs.POINT_SAMPLING


@dataclass
class AugmentConfig:
    enabled: bool = True
    geometric_p: float = ranged(0.5, ge=0, le=1)
    shift: float = 0.25
    scale: float = 0.25
    rotate_deg: float = 45.0
    color_p: float = ranged(0.5, ge=0, le=1)


@dataclass
class DataConfig:
    kind: str = choice("rendered", ("rendered", "mvimgnet"))
    rendered_dir: str = "${data_root}/rendered"
    train_objects: List[str] = _list("procedural:hemisphere")
    val_objects: List[str] = _list()
    object_list: Optional[str] = None
    num_train_objects: Optional[int] = ranged(None, ge=0)
    val_fraction: float = ranged(0.0, ge=0, lt=1)
    val_pairs: int = ranged(20, ge=0)
    render: RenderConfig = field(default_factory=RenderConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mvimgnet_dir: str = "${data_root}/mvimgnet"
    mvimgnet_long_side: Optional[int] = ranged(512, gt=0)
    mvimgnet_min_matches: int = ranged(16, ge=0)
    mvimgnet_extent_percentile: float = ranged(1.0, ge=0)
    batch_size: int = ranged(1, gt=0)
    num_workers: int = ranged(2, ge=0)
    pairs_per_epoch: int = ranged(100, gt=0)


@dataclass
class TrainerConfig:
    max_steps: int = ranged(10000, ge=0)
    accelerator: str = "auto"
    devices: int = ranged(1, gt=0)
    num_nodes: int = ranged(1, gt=0)
    strategy: str = "auto"
    precision: str = choice("auto", PRECISIONS)
    log_every_n_steps: int = ranged(10, gt=0)
    checkpoint_every_n_steps: int = ranged(1000, ge=0)
    val_every_n_steps: int = ranged(1000, ge=0)
    select_best: bool = False
    image_log_every_n_steps: int = ranged(50, ge=0)
    deterministic: bool = False
    cache_frozen_prefix: bool = False


@dataclass
class PhotometricConfig:
    enabled: bool = False
    exposure_stops: float = ranged(1.0, ge=0, le=4)
    white_balance: float = ranged(0.15, ge=0, le=1)
    light: float = ranged(0.5, ge=0, le=1)


@dataclass
class ObjectSetConfig:
    objects: List[str] = field(default_factory=list)
    object_list: Optional[str] = None
    about: str = ""


_PROCEDURAL = ("procedural:sphere_astronaut", "procedural:torus_coffee", "procedural:box_chelsea",
               "procedural:cone_voronoi", "procedural:vase_coffee", "procedural:gear_astronaut",
               "procedural:knot_immuno", "procedural:mug_cat", "procedural:house", "procedural:tori_chain")


def _default_controls() -> dict:
    return {"procedural": ObjectSetConfig(
                objects=list(_PROCEDURAL),
                about="colour-matching control: procedural shapes wrapped in photographs, where a random-init "
                      "network matches about as well as DINOv2 (texture colour alone finds the point)"),
            "untextured": ObjectSetConfig(
                objects=["sh3d_split:untextured"],
                about="shape-only control: real models with flat material colours, where colour cannot be matched")}


@dataclass
class EquivarianceConfig:
    protocol: str = choice("fast", EQUIVARIANCE_PROTOCOLS)
    objects: List[str] = _list("sh3d_split:test")
    object_list: Optional[str] = None
    controls: Dict[str, ObjectSetConfig] = field(default_factory=_default_controls)
    control_sets: List[str] = _list("procedural", "untextured")
    max_views_per_object: int = ranged(0, ge=0)
    max_pairs_per_object: int = ranged(20, ge=0)
    max_rotation_deg: float = 70.0
    num_source_points: int = ranged(800, gt=0)
    target_stride: int = ranged(2, gt=0)
    thresholds: List[float] = _list(0.05, 0.1, 0.2)
    visibility_tol: float = ranged(0.02, ge=0)
    batch_size: int = ranged(4, gt=0)
    mvimgnet: bool = False
    mvimgnet_objects: int = ranged(100, ge=0)
    real_pairs: bool = True
    reference_models: List[str] = choice(["random", "oracle"], REFERENCE_MODELS)
    photometric: PhotometricConfig = field(default_factory=PhotometricConfig)


@dataclass
class RealPairsEvalConfig:
    stereo: bool = True
    homography_images: List[str] = _list("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "clock",
                                         "immunohistochemistry")
    homographies_per_image: int = ranged(2, ge=0)
    homography_strength: float = ranged(0.15, ge=0)
    num_points: int = ranged(1000, ge=0)
    target_stride: int = ranged(2, gt=0)
    thresholds: List[float] = _list(0.01, 0.02, 0.05)
    photometric: PhotometricConfig = field(default_factory=PhotometricConfig)


@dataclass
class OfflineEvalConfig:
    enabled: bool = True
    dir: str = "${data_root}/benchmarks"
    regenerate: bool = False
    tracking_frame_size: Optional[List[int]] = None
    tracking_argmax_radius: float = 12.0
    semantic_image_size: int = ranged(224, gt=0)


@dataclass
class PoseEvalConfig:
    data_dir: str = "${data_root}/onepose/lowtexture_test_data"
    sfm_dir: str = "${data_root}/onepose/sfm_output/outputs_softmax_loftr_loftr"
    objects: List[str] = _list()
    feature_px: int = ranged(8, gt=0)
    max_templates: int = ranged(120000, gt=0)
    query_step: int = ranged(10, gt=0)
    offline_query_step: int = ranged(1, gt=0)
    grid_step: int = ranged(4, gt=0)
    ransac_reproj_px: float = 8.0
    ransac_iters: int = ranged(10000, gt=0)
    ransac: str = choice("paper", ("paper", "fast"))
    min_matches: int = 4
    min_inliers: int = 6
    points_scale: float = 1000.0
    thresholds: List[int] = _list(1, 3, 5)
    unit: str = choice("m", ("m", "cm", "mm"))
    ref_seq: int = 1
    test_seq: int = 2
    frame_order: str = choice("lexicographic", ("lexicographic", "numeric"))


@dataclass
class PoseYcbvEvalConfig:
    test_dir: str = "${data_root}/bop/ycbv/test"
    models_dir: str = "${data_root}/bop/ycbv/models"
    targets: Optional[str] = "${data_root}/bop/ycbv/test_targets_bop19.json"
    use_targets: bool = True
    scenes: List[int] = _list()
    ref_step: int = ranged(5, gt=0)
    query_step: int = ranged(1, gt=0)
    template_step: int = ranged(4, gt=0)
    max_templates: int = ranged(120000, gt=0)
    grid_step: int = ranged(4, gt=0)
    bbox_margin: float = ranged(0.1, ge=0)
    min_visib_fract: float = ranged(0.1, ge=0, le=1)
    feature_px: int = ranged(8, gt=0)
    ransac_reproj_px: float = 8.0
    ransac_iters: int = ranged(10000, gt=0)
    ransac: str = choice("paper", ("paper", "fast"))
    min_matches: int = 4
    min_inliers: int = 6
    thresholds: List[int] = _list(1, 3, 5)
    bop_ar: bool = True
    auc_max_mm: float = ranged(100.0, gt=0)
    add_diameter_frac: float = ranged(0.1, gt=0)
    max_model_points: int = ranged(2000, gt=0)
    offline_ref_step: int = ranged(4, gt=0)


@dataclass
class TrackingEvalConfig:
    data: str = "${data_root}/tapvid/tapvid_davis.pkl"
    format: str = choice("auto", ("auto", "tapvid", "dinotracker"))
    frames_dir: Optional[str] = None
    query_mode: str = choice("strided", ("strided", "first"))
    variants: List[str] = choice(["first"], ("strided", "first", "strided@256", "first@256"))
    query_stride: int = ranged(5, gt=0)
    max_videos: Optional[int] = None
    frame_size: List[int] = _list(476, 854)
    stride: Optional[int] = ranged(7, gt=0)
    argmax_radius: float = 35.0
    softmax_temperature: float = ranged(1.0, gt=0)
    anchor_cos: float = 0.7
    occlusion_cos: float = 0.6
    resolution: int = ranged(256, gt=0)
    query_chunk: int = ranged(64, gt=0)
    final_norm: Optional[bool] = False
    normalize: str = choice("before_sampling", ("before_sampling", "after_sampling"))  # eval.tracking.NORMALIZE


@dataclass
class SemanticEvalConfig:
    pfpascal_dir: str = "${data_root}/PF-dataset-PASCAL"
    pfpascal_views: List[str] = choice(["different", "same"], ("different", "same"))
    spair_dir: str = "${data_root}/SPair-71k"
    spair_split: str = "test"
    image_size: int = ranged(840, gt=0)
    alphas: List[float] = _list(0.05, 0.10, 0.15)
    spair_alphas: List[float] = _list(0.10)
    similarity: str = choice("upsample_similarity", ("upsample_similarity", "upsample_features"))
    pixel_chunk: int = ranged(65536, gt=0)
    max_pairs: Optional[int] = None
    normalize_maps: bool = False


@dataclass
class EvalConfig:
    tasks: List[str] = choice([], EVAL_TASKS)
    backbone: Optional[str] = None
    ckpt: Optional[str] = None
    out_dir: Optional[str] = None
    models: List[str] = choice(["pretrained", "random", "finetuned", "oracle"], EVAL_MODELS)
    device: str = "auto"
    batch_size: int = ranged(4, gt=0)
    feature_cache_size: int = ranged(256, ge=0)
    precision: str = choice("fp32", ("auto", "fp32", "bf16", "fp16"))  # corr3d.models.features.PRECISIONS
    seed: int = 0
    n_boot: int = ranged(2000, gt=0)
    resume: bool = True
    part_cache: Optional[str] = "${output_dir}/.part_cache"
    shared_features_mb: float = ranged(2048.0, ge=0)
    real_data: bool = True
    real_pairs: RealPairsEvalConfig = field(default_factory=RealPairsEvalConfig)
    offline: OfflineEvalConfig = field(default_factory=OfflineEvalConfig)
    pose: PoseEvalConfig = field(default_factory=PoseEvalConfig)
    pose_ycbv: PoseYcbvEvalConfig = field(default_factory=PoseYcbvEvalConfig)
    tracking: TrackingEvalConfig = field(default_factory=TrackingEvalConfig)
    semantic: SemanticEvalConfig = field(default_factory=SemanticEvalConfig)


@dataclass
class LauncherConfig:
    name: str = choice("local", ("local", "slurm"))
    nodes: int = ranged(1, gt=0)
    gpus_per_node: int = ranged(1, gt=0)
    cpus_per_task: int = ranged(8, gt=0)
    mem_gb: Optional[int] = ranged(64, gt=0)
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    gres: Optional[str] = None
    time_min: int = ranged(1440, gt=0)
    signal_delay_s: int = ranged(120, ge=0)
    max_requeues: int = ranged(10, ge=0)
    job_name: Optional[str] = None
    setup: List[str] = _list()
    array_parallelism: int = ranged(32, gt=0)
    eval_gpus: int = ranged(1, ge=0)
    render_chunk_size: int = ranged(100, gt=0)
    wait: bool = False
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepConfig:
    name: Optional[str] = None
    axes: Dict[str, Any] = field(default_factory=dict)
    metrics: List[str] = _list("equivariance/ape", "equivariance/pcdp@0.05", "equivariance/pcdp@0.1",
                               "real_pairs/pck@0.05", "real_pairs/median_px", "real_pairs/stereo/pck@0.05")
    share_baselines: bool = True


@dataclass
class Config:
    experiment: str = "base"
    seed: int = 42
    output_dir: str = "runs"
    data_root: str = "data"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    equivariance: EquivarianceConfig = field(default_factory=EquivarianceConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


class Violation(NamedTuple):
    """One invalid value: its dotted ``key``, what is wrong (``message``, naming the key) and the ``fix``."""

    key: str
    message: str
    fix: str


def _bounds_text(meta: dict) -> str:
    parts = [f"{op} {meta[name]}" for name, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
             if meta.get(name) is not None]
    return " and ".join(parts)


def _choice_fix(path: str, value: Any, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.5)
    if close:
        return f"set {path}={close[0]} (valid: {', '.join(choices)})"
    return f"set {path} to one of: {', '.join(choices)}"


def _check_field(path: str, value: Any, meta: dict) -> Iterator[Violation]:
    choices = meta.get("choices")
    if choices is not None and value is not None:
        if isinstance(value, (list, tuple)) or (hasattr(value, "__len__") and not isinstance(value, str)):
            seen: set[str] = set()
            for entry in list(value):
                if str(entry) not in choices:
                    close = difflib.get_close_matches(str(entry), list(choices), n=1, cutoff=0.5)
                    hint = f" (did you mean '{close[0]}'?)" if close else ""
                    yield Violation(path, f"'{path}' has unknown entry {str(entry)!r}{hint}; "
                                    f"known: {', '.join(choices)}",
                                    f"remove or correct {str(entry)!r} in {path} (entries: {', '.join(choices)})")
                elif str(entry) in seen:
                    yield Violation(path, f"'{path}' lists {str(entry)!r} twice",
                                    f"list {str(entry)!r} once in {path}")
                seen.add(str(entry))
        elif str(value) not in choices:
            yield Violation(path, f"'{path}' must be one of {', '.join(choices)}, got {value!r}",
                            _choice_fix(path, value, choices))
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    checks = (("gt", lambda v, b: v > b, ">"), ("ge", lambda v, b: v >= b, ">="),
              ("lt", lambda v, b: v < b, "<"), ("le", lambda v, b: v <= b, "<="))
    for name, ok, op in checks:
        bound = meta.get(name)
        if bound is not None and not ok(value, bound):
            yield Violation(path, f"'{path}' must be {op} {bound}, got {value!r}",
                            f"set {path} to a value {_bounds_text(meta)}")


def schema_violations(cfg: Any, schema: type = Config) -> list[Violation]:
    """Every ``ranged`` field of ``cfg`` (a DictConfig or mapping shaped like ``schema``) outside its bounds and every
    ``choice`` field holding a value outside its set, with the key and the fix."""
    def walk(node: Any, cls: type, prefix: str) -> Iterator[Violation]:
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            path = f"{prefix}.{f.name}" if prefix else f.name
            value = node.get(f.name) if hasattr(node, "get") else None
            kind = hints[f.name]
            if dataclasses.is_dataclass(kind):
                if value is not None:
                    yield from walk(value, kind, path)
                continue
            yield from _check_field(path, value, f.metadata)

    return list(walk(cfg, schema, ""))


def range_violations(cfg: Any, schema: type = Config) -> list[str]:
    """The messages of :func:`schema_violations` (bounds and closed sets), e.g. ``'seed' must be ...``."""
    return [v.message for v in schema_violations(cfg, schema)]
