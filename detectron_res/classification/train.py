"""What ``tools/train_classifier.py`` runs: config -> datasets, classifier, loaders,
the engine's trainer and hooks, evaluation.

Usable from Python::

    from detectron_res.classification import load_classifier_config, train_classifier

    cfg = load_classifier_config("cifar10_resnet20.yaml", ["data.root=datasets/cifar-10-batches-py"])
    result = train_classifier(cfg, output_dir="output/cifar10_resnet20")
    result["scalars"]["test/top1_err"]

The loop is the detector's (``detectron_res/engine``): iteration-based SGD, DDP
under torchrun with ``solver.ims_per_batch`` the GLOBAL batch, AMP, periodic atomic
checkpoints with exact resume (``--resume``), SIGTERM/SIGUSR1 checkpoint-and-stop,
``metrics.json``, TensorBoard and a curves PNG. The classifier adds its own
checkpoint layout (:mod:`.checkpoint`), its evaluation (:mod:`.evaluation`) and the
diagnostics hook (:mod:`.diagnostics`).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn

from ..config import config_to_dict, save_config
from ..engine import distributed as comm
from ..engine.checkpoint import Checkpointer, find_last_checkpoint
from ..engine.hooks import MetricsWriter, default_hooks
from ..engine.distributed import resolve_device
from ..engine.launch import seed_everything, setup_logging, stop_report
from ..evaluation.report import write_json
from ..outputs import check_output_dir, check_run_dir, remove_previous_run
from ..engine.solver import WarmupMultiStepLR, build_optimizer, warmup_multistep_factor
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
    "ClassifierLRScheduler",
    "build_train_transform",
    "train_classifier",
    "evaluate_classifier_checkpoint",
]

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class ClassifierLRScheduler(WarmupMultiStepLR):
    """The engine's warmup + multi-step schedule, with a constant warm-up option.

    ``warmup_method="constant"`` holds ``base_lr * warmup_factor`` for the first
    ``warmup_iters`` iterations, then returns to the step schedule: the ResNet-110
    recipe of Sec 4.2 ("we use 0.01 to warm up the training until the training
    error is below 80% (about 400 iterations), and then go back to 0.1").
    ``"linear"`` is the engine's ramp.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, warmup_method: str = "linear", **kwargs) -> None:
        if warmup_method not in ("linear", "constant"):
            raise ValueError(f"solver.warmup_method={warmup_method!r}: expected 'linear' or 'constant'")
        self.warmup_method = warmup_method  # read by _factor() during the base constructor
        super().__init__(optimizer, **kwargs)

    def _factor(self) -> float:
        if self.warmup_method == "linear":
            return super()._factor()
        factor = warmup_multistep_factor(self.last_epoch, steps=self.steps, gamma=self.gamma, warmup_iters=0,
                                         warmup_factor=1.0)
        return factor * (self.warmup_factor if self.last_epoch < self.warmup_iters else 1.0)


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


def _amp_dtype(cfg, device: torch.device) -> Optional[torch.dtype]:
    if not cfg.solver.amp.enabled:
        return None
    if device.type != "cuda":
        raise ValueError(
            f"solver.amp.enabled=true needs a CUDA device, got device {device}; set solver.amp.enabled=false"
        )
    return _AMP_DTYPES[str(cfg.solver.amp.dtype)]


def _init_process(cfg, device_name: Optional[str]):
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    device = resolve_device(device_name or str(cfg.device) or "auto", local_rank)
    info = comm.init_distributed(device_type=device.type, backend=str(cfg.dist.backend),
                                 timeout_s=float(cfg.dist.timeout_s))
    return info, device


def _evaluate(cfg, model: ImageClassifier, dataset: ClassificationDataset, views, device,
              amp_dtype) -> Dict[str, float]:
    metrics = evaluate_classifier(
        model, dataset, views=list(views), short_side=int(cfg.input.test_short_side),
        crop_size=int(cfg.input.crop_size), images_per_batch=int(cfg.test.images_per_batch), device=device,
        num_workers=int(cfg.data.num_workers), amp_dtype=amp_dtype,
    )
    metrics.pop("num_images", None)
    return metrics


def _summary(cfg, *, config_source: str, output_dir: Path, world: int, device: torch.device, model: ImageClassifier,
             train: ClassificationDataset, test: ClassificationDataset, init: str, start_iter: int) -> str:
    m, s, i = cfg.model, cfg.solver, cfg.input
    params = sum(p.numel() for p in model.backbone.parameters())
    kind = "ResNet" if m.residual else "plain"
    name = "VGG-16" if m.arch == "vgg16" else f"{'CIFAR ' if m.arch == 'cifar_resnet' else ''}{kind}-{m.depth}"
    lines = [
        f"config: {config_source} -> resolved copy {output_dir / 'config.yaml'}",
        f"processes: {world}, device {device}",
        f"model: {name} ({model.arch}, shortcut {m.shortcut}, {m.norm}, dropout {m.dropout:g}); "
        f"{params / 1e6:.3f}M parameters; input {m.input_format} mean {list(m.pixel_mean)} std {list(m.pixel_std)}",
        f"init: {init}",
        f"train: {train.describe()}; test: {test.describe()}",
        f"augmentation: short side {list(i.train_short_side) or 'unchanged'}, crop {i.crop_size}, pad {i.pad}, "
        f"flip {i.hflip}, lighting std {i.lighting_std:g}; test short side {i.test_short_side or 'unchanged'}",
        f"schedule: {s.max_iter} iterations from {start_iter}, global batch {s.ims_per_batch}, lr {s.base_lr:g} "
        f"x{s.gamma:g} at {list(s.steps)}, warmup {s.warmup_iters} ({s.warmup_method}, x{s.warmup_factor:g}), "
        f"momentum {s.momentum:g}, weight decay {s.weight_decay:g}" + (f", AMP {s.amp.dtype}" if s.amp.enabled else ""),
    ]
    return "\n".join("  " + line for line in lines)


def train_classifier(
    cfg,
    *,
    output_dir: str | os.PathLike,
    resume: bool = False,
    weights: Optional[str] = None,
    device: Optional[str] = None,
    config_source: str = "<python>",
    overwrite: bool = False,
) -> Dict[str, Any]:
    """Train the classifier of ``cfg`` (a ClassifierConfig); returns the last evaluation.

    Args:
        output_dir: run directory (checkpoints, config.yaml, log.txt, metrics.json,
            diagnostics.json, tensorboard/).
        resume: continue exactly from ``output_dir/last_checkpoint`` when there is one.
        weights: initialization when not resuming (overrides ``cfg.model.weights``).
        device: overrides ``cfg.device``.
        overwrite: start a new run over a previous one in ``output_dir`` (refused
            without it or ``resume``, as for the detector: :func:`detectron_res.outputs.check_run_dir`).
    Returns:
        ``{"scalars": {"<split>/top1_err": ..., ...}}`` on every rank, plus
        ``"stopped_early": True`` when training ended before ``max_iter``; a
        SIGTERM / SIGUSR1 adds ``"stop"`` (the detector's report: signal, iteration,
        checkpoint, one-line message) in place of ``"scalars"``.
    """
    output_dir = check_run_dir(output_dir, resume=resume, overwrite=overwrite,
                               inputs=[("--weights", weights), ("model.weights", str(cfg.model.weights))])
    info, dev = _init_process(cfg, device)
    setup_logging(output_dir, info.rank)
    if overwrite and not resume and info.rank == 0:
        for p in remove_previous_run(output_dir):
            logger.info("--overwrite: deleted %s of the previous run", p)
    completed = False
    try:
        result = _train(cfg, output_dir=output_dir, resume=resume, weights=weights, world=info.world_size,
                        rank=info.rank, device=dev, config_source=config_source)
        completed = True
        return result
    finally:
        comm.destroy_distributed(wait_for_all=completed)


def _train(cfg, *, output_dir: Path, resume: bool, weights: Optional[str], world: int, rank: int,
           device: torch.device, config_source: str) -> Dict[str, Any]:
    s = cfg.solver
    if s.ims_per_batch % world != 0:
        raise ValueError(
            f"solver.ims_per_batch={s.ims_per_batch} (the global batch) is not divisible by the {world} processes"
        )
    amp_dtype = _amp_dtype(cfg, device)
    train_set, test_set = build_datasets(cfg)

    # The same initialization on every rank (DDP also broadcasts rank 0's weights).
    seed_everything(int(cfg.seed))
    model = build_classifier(cfg)
    state = None
    if resume:
        last = find_last_checkpoint(output_dir)
        if last is None:
            logger.info("--resume: no checkpoint in %s, starting from the initial weights", output_dir)
        else:
            state = load_classifier_checkpoint(last)
            load_classifier_state(model, state)
            init = f"resumed from {last} (after {state['iteration'] + 1} iterations)"
    if state is None:
        source = weights or str(cfg.model.weights)
        init = initialize_classifier(model, source, cfg) if source else "He initialization (no model.weights)"
    start_iter = int(state["iteration"]) + 1 if state is not None else 0

    model.to(device)
    optimizer = build_optimizer(
        model, base_lr=float(s.base_lr), momentum=float(s.momentum), weight_decay=float(s.weight_decay),
        weight_decay_norm=float(s.weight_decay_norm), weight_decay_bias=float(s.weight_decay_bias),
    )
    scheduler = ClassifierLRScheduler(
        optimizer, warmup_method=str(s.warmup_method), steps=list(s.steps), gamma=float(s.gamma),
        warmup_iters=int(s.warmup_iters), warmup_factor=float(s.warmup_factor),
    )
    train_model: nn.Module = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                          else None)
    loader = build_classification_train_loader(
        train_set, transform=build_train_transform(cfg), images_per_batch=s.ims_per_batch // world,
        input_format=str(cfg.model.input_format), seed=int(cfg.seed), rank=rank, world_size=world,
        start_iter=start_iter, num_workers=int(cfg.data.num_workers), pin_memory=device.type == "cuda",
    )
    trainer = ClassifierTrainer(
        model=train_model, optimizer=optimizer, scheduler=scheduler, data_loader=loader, max_iter=int(s.max_iter),
        start_iter=start_iter, device=device, amp_dtype=amp_dtype, clip_grad_norm=float(s.clip_grad_norm),
        sampler_seed=int(cfg.seed),
        extra_state={"config": config_to_dict(cfg), **classifier_weights_header(cfg, model, train_set.class_names)},
    )
    split = str(cfg.data.test_split)
    last_eval: Dict[str, float] = {}

    def eval_fn() -> Dict[str, Dict[str, float]]:
        nonlocal last_eval
        final = trainer.iter + 1 >= trainer.max_iter
        views = cfg.test.views if final else cfg.test.periodic_views
        last_eval = _evaluate(cfg, model, test_set, views, device, amp_dtype)
        return {split: last_eval}

    def response_std_fn() -> Dict[str, float]:
        transform = EvalTransform(short_side=int(cfg.input.test_short_side), crop_size=int(cfg.input.crop_size))
        loader = build_classification_test_loader(
            test_set, transform=transform, images_per_batch=int(cfg.test.images_per_batch),
            input_format=str(cfg.model.input_format), num_workers=0,
            limit=int(cfg.diagnostics.response_std_images),
        )
        return layer_response_std(model, (b.images for b in loader), device=device)

    checkpointer = Checkpointer(output_dir, keep_last=int(s.keep_last), save_to_disk=rank == 0)
    resume_from = int(state["iteration"]) if state is not None else None
    hooks = default_hooks(
        checkpointer=checkpointer, optimizer=optimizer, scheduler=scheduler,
        checkpoint_period=int(s.checkpoint_period), output_dir=output_dir, log_period=int(cfg.log_period),
        eval_period=int(cfg.test.eval_period), eval_fn=eval_fn, best_metric="", resume_from_iter=resume_from,
        is_main=rank == 0,
    )
    diagnostics = ClassifierDiagnosticsHook(
        output_dir=output_dir, grad_norm_period=int(cfg.diagnostics.grad_norm_period),
        response_std_fn=response_std_fn if cfg.diagnostics.response_std else None,
        eval_period=int(cfg.test.eval_period), resume_from_iter=resume_from, is_main=rank == 0,
    )
    # Before the metrics writer, so that each log line holds the step's training error.
    writer_at = next((k for k, h in enumerate(hooks) if isinstance(h, MetricsWriter)), len(hooks))
    hooks.insert(writer_at, diagnostics)
    trainer.register_hooks(hooks)
    if state is not None:
        trainer.load_training_state(state)
    else:
        seed_everything(int(cfg.seed) + rank)  # per-rank streams after the shared initialization

    if rank == 0:
        save_config(cfg, output_dir / "config.yaml")
        logger.info("Classifier training summary:\n%s", _summary(
            cfg, config_source=config_source, output_dir=output_dir, world=world, device=device, model=model,
            train=train_set, test=test_set, init=init, start_iter=start_iter))
    comm.synchronize()
    start = time.perf_counter()
    trainer.train()
    logger.info("Training ended after %.1f s; outputs in %s", time.perf_counter() - start, output_dir)
    result: Dict[str, Any] = {"scalars": {f"{split}/{k}": v for k, v in last_eval.items()}}
    if not trainer.completed:
        result["stopped_early"] = True
    stop = stop_report(trainer, output_dir)  # SIGTERM / SIGUSR1: what it interrupted, as the detector reports it
    if stop is not None:
        result["stop"] = stop
        result.pop("scalars")  # an earlier evaluation's, not the final model's
        if rank == 0:
            logger.warning("%s", stop["message"])
    return result


