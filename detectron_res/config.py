"""The configuration schema and its loader.

One typed schema (the dataclasses below, validated by OmegaConf) describes every
setting of the toolkit. A YAML file under ``configs/`` overrides some of it, with
at most one level of ``_base_`` inheritance, and trailing ``section.key=value``
command-line arguments override the result::

    cfg = load_config("coco_r101.yaml", ["solver.base_lr=0.002"])
    cfg.model.backbone.depth        # -> 101

Defaults are the values of the paper's Faster R-CNN on PASCAL VOC (ResNet paper,
Appendix A, and py-faster-rcnn's config.py, see shared/PAPER_FACTS.md); the files
in ``configs/`` state only what differs.

The same overrides apply to a config already loaded (:func:`apply_overrides`), for
example one stored in a checkpoint.

Every user mistake (unknown key, wrong type, missing ``_base_`` file, malformed
YAML, invalid choice, value out of range) raises :class:`ConfigError` with one line
naming the file or override, the full dotted key and what was expected. The
loading itself (YAML, ``_base_``, overrides, the error messages) serves any schema
and lives in :mod:`detectron_res.config_loader`; this module holds the detector's
schema and checks. Tools turn a ``ConfigError`` into exit status 2 without a
traceback (:func:`detectron_res.exit_status.config_for_tool`).
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence

from omegaconf import DictConfig, OmegaConf

# The loader serves any schema; its names are this module's too (``ConfigError``,
# ``CONFIG_DIR``, ``compose_config`` ...: the classifier's config imports them from here).
from .config_loader import (  # noqa: F401
    CONFIG_DIR,
    PROJECT_ROOT,
    ConfigError,
    compose_config,
    compose_config_from_dict,
    override_config,
    resolve_config_path,
)
from .outputs import atomic_write_text


# ----------------------------------------------------------------------------
# Schema
# ----------------------------------------------------------------------------
@dataclass
class BackboneConfig:
    name: str = "resnet"  # resnet | vgg16
    depth: int = 101  # ResNet depth: 18, 34, 50, 101, 152
    # True = original MSRA Caffe models (stride 2 on the first 1x1 conv of a
    # bottleneck); False = torchvision "v1.5" (stride on the 3x3).
    stride_in_1x1: bool = True
    norm: str = "FrozenBN"  # FrozenBN | BN | SyncBN | GN
    # 0 trains everything, 1 freezes the stem, 2 stem+res2, ... (Appendix A keeps
    # BN statistics fixed; early stages are frozen as in py-faster-rcnn/Detectron).
    freeze_at: int = 2
    shortcut: str = "B"  # ResNet paper Sec 3.3 options A | B | C
    residual: bool = True  # False builds the paper's "plain" network
    base_channels: int = 64  # 64 = paper widths; smaller values thin every stage


@dataclass
class AnchorConfig:
    # Faster R-CNN: areas 128^2, 256^2, 512^2 x ratios 1:2, 1:1, 2:1 (COCO adds 64).
    sizes: List[int] = field(default_factory=lambda: [128, 256, 512])
    aspect_ratios: List[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    # Anchor centre inside its 16-pixel cell, as a fraction of the stride: 0.5 is
    # the cell centre (py-faster-rcnn), 0.0 the cell corner (Detectron2, torchvision).
    offset: float = 0.5
    # exact_area: area size^2 exactly (Detectron2, torchvision); py-faster-rcnn: its
    # generate_anchors, ratios rounded at base size 16 then scaled (the paper's system).
    style: str = "exact_area"


@dataclass
class RPNConfig:
    head_channels: int = 0  # channels of the 3x3 conv; 0 = same as its input
    positive_iou: float = 0.7
    negative_iou: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    # >= 0: in training, ignore anchors leaving the image by more than this many
    # pixels (the paper ignores cross-boundary anchors: 0). -1 keeps them all.
    boundary_threshold: int = 0
    pre_nms_topk_train: int = 12000
    post_nms_topk_train: int = 2000
    pre_nms_topk_test: int = 6000
    post_nms_topk_test: int = 300
    nms_thresh: float = 0.7
    min_size: float = 16.0  # minimum proposal side, in input-image pixels
    smooth_l1_beta: float = 1.0 / 9.0  # sigma 3 in py-faster-rcnn: beta = 1/sigma^2
    loss_weight: float = 1.0


@dataclass
class ROIHeadsConfig:
    num_classes: int = 20  # foreground classes K; the predictor has K+1 scores
    batch_size_per_image: int = 128
    positive_fraction: float = 0.25
    fg_iou_thresh: float = 0.5
    bg_iou_thresh_lo: float = 0.0  # end-to-end training uses [0, 0.5)
    bg_iou_thresh_hi: float = 0.5
    pooler_type: str = "ROIPool"  # ROIPool (paper) | ROIAlign | ROIAlignV2 (aligned=True)
    pooler_resolution: int = 14  # res5's stride-2 first block turns 14x14 into 7x7
    pooler_sampling_ratio: int = 0
    box_reg_weights: List[float] = field(default_factory=lambda: [10.0, 10.0, 5.0, 5.0])
    smooth_l1_beta: float = 1.0
    score_thresh_test: float = 0.05
    nms_thresh_test: float = 0.3
    detections_per_image: int = 100
    # Appendix B (Table 9). Test time: pool each RoI's regressed box (top class) again,
    # merge both predictions by NMS and box voting.
    box_refinement: bool = False
    # Train and test: the whole image as one more RoI, its res5 feature concatenated
    # with every region's before the predictor (which then takes 2 x the width).
    global_context: bool = False
    # Box voting of merged predictions (refinement, flip): candidates of the kept box's
    # class with IoU >= this vote (Appendix B: 0.5; Detectron's BBOX_VOTE uses 0.8).
    box_voting_iou: float = 0.5


@dataclass
class SpeedConfig:
    # Exact speed options: each changes results by float rounding only (checked by
    # tests/test_speed_equivalence.py); measured in benchmarks/OPTIMIZATIONS.md.
    # FrozenBN scales the conv weight instead of the conv output (training and inference).
    fused_frozen_bn: bool = True
    inplace_relu: bool = True  # ResNet blocks apply ReLU and the residual addition in place
    # C4 head with RoIAlign: res5's first 1x1 conv / its 1x1 projection shortcut (fixed
    # affine norm) runs once on the feature map before pooling instead of on every RoI;
    # exact while the RoIs lie on the map (else the plain order runs).
    res5_conv1_before_pool: bool = True
    res5_shortcut_before_pool: bool = True
    channels_last: bool = True  # prepare_for_inference stores conv weights NHWC (oneDNN / cuDNN)
    # prepare_for_inference keeps CPU conv weights in oneDNN's packed layout, converted once
    # per input shape instead of on every call (modeling/packed_conv.py).
    packed_conv_weights: bool = True
    # RoIAlign of CPU tensors as one sparse matrix product for all channels (every core;
    # torchvision's CPU kernel runs on one). CUDA keeps torchvision's kernel.
    roi_align_by_matrix: bool = True


@dataclass
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    # ImageNet initialization used for training when --weights is not given: a
    # path, or torchvision://resnet101, msra://R-101, ... (detectron_res/weights/).
    weights: str = ""
    # Channel order and normalization the weights expect (MSRA Caffe models: BGR,
    # mean subtracted, std 1). Must agree with the weights; the loader checks.
    input_format: str = "BGR"
    pixel_mean: List[float] = field(default_factory=lambda: [103.53, 116.28, 123.675])
    pixel_std: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    fold_frozen_bn: bool = True  # fold FrozenBN into convolutions for inference
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    anchor: AnchorConfig = field(default_factory=AnchorConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: ROIHeadsConfig = field(default_factory=ROIHeadsConfig)


@dataclass
class InputConfig:
    # Appendix A: single scale, shorter side 600 (longer side at most 1000).
    min_size_train: List[int] = field(default_factory=lambda: [600])
    max_size_train: int = 1000
    min_size_test: int = 600
    max_size_test: int = 1000
    hflip_prob: float = 0.5
    photometric: bool = False
    size_divisibility: int = 32


@dataclass
class DatasetSpec:
    """A user's own dataset, declared by format and paths (datasets/README.md)."""

    format: str = ""  # coco | voc | yolo
    image_root: str = ""  # coco: folder of the images
    annotation_file: str = ""  # coco: instances json
    voc_root: str = ""  # voc: the VOC2007-like folder (Annotations/, ImageSets/, JPEGImages/)
    year: str = ""  # voc: decides the VOC metric (2007 -> 11-point)
    split: str = ""  # voc: ImageSets/Main/<split>.txt; yolo: sub-folder
    yolo_root: str = ""  # yolo: folder with images/ and labels/
    class_names_file: str = ""  # yolo: one class name per line
    class_names: List[str] = field(default_factory=list)  # optional override


