"""What ``tools/train_net.py`` runs: config -> datasets, model, loaders, trainer, evaluation.

Usable from Python as well::

    from detectron_res.config import load_config
    from detectron_res.engine.launch import train, evaluate_checkpoint

    cfg = load_config("demo_shapes.yaml", ["solver.max_iter=100"])
    metrics = train(cfg, output_dir="output/my_run")

Distributed runs: every process runs the same code; ``ims_per_batch`` is the GLOBAL
batch and is split evenly across processes; only rank 0 writes files.  LR scaling
rule: the configs keep the paper's global batch, so the LR does not change with
the number of GPUs; to change the global batch, scale ``solver.base_lr`` linearly
with it and the iteration counts (``steps``, ``max_iter``, ``warmup_iters``,
periods) inversely (Goyal et al. 2017).
"""

from __future__ import annotations

import logging
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..config import config_to_dict, save_config
from ..outputs import check_output_dir, check_run_dir, remove_previous_run
from ..precision import Precision, resolve_precision
from . import distributed as comm
from .checkpoint import (
    Checkpointer,
    LoadReport,
    find_last_checkpoint,
    is_detector_checkpoint,
    load_checkpoint,
    load_model_weights,
)
from .distributed import DistInfo, resolve_device
from .hooks import EvalHook, PreemptionHandler, default_hooks
from .signals import StoppableLoader, stop_signals_recorded
from .solver import WarmupMultiStepLR, build_optimizer
from .threads import ComputeThreads
from .trainer import Trainer

logger = logging.getLogger("detectron_res")

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Layers whose rows are tied to the label space: re-initialized when fine-tuning
# on other classes (their shape differs, or the class names do).
CLASS_SPECIFIC_PREFIXES = ("roi_heads.predictor.cls_score.", "roi_heads.predictor.bbox_pred.")


# ---------------------------------------------------------------------------
# process setup
# ---------------------------------------------------------------------------
def setup_logging(output_dir: str | os.PathLike | None, rank: int = 0) -> None:
    """Console + file logging for the ``detectron_res`` loggers.

    Rank 0 logs INFO to stdout and ``output_dir/log.txt``; other ranks log only
    warnings and errors, to stderr (only rank 0 writes files).
    """
    root = logging.getLogger("detectron_res")
    root.setLevel(logging.INFO)
    root.propagate = False
    for h in list(root.handlers):
        if getattr(h, "_detectron_res", False):
            root.removeHandler(h)
            h.close()
    fmt = logging.Formatter("[%(asctime)s %(name)s] %(message)s", datefmt="%m/%d %H:%M:%S")
    console = logging.StreamHandler(sys.stdout if rank == 0 else sys.stderr)
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    console.setFormatter(fmt)
    console._detectron_res = True  # type: ignore[attr-defined]
    root.addHandler(console)
    if output_dir is not None and rank == 0:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(Path(output_dir) / "log.txt")
        fh.setLevel(logging.INFO)
        fh.setFormatter(fmt)
        fh._detectron_res = True  # type: ignore[attr-defined]
        root.addHandler(fh)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (model initialization and RoI sampling)."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------
def load_train_dataset(cfg):
    """The concatenation of ``cfg.data.train`` (e.g. VOC 07+12)."""
    from ..data.catalog import get_datasets

    if not cfg.data.train:
        raise ValueError("config key 'data.train' is empty: name at least one training dataset")
    return get_datasets(list(cfg.data.train), custom=cfg.data.datasets, filter_empty=bool(cfg.data.filter_empty),
                        max_pixels=int(cfg.data.max_pixels))


def load_test_datasets(cfg) -> list:
    """One dataset per name of ``cfg.data.test`` (evaluated separately)."""
    from ..data.catalog import get_dataset

    return [get_dataset(name, custom=cfg.data.datasets, max_pixels=int(cfg.data.max_pixels)) for name in cfg.data.test]


def check_label_space(cfg, dataset, *, what: str) -> None:
    """The model's number of classes must match the dataset's."""
    num = int(cfg.model.roi_heads.num_classes)
    if num != dataset.num_classes:
        names = ", ".join(dataset.class_names[:10]) + (", ..." if dataset.num_classes > 10 else "")
        raise ValueError(
            f"model.roi_heads.num_classes={num} but {what} '{dataset.name}' has {dataset.num_classes} classes "
            f"({names}); set model.roi_heads.num_classes={dataset.num_classes}"
        )


