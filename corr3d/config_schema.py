"""The typed configuration schema: the one source of every config key's default, type and valid range.

``experiments/base.yaml`` documents the same keys with comments; ``tests/test_experiments.py`` checks that the two
hold the same keys, defaults and types, so a key added to one and not the other fails with the key's dotted path.
``corr3d.config.load_config`` composes ``OmegaConf.structured(Config)`` + base.yaml + experiment files + overrides.

A range is declared on a field with ``ranged(default, gt=..., ge=...)``; ``check_ranges`` reports a violation as
``'<dotted key>' must be > 0, got -1``. Dataclasses are not frozen: OmegaConf copies them into a DictConfig.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, get_type_hints


def ranged(default: Any, *, gt: float | None = None, ge: float | None = None) -> Any:
    """A field with a default and a lower bound (``gt``: strictly greater; ``ge``: greater or equal)."""
    return field(default=default, metadata={"gt": gt, "ge": ge})


def _list(*values: Any) -> Any:
    return field(default_factory=lambda: [list(v) if isinstance(v, (list, tuple)) else v for v in values])


@dataclass
class LoraConfig:
    rank: int = ranged(4, gt=0)
    blocks: int = ranged(4, ge=0)
    alpha: Optional[float] = None


@dataclass
class HeadConfig:
    num_layers: int = ranged(1, ge=0)
    init: str = "default"


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


@dataclass
class LossConfig:
    name: str = "smooth_ap"
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
    background: List[int] = _list(0, 0, 0)
    up: List[float] = _list(0.0, 1.0, 0.0)
    lights: List[List[float]] = _list([1.0, -1.0, 1.0, 200.0], [-1.0, -1.0, -1.0, 200.0], [1.0, 0.0, 1.0, 20.0])
    lights_follow_camera: bool = True
    ambient: float = 0.3
    diffuse: float = 0.5
    shading: str = "lambert"
    workers: int = ranged(2, ge=0)
    png_compression: int = ranged(1, ge=0)


@dataclass
class PairsConfig:
    max_rotation_deg: float = 120.0
    num_points: int = ranged(3000, gt=0)
    true_fraction: float = ranged(0.0, ge=0)


@dataclass
class AugmentConfig:
    enabled: bool = True
    geometric_p: float = ranged(0.5, ge=0)
    shift: float = 0.25
    scale: float = 0.25
    rotate_deg: float = 45.0
    color_p: float = ranged(0.5, ge=0)


@dataclass
class DataConfig:
    kind: str = "rendered"
    rendered_dir: str = "${data_root}/rendered"
    train_objects: List[str] = _list("procedural:hemisphere")
    val_objects: List[str] = _list()
    object_list: Optional[str] = None
    num_train_objects: Optional[int] = ranged(None, ge=0)
    val_fraction: float = ranged(0.0, ge=0)
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
    precision: str = "auto"
    log_every_n_steps: int = ranged(10, gt=0)
    checkpoint_every_n_steps: int = ranged(1000, ge=0)
    val_every_n_steps: int = ranged(1000, ge=0)
    select_best: bool = False
    image_log_every_n_steps: int = ranged(50, ge=0)
    deterministic: bool = False
    cache_frozen_prefix: bool = False


@dataclass
class EquivarianceConfig:
    protocol: str = "fast"
    objects: List[str] = _list("procedural:sphere_astronaut", "procedural:torus_coffee", "procedural:box_chelsea",
                               "procedural:cone_voronoi", "procedural:vase_coffee", "procedural:gear_astronaut",
                               "procedural:knot_immuno", "procedural:mug_cat", "procedural:house",
                               "procedural:tori_chain")
    object_list: Optional[str] = None
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
    reference_models: List[str] = _list("random", "oracle")


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
    min_matches: int = 4
    min_inliers: int = 6
    points_scale: float = 1000.0
    thresholds: List[int] = _list(1, 3, 5)
    unit: str = "m"
    ref_seq: int = 1
    test_seq: int = 2
    frame_order: str = "lexicographic"


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
    min_visib_fract: float = 0.1
    feature_px: int = ranged(8, gt=0)
    ransac_reproj_px: float = 8.0
    ransac_iters: int = ranged(10000, gt=0)
    min_matches: int = 4
    min_inliers: int = 6
    thresholds: List[int] = _list(1, 3, 5)
    auc_max_mm: float = ranged(100.0, gt=0)
    add_diameter_frac: float = ranged(0.1, gt=0)
    max_model_points: int = ranged(2000, gt=0)
    offline_ref_step: int = ranged(4, gt=0)


@dataclass
class TrackingEvalConfig:
    data: str = "${data_root}/tapvid/tapvid_davis.pkl"
    format: str = "auto"
    frames_dir: Optional[str] = None
    query_mode: str = "strided"
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


@dataclass
class SemanticEvalConfig:
    pfpascal_dir: str = "${data_root}/PF-dataset-PASCAL"
    pfpascal_views: List[str] = _list("different", "same")
    spair_dir: str = "${data_root}/SPair-71k"
    spair_split: str = "test"
    image_size: int = ranged(840, gt=0)
    alphas: List[float] = _list(0.05, 0.10, 0.15)
    spair_alphas: List[float] = _list(0.10)
    similarity: str = "upsample_similarity"
    pixel_chunk: int = ranged(65536, gt=0)
    max_pairs: Optional[int] = None
    normalize_maps: bool = False


@dataclass
class EvalConfig:
    tasks: List[str] = _list()
    backbone: Optional[str] = None
    ckpt: Optional[str] = None
    out_dir: Optional[str] = None
    models: List[str] = _list("pretrained", "random", "finetuned", "oracle")
    device: str = "auto"
    batch_size: int = ranged(4, gt=0)
    feature_cache_size: int = ranged(256, ge=0)
    seed: int = 0
    n_boot: int = ranged(2000, gt=0)
    resume: bool = True
    real_data: bool = True
    real_pairs: RealPairsEvalConfig = field(default_factory=RealPairsEvalConfig)
    offline: OfflineEvalConfig = field(default_factory=OfflineEvalConfig)
    pose: PoseEvalConfig = field(default_factory=PoseEvalConfig)
    pose_ycbv: PoseYcbvEvalConfig = field(default_factory=PoseYcbvEvalConfig)
    tracking: TrackingEvalConfig = field(default_factory=TrackingEvalConfig)
    semantic: SemanticEvalConfig = field(default_factory=SemanticEvalConfig)


@dataclass
class LauncherConfig:
    name: str = "local"
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


def range_violations(cfg: Any, schema: type = Config) -> list[str]:
    """Every ``ranged`` field of ``cfg`` (a DictConfig or mapping shaped like ``schema``) outside its bound."""
    def walk(node: Any, cls: type, prefix: str) -> Iterator[str]:
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            path = f"{prefix}.{f.name}" if prefix else f.name
            value = node.get(f.name) if hasattr(node, "get") else None
            kind = hints[f.name]
            if dataclasses.is_dataclass(kind):
                if value is not None:
                    yield from walk(value, kind, path)
                continue
            gt, ge = f.metadata.get("gt"), f.metadata.get("ge")
            if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if gt is not None and not value > gt:
                yield f"'{path}' must be > {gt}, got {value!r}"
            if ge is not None and not value >= ge:
                yield f"'{path}' must be >= {ge}, got {value!r}"

    return list(walk(cfg, schema, ""))