@dataclass
class DataConfig:
    train: List[str] = field(default_factory=list)  # dataset names, concatenated
    test: List[str] = field(default_factory=list)  # dataset names, evaluated separately
    datasets: Dict[str, DatasetSpec] = field(default_factory=dict)
    filter_empty: bool = False  # drop training images without annotations
    use_difficult: bool = False  # train on VOC "difficult" objects
    num_workers: int = 2
    aspect_ratio_grouping: bool = True
    # Images with more pixels are refused before decoding (decompression bombs), at
    # start-up, in the loaders and in tools/infer.py. The default is Pillow's
    # (a 13k x 13k image; detectron_res.data.image_io.DEFAULT_MAX_PIXELS); raise it for
    # genuinely huge images (e.g. aerial tiles).
    max_pixels: int = 178_956_970


@dataclass
class AMPConfig:
    enabled: bool = False  # training under autocast: bf16 on CUDA or on the CPU, fp16 on CUDA only
    dtype: str = "bf16"  # bf16 | fp16 (fp16 uses a grad scaler)


@dataclass
class SolverConfig:
    ims_per_batch: int = 2  # GLOBAL batch, split evenly across processes
    base_lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0005
    weight_decay_norm: float = 0.0
    weight_decay_bias: float = 0.0005
    warmup_iters: int = 0
    warmup_factor: float = 0.001
    steps: List[int] = field(default_factory=lambda: [60000])
    gamma: float = 0.1
    max_iter: int = 80000
    clip_grad_norm: float = 0.0  # 0 disables clipping
    checkpoint_period: int = 5000
    keep_last: int = 3
    amp: AMPConfig = field(default_factory=AMPConfig)
    # linear: ramp from warmup_factor to 1 over warmup_iters; constant: hold
    # warmup_factor for warmup_iters (the ResNet-110 warm-up of Sec 4.2: 0.01 = 0.1 x
    # base_lr for about 400 iterations, "then go back to 0.1").
    warmup_method: str = "linear"


