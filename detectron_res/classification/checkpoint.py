"""Classifier checkpoints: training state for exact resume AND ImageNet weights for the
detector, in one file.

A classifier checkpoint is the engine's training checkpoint
(``detectron_res/engine/checkpoint.py``: optimizer, scheduler, scaler, iteration, RNG
streams, sampler position, config) in which the model weights are stored the way
``detectron_res.weights`` stores converted ImageNet weights (its ``detectron_res``
format), so that ``tools/train_net.py --weights model_final.pth`` reads it directly::

    {
      "format": "detectron_res.imagenet_weights", "version": 1,   # weights.py header
      "arch": "resnet50" | "vgg16" | "cifar_resnet56",
      "input_format": "BGR", "pixel_mean": [...], "pixel_std": [...],
      "stride_in_1x1": bool | None, "stem_pool": "msra" | "torchvision" | None,
      "state_dict": {canonical key: tensor},     # stem.conv1.weight, ..., fc.weight
      "bn_counters": {key: tensor},              # BN num_batches_tracked (resume only)
      "classifier": {"num_classes", "class_names", "depth", "residual", "shortcut",
                     "base_channels", "norm", "dropout"},
      "format_version": 1, "optimizer": ..., "scheduler": ..., "scaler": ...,
      "iteration": ..., "rng": ..., "sampler": ..., "hooks": ..., "config": {...},
    }

There is deliberately no ``"model"`` entry: the engine's ``load_checkpoint`` (and
so ``train_net``'s "is this a detector checkpoint?" test) rejects the file, and
``train_net`` then reads it as ImageNet weights, mapping ``stem, res2..res4`` to the
detector's trunk and ``res5`` to its per-region head (Appendix A). Everything is
plain tensors and containers (``torch.load(weights_only=True)`` reads it).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping

import torch

from ..engine.checkpoint import CheckpointError, load_model_weights, read_checkpoint_file
from ..engine.trainer import Trainer
# The header of the weights files that detectron_res.weights reads (ImageNetWeights.save).
from ..weights import (
    _SAVED_FORMAT_TAG,
    _SAVED_FORMAT_VERSION,
    load_imagenet_weights,
    load_into,
)
from .model import ImageClassifier, unwrap

logger = logging.getLogger(__name__)

__all__ = [
    "ClassifierTrainer",
    "classifier_weights_header",
    "classifier_state",
    "load_classifier_checkpoint",
    "is_classifier_checkpoint",
    "load_classifier_state",
    "initialize_classifier",
    "detection_overrides",
]

_COUNTER_SUFFIX = "num_batches_tracked"


def classifier_weights_header(cfg, model: ImageClassifier, class_names) -> Dict[str, Any]:
    """The constant part of every checkpoint: weights header and architecture."""
    m = cfg.model
    is_resnet = m.arch == "resnet"
    return {
        "format": _SAVED_FORMAT_TAG,
        "version": _SAVED_FORMAT_VERSION,
        "arch": model.arch,
        "input_format": model.input_format,
        "pixel_mean": [float(v) for v in model.pixel_mean.flatten().tolist()],
        "pixel_std": [float(v) for v in model.pixel_std.flatten().tolist()],
        # Basic blocks have no stride choice; the detector only checks bottlenecks.
        "stride_in_1x1": bool(m.stride_in_1x1) if is_resnet else None,
        # ResNet's default pool1 for that layout (see detectron_res/modeling/backbone/resnet.py).
        "stem_pool": ("msra" if m.stride_in_1x1 else "torchvision") if is_resnet else None,
        "classifier": {
            "num_classes": int(m.num_classes),
            "class_names": [str(c) for c in class_names],
            "depth": int(m.depth),
            "residual": bool(m.residual),
            "shortcut": str(m.shortcut),
            "base_channels": int(m.base_channels),
            "norm": str(m.norm),
            "dropout": float(m.dropout),
        },
    }


def classifier_state(model: ImageClassifier) -> Dict[str, Dict[str, torch.Tensor]]:
    """``{"state_dict": weights in canonical names, "bn_counters": BN update counters}``.

    The tensors are the model's own (no copy); ``torch.save`` writes them once.
    """
    sd = model.backbone.state_dict()
    return {
        "state_dict": {k: v for k, v in sd.items() if not k.endswith(_COUNTER_SUFFIX)},
        "bn_counters": {k: v for k, v in sd.items() if k.endswith(_COUNTER_SUFFIX)},
    }


class ClassifierTrainer(Trainer):
    """The engine's :class:`~detectron_res.engine.trainer.Trainer` with the checkpoint
    layout above (weights under ``state_dict`` in canonical names, no ``model``)."""

    def checkpoint_state(self) -> dict:
        state = super().checkpoint_state()
        del state["model"]  # the same tensors, under the ImageNet-weights names:
        state.update(classifier_state(unwrap(self.model)))
        return state


def load_classifier_checkpoint(path: str | os.PathLike) -> dict:
    """Read a classifier checkpoint (``weights_only``) and check its layout.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a readable classifier checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    state = read_checkpoint_file(path)
    if not isinstance(state, dict) or state.get("format") != _SAVED_FORMAT_TAG or "classifier" not in state:
        keys = sorted(state)[:6] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a classifier checkpoint of tools/train_classifier.py (keys {keys})")
    return state


