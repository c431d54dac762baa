"""The typed configuration schema: the one source of every config key's default, type, valid range and comment.

``experiments/base.yaml`` is generated from it (:func:`base_yaml_text`; ``python -m corr3d.config_schema --write``):
a field's ``doc`` is its comment there, ``before`` the comment lines above it; ``tests/test_experiments.py`` checks
that the committed file is the generated text.
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

import argparse
import dataclasses
import difflib
import functools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, get_type_hints

import yaml

from corr3d.eval.tasks import TASK_NAMES

# ---- closed sets of values (each test-kept equal to the constant of the module that uses it) -----------------------
LOSS_NAMES = ("smooth_ap", "infonce", "diff_procrustes")                 # corr3d.losses.LOSSES
HEAD_INITS = ("default", "identity")                                     # corr3d.models.head.HEAD_INITS
EQUIVARIANCE_PROTOCOLS = ("fast", "paper")                               # corr3d.eval.equivariance.PROTOCOLS
EVAL_TASKS = TASK_NAMES                                                  # corr3d.eval.tasks: one module per task
DOWNSTREAM_TASKS = tuple(t for t in TASK_NAMES if t not in ("equivariance", "real_pairs"))  # training/run.py
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


def _doc_meta(doc: str, before: str) -> dict:
    """``doc``: the key's comment in base.yaml (``\\n`` continues it on the next line); ``before``: comment lines
    written above the key."""
    return {"doc": doc, "before": before}


def ranged(default: Any, *, gt: float | None = None, ge: float | None = None, lt: float | None = None,
           le: float | None = None, doc: str = "", before: str = "") -> Any:
    """A field with a default and bounds (``gt``/``ge``: strictly greater / greater or equal; ``lt``/``le``: less)."""
    return field(default=default, metadata={"gt": gt, "ge": ge, "lt": lt, "le": le, **_doc_meta(doc, before)})


def choice(default: Any, choices: Sequence[str], doc: str = "", before: str = "") -> Any:
    """A field whose value (or, for a list default, each entry, at most once) must be one of ``choices``."""
    meta = {"choices": tuple(choices), **_doc_meta(doc, before)}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def key(default: Any, doc: str = "", before: str = "") -> Any:
    """A field with no bounds: its default and its documentation."""
    return field(default=default, metadata=_doc_meta(doc, before))


def _list(*values: Any, doc: str = "", before: str = "") -> Any:
    return field(default_factory=lambda: [list(v) if isinstance(v, (list, tuple)) else v for v in values],
                 metadata=_doc_meta(doc, before))


def section(factory: Callable[[], Any], doc: str = "", before: str = "") -> Any:
    """A nested section (a dataclass, or a mapping of them) and its documentation."""
    return field(default_factory=factory, metadata=_doc_meta(doc, before))


@dataclass
class LoraConfig:
    rank: int = ranged(4, gt=0)
    blocks: int = ranged(4, ge=0, doc="LoRA on q and v of the last N blocks (0 disables LoRA)")
    alpha: Optional[float] = key(None, "null: no scaling (paper); else scale = alpha / rank")


@dataclass
class HeadConfig:
    num_layers: int = ranged(1, ge=0, le=8, doc="3x3 stride-1 C->C convolutions, 0..8 (paper ablation: 0..3)")
    init: str = choice("default", HEAD_INITS,
                       doc="default (PyTorch init, as the authors) | identity (step 0 == pretrained features)")


@dataclass
class ModelConfig:
    backbone: str = key("dinov2_s14", "short name from corr3d.models.BACKBONES, or any timm ViT id (a plain name: "
                                      "no '/' or '..')")
    weights: str = key("auto", "auto | hf | imgfocus | random | /path/to/weights.{pth,safetensors}")
    target_res: int = ranged(640, gt=0, doc="long side of the image (px) the feature grid is defined on (paper: 640)")
    downsample_factor: int = ranged(8, gt=0, doc="feature grid = target_res / downsample_factor (paper: 8 -> 80x80 "
                                                 "-> 1120 px for /14)")
    layer: int = key(-1, "-1: final-norm tokens of the last block; k >= 0: output of block k (normed)")
    final_norm: bool = key(True, "false: skip the final LayerNorm (DINOv2's x_prenorm, the authors' tracking "
                                 "features)")
    lora: LoraConfig = section(LoraConfig)
    unfreeze_blocks: int = ranged(0, ge=0, doc="> 0: fully train the last k blocks instead of LoRA (\"partially "
                                               "unfrozen\"; LoRA off)")
    head: HeadConfig = section(HeadConfig)
    timm_kwargs: Dict[str, Any] = section(dict, "extra timm.create_model kwargs (e.g. drop_path_rate); recorded in "
                                                "adapter.json\non the command line: model.timm_kwargs={drop_path_rate: "
                                                "0.1} (or {drop_path_rate:0.1})")
    pos_embed_interp: str = choice("exact", ("exact", "dinov2"),   # corr3d.models.features.POS_EMBED_INTERP
                                   doc="position-embedding resampling: exact (bicubic to the grid size) | dinov2 "
                                       "(official\nDINOv2: scale factor (grid + 0.1) / native grid, "
                                       "interpolate_offset)")


@dataclass
class LossConfig:
    name: str = choice("smooth_ap", LOSS_NAMES,
                       doc="smooth_ap (paper §3.2) | infonce (dense InfoNCE over the same positives/negatives,\n"
                           "corr3d/losses/infonce.py) | diff_procrustes (soft-argmax 3D matches + weighted Kabsch\n"
                           "must give the identity, corr3d/losses/procrustes.py)")
    pos_radius: float = ranged(0.005, gt=0, doc="positives: 3D distance below this (unit-extent object space); must "
                                                "be < neg_radius")
    neg_radius: float = ranged(0.1, gt=0, doc="negatives: 3D distance above this")
    temperature: float = ranged(0.01, gt=0)
    symmetric: bool = key(False, "true: both views serve as anchors, the two losses averaged")


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
    icosphere_subdivisions: int = ranged(1, ge=0, doc="level 1 -> 42 views, closest cameras 31.72 deg apart (level "
                                                      "k: 63.43 / 2^k deg)")
    views: str = choice("corr3d", ("corr3d", "authors"),        # corr3d.geometry.icosphere.VIEWS
                        doc="corr3d (icosahedron rotated w.r.t. up: 428 view pairs within 70 deg) | authors\n"
                            "(their obj_poses.npy: 5-fold vertex at the up poles, no roll; 376 pairs; level 1)")
    background: List[int] = _list(0, 0, 0)
    up: List[float] = _list(0.0, 1.0, 0.0, doc="object-space up (glTF/Objaverse are y-up): image \"up\" follows it")
    lights: List[List[float]] = _list(
        [1.0, -1.0, 1.0, 200.0], [-1.0, -1.0, -1.0, 200.0], [1.0, 0.0, 1.0, 20.0],
        before="point lights [x, y, z, energy]: the authors' BlenderProc lights (1,-1,1) E200, (-1,-1,-1) E200, "
               "(1,0,1) E20.\nTheir camera sits at the world origin and each view moves the object, so these are "
               "OpenCV camera-frame\npositions (x right, y down, z towards the object at z = distance): the lights "
               "move with the camera.")
    lights_follow_camera: bool = key(True, "true: `lights` in the camera frame (the authors' renders); false: fixed "
                                           "in y-up\nobject space (corr3d <= this change used [[1,1,1,200],"
                                           "[-1,-1,1,200],[1,1,0,20]])")
    ambient: float = key(0.3, "colour = albedo * (ambient + diffuse * sum_k E_k/maxE * cos_k * falloff_k)")
    diffuse: float = key(0.5)
    shading: str = choice("lambert", ("lambert", "unlit"), doc="lambert | unlit (albedo only)")
    workers: int = ranged(2, ge=0, doc="parallel render processes (corr3d render / ensure_rendered)")
    png_compression: int = ranged(1, ge=0, le=9, doc="PNG zlib level 0..9 (1: fast; 9: smallest)")


@dataclass
class PairsConfig:
    max_rotation_deg: float = key(120.0, "view pairs at most this far apart; below the rig's camera spacing "
                                         "(render) no pair exists")
    num_points: int = ranged(3000, gt=0)
    true_fraction: float = ranged(0.0, ge=0, le=1, doc="denser positives: this fraction of view 2's points sits at "
                                                       "the true correspondences of\nview 1's visible points (0 = the "
                                                       "paper's independent random sampling; at most 1)")
    point_sampling: str = choice("distinct", ("distinct", "paper_era", "authors_fixed"),  # data.pairs.POINT_SAMPLING
                                 doc="distinct (no repeats, too few pixels padded as invalid) | paper_era (the "
                                     "authors' code\nthe paper used: with replacement above num_points pixels, pair "
                                     "redrawn below) |\nauthors_fixed (their fix 5022511: distinct above, with "
                                     "replacement below)")


@dataclass
class AugmentConfig:
    enabled: bool = key(True)
    geometric_p: float = ranged(0.5, ge=0, le=1, doc="probabilities: 0..1")
    shift: float = key(0.25)
    scale: float = key(0.25)
    rotate_deg: float = key(45.0)
    color_p: float = ranged(0.5, ge=0, le=1)


@dataclass
class DataConfig:
    kind: str = choice("rendered", ("rendered", "mvimgnet"), doc="rendered | mvimgnet")
    rendered_dir: str = key("${data_root}/rendered")
    train_objects: List[str] = _list("procedural:hemisphere", doc="object specs (procedural:<name>[:seed], "
                                                                  "objaverse:<uid>, mesh path)")
    val_objects: List[str] = _list()
    object_list: Optional[str] = key(None, "file of specs (data_prep/download_objaverse.py output), appended to "
                                           "train_objects")
    num_train_objects: Optional[int] = ranged(None, ge=0, doc="null: all of train_objects (+ object_list); k: the "
                                                              "first k")
    val_fraction: float = ranged(0.0, ge=0, lt=1, doc="val_objects empty: hold out this seeded fraction (0 <= f < 1) "
                                                      "of the training objects")
    val_pairs: int = ranged(20, ge=0, doc="validation pairs (same pairs at every evaluation)")
    render: RenderConfig = section(RenderConfig)
    pairs: PairsConfig = section(PairsConfig)
    augment: AugmentConfig = section(AugmentConfig)
    mvimgnet_dir: str = key("${data_root}/mvimgnet")
    mvimgnet_long_side: Optional[int] = ranged(512, gt=0, doc="frames resized to this long side (null: COLMAP camera "
                                                              "resolution)")
    mvimgnet_min_matches: int = ranged(16, ge=0, doc="frame pairs need at least this many shared 3D points")
    mvimgnet_extent_percentile: float = ranged(1.0, ge=0, doc="unit extent of the point cloud's [p, 100-p] "
                                                              "percentile box (stray points)")
    batch_size: int = ranged(1, gt=0)
    num_workers: int = ranged(2, ge=0)
    pairs_per_epoch: int = ranged(100, gt=0)


@dataclass
class TrainerConfig:
    max_steps: int = ranged(10000, ge=0)
    accelerator: str = key("auto")
    devices: int = ranged(1, gt=0)
    num_nodes: int = ranged(1, gt=0)
    strategy: str = key("auto")
    precision: str = choice("auto", PRECISIONS,
                            doc="auto: bf16-mixed (bf16 autocast) on CUDA, 32-true on CPU; or any Lightning "
                                "precision\n(16-mixed, bf16-mixed, 32-true, 64-true, 16-true, bf16-true, 16, bf16, "
                                "32, 64, ...)")
    log_every_n_steps: int = ranged(10, gt=0)
    checkpoint_every_n_steps: int = ranged(1000, ge=0, doc="keeps step*.ckpt and last.ckpt (resume continues the "
                                                           "exact pair stream)")
    val_every_n_steps: int = ranged(1000, ge=0, doc="equivariance on data.val_objects (rank 0) every n steps (and at "
                                                    "step 0; 0 = never)")
    select_best: bool = key(False, "true: end with the adapter of the best val probe (lowest val APE; step 0 "
                                   "included)")
    image_log_every_n_steps: int = ranged(50, ge=0, doc="0: no TensorBoard images (keeps PCA/figures off the "
                                                        "training step)")
    deterministic: bool = key(False)
    cache_frozen_prefix: bool = key(False, "true + data.augment.enabled=false: cache the frozen blocks' tokens per "
                                           "view")


@dataclass
class PhotometricConfig:
    enabled: bool = key(False)
    exposure_stops: float = ranged(1.0, ge=0, le=4)
    white_balance: float = ranged(0.15, ge=0, le=1)
    light: float = ranged(0.5, ge=0, le=1)


@dataclass
class ObjectSetConfig:
    objects: List[str] = section(list)
    object_list: Optional[str] = key(None)
    about: str = key("")


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
    protocol: str = choice(
        "fast", EQUIVARIANCE_PROTOCOLS,
        before="protocol: fast = the sampling below (CPU default; every number in the README's CPU tables) | paper = "
               "the authors'\nproject page: every ordered pair of the 42 views (1,722 per object, rotations up to 180 "
               "deg), 1,000 seeded visible\nsource points per pair, every target foreground pixel as candidate "
               "(ignores max_views/max_pairs/\nnum_source_points/target_stride/max_rotation_deg; GPU work).\nSampling "
               "is seeded per object from (eval.seed, object id) (corr3d/utils/seeding.py): same pairs in every "
               "process.")
    objects: List[str] = _list(
        "sh3d_split:test",
        before="held-out evaluation objects (never trained on). Objects are the bootstrap unit:\nwith DINOv2-S at 448 "
               "px, 5 objects gave a 95% CI half-width of 3.3 APE\npoints on the pretrained APE and 0.51 on a paired "
               "delta (untrained head - pretrained); the spread BETWEEN\nobjects dominates, so more objects narrow "
               "the CI where more pairs per object do not.\nThe default set: the 56 held-out textured real models of "
               "the committed SweetHome3D test split (27 classes; instances\nnever trained on; "
               "docs/real_objects.md). `sh3d_split:<split>[@n]` expands to a committed split (n of its objects,\n"
               "evenly spaced over libraries and names).")
    object_list: Optional[str] = key(None, "file of further specs (e.g. 1000 held-out Objaverse uids), appended to "
                                           "objects")
    controls: Dict[str, ObjectSetConfig] = section(
        _default_controls,
        before="secondary sets, evaluated by `make eval` (not by training) under equivariance/<name>/..., same "
               "protocol; each\nwith what it controls for (printed in the report).")
    control_sets: List[str] = _list("procedural", "untextured", doc="which of the controls `make eval` measures "
                                                                    "([]: none)")
    max_views_per_object: int = ranged(0, ge=0, doc="> 0: pairs only among this many random views (fewer feature "
                                                    "extractions)")
    max_pairs_per_object: int = ranged(20, ge=0)
    max_rotation_deg: float = key(70.0, "at least the data.render rig's camera spacing (31.72 deg at level 1)")
    num_source_points: int = ranged(800, gt=0)
    target_stride: int = ranged(2, gt=0, doc="nearest neighbour over every k-th target foreground pixel")
    thresholds: List[float] = _list(0.05, 0.1, 0.2)
    visibility_tol: float = ranged(0.02, ge=0, doc="object units: a source point counts as visible if the target "
                                                   "pixel sees it")
    batch_size: int = ranged(4, gt=0, doc="views per feature-extraction batch")
    mvimgnet: bool = key(False, "also evaluate on MVImgNet's sparse COLMAP correspondences (data.mvimgnet_dir)")
    mvimgnet_objects: int = ranged(100, ge=0, doc="first k objects found under data.mvimgnet_dir (0: all)")
    real_pairs: bool = key(True, "training also measures the real_pairs task (eval.real_pairs) before/after")
    downstream: List[str] = choice(
        [], DOWNSTREAM_TASKS,
        doc="make eval's downstream tasks (real data when present, else the offline suite) that\n"
            "training also measures before/after for pretrained, the untrained head and finetuned (not\n"
            "the reference models), so Fig. 10/11 sweeps report each task's change; pretrained comes\n"
            "from eval.part_cache when measured before")
    reference_models: List[str] = choice(["random", "oracle"], REFERENCE_MODELS,
                                         doc="training also measures these (floor / ceiling) for its validity "
                                             "section\n(random | oracle | pretrained | pretrained_head_init)")
    photometric: PhotometricConfig = section(
        PhotometricConfig,
        before="photometric change between views (corr3d/eval/photometric.py): each view gets its own seeded "
               "exposure\n(2^U(-s, s)), white balance (per-channel gains exp(N(0, wb)), mean 1) and a directional "
               "light from a random side\n(shading x (1 - light) + light * 2 max(0, n.l), normals from the xyz map), "
               "in linear light. What DINOv2 was\ntrained to ignore and raw colour is not.")


@dataclass
class RealPairsEvalConfig:
    stereo: bool = key(True, "the Middlebury motorcycle stereo pair (x_right = x_left - disparity)")
    homography_images: List[str] = _list(
        "astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "clock", "immunohistochemistry",
        before="the photograph is the CI unit. With DINOv2-S the photographs differ so much (SD 20 points of "
               "PCK@0.05) that a\n+-3 CI would take ~170 of them; scikit-image bundles 14 real captures, and adding "
               "the other 6 (retina,\nhubble_deep_field, moon, cell, brick, gravel) narrowed the CI from 11.4 to 10.2 "
               "points for 3x the time (large\nimages). Paired deltas are what this task resolves: finetuned - "
               "pretrained had a CI of +-2.4 with these 8.")
    homographies_per_image: int = ranged(2, ge=0, doc="seeded warps per photograph (the photograph is the bootstrap "
                                                      "unit)")
    homography_strength: float = ranged(0.15, ge=0, doc="each corner moves by up to this fraction of the image side")
    num_points: int = ranged(1000, ge=0, doc="source points per image pair (0: every valid pixel)")
    target_stride: int = ranged(2, gt=0, doc="nearest neighbour over every k-th target pixel")
    thresholds: List[float] = _list(0.01, 0.02, 0.05, doc="PCK@t: error < t * shortest side of the target image (as "
                                                          "APE/PCDP)")
    photometric: PhotometricConfig = section(PhotometricConfig,
                                             "the target photograph under another exposure / white balance / light "
                                             "(no normals:\nthe light is a linear shading ramp across the image); see "
                                             "equivariance.photometric")


@dataclass
class OfflineEvalConfig:
    enabled: bool = key(True, "evaluate the synthetic offline suite (generated on demand)")
    dir: str = key("${data_root}/benchmarks")
    regenerate: bool = key(False)
    tracking_frame_size: Optional[List[int]] = key(None, "[H, W]; null: the synthetic videos' own size (144x256)")
    tracking_argmax_radius: float = key(12.0, "px; DINO-Tracker's 35 px at 854 px width, scaled to the small videos")
    semantic_image_size: int = ranged(224, gt=0)


@dataclass
class PoseEvalConfig:
    data_dir: str = key("${data_root}/onepose/lowtexture_test_data")
    sfm_dir: str = key("${data_root}/onepose/sfm_output/outputs_softmax_loftr_loftr")
    objects: List[str] = _list(doc="empty: every object; names select real OnePose objects (the suite keeps those "
                                   "it has)")
    feature_px: int = ranged(8, gt=0, doc="each ViT token covers 8 image pixels (input = (H//8*patch, W//8*patch))")
    max_templates: int = ranged(120000, gt=0)
    query_step: int = ranged(10, gt=0, doc="every 10th test frame")
    offline_query_step: int = ranged(1, gt=0, doc="offline suite (30-frame test captures): every frame is a query")
    grid_step: int = ranged(4, gt=0, doc="query descriptors on a 4-px grid")
    ransac_reproj_px: float = key(8.0)
    ransac_iters: int = ranged(10000, gt=0)
    ransac: str = choice("paper", ("paper", "fast"),
                         doc="paper: cv2.solvePnPRansac EPnP, all ransac_iters when the inlier ratio is low (the\n"
                             "authors' call) | fast: OpenCV USAC (P3P + local optimisation; corr3d/eval/pose.py)")
    min_matches: int = key(4)
    min_inliers: int = key(6, "released code accepts len(inliers) > 5")
    points_scale: float = key(1000.0)
    thresholds: List[int] = _list(1, 3, 5, doc="k cm - k deg")
    unit: str = choice("m", ("m", "cm", "mm"))
    ref_seq: int = key(1)
    test_seq: int = key(2)
    frame_order: str = choice("lexicographic", ("lexicographic", "numeric"),
                              doc="query frames = every query_step-th of the test frames in this order: "
                                  "lexicographic\n(the authors' sorted(glob): 0, 1, 10, 100, ...) | numeric (0, 1, "
                                  "2, ...)")


@dataclass
class PoseYcbvEvalConfig:
    test_dir: str = key("${data_root}/bop/ycbv/test", "ycbv_test_bop19.zip: <scene>/{rgb,depth,mask_visib}, "
                                                      "scene_*.json")
    models_dir: str = key("${data_root}/bop/ycbv/models", "ycbv_models.zip: obj_XXXXXX.ply + models_info.json")
    targets: Optional[str] = key("${data_root}/bop/ycbv/test_targets_bop19.json", "optional BOP'19 target list "
                                                                                  "(used when present)")
    use_targets: bool = key(True, "restrict queries to the target list when the file exists")
    scenes: List[int] = _list(doc="empty: every scene found")
    ref_step: int = ranged(5, gt=0, doc="every 5th image of a scene (id order) is a reference view (templates); "
                                        "others: queries")
    query_step: int = ranged(1, gt=0, doc="every k-th of the remaining images is a query image")
    template_step: int = ranged(4, gt=0, doc="template descriptors on a 4-px grid inside each reference instance's "
                                             "visible mask")
    max_templates: int = ranged(120000, gt=0, doc="per object, pooled over scenes (stable-seeded subsample)")
    grid_step: int = ranged(4, gt=0, doc="query descriptors on a 4-px grid over the instance's bbox_visib (+ "
                                         "bbox_margin)")
    bbox_margin: float = ranged(0.1, ge=0, doc="grow the ground-truth detection box by 10% of its size on every side")
    min_visib_fract: float = ranged(0.1, ge=0, le=1, doc="BOP's visibility threshold (0..1) for targets and "
                                                         "templates")
    feature_px: int = ranged(8, gt=0, doc="each ViT token covers 8 image pixels (as eval.pose)")
    ransac_reproj_px: float = key(8.0)
    ransac_iters: int = ranged(10000, gt=0)
    ransac: str = choice("paper", ("paper", "fast"), doc="as eval.pose.ransac")
    min_matches: int = key(4)
    min_inliers: int = key(6)
    thresholds: List[int] = _list(1, 3, 5, doc="k cm - k deg accuracy (the paper's pose thresholds)")
    bop_ar: bool = key(True, "BOP19 AR (VSD / MSSD / MSPD; corr3d/eval/metrics/bop.py): renders the model's depth "
                             "twice\nper query")
    auc_max_mm: float = ranged(100.0, gt=0, doc="ADD(-S) AUC up to 10 cm (PoseCNN / BOP YCB-V convention)")
    add_diameter_frac: float = ranged(0.1, gt=0, doc="ADD(-S) accuracy at 10% of the object diameter")
    max_model_points: int = ranged(2000, gt=0, doc="model vertices used for ADD(-S) (stable subsample)")
    offline_ref_step: int = ranged(4, gt=0, doc="offline suite (24 images per scene): 6 reference views, 18 query "
                                                "images")


@dataclass
class TrackingEvalConfig:
    data: str = key("${data_root}/tapvid/tapvid_davis.pkl")
    format: str = choice("auto", ("auto", "tapvid", "dinotracker"), doc="auto | tapvid | dinotracker")
    frames_dir: Optional[str] = key(None, "dinotracker format: <frames_dir>/<video_idx>/video/*.jpg (default: <pkl "
                                          "dir>/tapvid-davis)")
    query_mode: str = choice("strided", ("strided", "first"),
                             doc="strided | first: the headline protocol (tracking/...; the paper's: strided, "
                                 "854x476)")
    variants: List[str] = choice(["first"], ("strided", "first", "strided@256", "first@256"),
                                 doc="also measured, keys tracking/<mode>[_256]/...: strided | first | strided@256 "
                                     "|\nfirst@256 (tapnet's 256x256 frames); frames shared with the headline "
                                     "computed once")
    query_stride: int = ranged(5, gt=0)
    max_videos: Optional[int] = key(None)
    frame_size: List[int] = _list(476, 854, doc="[H, W]")
    stride: Optional[int] = ranged(7, gt=0, doc="overlapping patch-embedding stride (null: patch size)")
    argmax_radius: float = key(35.0)
    softmax_temperature: float = ranged(1.0, gt=0)
    anchor_cos: float = key(0.7)
    occlusion_cos: float = key(0.6)
    resolution: int = ranged(256, gt=0)
    query_chunk: int = ranged(64, gt=0)
    final_norm: Optional[bool] = key(False, "tracking features: false = pre-final-LayerNorm tokens (the authors' "
                                            "x_prenorm);\ntrue = normed tokens as in every other task; null = the "
                                            "model's own model.final_norm")
    normalize: str = choice("before_sampling", ("before_sampling", "after_sampling"),  # eval.tracking.NORMALIZE
                            doc="before_sampling (unit maps sampled, then renormalised) | after_sampling (raw maps\n"
                                "sampled bilinearly, then normalised: the authors' order)")


@dataclass
class SemanticEvalConfig:
    pfpascal_dir: str = key("${data_root}/PF-dataset-PASCAL")
    pfpascal_views: List[str] = choice(["different", "same"], ("different", "same"))
    spair_dir: str = key("${data_root}/SPair-71k")
    spair_split: str = key("test")
    image_size: int = ranged(840, gt=0)
    alphas: List[float] = _list(0.05, 0.10, 0.15)
    spair_alphas: List[float] = _list(0.10)
    similarity: str = choice("upsample_similarity", ("upsample_similarity", "upsample_features"),
                             doc="upsample_similarity | upsample_features (same result, slower)")
    pixel_chunk: int = ranged(65536, gt=0)
    max_pairs: Optional[int] = key(None)
    normalize_maps: bool = key(False, "false: the model's raw map (source features L2-normalised after sampling, "
                                      "target map\nnot normalised: the authors' dot product); true: per-token "
                                      "L2-normalised maps")


@dataclass
class EvalConfig:
    tasks: List[str] = choice([], EVAL_TASKS, doc="empty: every task whose data is present (the offline suite "
                                                  "always); else a list of\npose | tracking | semantic | "
                                                  "equivariance | pose_ycbv | real_pairs")
    backbone: Optional[str] = key(None, "evaluate a different backbone than the experiment's")
    ckpt: Optional[str] = key(None, "adapter (or run directory) to evaluate; null: the experiment's latest run")
    out_dir: Optional[str] = key(None, "default: <run>/eval (runs/<experiment>/eval when there is no run yet)")
    models: List[str] = choice(
        ["pretrained", "random", "finetuned", "oracle"], EVAL_MODELS,
        before="compared models (corr3d.models.compared_model: same backbone/resolution/layer/norm, only weights "
               "differ):\npretrained = backbone alone; random = random-init backbone (the floor); finetuned = with "
               "the adapter (skipped\nif none); pretrained_head_init = LoRA(B=0) + untrained head; oracle = ground "
               "truth as features (the ceiling;\nonly for tasks with dense ground truth: equivariance, real_pairs)")
    device: str = key("auto", "auto | cpu | cuda | cuda:<index> | mps (cuda without a GPU is an error at load time)")
    batch_size: int = ranged(4, gt=0)
    feature_cache_size: int = ranged(256, ge=0, doc="feature maps kept per task (semantic: each image computed once)")
    precision: str = choice("fp32", ("auto", "fp32", "bf16", "fp16"),  # corr3d.models.features.PRECISIONS
                            doc="feature extraction: fp32 (the authors') | auto (bf16 on CUDA) | bf16 | fp16")
    seed: int = key(0, "sampling seed of every task (view pairs, points, homographies) and of the bootstrap")
    n_boot: int = ranged(2000, gt=0, doc="bootstrap resamples of the 95% CIs and paired deltas (corr3d/eval/stats.py)")
    resume: bool = key(True, "reuse finished parts (<out>/parts) whose fingerprint (config, adapter, suite) matches:"
                             "\na killed `make eval` continues where it stopped; false: evaluate everything again")
    part_cache: Optional[str] = key("${output_dir}/.part_cache",
                                    "every finished part, by fingerprint, for later runs:\npretrained, random and "
                                    "oracle rows are measured once per configuration,\nsuite and weights, whatever "
                                    "the training run (lr, steps, objects);\nnull: no cache")
    shared_features_mb: float = ranged(2048.0, ge=0, doc="backbone tokens kept so that models with the same frozen "
                                                         "backbone (pretrained, the\nuntrained heads) run it once per "
                                                         "input, and (as much again) the tokens before\nthe adapted "
                                                         "blocks, where finetuned continues from pretrained's\n"
                                                         "(corr3d/models/shared.py); 0: off")
    workers: str = key("auto", "processes measuring (task, model) parts side by side; auto: one per\nCPU core "
                               "(at most 4), 1 on a GPU; torch threads x workers <= cores;\nthe numbers do not "
                               "depend on it (eval/run.py _measure_in_parallel)")
    real_data: bool = key(True, "evaluate the real datasets below when present")
    real_pairs: RealPairsEvalConfig = section(RealPairsEvalConfig, "real photographs with exact ground truth from "
                                                                   "scikit-image (corr3d/eval/real_pairs.py)")
    offline: OfflineEvalConfig = section(OfflineEvalConfig)
    pose: PoseEvalConfig = section(PoseEvalConfig, "OnePose-LowTexture (paper §4.2)")
    pose_ycbv: PoseYcbvEvalConfig = section(PoseYcbvEvalConfig, "YCB-Video one-shot pose, BOP format (paper Table 8; "
                                                                "protocol: corr3d/eval/pose_ycbv.py)")
    tracking: TrackingEvalConfig = section(TrackingEvalConfig, "TAP-Vid DAVIS (paper §4.4)")
    semantic: SemanticEvalConfig = section(SemanticEvalConfig, "PF-PASCAL (paper §4.3) and SPair-71k")


@dataclass
class LauncherConfig:
    name: str = choice("local", ("local", "slurm"), doc="local | slurm (submitit; see README \"Training on a SLURM "
                                                        "cluster\")")
    nodes: int = ranged(1, gt=0, doc="SLURM nodes (= trainer.num_nodes; whichever of the two is left at 1 follows the "
                                     "other)")
    gpus_per_node: int = ranged(1, gt=0, doc="= tasks per node = trainer.devices (one DDP process per GPU; CPU "
                                             "processes if accelerator=cpu)")
    cpus_per_task: int = ranged(8, gt=0)
    mem_gb: Optional[int] = ranged(64, gt=0, doc="per node; null: the partition's default")
    partition: Optional[str] = key(None)
    account: Optional[str] = key(None)
    qos: Optional[str] = key(None)
    constraint: Optional[str] = key(None)
    gres: Optional[str] = key(None, "e.g. gpu:a100:8 for clusters that want --gres; null: --gpus-per-node")
    time_min: int = ranged(1440, gt=0, doc="per job; the pre-timeout signal requeues and resumes training")
    signal_delay_s: int = ranged(120, ge=0, doc="SIGUSR2 this many seconds before the time limit")
    max_requeues: int = ranged(10, ge=0, doc="give up after this many timeouts")
    job_name: Optional[str] = key(None, "null: corr3d-<command>-<experiment>")
    setup: List[str] = _list(doc="shell lines run before srun, e.g. [\"module load cuda/12.4\", \"source "
                                 ".venv/bin/activate\"]")
    array_parallelism: int = ranged(32, gt=0, doc="eval/render arrays: at most this many tasks at once")
    eval_gpus: int = ranged(1, ge=0, doc="GPUs per evaluation array task (one benchmark x model each)")
    render_chunk_size: int = ranged(100, gt=0, doc="objects per rendering array task")
    wait: bool = key(False, "true: block until the jobs end and print the results (eval: the gathered metrics)")
    extra: Dict[str, Any] = section(dict, "more sbatch options, e.g. {exclude: node12, mail-type: END}")


@dataclass
class SweepConfig:
    name: Optional[str] = key(None, "runs/<experiment>/sweeps/<name>/ (null: \"default\"; --name overrides)")
    axes: Dict[str, Any] = section(dict, "{dotted.key: [v1, v2, ...]}: the grid (cartesian product); the command "
                                         "line adds/replaces")
    metrics: List[str] = _list("equivariance/ape", "equivariance/pcdp@0.05", "equivariance/pcdp@0.1",
                               "real_pairs/pck@0.05", "real_pairs/median_px", "real_pairs/stereo/pck@0.05",
                               doc="metrics.json keys gathered into results.csv / report.md")
    share_baselines: bool = key(True, "cells with the same model/seed/evaluation settings reuse the first cell's "
                                      "baseline rows")


@dataclass
class Config:
    experiment: str = key("base")
    seed: int = key(42)
    output_dir: str = key("runs", "runs/<experiment>/<timestamp>/ ; runs/<experiment>/latest -> newest")
    data_root: str = key("data", "rendered objects, downloaded datasets and the offline benchmark suite live here")
    model: ModelConfig = section(ModelConfig)
    loss: LossConfig = section(LossConfig)
    optim: OptimConfig = section(OptimConfig)
    data: DataConfig = section(DataConfig)
    trainer: TrainerConfig = section(TrainerConfig)
    equivariance: EquivarianceConfig = section(EquivarianceConfig)
    eval: EvalConfig = section(EvalConfig)
    sweep: SweepConfig = section(SweepConfig, "corr3d sweep <experiment> key=v1,v2 [key2=...] "
                                              "(corr3d/launch/sweep.py)")
    launcher: LauncherConfig = section(LauncherConfig)


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


# ---- experiments/base.yaml: generated from the fields above ---------------------------------------------------------
BASE_YAML = Path(__file__).resolve().parent.parent / "experiments" / "base.yaml"
BASE_YAML_HEADER = """\
# corr3d base configuration, GENERATED from corr3d/config_schema.py (each key's default, type, range and comment):
# edit the schema, then run `python -m corr3d.config_schema --write` (tests/test_experiments.py checks this file).
# Every key any experiment or `ARGS="key=value"` sets must exist here.
# Experiments override only what differs (see experiments/dinov2_single_object.yaml); `inherit: <experiment>`
# in an experiment file layers it on top of another experiment.
# Every value is validated when the config is loaded (types, ranges, the listed choices, relations between keys;
# corr3d/config_schema.py, corr3d/config.py validate_config): `corr3d <train|eval|render|sweep> EXP --dry-run` checks
# and prints the resolved config without writing anything."""
COMMENT_COLUMN = 28     # where a key's comment starts (further right after a longer line)
LINE_WIDTH = 118        # flow lists wrap at this width