@dataclass
class TestConfig:
    eval_period: int = 0  # 0 = evaluate only at the end of training
    evaluators: List[str] = field(default_factory=list)  # empty = by dataset format
    voc_year: str = ""  # "" = from the dataset; 2007 selects the 11-point metric
    voc_protocol: str = "devkit"  # devkit (official MATLAB, bit for bit) | py-faster-rcnn (its voc_eval.py)
    best_metric: str = ""  # e.g. "voc/mAP50": keep model_best.pth by this metric
    images_per_batch: int = 1
    # Multi-scale testing (Appendix B): shorter sides of the pyramid the Fast R-CNN step
    # pools from, e.g. [200, 400, 600, 800, 1000]; [] = input.min_size_test alone. The
    # RPN still runs at input.min_size_test; longer sides are capped in proportion.
    scales: List[int] = field(default_factory=list)
    # Each RoI is pooled from the two adjacent levels where its size brackets this
    # square's side (SPPnet's 224: the ImageNet input size), merged by maxout.
    scale_target_size: int = 224
    # The pyramid level the RPN runs on (one of test.scales); 0 = the model input. Lets
    # input.min_size_test be the largest level (every level a downsampling of it) while
    # proposals come from the paper's 600.
    proposal_scale: int = 0
    hflip: bool = False  # also detect on the mirrored image; merged by NMS and box voting
    # Evaluation (hook and --eval-only) precision: fp32, bf16 (autocast), or auto =
    # bf16 on CUDA GPUs with native bf16 (Ampere or later) and on CPUs with native bf16 (detectron_res.precision).
    precision: str = "auto"