def _test_dataset(cfg, class_names) -> ClassificationDataset:
    d = cfg.data
    root = resolve_data_root(str(d.root))
    if d.format == "cifar10":
        return Cifar10Dataset(root, d.test_split, holdout=int(d.holdout))
    if class_names is None:
        class_names = ImageFolderDataset(root, d.train_split).class_names
    return ImageFolderDataset(root, d.test_split, class_names=class_names)


def evaluate_classifier_checkpoint(
    cfg,
    *,
    output_dir: str | os.PathLike,
    weights: Optional[str] = None,
    device: Optional[str] = None,
    overwrite: bool = False,
) -> Dict[str, Any]:
    """``--eval-only``: top-1/top-5 error of ``cfg.test.views`` on ``data.test_split``.

    The weights are ``weights``, else ``cfg.model.weights``, else the newest
    checkpoint in ``output_dir``; a classifier checkpoint of this tool or ImageNet
    weights (``torchvision://resnet50`` with a config whose input settings match).
    Writes ``output_dir/inference/evaluation.json`` (an existing one only with ``overwrite``).
    """
    output_dir = check_output_dir(output_dir, flag="--output-dir", overwrite=overwrite,
                                  files=[Path("inference") / "evaluation.json"])
    info, dev = _init_process(cfg, device)
    setup_logging(output_dir, info.rank)
    completed = False
    try:
        source = weights or str(cfg.model.weights)
        if not source:
            last = find_last_checkpoint(output_dir)
            if last is None:
                raise ValueError(f"--eval-only needs weights: pass --weights, or train into {output_dir} first "
                                 f"(no {output_dir}/last_checkpoint)")
            source = str(last)
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
        model.to(dev).eval()
        if info.rank == 0:
            logger.info("Evaluating %s on %s (%s)", init, test_set.describe(), ", ".join(cfg.test.views))
        metrics = _evaluate(cfg, model, test_set, cfg.test.views, dev, _amp_dtype(cfg, dev))
        scalars = {f"{cfg.data.test_split}/{k}": v for k, v in metrics.items()}
        if info.rank == 0:
            write_json(output_dir / "inference" / "evaluation.json",
                       {"weights": source, "dataset": test_set.name, "num_images": len(test_set), "metrics": scalars},
                       indent=2)
            logger.info("Evaluation: %s", ", ".join(f"{k}={v:.2f}" for k, v in sorted(scalars.items())))
        completed = True
        return {"scalars": scalars}
    finally:
        comm.destroy_distributed(wait_for_all=completed)