# ---------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------
def _imagenet_arch(cfg) -> str:
    b = cfg.model.backbone
    return "vgg16" if b.name == "vgg16" else f"resnet{int(b.depth)}"


# The backbone and the per-region trunk: their shapes are fixed by model.backbone.*.
_TRUNK_PREFIXES = ("backbone.", "roi_heads.res5.", "roi_heads.box_head.")


def _refuse_trunk_mismatch(source, mismatched: list) -> None:
    """``mismatched``: ``(model key, weights shape, model shape)`` of tensors left out."""
    if mismatched:
        key, have, want = mismatched[0]
        raise ValueError(
            f"{source}: {len(mismatched)} backbone weights do not fit the model built from this config "
            f"(e.g. {key}: {list(have)} in the file, {list(want)} in the model); the weights are for another "
            "architecture: check model.backbone.* (depth, base_channels, ...)"
        )


def _predictor_width_change(checkpoint: dict, own: dict) -> list:
    """Keys of the whole predictor (weights and biases) when its input width differs
    between checkpoint and model (global context on one side only, Appendix B): its
    biases alone would fit but mean nothing without their weights."""
    weights = [k for k in own if k.startswith("roi_heads.predictor.") and k.endswith(".weight") and k in checkpoint]
    if not any(checkpoint[k].dim() == 2 and checkpoint[k].shape[1] != own[k].shape[1] for k in weights):
        return []
    return [k for k in checkpoint if k.startswith("roi_heads.predictor.") and k in own]


def initialize_weights(model: nn.Module, source: str, cfg, *, class_names: Sequence[str] | None = None) -> str:
    """Initialize ``model`` from ``source`` before training or evaluation.

    ``source`` is either a detectron_res checkpoint (a trained detector: every tensor
    whose shape matches is copied; the class-specific layers are re-initialized when
    the number of classes or the class names differ, and the skipped keys are logged)
    or ImageNet weights (``torchvision://``, ``msra://``, a torchvision / MSRA /
    Detectron2 file, or a file converted by ``tools/convert_weights.py``), loaded
    into the backbone and the per-region head (Appendix A).

    Returns:
        a short description of what was loaded, for the start-up summary.
    """
    path = Path(source).expanduser()
    if "://" not in source and path.is_file() and is_detector_checkpoint(path):
        state = load_checkpoint(path)
        sd = dict(state["model"])
        ckpt_names = list(state.get("class_names") or [])
        own = model.state_dict()
        same_shape_dropped = []
        if class_names is not None and ckpt_names and list(class_names) != ckpt_names:
            # Same number of classes but another label space: copying the rows
            # would silently map class i of the checkpoint to class i here.
            same_shape_dropped = [k for k in sd if k.startswith(CLASS_SPECIFIC_PREFIXES) and k in own
                                  and tuple(own[k].shape) == tuple(sd[k].shape)]
            for k in same_shape_dropped:
                del sd[k]
        predictor_dropped = _predictor_width_change(sd, own)
        for k in predictor_dropped:
            del sd[k]
        report: LoadReport = load_model_weights(model, sd)
        report.missing = [k for k in report.missing if k not in same_shape_dropped]
        text = report.summary()
        if same_shape_dropped:
            text += (f"\nre-initialized {len(same_shape_dropped)} class-specific tensors because the checkpoint's "
                     f"classes {ckpt_names[:5]} differ from the dataset's {list(class_names)[:5]}: "
                     + ", ".join(same_shape_dropped))
        if predictor_dropped:
            width = lambda k: list(state["model"][k].shape)[1:]  # noqa: E731
            text += (f"\nre-initialized the predictor ({', '.join(predictor_dropped)}): the checkpoint's takes "
                     f"{width(predictor_dropped[0])[0]} inputs per region, this model's "
                     f"{own[predictor_dropped[0]].shape[1]} (model.roi_heads.global_context adds the whole image's "
                     "feature)")
        logger.info("Detector weights from %s (iteration %s): %s", path, state.get("iteration"), text)
        # Class-specific (and RPN) layers may differ when fine-tuning; a trunk that does
        # not fit means weights of another architecture: training would start from noise.
        _refuse_trunk_mismatch(path, [(k, a, b) for k, a, b in report.skipped_shape
                                      if k.startswith(_TRUNK_PREFIXES)])
        num_reinit = len(report.skipped_shape) + len(same_shape_dropped) + len(predictor_dropped)
        return f"detector checkpoint {path} ({len(report.loaded)} tensors loaded, {num_reinit} re-initialized)"
    from ..weights import load_imagenet_weights

    weights = load_imagenet_weights(source, arch=_imagenet_arch(cfg))
    report = model.load_imagenet_backbone(weights)
    logger.info("ImageNet weights %s (%s, %s): %s", source, weights.arch, weights.fmt, report.summary())
    _refuse_trunk_mismatch(source, [(mk, ws, ms) for _, mk, ws, ms in report.shape_mismatch])
    return f"ImageNet {weights.arch} from {source} ({len(report.loaded)} tensors)"