@dataclass
class DistConfig:
    timeout_s: int = 600  # a rank that hears nothing from the others this long exits
    backend: str = ""  # "" = nccl on CUDA, gloo on CPU


@dataclass
class RunConfig:
    """The run-level settings every task's config ends with (detection's :class:`Config`,
    classification's ``ClassifierConfig``): read by the engine's run skeleton
    (``detectron_res/engine/run.py``), not by the task's code."""

    dist: DistConfig = field(default_factory=DistConfig)
    output_dir: str = "output/default"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # torch compute threads on the CPU: 0 = torch's count (one per core), lowered in
    # training while other processes keep cores busy (detectron_res/engine/threads.py);
    # N = exactly N threads throughout.
    cpu_threads: int = 0
    log_period: int = 20


@dataclass
class DetectionSections:
    model: ModelConfig = field(default_factory=ModelConfig)
    input: InputConfig = field(default_factory=InputConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    test: TestConfig = field(default_factory=TestConfig)


@dataclass
class Config(RunConfig, DetectionSections):
    """The detector's config: its sections, then the run-level keys.

    (A dataclass lists the fields of its LAST base first: the YAML shows ``model``
    first and the run-level keys at the end.)
    """


# Values that must be one of a few names, checked after loading so that the error
# names the key (OmegaConf would accept any string). SOLVER_CHOICES: every task's.
SOLVER_CHOICES: Dict[str, Sequence[str]] = {
    "solver.amp.dtype": ("bf16", "fp16"),
    "solver.warmup_method": ("linear", "constant"),
}
CHOICES: Dict[str, Sequence[str]] = {
    "model.backbone.name": ("resnet", "vgg16"),
    "model.backbone.norm": ("FrozenBN", "BN", "SyncBN", "GN"),
    "model.backbone.shortcut": ("A", "B", "C"),
    "model.input_format": ("BGR", "RGB"),
    "model.roi_heads.pooler_type": ("ROIPool", "ROIAlign", "ROIAlignV2"),
    **SOLVER_CHOICES,
    "test.voc_protocol": ("devkit", "py-faster-rcnn"),
    "model.anchor.style": ("exact_area", "py-faster-rcnn"),
    "test.precision": ("auto", "fp32", "bf16"),
}


# ----------------------------------------------------------------------------
# Ranges of the numeric keys, checked at load time so that an impossible value stops
# the run before anything is built or written (a solver.max_iter of 0 used to write an
# untrained model_final.pth that tools/infer.py then picked by default). A range is
# "> a", ">= a", "<= a", or an interval "[a, b]", "[a, b)", "(a, b]", "(a, b)"; for a
# list key every entry must be in it. Every float key must also be finite (NaN passes
# any comparison unnoticed), which check_ranges checks on the whole config.
SOLVER_RANGES: Dict[str, str] = {
    "solver.ims_per_batch": ">= 1",
    "solver.base_lr": "> 0",
    "solver.momentum": "[0, 1)",
    "solver.weight_decay": ">= 0",
    "solver.weight_decay_norm": ">= 0",
    "solver.weight_decay_bias": ">= 0",
    "solver.warmup_iters": ">= 0",
    "solver.warmup_factor": "(0, 1]",
    "solver.steps": ">= 1",
    "solver.gamma": "(0, 1]",
    "solver.max_iter": ">= 1",
    "solver.clip_grad_norm": ">= 0",
    "solver.checkpoint_period": ">= 0",  # 0: only model_final.pth
    "solver.keep_last": ">= 0",  # 0 keeps every periodic checkpoint
    "dist.timeout_s": ">= 1",
    "seed": "[0, 4294967295]",  # numpy's seed range
    "log_period": ">= 1",
    "cpu_threads": ">= 0",  # 0 = as many as the machine's load leaves free
}

RANGES: Dict[str, str] = {
    **SOLVER_RANGES,
    "model.backbone.freeze_at": "[0, 5]",
    "model.backbone.base_channels": ">= 1",
    "model.anchor.sizes": "> 0",
    "model.anchor.aspect_ratios": "> 0",
    "model.anchor.offset": "[0, 1)",
    "model.pixel_std": "> 0",
    "model.rpn.head_channels": ">= 0",
    "model.rpn.positive_iou": "[0, 1]",
    "model.rpn.negative_iou": "[0, 1]",
    "model.rpn.batch_size_per_image": ">= 1",
    "model.rpn.positive_fraction": "[0, 1]",
    "model.rpn.boundary_threshold": ">= -1",
    "model.rpn.pre_nms_topk_train": ">= 1",
    "model.rpn.post_nms_topk_train": ">= 1",
    "model.rpn.pre_nms_topk_test": ">= 1",
    "model.rpn.post_nms_topk_test": ">= 1",
    "model.rpn.nms_thresh": "[0, 1]",
    "model.rpn.min_size": ">= 0",
    "model.rpn.smooth_l1_beta": ">= 0",
    "model.rpn.loss_weight": ">= 0",
    "model.roi_heads.num_classes": ">= 1",
    "model.roi_heads.batch_size_per_image": ">= 1",
    "model.roi_heads.positive_fraction": "[0, 1]",
    "model.roi_heads.fg_iou_thresh": "[0, 1]",
    "model.roi_heads.bg_iou_thresh_lo": "[0, 1]",
    "model.roi_heads.bg_iou_thresh_hi": "[0, 1]",
    "model.roi_heads.pooler_resolution": ">= 1",
    "model.roi_heads.pooler_sampling_ratio": ">= 0",
    "model.roi_heads.box_reg_weights": "> 0",
    "model.roi_heads.smooth_l1_beta": ">= 0",
    "model.roi_heads.score_thresh_test": "[0, 1]",
    "model.roi_heads.nms_thresh_test": "[0, 1]",
    "model.roi_heads.detections_per_image": ">= 1",
    "model.roi_heads.box_voting_iou": "(0, 1]",
    "input.min_size_train": ">= 1",
    "input.max_size_train": ">= 1",
    "input.min_size_test": ">= 1",
    "input.max_size_test": ">= 1",
    "input.hflip_prob": "[0, 1]",
    "input.size_divisibility": ">= 0",
    "data.num_workers": ">= 0",
    "data.max_pixels": ">= 1",
    "test.eval_period": ">= 0",
    "test.images_per_batch": ">= 1",
    "test.scales": ">= 1",
    "test.scale_target_size": ">= 1",
    "test.proposal_scale": ">= 0",  # 0: proposals from the model's own input size
}

# Numeric keys with no range on purpose: a choice checked where it is used (the
# backbone depth, by modeling/build.py with the valid depths listed) or any finite
# value (pixel means).
UNRANGED_NUMERIC_KEYS = ("model.backbone.depth", "model.pixel_mean")

# Keys that hold exactly this many values.
LENGTHS: Dict[str, int] = {
    "model.pixel_mean": 3,
    "model.pixel_std": 3,
    "model.roi_heads.box_reg_weights": 4,
}


def _range_test(spec: str):
    """``(predicate, text)`` for a range written as in :data:`RANGES`."""
    spec = spec.strip()
    if spec[0] in "[(":
        low_text, high_text = spec[1:-1].split(",")
        low, high = float(low_text), float(high_text)
        low_ok = (lambda v: v >= low) if spec[0] == "[" else (lambda v: v > low)
        high_ok = (lambda v: v <= high) if spec[-1] == "]" else (lambda v: v < high)
        return (lambda v: low_ok(v) and high_ok(v)), f"in {spec}"
    op, bound_text = spec.split()
    bound = float(bound_text)
    tests = {">": lambda v: v > bound, ">=": lambda v: v >= bound, "<=": lambda v: v <= bound}
    return tests[op], spec


def _non_finite_keys(node: Any, prefix: str = "") -> List[str]:
    """Dotted keys of every NaN / infinite float in a plain container."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            found += _non_finite_keys(v, f"{prefix}{k}.")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += _non_finite_keys(v, f"{prefix[:-1]}[{i}].")
    elif isinstance(node, float) and not math.isfinite(node):
        found.append(prefix[:-1])
    return found


def check_ranges(cfg: DictConfig, ranges: Dict[str, str], lengths: Dict[str, int] = {}) -> None:  # noqa: B006
    """Refuse a config whose numbers are out of range, naming the key, value and range.

    Args:
        cfg: a loaded config (any schema).
        ranges: dotted key -> range text (see :data:`RANGES`); list keys: every entry.
        lengths: dotted key -> required number of entries.
    Raises:
        ConfigError: the first key out of range, and any NaN / infinite float.
    """
    bad = _non_finite_keys(OmegaConf.to_container(cfg, resolve=True))
    if bad:
        raise ConfigError(f"config key '{bad[0]}' must be a finite number; got {OmegaConf.select(cfg, bad[0].split('[')[0])}")
    for key, count in lengths.items():
        value = list(OmegaConf.select(cfg, key))
        if len(value) != count:
            raise ConfigError(f"config key '{key}' must list {count} values; got {value}")
    for key, spec in ranges.items():
        value = OmegaConf.select(cfg, key)
        ok, text = _range_test(spec)
        if OmegaConf.is_list(value):
            entries = list(value)
            if not all(ok(v) for v in entries):
                raise ConfigError(f"config key '{key}' entries must be {text}; got {entries}")
        elif not ok(value):
            raise ConfigError(f"config key '{key}' must be {text}; got {value}")


def check_solver(cfg: DictConfig) -> None:
    """The solver's orderings: ``steps`` strictly increasing and before ``max_iter``.

    (A warm-up longer than the run is allowed: short trial runs of a config keep its
    warm-up, and the LR it gives is still what the config says.)
    """
    s = cfg.solver
    steps = list(s.steps)
    if steps != sorted(set(steps)):
        raise ConfigError(f"config key 'solver.steps' must be strictly increasing; got {steps}")
    if steps and steps[-1] >= s.max_iter:
        # A decay at or after the last iteration never happens: the run would train at
        # the initial LR throughout, with nothing said (a shortened run usually means the
        # schedule was not scaled with it).
        raise ConfigError(
            f"config key 'solver.steps'={steps} has a step at or beyond solver.max_iter={s.max_iter}, "
            "so that LR decay would never happen; scale the steps with max_iter "
            "or set solver.steps=[] for a constant LR"
        )


def check_choices(cfg: DictConfig, choices: Dict[str, Sequence[str]]) -> None:
    """Every key of ``choices`` holds one of its allowed names (any schema's config)."""
    for key, allowed in choices.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(allowed)}; got {value!r}")


def _check_choices(cfg: DictConfig) -> None:
    check_choices(cfg, CHOICES)
    for name, spec in cfg.data.datasets.items():
        if spec.format not in ("coco", "voc", "yolo"):
            raise ConfigError(f"config key 'data.datasets.{name}.format' must be one of coco, voc, yolo; got {spec.format!r}")
    if cfg.data.max_pixels < 1:
        raise ConfigError(f"config key 'data.max_pixels' must be >= 1 (a pixel count); got {cfg.data.max_pixels}")
    check_ranges(cfg, RANGES, LENGTHS)
    check_solver(cfg)
    if not cfg.input.min_size_train:
        raise ConfigError("config key 'input.min_size_train' must list at least one size; got []")
    for low_key, high_key in (
        ("model.rpn.negative_iou", "model.rpn.positive_iou"),
        ("model.roi_heads.bg_iou_thresh_lo", "model.roi_heads.bg_iou_thresh_hi"),
        ("model.roi_heads.bg_iou_thresh_hi", "model.roi_heads.fg_iou_thresh"),
    ):
        low, high = OmegaConf.select(cfg, low_key), OmegaConf.select(cfg, high_key)
        if low > high:
            raise ConfigError(f"config key '{low_key}' ({low}) must be <= '{high_key}' ({high})")
    if cfg.input.min_size_test > cfg.input.max_size_test or max(cfg.input.min_size_train) > cfg.input.max_size_train:
        raise ConfigError(
            "config keys 'input.min_size_train' / 'input.min_size_test' (shorter side) must be <= "
            f"'input.max_size_train' / 'input.max_size_test' (longer side); got {list(cfg.input.min_size_train)} / "
            f"{cfg.input.min_size_test} and {cfg.input.max_size_train} / {cfg.input.max_size_test}"
        )


def load_config(path_or_name: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Load the schema defaults, then a YAML file (with its ``_base_``), then overrides.

    Args:
        path_or_name: a path, or a bare name found under ``configs/``; None uses
            the schema defaults alone.
        overrides: ``section.key=value`` strings; values are parsed as YAML
            (``input.min_size_train=[480,600]``).
    Returns:
        A read-only-typed OmegaConf config: attribute access, types enforced.
    """
    cfg = compose_config(Config, path_or_name, overrides)
    _check_choices(cfg)
    return cfg


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """``cfg`` with ``section.key=value`` overrides applied, exactly as on the command line.

    The same parsing (values as bounded YAML: ``input.min_size_train=[480,600]``) and
    the same checks as :func:`load_config`: keys and types by the schema, then choices,
    ranges and orderings. Returns a new config; ``cfg`` is left as it is.

    Raises:
        ConfigError: one line naming the override and the key: an unknown key (with
            the closest valid one), a value of the wrong type (with the expected
            type), or a value out of range.
    """
    cfg = override_config(Config, cfg, overrides)
    _check_choices(cfg)
    return cfg


def typed_config(cfg: DictConfig | Config) -> Config:
    """``cfg`` as the schema's dataclass instances (``Config``, ``ModelConfig`` ...), for builders.

    Every value has the type the schema declares (``int``, ``float``, ``bool``, plain
    ``list``), which OmegaConf enforced when the config was loaded. A config not built
    from the schema (``OmegaConf.create``) is merged onto it first, so a wrong type is
    a :class:`ConfigError` naming the key.
    """
    if isinstance(cfg, Config):
        return cfg
    if OmegaConf.get_type(cfg) is not Config:
        cfg = override_config(Config, cfg, ())
    return OmegaConf.to_object(cfg)


def config_to_dict(cfg: DictConfig) -> dict:
    """The resolved config as plain Python containers (for checkpoints, JSON)."""
    return OmegaConf.to_container(cfg, resolve=True)


def config_from_dict(data: dict, source: str = "checkpoint") -> DictConfig:
    """Rebuild a typed config from :func:`config_to_dict` output."""
    cfg = compose_config_from_dict(Config, data, source)
    _check_choices(cfg)
    return cfg


def save_config(cfg: DictConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically (temporary file, then rename)."""
    atomic_write_text(path, OmegaConf.to_yaml(cfg))


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------
def add_config_arguments(parser: argparse.ArgumentParser, *, required: bool = True,
                         example: str = "coco_r101.yaml",
                         override_example: str = "solver.base_lr=0.002 input.min_size_train=[480,600]") -> None:
    """Add ``--config``, ``--print-config`` and trailing ``key=value`` overrides.

    ``example`` / ``override_example``: shown in the help (each task's tool names its own).
    """
    parser.add_argument(
        "--config",
        required=required,
        help=f"config file: a path, or a name under configs/ (e.g. {example})",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help=f"override config keys, e.g. {override_example}",
    )


def config_from_args(args: argparse.Namespace) -> DictConfig:
    """The config named by parsed arguments (:func:`add_config_arguments`): ``--config``
    with the trailing overrides.

    Raises:
        ConfigError: a mistake in the file or an override (one line). Tools turn it
            into exit status 2, and handle ``--print-config``, through
            :func:`detectron_res.exit_status.config_for_tool`.
    """
    return load_config(args.config, args.overrides)