def is_classifier_checkpoint(path: str | os.PathLike) -> bool:
    try:
        load_classifier_checkpoint(path)
    except (CheckpointError, FileNotFoundError, IsADirectoryError):
        return False
    return True


def load_classifier_state(model: ImageClassifier, state: Mapping[str, Any]) -> None:
    """Restore the exact weights of a checkpoint (resume): every key must match."""
    full = {**state["state_dict"], **state.get("bn_counters", {})}
    model.backbone.load_state_dict(full, strict=True)


def initialize_classifier(model: ImageClassifier, source: str, cfg, *, strict: bool = False) -> str:
    """Initialize ``model`` from ``source`` before training or evaluation.

    ``source`` is a classifier checkpoint of this tool (every tensor of matching
    shape is copied; a classifier ``fc`` of another size keeps its initialization
    unless ``strict``), or ImageNet weights of ``detectron_res.weights``
    (``torchvision://resnet50``, ``msra://R-50``, a file): their input settings
    must equal ``cfg.model``'s.

    Returns:
        one line describing what was loaded.
    Raises:
        ValueError (WeightsMismatchError, CheckpointError): mismatched settings or
            files; FileNotFoundError.
    """
    path = Path(source).expanduser()
    if "://" not in source and path.is_file() and is_classifier_checkpoint(path):
        state = load_classifier_checkpoint(path)
        report = load_model_weights(model.backbone, state["state_dict"], strict_shapes=strict)
        missing = [k for k in report.missing if not k.endswith(_COUNTER_SUFFIX)]  # BN counters start at 0
        if missing or report.unexpected:
            raise ValueError(
                f"{path}: classifier checkpoint does not fit model.arch={cfg.model.arch} depth={cfg.model.depth} "
                f"({len(missing)} weights missing, e.g. {missing[:1]}; {len(report.unexpected)} "
                f"unexpected, e.g. {report.unexpected[:1]})"
            )
        for _, key, ckpt_shape, model_shape in report.shape_mismatch:
            logger.info("%s: %s has shape %s in the checkpoint, %s here: re-initialized", path, key,
                        list(ckpt_shape), list(model_shape))
        return f"classifier checkpoint {path} (iteration {state.get('iteration')}, {len(report.loaded)} tensors)"
    arch = model.arch
    weights = load_imagenet_weights(source, arch=arch)
    weights.check_input_settings(
        input_format=model.input_format,
        pixel_mean=model.pixel_mean.flatten().tolist(),
        pixel_std=model.pixel_std.flatten().tolist(),
        stride_in_1x1=bool(cfg.model.stride_in_1x1) if cfg.model.arch == "resnet" else None,
    )
    report = load_into(model.backbone, weights)
    if report.missing or report.shape_mismatch:
        raise ValueError(f"ImageNet weights {source} do not fit the classifier: {report.summary()}")
    return f"ImageNet {weights.arch} weights {source} ({weights.fmt}, {len(report.loaded)} tensors)"


def detection_overrides(state: Mapping[str, Any]) -> List[str]:
    """The detection-config overrides (``tools/train_net.py`` trailing arguments) that
    build a detector matching a classifier checkpoint: backbone layout and input
    normalization. Empty for the CIFAR nets, which no detector uses.

    With the ImageNet configs' defaults (MSRA layout and normalization) most of these
    equal the detection schema's defaults; they are listed anyway, so that the line
    can be pasted whatever the detection config says.
    """
    arch = str(state.get("arch", ""))
    c = state.get("classifier", {})
    if arch == "vgg16":
        layout = ["model.backbone.name=vgg16"]
    elif arch.startswith("resnet"):
        layout = [
            "model.backbone.name=resnet",
            f"model.backbone.depth={int(arch[len('resnet'):])}",
            f"model.backbone.stride_in_1x1={str(bool(state['stride_in_1x1'])).lower()}",
            f"model.backbone.residual={str(bool(c.get('residual', True))).lower()}",
            f"model.backbone.shortcut={c.get('shortcut', 'B')}",
            f"model.backbone.base_channels={int(c.get('base_channels', 64))}",
        ]
    else:
        return []
    fmt = lambda values: "[" + ",".join(f"{float(v):g}" for v in values) + "]"  # noqa: E731
    return layout + [
        f"model.input_format={state['input_format']}",
        f"model.pixel_mean={fmt(state['pixel_mean'])}",
        f"model.pixel_std={fmt(state['pixel_std'])}",
    ]
