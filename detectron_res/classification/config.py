"""The classifier's configuration schema and loader.

ImageNet pretraining of a backbone (ResNet paper Sec 3.4) and the CIFAR-10
experiments (Sec 4.2) have their own settings (a dataset folder instead of
detection datasets, crop sizes instead of shorter-side scales, a 1000-way head),
so they get their own typed schema, :class:`ClassifierConfig`, loaded exactly as
the detector's (``detectron_res/config.py``): schema defaults, then a YAML file
with at most one level of ``_base_``, then ``section.key=value`` overrides::

    cfg = load_classifier_config("cifar10_resnet56.yaml", ["solver.max_iter=1000"])
    cfg.model.depth        # -> 56

The defaults are the ImageNet recipe of Sec 3.4 for a ResNet-50; the CIFAR-10
files override what Sec 4.2 changes. The ImageNet input normalization defaults to
the MSRA models' (BGR, mean subtracted, std 1), which is also the detection
schema's default, so a classifier trained here initializes the detection configs
without any change to their ``model.input_format / pixel_mean / pixel_std``.

Every mistake raises :class:`detectron_res.config.ConfigError` with one line
naming the file or override, the full dotted key and what was expected.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

from omegaconf import DictConfig

# The loader machinery is the detector's; only the schema differs.
from ..config import (
    AMPConfig,
    SOLVER_CHOICES,
    SOLVER_RANGES,
    ConfigError,
    RunConfig,
    SolverConfig,
    check_choices,
    check_ranges,
    check_solver,
    compose_config,
    compose_config_from_dict,
)

__all__ = [
    "ClassifierConfig",
    "ClassifierModelConfig",
    "ClassifierDataConfig",
    "ClassifierInputConfig",
    "ClassifierSolverConfig",
    "ClassifierTestConfig",
    "DiagnosticsConfig",
    "load_classifier_config",
    "classifier_config_from_dict",
    "ARCHS",
    "DATA_FORMATS",
    "VIEWS",
]

ARCHS = ("resnet", "cifar_resnet", "vgg16")
DATA_FORMATS = ("imagenet_folder", "cifar10")
VIEWS = ("center", "ten_crop")


@dataclass
class ClassifierModelConfig:
    # resnet: ImageNet ResNet-18..152 of Table 1 (plain with residual=false);
    # cifar_resnet: the 6n+2-layer CIFAR nets of Sec 4.2; vgg16: VGG-16 (configuration D).
    arch: str = "resnet"
    depth: int = 50
    residual: bool = True  # False builds the paper's plain network (Sec 3.3 / Fig. 6)
    shortcut: str = "B"  # Sec 3.3 option A | B | C (CIFAR: A)
    # The MSRA layout (stride on a bottleneck's first 1x1), which is what the
    # detection configs expect by default (model.backbone.stride_in_1x1=true).
    stride_in_1x1: bool = True
    norm: str = "BN"  # BN | SyncBN | GN ("BN after every conv", Sec 3.4)
    base_channels: int = 64  # 64 = the paper's widths (ResNet only)
    num_classes: int = 1000
    # Dropout before the final classifier: off in the paper ("we do not use dropout",
    # Sec 3.4); a switch for the ResNet-1202 overfitting question of Sec 4.2.
    dropout: float = 0.0
    input_format: str = "BGR"  # channel order the network sees
    # Sec 3.4 subtracts the mean; here a per-channel mean (the MSRA models' values),
    # applied inside the model. std 1: no division, as in the paper.
    pixel_mean: List[float] = field(default_factory=lambda: [103.53, 116.28, 123.675])
    pixel_std: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    # Initial weights: "" (He initialization), a classifier checkpoint of this tool,
    # or ImageNet weights (torchvision://resnet50, msra://R-50, a file; see weights.py).
    weights: str = ""


@dataclass
class ClassifierDataConfig:
    format: str = "imagenet_folder"  # imagenet_folder | cifar10
    # imagenet_folder: the folder holding <train_split>/<class>/*.JPEG and
    # <test_split>/<class>/*.JPEG; cifar10: the official cifar-10-batches-py folder.
    # A relative path is looked up under $DETECTRON_RES_DATASETS (else ./datasets)
    # first, then under the current directory.
    root: str = "imagenet"
    train_split: str = "train"
    # imagenet_folder: sub-folder evaluated; cifar10: "test" (test_batch) or
    # "holdout" (the images held out of training by data.holdout).
    test_split: str = "val"
    # cifar10: hold this many training images out of training (Sec 4.2's 45k/5k
    # train/val split: 5000); they form the "holdout" test split. 0 trains on all 50k.
    holdout: int = 0
    num_workers: int = 4


@dataclass
class ClassifierInputConfig:
    # Sec 3.4: the shorter side is resized to a random value in [256, 480]; [] keeps
    # the image size (CIFAR).
    train_short_side: List[int] = field(default_factory=lambda: [256, 480])
    crop_size: int = 224  # random crop side in training, centre / 10-crop side at test
    pad: int = 0  # zero padding on each side before the random crop (CIFAR: 4, Sec 4.2)
    hflip: bool = True  # "random crop or its horizontal flip"
    # "standard color augmentation" (Krizhevsky et al. 2012): PCA lighting noise with
    # this standard deviation; 0 disables it.
    lighting_std: float = 0.1
    test_short_side: int = 256  # shorter side before the test crops (0 = no resize)


@dataclass
class ClassifierSolverConfig(SolverConfig):
    """The detector's solver settings with the classifier recipe as defaults.

    Sec 3.4: SGD, mini-batch 256, lr 0.1 divided by 10 when the error plateaus, up
    to 60e4 iterations, weight decay 1e-4, momentum 0.9. The plateaus are taken as
    every 30 epochs of the 1.28M images (150k iterations at batch 256).
    """

    ims_per_batch: int = 256  # GLOBAL batch
    base_lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0001
    # Decay every parameter alike (the paper names one weight decay).
    weight_decay_norm: float = 0.0001
    weight_decay_bias: float = 0.0001
    warmup_iters: int = 0
    warmup_factor: float = 0.1
    steps: List[int] = field(default_factory=lambda: [150000, 300000, 450000])
    gamma: float = 0.1
    max_iter: int = 600000
    checkpoint_period: int = 10000
    keep_last: int = 3
    amp: AMPConfig = field(default_factory=AMPConfig)


@dataclass
class ClassifierTestConfig:
    eval_period: int = 0  # evaluate every this many iterations (0 = only at the end)
    images_per_batch: int = 50  # per process
    # Views evaluated by --eval-only and at the end of training: "center" (one
    # centre crop) and/or "ten_crop" (4 corners + centre and their flips, Sec 3.4).
    views: List[str] = field(default_factory=lambda: ["center", "ten_crop"])
    # Views evaluated every eval_period during training (cheaper).
    periodic_views: List[str] = field(default_factory=lambda: ["center"])


@dataclass
class DiagnosticsConfig:
    # Record the L2 norm of the loss gradient of each stage (stem, res2.., fc) every
    # this many iterations into diagnostics.json (0 = off).
    grad_norm_period: int = 0
    # At every evaluation, record the standard deviation of each 3x3 layer's response
    # (after BN, before the addition / ReLU; Fig. 7) on test images.
    response_std: bool = False
    response_std_images: int = 1000  # how many test images (the first ones) it uses


@dataclass
class ClassifierSections:
    model: ClassifierModelConfig = field(default_factory=ClassifierModelConfig)
    data: ClassifierDataConfig = field(default_factory=ClassifierDataConfig)
    input: ClassifierInputConfig = field(default_factory=ClassifierInputConfig)
    solver: ClassifierSolverConfig = field(default_factory=ClassifierSolverConfig)
    test: ClassifierTestConfig = field(default_factory=ClassifierTestConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)


@dataclass
class ClassifierConfig(RunConfig, ClassifierSections):
    """The classifier's config: its sections, then the run-level keys every task shares
    (``detectron_res.config.RunConfig``: dist, output_dir, seed, device, cpu_threads, log_period)."""


CHOICES: Dict[str, Sequence[str]] = {
    "model.arch": ARCHS,
    "model.shortcut": ("A", "B", "C"),
    "model.norm": ("BN", "SyncBN", "GN"),
    "model.input_format": ("BGR", "RGB"),
    "data.format": DATA_FORMATS,
    **SOLVER_CHOICES,
}


# Numeric ranges (same notation and check as the detector's, detectron_res.config.RANGES).
RANGES: Dict[str, str] = {
    **SOLVER_RANGES,
    "model.depth": ">= 1",
    "model.base_channels": ">= 1",
    "model.num_classes": ">= 1",
    "model.dropout": "[0, 1)",
    "model.pixel_std": "> 0",
    "data.holdout": ">= 0",
    "data.num_workers": ">= 0",
    "input.train_short_side": ">= 1",
    "input.crop_size": ">= 1",
    "input.pad": ">= 0",
    "input.lighting_std": ">= 0",
    "input.test_short_side": ">= 0",
    "test.eval_period": ">= 0",
    "test.images_per_batch": ">= 1",
    "diagnostics.grad_norm_period": ">= 0",
    "diagnostics.response_std_images": ">= 1",
}
LENGTHS: Dict[str, int] = {"model.pixel_mean": 3, "model.pixel_std": 3}


# ----------------------------------------------------------------------------
# Checks the schema's types cannot express (loading is config.compose_config)
# ----------------------------------------------------------------------------
def _check(cfg: DictConfig) -> None:
    """Choices and ranges the schema's types cannot express; errors name the key."""
    check_choices(cfg, CHOICES)
    check_ranges(cfg, RANGES, LENGTHS)
    check_solver(cfg)
    m, i, s, t, d = cfg.model, cfg.input, cfg.solver, cfg.test, cfg.data
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"config key 'model.dropout' must be in [0, 1); got {m.dropout}")
    if m.num_classes < 1:
        raise ConfigError(f"config key 'model.num_classes' must be >= 1; got {m.num_classes}")
    for key in ("pixel_mean", "pixel_std"):
        if len(m[key]) != 3:
            raise ConfigError(f"config key 'model.{key}' must list 3 values (one per channel); got {list(m[key])}")
    if any(v <= 0 for v in m.pixel_std):
        raise ConfigError(f"config key 'model.pixel_std' must be positive; got {list(m.pixel_std)}")
    short = list(i.train_short_side)
    if short and (len(short) != 2 or short[0] < 1 or short[0] > short[1]):
        raise ConfigError(
            f"config key 'input.train_short_side' must be [] or [min, max] with 1 <= min <= max; got {short}"
        )
    if i.crop_size < 1 or i.pad < 0:
        raise ConfigError(f"config keys 'input.crop_size' (>= 1) and 'input.pad' (>= 0): got {i.crop_size}, {i.pad}")
    if short and short[0] + 2 * i.pad < i.crop_size:
        raise ConfigError(
            f"config key 'input.crop_size'={i.crop_size} is larger than the smallest training image "
            f"(input.train_short_side[0]={short[0]} + 2 x input.pad={i.pad})"
        )
    if i.test_short_side and i.test_short_side < i.crop_size:
        raise ConfigError(
            f"config key 'input.test_short_side'={i.test_short_side} must be 0 or >= input.crop_size={i.crop_size}"
        )
    for key in ("views", "periodic_views"):
        for v in t[key]:
            if v not in VIEWS:
                raise ConfigError(f"config key 'test.{key}' entries must be one of {', '.join(VIEWS)}; got {v!r}")
    if s.ims_per_batch < 1:
        raise ConfigError(f"config key 'solver.ims_per_batch' must be >= 1; got {s.ims_per_batch}")
    if list(s.steps) != sorted(s.steps):
        raise ConfigError(f"config key 'solver.steps' must be increasing; got {list(s.steps)}")
    if d.holdout < 0:
        raise ConfigError(f"config key 'data.holdout' must be >= 0; got {d.holdout}")
    if d.format == "cifar10" and d.test_split not in ("test", "holdout"):
        raise ConfigError(
            f"config key 'data.test_split' must be 'test' or 'holdout' for CIFAR-10; got {d.test_split!r}"
        )
    if d.format == "cifar10" and d.test_split == "holdout" and d.holdout == 0:
        raise ConfigError("config key 'data.test_split' is 'holdout' but data.holdout=0: set data.holdout=5000")


def load_classifier_config(
    path_or_name: str | os.PathLike | None = None, overrides: Sequence[str] = ()
) -> DictConfig:
    """Schema defaults, then a YAML file (with its ``_base_``), then overrides.

    Args:
        path_or_name: a path, or a bare name found under ``configs/``
            (``imagenet_r50.yaml``); None uses the schema defaults alone.
        overrides: ``section.key=value`` strings, values parsed as YAML.
    Returns:
        A typed OmegaConf config of :class:`ClassifierConfig`.
    Raises:
        ConfigError: one line naming the file / override and the key.
    """
    cfg = compose_config(ClassifierConfig, path_or_name, overrides)
    _check(cfg)
    return cfg


def classifier_config_from_dict(data: dict, source: str = "checkpoint") -> DictConfig:
    """Rebuild a typed config from ``detectron_res.config.config_to_dict`` output."""
    cfg = compose_config_from_dict(ClassifierConfig, data, source)
    _check(cfg)
    return cfg