def _yaml_float(value: float) -> str:
    # YAML 1.1 (PyYAML) reads 1e-05 as a string: the mantissa needs a dot and the exponent a sign
    text = repr(value)
    if "e" not in text:
        return text
    mantissa, exponent = text.split("e")
    return f"{mantissa if '.' in mantissa else mantissa + '.0'}e{int(exponent):+d}"


def _yaml_str(value: str, flow: bool) -> str:
    plain = (value != "" and yaml.safe_load(value) == value and ": " not in value and " #" not in value
             and value[0] not in "[]{}&*!|>'\"%@`#,?-" and not (flow and any(c in value for c in ",[]{}")))
    return value if plain else json.dumps(value)


def _yaml_value(value: Any, flow: bool = False) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _yaml_float(value)
    if isinstance(value, str):
        return _yaml_str(value, flow)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(v, flow=True) for v in value) + "]"
    if isinstance(value, dict) and not value:
        return "{}"
    raise TypeError(f"no YAML form for the default {value!r} ({type(value).__name__})")


def _value_lines(prefix: str, value: Any) -> list[str]:
    """``prefix`` + the flow form of ``value``; a list longer than LINE_WIDTH wraps after an entry, aligned."""
    text = prefix + _yaml_value(value)
    if len(text) <= LINE_WIDTH or not isinstance(value, (list, tuple)):
        return [text]
    entries = [_yaml_value(v, flow=True) for v in value]
    lines, current = [], prefix + "["
    for i, entry in enumerate(entries):
        piece = entry + ("]" if i == len(entries) - 1 else ",")
        if current.strip() not in ("", prefix.strip() + " [") and len(current) + 1 + len(piece) > LINE_WIDTH:
            lines.append(current)
            current = " " * (len(prefix) + 1) + piece
        else:
            current += ("" if current.endswith("[") else " ") + piece
    return [*lines, current]