# ---------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------
def _evaluator_names(cfg, dataset) -> list[str]:
    names = list(cfg.test.evaluators)
    if not names:
        if dataset.extra.get("images_only"):
            names = ["voc"]  # no public labels (VOC2012 test): server files only
        elif dataset.format == "voc":
            names = ["voc", "coco"]
        else:
            names = ["coco"]
    unknown = [n for n in names if n not in ("coco", "voc")]
    if unknown:
        raise ValueError(f"test.evaluators={names}: unknown evaluator {unknown[0]!r}; expected 'coco' and/or 'voc'")
    return names


def build_evaluators(cfg, dataset, output_dir: str | os.PathLike) -> list:
    """The evaluators of ``cfg.test.evaluators`` (by dataset format when empty).

    The VOC evaluator uses ``test.voc_year``, else the dataset's year, else 2007
    (the 11-point metric of Table 7) for datasets that have none (COCO json, YOLO),
    and the protocol ``test.voc_protocol`` (devkit or py-faster-rcnn).
    """
    from ..evaluation import COCOEvaluator, VOCEvaluator

    out = Path(output_dir)
    evaluators = []
    for name in _evaluator_names(cfg, dataset):
        if name == "coco":
            evaluators.append(COCOEvaluator(dataset, output_dir=out))
        else:
            year = str(cfg.test.voc_year or dataset.extra.get("year") or "2007")
            evaluators.append(VOCEvaluator(dataset, year=year, protocol=cfg.test.voc_protocol, output_dir=out))
    return evaluators


def _scalar_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """``{"voc": {"mAP50": x, "per_class": {...}}}`` -> ``{"voc/mAP50": x}`` (top-level numbers only)."""
    out = {}
    for evaluator, metrics in results.items():
        if not isinstance(metrics, Mapping):
            continue
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"{evaluator}/{key}"] = float(value)
    return out


