"""The classification application: the pieces a classifier run hands the engine.

``tools/train_classifier.py`` runs :func:`train_classifier` and
:func:`evaluate_classifier_checkpoint`, which give :class:`ClassificationTask` to the
engine's run skeleton (``detectron_res/engine/run.py``), the detector's too:
iteration-based SGD, DDP under torchrun with ``solver.ims_per_batch`` the GLOBAL
batch, AMP, periodic atomic checkpoints with exact resume (``--resume``),
SIGTERM/SIGUSR1 checkpoint-and-stop, ``metrics.json``, TensorBoard and a curves PNG.
The classifier adds its own checkpoint layout (:mod:`.checkpoint`), its evaluation
(:mod:`.evaluation`) and the diagnostics hook (:mod:`.diagnostics`).

Usable from Python::

    from detectron_res.classification import load_classifier_config, train_classifier

    cfg = load_classifier_config("cifar10_resnet20.yaml", ["data.root=datasets/cifar-10-batches-py"])
    result = train_classifier(cfg, output_dir="output/cifar10_resnet20")
    result["scalars"]["test/top1_err"]
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import torch

from ..engine.distributed import DistInfo
from ..engine.hooks import HookBase, MetricsWriter
from ..engine.run import Run, amp_dtype, run_evaluation, run_training
from ..evaluation.report import write_json
from .checkpoint import (
    ClassifierTrainer,
    classifier_weights_header,
    initialize_classifier,
    load_classifier_checkpoint,
    load_classifier_state,
)
from .datasets import ClassificationDataset, Cifar10Dataset, ImageFolderDataset, build_datasets, resolve_data_root
from .diagnostics import ClassifierDiagnosticsHook, layer_response_std
from .evaluation import evaluate_classifier
from .loader import build_classification_test_loader, build_classification_train_loader
from .model import ImageClassifier, build_classifier
from .transforms import EvalTransform, TrainTransform

logger = logging.getLogger("detectron_res")

__all__ = [
    "ClassificationTask",
    "build_train_transform",
    "train_classifier",
    "evaluate_classifier_checkpoint",
]


def train_classifier(cfg, *, output_dir: str | os.PathLike, resume: bool = False, weights: Optional[str] = None,
                     device: Optional[str] = None, config_source: str = "<python>",
                     overwrite: bool = False) -> Dict[str, Any]:
    """Train the classifier of ``cfg`` (a ClassifierConfig); returns the last evaluation.

    Args are :func:`detectron_res.engine.run.run_training`'s: ``output_dir`` also
    receives ``diagnostics.json``; ``weights`` is a classifier checkpoint or ImageNet
    weights (overrides ``cfg.model.weights``).
    Returns:
        ``{"scalars": {"<split>/top1_err": ..., ...}}`` on every rank, plus
        ``"stopped_early": True`` when training ended before ``max_iter``; a
        SIGTERM / SIGUSR1 adds ``"stop"`` (signal, iteration, checkpoint, one-line
        message) in place of ``"scalars"``.
    """
    return run_training(ClassificationTask(), cfg, output_dir=output_dir, resume=resume, weights=weights,
                        device=device, config_source=config_source, overwrite=overwrite)


def evaluate_classifier_checkpoint(cfg, *, output_dir: str | os.PathLike, weights: Optional[str] = None,
                                   device: Optional[str] = None, overwrite: bool = False) -> Dict[str, Any]:
    """``--eval-only``: top-1/top-5 error of ``cfg.test.views`` on ``data.test_split``.

    The weights are ``weights``, else ``cfg.model.weights``, else the newest
    checkpoint in ``output_dir``; a classifier checkpoint of this tool or ImageNet
    weights (``torchvision://resnet50`` with a config whose input settings match).
    Writes ``output_dir/inference/evaluation.json`` (an existing one only with ``overwrite``).
    """
    return run_evaluation(ClassificationTask(), cfg, output_dir=output_dir, weights=weights, device=device,
                          overwrite=overwrite)


@dataclass
class ClassificationData:
    train: ClassificationDataset
    test: ClassificationDataset  # data.test_split


class ClassificationTask:
    """The classifier's pieces for :func:`detectron_res.engine.run.run_training`
    (the methods are :class:`detectron_res.engine.run.Task`'s)."""

    trainer_class = ClassifierTrainer
    no_weights = "He initialization (no model.weights)"
    eval_weights_hint = "weights: pass --weights"

    def load_data(self, cfg) -> ClassificationData:
        train_set, test_set = build_datasets(cfg)
        return ClassificationData(train=train_set, test=test_set)

    def build_model(self, cfg) -> ImageClassifier:
        return build_classifier(cfg)

    def initialize(self, model: ImageClassifier, source: str, cfg, data: ClassificationData) -> str:
        return initialize_classifier(model, source, cfg)

    def read_checkpoint(self, path: Path) -> dict:
        return load_classifier_checkpoint(path)

    def restore(self, model: ImageClassifier, state: Mapping, *, path: Path, run_dir: Path,
                data: ClassificationData) -> None:
        load_classifier_state(model, state)

    def checkpoint_header(self, cfg, model: ImageClassifier, data: ClassificationData) -> dict:
        return classifier_weights_header(cfg, model, data.train.class_names)

    def train_loader(self, cfg, data: ClassificationData, *, rank: int, world_size: int, start_iter: int,
                     device: torch.device):
        return build_classification_train_loader(
            data.train, transform=build_train_transform(cfg), images_per_batch=cfg.solver.ims_per_batch // world_size,
            input_format=str(cfg.model.input_format), seed=int(cfg.seed), rank=rank, world_size=world_size,
            start_iter=start_iter, num_workers=int(cfg.data.num_workers), pin_memory=device.type == "cuda",
        )

    def evaluator(self, run: Run) -> Callable[[bool], dict]:
        cfg, split = run.cfg, str(run.cfg.data.test_split)

        def evaluate(final: bool) -> dict:
            # Every view at the end of training; the cheaper ones periodically.
            views = cfg.test.views if final else cfg.test.periodic_views
            metrics = _evaluate(cfg, run.model, run.data.test, views, run.device, run.amp_dtype)
            return {"scalars": {f"{split}/{k}": v for k, v in metrics.items()}}

        return evaluate

    def best_metric(self, cfg) -> str:
        return ""

    def add_hooks(self, run: Run, hooks: list[HookBase]) -> list[HookBase]:
        """The diagnostics hook (stage gradient norms, layer response stds, Fig. 7)."""
        cfg = run.cfg

        def response_std_fn() -> Dict[str, float]:
            transform = EvalTransform(short_side=int(cfg.input.test_short_side), crop_size=int(cfg.input.crop_size))
            loader = build_classification_test_loader(
                run.data.test, transform=transform, images_per_batch=int(cfg.test.images_per_batch),
                input_format=str(cfg.model.input_format), num_workers=0,
                limit=int(cfg.diagnostics.response_std_images),
            )
            return layer_response_std(run.model, (b.images for b in loader), device=run.device)

        diagnostics = ClassifierDiagnosticsHook(
            output_dir=run.output_dir, grad_norm_period=int(cfg.diagnostics.grad_norm_period),
            response_std_fn=response_std_fn if cfg.diagnostics.response_std else None,
            eval_period=int(cfg.test.eval_period), resume_from_iter=run.resumed_from_iter,
            is_main=run.dist_info.is_main,
        )
        # Before the metrics writer, so that each log line holds the step's training error.
        writer_at = next((k for k, h in enumerate(hooks) if isinstance(h, MetricsWriter)), len(hooks))
        return hooks[:writer_at] + [diagnostics] + hooks[writer_at:]

    def summary_lines(self, run: Run) -> list[str]:
        """Model, initialization, data, augmentation, schedule."""
        cfg, model = run.cfg, run.model
        m, s, i = cfg.model, cfg.solver, cfg.input
        params = sum(p.numel() for p in model.backbone.parameters())
        kind = "ResNet" if m.residual else "plain"
        name = "VGG-16" if m.arch == "vgg16" else f"{'CIFAR ' if m.arch == 'cifar_resnet' else ''}{kind}-{m.depth}"
        return [
            f"model: {name} ({model.arch}, shortcut {m.shortcut}, {m.norm}, dropout {m.dropout:g}); "
            f"{params / 1e6:.3f}M parameters; input {m.input_format} mean {list(m.pixel_mean)} std {list(m.pixel_std)}",
            f"init: {run.init}",
            f"train: {run.data.train.describe()}; test: {run.data.test.describe()}",
            f"augmentation: short side {list(i.train_short_side) or 'unchanged'}, crop {i.crop_size}, pad {i.pad}, "
            f"flip {i.hflip}, lighting std {i.lighting_std:g}; test short side {i.test_short_side or 'unchanged'}",
            f"schedule: {s.max_iter} iterations from {run.start_iter}, global batch {s.ims_per_batch}, lr "
            f"{s.base_lr:g} x{s.gamma:g} at {list(s.steps)}, warmup {s.warmup_iters} ({s.warmup_method}, "
            f"x{s.warmup_factor:g}), momentum {s.momentum:g}, weight decay {s.weight_decay:g}"
            + (f", AMP {s.amp.dtype}" if s.amp.enabled else ""),
        ]

    def evaluation_files(self, cfg) -> list[Path]:
        return [Path("inference") / "evaluation.json"]

    def evaluable(self, source: str) -> bool:
        return bool(source)  # a classifier checkpoint or ImageNet weights

    def evaluate_weights(self, cfg, source: str, *, output_dir: Path, dist_info: DistInfo,
                         device: torch.device) -> dict:
        model = build_classifier(cfg)
        init = initialize_classifier(model, source, cfg, strict=True)
        class_names = None
        if Path(source).is_file():
            try:
                class_names = load_classifier_checkpoint(source)["classifier"]["class_names"]
            except (ValueError, FileNotFoundError):
                class_names = None  # ImageNet weights file: classes from the training folder
        test_set = _test_dataset(cfg, class_names)
        if class_names is not None and cfg.data.format == "cifar10" and list(class_names) != test_set.class_names:
            raise ValueError(f"{source}: checkpoint classes {class_names[:5]} differ from {test_set.name}'s "
                             f"{test_set.class_names[:5]}")
        model.to(device).eval()
        if dist_info.is_main:
            logger.info("Evaluating %s on %s (%s)", init, test_set.describe(), ", ".join(cfg.test.views))
        metrics = _evaluate(cfg, model, test_set, cfg.test.views, device, amp_dtype(cfg, device))
        scalars = {f"{cfg.data.test_split}/{k}": v for k, v in metrics.items()}
        if dist_info.is_main:
            write_json(output_dir / "inference" / "evaluation.json",
                       {"weights": source, "dataset": test_set.name, "num_images": len(test_set), "metrics": scalars},
                       indent=2)
            logger.info("Evaluation: %s", ", ".join(f"{k}={v:.2f}" for k, v in sorted(scalars.items())))
        return {"scalars": scalars}


def build_train_transform(cfg) -> TrainTransform:
    i = cfg.input
    short = list(i.train_short_side)
    return TrainTransform(
        short_side_range=(int(short[0]), int(short[1])) if short else None,
        crop_size=int(i.crop_size),
        pad=int(i.pad),
        hflip=bool(i.hflip),
        lighting_std=float(i.lighting_std),
    )


def _evaluate(cfg, model: ImageClassifier, dataset: ClassificationDataset, views, device,
              dtype: Optional[torch.dtype]) -> Dict[str, float]:
    metrics = evaluate_classifier(
        model, dataset, views=list(views), short_side=int(cfg.input.test_short_side),
        crop_size=int(cfg.input.crop_size), images_per_batch=int(cfg.test.images_per_batch), device=device,
        num_workers=int(cfg.data.num_workers), amp_dtype=dtype,
    )
    metrics.pop("num_images", None)
    return metrics


def _test_dataset(cfg, class_names) -> ClassificationDataset:
    d = cfg.data
    root = resolve_data_root(str(d.root))
    if d.format == "cifar10":
        return Cifar10Dataset(root, d.test_split, holdout=int(d.holdout))
    if class_names is None:
        class_names = ImageFolderDataset(root, d.train_split).class_names
    return ImageFolderDataset(root, d.test_split, class_names=class_names)