def _commented(lines: list[str], doc: str) -> list[str]:
    """``doc`` after the last of ``lines`` at COMMENT_COLUMN; its further lines below, at the same column."""
    if not doc:
        return lines
    first, *rest = doc.split("\n")
    column = max(COMMENT_COLUMN, len(lines[-1]) + 2)
    return [*lines[:-1], lines[-1].ljust(column) + "# " + first, *(" " * column + "# " + line for line in rest)]


def _yaml_lines(node: Any, indent: str = "") -> Iterator[str]:
    if dataclasses.is_dataclass(node):
        items = [(f.name, getattr(node, f.name), f.metadata) for f in dataclasses.fields(node)]
    else:
        items = [(name, value, {}) for name, value in node.items()]
    for name, value, meta in items:
        nested = dataclasses.is_dataclass(value) or (isinstance(value, dict) and bool(value))
        if nested and not indent:
            yield ""        # a blank line before each top-level section
        yield from (f"{indent}# {line}" for line in meta.get("before", "").split("\n") if meta.get("before"))
        if nested:
            yield from _commented([f"{indent}{name}:"], meta.get("doc", ""))
            yield from _yaml_lines(value, indent + "  ")
        else:
            yield from _commented(_value_lines(f"{indent}{name}: ", value), meta.get("doc", ""))


def base_yaml_text() -> str:
    """The text of experiments/base.yaml: every key of :class:`Config` with its default and its comment."""
    return "\n".join([BASE_YAML_HEADER, *_yaml_lines(Config())]) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m corr3d.config_schema [--write]``: print experiments/base.yaml as the schema defines it, or write
    it (after a change to a default, a range or a comment above)."""
    parser = argparse.ArgumentParser(prog="python -m corr3d.config_schema", description=main.__doc__)
    parser.add_argument("--write", action="store_true", help=f"write {BASE_YAML} instead of printing it")
    args = parser.parse_args(argv)
    if args.write:
        BASE_YAML.write_text(base_yaml_text())
        print(f"wrote {BASE_YAML}")
    else:
        sys.stdout.write(base_yaml_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