def evaluate(
    cfg,
    model: nn.Module,
    datasets: Sequence,
    *,
    device: torch.device,
    output_dir: str | os.PathLike,
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``model`` over every test dataset and evaluate it.

    Writes (rank 0) ``output_dir/<dataset>/evaluation.json`` with all metrics, the
    evaluators' result files and PR-curve plots.

    Returns:
        on rank 0 ``{"full": {dataset: {evaluator: metrics}}, "scalars": {...}}`` where
        scalars are ``"voc/mAP50"``-style names with one test dataset and
        ``"<dataset>/voc/mAP50"`` with several; ``{}`` on other ranks.
    """
    from ..data.loader import build_test_loader
    from ..evaluation import inference_on_dataset, plot_pr_curves, write_metrics
    from ..evaluation.report import path_component

    rank, world = comm.get_rank(), comm.get_world_size()
    full, scalars = {}, {}
    for dataset in datasets:
        # Dataset names come from configs: one path component, whatever they contain ("../x").
        out = Path(output_dir) / path_component(dataset.name, what="dataset name")
        evaluators = build_evaluators(cfg, dataset, out)
        loader = build_test_loader(
            dataset,
            images_per_batch=int(cfg.test.images_per_batch),
            min_size=int(cfg.input.min_size_test),
            max_size=int(cfg.input.max_size_test),
            size_divisibility=int(cfg.input.size_divisibility),
            num_workers=int(cfg.data.num_workers),
            rank=rank,
            world_size=world,
            input_format=str(cfg.model.input_format),
            pin_memory=device.type == "cuda",
        )
        # A SIGTERM / SIGUSR1 (recorded while training or --eval-only runs) stops
        # inference before the next batch instead of after the whole dataset.
        share = len(dataset) // world + int(rank < len(dataset) % world)  # this rank's InferenceSampler share
        loader = StoppableLoader(
            loader, dataset_name=dataset.name, num_images=share,
            aligned_batches=StoppableLoader.aligned_batch_count(len(dataset), world, int(cfg.test.images_per_batch)),
        )
        results = inference_on_dataset(model, loader, evaluators, device=device, amp_dtype=amp_dtype,
                                       progress=progress)
        if rank != 0:
            continue
        write_metrics({dataset.name: results}, out, filename="evaluation.json")
        for e in evaluators:
            curves = getattr(e, "pr_curves", None)
            if curves:
                plot_pr_curves(curves, out / f"pr_curves_{e.name}", ap_name=getattr(e, "pr_curve_ap_name", "AP"))
        full[dataset.name] = results
        prefix = "" if len(datasets) == 1 else f"{dataset.name}/"
        scalars.update({prefix + k: v for k, v in _scalar_metrics(results).items()})
    comm.synchronize()
    return {"full": full, "scalars": scalars} if rank == 0 else {}


# ---------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------
def _count_params(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def summarize(cfg, *, config_source: str, output_dir: Path, dist_info: DistInfo, device: torch.device,
              train_dataset, test_datasets: Sequence, model: nn.Module, init: str, start_iter: int) -> str:
    """The start-up summary: config, datasets, model size, schedule."""
    b, s = cfg.model.backbone, cfg.solver
    total, trainable = _count_params(model)
    per_rank = s.ims_per_batch // dist_info.world_size
    backbone = "VGG-16" if b.name == "vgg16" else (
        f"{'ResNet' if b.residual else 'plain'}-{b.depth} (base width {b.base_channels}, {b.norm}, "
        f"shortcut {b.shortcut}, stride_in_1x1={b.stride_in_1x1}, freeze_at={b.freeze_at})"
    )
    lines = [
        f"config: {config_source} -> resolved copy {output_dir / 'config.yaml'}",
        f"output: {output_dir}",
        f"processes: {dist_info.world_size} ({dist_info.backend or 'single process'}), device {device}"
        + (f", {torch.get_num_threads()} compute threads"
           + (" (cpu_threads)" if int(cfg.cpu_threads) > 0 else ", fewer while other processes keep cores busy")
           if device.type == "cpu" else ""),
        f"model: Faster R-CNN C4, {backbone}; {total / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M trained), "
        f"{cfg.model.roi_heads.num_classes} classes, {cfg.model.roi_heads.pooler_type} "
        f"{cfg.model.roi_heads.pooler_resolution}x{cfg.model.roi_heads.pooler_resolution}",
        f"init: {init}",
        f"train: {train_dataset.name}: {len(train_dataset)} images, {train_dataset.report.num_boxes} boxes, "
        f"classes {', '.join(train_dataset.class_names[:8])}{', ...' if train_dataset.num_classes > 8 else ''}",
    ]
    for ds in test_datasets:
        lines.append(f"test: {ds.name}: {len(ds)} images ({', '.join(_evaluator_names(cfg, ds))} evaluation)")
    lines += [
        f"input: train shorter side {list(cfg.input.min_size_train)} (max {cfg.input.max_size_train}), "
        f"test {cfg.input.min_size_test} (max {cfg.input.max_size_test}), {cfg.model.input_format}",
        f"schedule: {s.max_iter} iterations from {start_iter}, global batch {s.ims_per_batch} "
        f"({per_rank} per process), lr {s.base_lr:g} x{s.gamma:g} at {list(s.steps)}, warmup {s.warmup_iters}, "
        f"momentum {s.momentum:g}, weight decay {s.weight_decay:g}"
        + (f", AMP {s.amp.dtype}" if s.amp.enabled else "")
        + (f", clip grad norm {s.clip_grad_norm:g}" if s.clip_grad_norm > 0 else ""),
        f"checkpoints every {s.checkpoint_period} iterations (keep {s.keep_last}); evaluation "
        + (f"every {cfg.test.eval_period} iterations" if cfg.test.eval_period > 0 else "at the end")
        + (f", best by {cfg.test.best_metric}" if cfg.test.best_metric else ""),
    ]
    return "\n".join("  " + line for line in lines)


def _config_differences(old: Mapping, new: Mapping, prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            diffs += _config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return diffs


# ---------------------------------------------------------------------------
# training pieces
# ---------------------------------------------------------------------------
def build_optimizer_and_scheduler(cfg, model: nn.Module) -> tuple[torch.optim.SGD, WarmupMultiStepLR]:
    """SGD + warmup/multi-step schedule from ``cfg.solver``."""
    s = cfg.solver
    optimizer = build_optimizer(
        model,
        base_lr=float(s.base_lr),
        momentum=float(s.momentum),
        weight_decay=float(s.weight_decay),
        weight_decay_norm=float(s.weight_decay_norm),
        weight_decay_bias=float(s.weight_decay_bias),
    )
    scheduler = WarmupMultiStepLR(optimizer, steps=list(s.steps), gamma=float(s.gamma),
                                  warmup_iters=int(s.warmup_iters), warmup_factor=float(s.warmup_factor))
    return optimizer, scheduler


def make_train_loader(cfg, dataset, *, rank: int = 0, world_size: int = 1, start_iter: int = 0,
                      device: torch.device = torch.device("cpu")):
    """The infinite, resumable training loader of this process (its share of the global batch)."""
    from ..data.loader import build_train_loader

    s = cfg.solver
    if s.ims_per_batch % world_size != 0:
        raise ValueError(
            f"solver.ims_per_batch={s.ims_per_batch} (the global batch) is not divisible by the {world_size} "
            f"processes; use a multiple of {world_size}"
        )
    return build_train_loader(
        dataset,
        images_per_batch=s.ims_per_batch // world_size,
        min_sizes=list(cfg.input.min_size_train),
        max_size=int(cfg.input.max_size_train),
        hflip_prob=float(cfg.input.hflip_prob),
        photometric=bool(cfg.input.photometric),
        size_divisibility=int(cfg.input.size_divisibility),
        aspect_ratio_grouping=bool(cfg.data.aspect_ratio_grouping),
        num_workers=int(cfg.data.num_workers),
        seed=int(cfg.seed),
        rank=rank,
        world_size=world_size,
        start_iter=start_iter,
        input_format=str(cfg.model.input_format),
        use_difficult=bool(cfg.data.use_difficult),
        pin_memory=device.type == "cuda",
    )


# ---------------------------------------------------------------------------
# the two entry points
# ---------------------------------------------------------------------------
def _amp_dtype(cfg, device: torch.device) -> torch.dtype | None:
    """Training's autocast dtype (``solver.amp``): bf16 on CUDA or the CPU, fp16 on CUDA only."""
    if not cfg.solver.amp.enabled:
        return None
    dtype = str(cfg.solver.amp.dtype)
    if device.type != "cuda" and dtype != "bf16":
        raise ValueError(
            f"solver.amp.dtype={dtype} with solver.amp.enabled=true needs a CUDA device, got device {device}; "
            "use solver.amp.dtype=bf16 on the CPU or set solver.amp.enabled=false"
        )
    return _AMP_DTYPES[dtype]


def eval_precision(cfg, device: torch.device) -> Precision:
    """The evaluation's precision from config key ``test.precision`` (auto, fp32, bf16), logged once."""
    precision = resolve_precision(str(cfg.test.precision), device, what="test.precision")
    logger.info("Evaluation precision: %s", precision)
    return precision


def _init_process(cfg, device_name: str | None) -> tuple[DistInfo, torch.device]:
    if int(cfg.cpu_threads) > 0:
        torch.set_num_threads(int(cfg.cpu_threads))
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    device = resolve_device(device_name or str(cfg.device) or "auto", local_rank)
    dist_info = comm.init_distributed(device_type=device.type, backend=str(cfg.dist.backend),
                                      timeout_s=float(cfg.dist.timeout_s))
    return dist_info, device


def train(
    cfg,
    *,
    output_dir: str | os.PathLike,
    resume: bool = False,
    weights: str | None = None,
    device: str | None = None,
    config_source: str = "<python>",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train the detector described by ``cfg``; returns the final evaluation.

    Args:
        cfg: resolved config (``load_config``).
        output_dir: run directory (checkpoints, logs, metrics, evaluation).
        resume: continue from ``output_dir/last_checkpoint`` when there is one
            (model, optimizer, scheduler, scaler, iteration, RNG, data position).
        weights: initialization when not resuming; overrides ``cfg.model.weights``
            (a detector checkpoint or ImageNet weights, see :func:`initialize_weights`).
        device: overrides ``cfg.device``.
        overwrite: start a new run in an ``output_dir`` that holds a previous one
            (its checkpoints are deleted first); without it (and without
            ``resume``) such a folder is refused (:func:`~detectron_res.outputs.check_run_dir`).

    Returns:
        ``{"scalars": {...}, "full": {...}}`` of the last evaluation on rank 0
        (``{}`` without test datasets or on other ranks), plus ``"stopped_early"``
        when a signal ended training before ``max_iter``.
    """
    # Before anything is written (log.txt included): a previous run is never replaced by accident.
    output_dir = check_run_dir(output_dir, resume=resume, overwrite=overwrite,
                               inputs=[("--weights", weights), ("model.weights", str(cfg.model.weights))])
    dist_info, dev = _init_process(cfg, device)
    setup_logging(output_dir, dist_info.rank)
    if overwrite and not resume and dist_info.is_main:
        for p in remove_previous_run(output_dir):
            logger.info("--overwrite: deleted %s of the previous run", p)
    completed = False
    try:
        result = _train(cfg, output_dir=output_dir, resume=resume, weights=weights, dist_info=dist_info, device=dev,
                        config_source=config_source)
        completed = True
        return result
    finally:
        comm.destroy_distributed(wait_for_all=completed)


def _train(cfg, *, output_dir: Path, resume: bool, weights: str | None, dist_info: DistInfo, device: torch.device,
           config_source: str) -> dict[str, Any]:
    from ..modeling.build import build_model

    world, rank = dist_info.world_size, dist_info.rank
    cfg.output_dir = str(output_dir)  # the saved config says where its outputs are
    s = cfg.solver
    if s.ims_per_batch % world != 0:
        raise ValueError(
            f"solver.ims_per_batch={s.ims_per_batch} (the global batch) is not divisible by the {world} processes; "
            f"use a multiple of {world}"
        )
    amp_dtype = _amp_dtype(cfg, device)

    train_dataset = load_train_dataset(cfg)
    check_label_space(cfg, train_dataset, what="training dataset")
    test_datasets = load_test_datasets(cfg)
    for ds in test_datasets:
        if list(ds.class_names) != list(train_dataset.class_names):
            raise ValueError(
                f"test dataset '{ds.name}' has classes {ds.class_names[:5]}... but training dataset "
                f"'{train_dataset.name}' has {train_dataset.class_names[:5]}...: data.test must share data.train's "
                "label space"
            )

    # Model initialization draws from the global RNG; the same seed on every rank
    # (DDP also broadcasts rank 0's weights). Per-rank streams are re-seeded below.
    seed_everything(int(cfg.seed))
    model = build_model(cfg)

    checkpointer = Checkpointer(output_dir, keep_last=int(s.keep_last), save_to_disk=dist_info.is_main)
    state = None
    if resume:
        last = find_last_checkpoint(output_dir)
        if last is None:
            logger.info("--resume: no checkpoint in %s, starting from the initial weights", output_dir)
        else:
            state = load_checkpoint(last)
    if state is not None:
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise ValueError(
                f"{last}: the checkpoint does not fit the model built from this config ({first}); resume with the "
                f"config it was trained with ({output_dir / 'config.yaml'}) or start a new --output-dir"
            ) from None
        if list(state.get("class_names") or []) != list(train_dataset.class_names):
            raise ValueError(
                f"{last}: checkpoint classes {list(state.get('class_names') or [])[:5]}... differ from training "
                f"dataset '{train_dataset.name}' {train_dataset.class_names[:5]}...; resume needs the same data "
                "(use --weights to fine-tune on other classes)"
            )
        diffs = _config_differences(state.get("config") or {}, config_to_dict(cfg))
        if diffs:
            logger.warning("Resuming %s with a config that differs from the checkpoint's: %s", last, "; ".join(diffs))
        init = f"resumed from {last} (after {state['iteration'] + 1} iterations)"
    else:
        source = weights if weights else str(cfg.model.weights)
        init = (initialize_weights(model, source, cfg, class_names=train_dataset.class_names) if source
                else "random (no model.weights / --weights)")
    start_iter = int(state["iteration"]) + 1 if state is not None else 0

    model.to(device)
    optimizer, scheduler = build_optimizer_and_scheduler(cfg, model)
    if world > 1:
        train_model: nn.Module = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    else:
        train_model = model

    if state is not None and state.get("sampler", {}).get("world_size", world) != world:
        logger.warning("Checkpoint was written by %d processes, resuming with %d: the data order differs from an "
                       "uninterrupted run", state["sampler"]["world_size"], world)
    loader = make_train_loader(cfg, train_dataset, rank=rank, world_size=world, start_iter=start_iter, device=device)

    trainer = Trainer(
        model=train_model,
        optimizer=optimizer,
        scheduler=scheduler,
        data_loader=loader,
        max_iter=int(s.max_iter),
        start_iter=start_iter,
        device=device,
        amp_dtype=amp_dtype,
        clip_grad_norm=float(s.clip_grad_norm),
        sampler_seed=int(cfg.seed),
        extra_state={
            "config": config_to_dict(cfg),
            "class_names": list(train_dataset.class_names),
            "category_ids": [c if isinstance(c, str) else int(c) for c in train_dataset.category_ids],
            "input": {
                "format": str(cfg.model.input_format),
                "pixel_mean": [float(v) for v in cfg.model.pixel_mean],
                "pixel_std": [float(v) for v in cfg.model.pixel_std],
            },
        },
    )
    last_eval: dict[str, Any] = {}
    eval_dtype = eval_precision(cfg, device).dtype if test_datasets else None

    def eval_fn():
        nonlocal last_eval
        result = evaluate(cfg, model, test_datasets, device=device, output_dir=output_dir / "inference",
                          amp_dtype=eval_dtype, progress=False)
        last_eval = result
        return result.get("scalars", {})

    if device.type == "cpu" and int(cfg.cpu_threads) == 0:
        # Fewer compute threads while other processes keep cores busy (engine/threads.py).
        trainer.register_hooks([ComputeThreads(max_threads=torch.get_num_threads())])
    trainer.register_hooks(default_hooks(
        checkpointer=checkpointer,
        optimizer=optimizer,
        scheduler=scheduler,
        checkpoint_period=int(s.checkpoint_period),
        output_dir=output_dir,
        log_period=int(cfg.log_period),
        eval_period=int(cfg.test.eval_period),
        eval_fn=eval_fn if test_datasets else None,
        best_metric=str(cfg.test.best_metric),
        resume_from_iter=state["iteration"] if state is not None else None,
        is_main=dist_info.is_main,
    ))
    if state is not None:
        trainer.load_training_state(state)
    # Per-rank random streams (RoI sampling) after the shared initialization; a
    # resumed run has just restored its streams from the checkpoint instead.
    if state is None:
        seed_everything(int(cfg.seed) + rank)

    if dist_info.is_main:
        checkpointer.remove_stale_temporaries()  # left by a process killed while writing
        save_config(cfg, output_dir / "config.yaml")
        logger.info("Training summary:\n%s", summarize(
            cfg, config_source=config_source, output_dir=output_dir, dist_info=dist_info, device=device,
            train_dataset=train_dataset, test_datasets=test_datasets, model=model, init=init, start_iter=start_iter))
    comm.synchronize()
    start = time.perf_counter()
    trainer.train()
    logger.info("Training ended after %.1f s; outputs in %s", time.perf_counter() - start, output_dir)
    result = dict(last_eval)
    if not trainer.completed:
        result["stopped_early"] = True
    stop = stop_report(trainer, output_dir)
    if stop is not None:
        result["stop"] = stop
        result.pop("scalars", None)  # metrics of an earlier evaluation, not of the final model
        result.pop("full", None)
        if dist_info.is_main:
            logger.warning("%s", stop["message"])
    return result


def stop_report(trainer: Trainer, output_dir: Path) -> dict[str, Any] | None:
    """What a SIGTERM / SIGUSR1 interrupted, with the one-line message for the user (None: nothing)."""
    preemption = next((h for h in trainer.hooks if isinstance(h, PreemptionHandler)), None)
    evaluation = next((h for h in trainer.hooks if isinstance(h, EvalHook)), None)
    interrupted = evaluation.interrupted if evaluation is not None else None
    if preemption is not None and preemption.stopped_at is not None:
        it = preemption.stopped_at
        during_eval = interrupted is not None and evaluation.interrupted_iter == it
        where = (f"during the evaluation after {it + 1} of {trainer.max_iter} iterations ({interrupted.images_done}/"
                 f"{interrupted.images_total} images of '{interrupted.dataset}', abandoned)" if during_eval
                 else f"after {it + 1} of {trainer.max_iter} iterations")
        return {
            "signal": preemption.signal_name, "iteration": it, "checkpoint": str(preemption.checkpoint),
            "phase": "evaluation" if during_eval else "training",
            "message": f"stopped by {preemption.signal_name} {where}; checkpoint {preemption.checkpoint} written; "
                       f"continue with: --resume (output: {output_dir})",
        }
    if interrupted is not None and trainer.completed:
        final = output_dir / "model_final.pth"
        return {
            "signal": interrupted.signal_name, "iteration": trainer.max_iter - 1, "checkpoint": str(final),
            "phase": "final evaluation",
            "message": f"stopped by {interrupted.signal_name} during the final evaluation ({interrupted.images_done}/"
                       f"{interrupted.images_total} images of '{interrupted.dataset}', abandoned); training is "
                       f"complete ({final}); evaluate it with: --resume (output: {output_dir}), or --eval-only",
        }
    return None


def evaluate_checkpoint(
    cfg,
    *,
    output_dir: str | os.PathLike,
    weights: str | None = None,
    device: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """``--eval-only``: evaluate a trained detector on ``cfg.data.test``.

    The weights are ``weights``, else ``cfg.model.weights`` when it is a detector
    checkpoint, else the latest checkpoint in ``output_dir``. An existing
    ``output_dir/inference/<dataset>/evaluation.json`` is replaced only with ``overwrite``.

    Raises:
        EvaluationInterrupted: SIGTERM or SIGUSR1 arrived during inference (the
            interrupted dataset's results are not written).
    """
    from ..modeling.build import build_model

    from ..evaluation.report import path_component

    output_dir = Path(output_dir)
    check_output_dir(output_dir, flag="--output-dir", overwrite=overwrite, files=[
        Path("inference") / path_component(str(name), what="dataset name") / "evaluation.json"
        for name in cfg.data.test])
    dist_info, dev = _init_process(cfg, device)
    setup_logging(output_dir, dist_info.rank)
    completed = False
    try:
        source = weights or str(cfg.model.weights)
        # An explicit --weights file is evaluated or refused with its own error, never
        # silently replaced by the run's last checkpoint.
        if not weights and (not source or not (Path(source).is_file() and is_detector_checkpoint(source))):
            last = find_last_checkpoint(output_dir)
            if last is None:
                raise ValueError(
                    f"--eval-only needs a trained detector: pass --weights model_final.pth, or train into {output_dir} "
                    f"first (no {output_dir}/last_checkpoint); got model.weights={str(cfg.model.weights)!r}"
                )
            source = str(last)
        test_datasets = load_test_datasets(cfg)
        if not test_datasets:
            raise ValueError("--eval-only: config key 'data.test' is empty: name at least one test dataset")
        state = load_checkpoint(source)
        # The label space first: with another number of classes the weights cannot fit,
        # and "classes differ" says why better than the shape of a predictor tensor.
        for ds in test_datasets:
            ckpt_names = list(state.get("class_names") or [])
            if ckpt_names and ckpt_names != list(ds.class_names):
                raise ValueError(f"{source}: checkpoint classes {ckpt_names[:5]}... differ from test dataset "
                                 f"'{ds.name}' {ds.class_names[:5]}...")
        model = build_model(cfg)
        try:
            report = load_model_weights(model, state["model"], strict_shapes=True)
        except ValueError as e:  # a shape mismatch: the config builds another architecture
            raise ValueError(f"{source}: {e}; was it trained with this config?") from None
        if report.missing:
            raise ValueError(f"{source}: checkpoint lacks {len(report.missing)} model weights "
                             f"(e.g. {report.missing[0]}); was it trained with this config?")
        model.to(dev)
        precision = eval_precision(cfg, dev)
        model.prepare_for_inference(precision=precision.name)
        if dist_info.is_main:
            logger.info("Evaluating %s (iteration %s) on %s", source, state.get("iteration"),
                        ", ".join(ds.name for ds in test_datasets))
        # SIGTERM / SIGUSR1 stop inference before the next batch: EvaluationInterrupted.
        with stop_signals_recorded():
            results = evaluate(cfg, model, test_datasets, device=dev, output_dir=output_dir / "inference",
                               amp_dtype=precision.dtype)
        if dist_info.is_main:
            # metrics.json is the run's JSON-lines log (training writes it too): append
            # one line rather than overwrite, so a training run's history survives.
            output_dir.mkdir(parents=True, exist_ok=True)
            record = {"iteration": state.get("iteration"), "eval_only": True, "weights": str(source),
                      **results.get("scalars", {})}
            with open(output_dir / "metrics.json", "a") as f:
                f.write(json.dumps(record) + "\n")
        completed = True
        return results
    finally:
        comm.destroy_distributed(wait_for_all=completed)
