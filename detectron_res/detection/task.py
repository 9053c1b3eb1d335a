"""The detection application: the pieces a Faster R-CNN C4 run hands the engine.

``tools/train_net.py`` runs :func:`train` and :func:`evaluate_checkpoint`, which give
:class:`DetectionTask` to the engine's run skeleton (``detectron_res/engine/run.py``:
process group, seeding, resume, DDP, trainer, hooks, summary, stop report). What is
the detector's own lives here: datasets by name (``data.train`` / ``data.test``) and
their label spaces, the model of ``modeling/build.py``, initialization from ImageNet
weights or a detector checkpoint, the training loader, and COCO / VOC evaluation.

Usable from Python as well::

    from detectron_res.config import load_config
    from detectron_res.detection import train, evaluate_checkpoint

    cfg = load_config("demo_shapes.yaml", ["solver.max_iter=100"])
    metrics = train(cfg, output_dir="output/my_run")
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..data.catalog import get_dataset, get_datasets
from ..data.loader import build_train_loader
from ..engine import distributed as comm
from ..engine.checkpoint import LoadReport, is_detector_checkpoint, load_all_weights, load_checkpoint, load_model_weights
from ..engine.distributed import DistInfo
from ..engine.hooks import HookBase
from ..engine.run import Run, run_evaluation, run_training
from ..engine.signals import StoppableLoader, stop_signals_recorded
from ..engine.trainer import Trainer
from ..evaluation import COCOEvaluator, VOCEvaluator, inference_on_dataset, plot_pr_curves, write_metrics
from ..evaluation.report import path_component
from ..modeling.build import build_model
from ..precision import Precision, resolve_precision
from ..weights import load_imagenet_weights

logger = logging.getLogger("detectron_res")

# Layers whose rows are tied to the label space: re-initialized when fine-tuning
# on other classes (their shape differs, or the class names do).
CLASS_SPECIFIC_PREFIXES = ("roi_heads.predictor.cls_score.", "roi_heads.predictor.bbox_pred.")


# ---------------------------------------------------------------------------
# the two entry points (tools/train_net.py)
# ---------------------------------------------------------------------------
def train(cfg, *, output_dir: str | os.PathLike, resume: bool = False, weights: str | None = None,
          device: str | None = None, config_source: str = "<python>", overwrite: bool = False) -> dict[str, Any]:
    """Train the detector described by ``cfg``; returns the final evaluation.

    Args are :func:`detectron_res.engine.run.run_training`'s; ``weights`` is a detector
    checkpoint or ImageNet weights (see :func:`initialize_weights`).

    Returns:
        ``{"scalars": {...}, "full": {...}}`` of the last evaluation on rank 0
        (``{}`` without test datasets or on other ranks), plus ``"stopped_early"``
        when a signal ended training before ``max_iter`` (and ``"stop"``, its report).
    """
    return run_training(DetectionTask(), cfg, output_dir=output_dir, resume=resume, weights=weights, device=device,
                        config_source=config_source, overwrite=overwrite)


def evaluate_checkpoint(cfg, *, output_dir: str | os.PathLike, weights: str | None = None, device: str | None = None,
                        overwrite: bool = False) -> dict[str, Any]:
    """``--eval-only``: evaluate a trained detector on ``cfg.data.test``.

    The weights are ``weights``, else ``cfg.model.weights`` when it is a detector
    checkpoint, else the latest checkpoint in ``output_dir``. An existing
    ``output_dir/inference/<dataset>/evaluation.json`` is replaced only with ``overwrite``;
    one line is appended to ``output_dir/metrics.json``.

    Raises:
        EvaluationInterrupted: SIGTERM or SIGUSR1 arrived during inference (the
            interrupted dataset's results are not written).
    """
    return run_evaluation(DetectionTask(), cfg, output_dir=output_dir, weights=weights, device=device,
                          overwrite=overwrite)


class DetectionTask:
    """The detector's pieces for :func:`detectron_res.engine.run.run_training`
    (the methods are :class:`detectron_res.engine.run.Task`'s)."""

    trainer_class = Trainer
    no_weights = "random (no model.weights / --weights)"
    eval_weights_hint = "a trained detector: pass --weights model_final.pth"

    def load_data(self, cfg) -> "DetectionData":
        train_dataset = load_train_dataset(cfg)
        check_label_space(cfg, train_dataset, what="training dataset")
        test_datasets = load_test_datasets(cfg)
        for ds in test_datasets:
            if list(ds.class_names) != list(train_dataset.class_names):
                raise ValueError(
                    f"test dataset '{ds.name}' has classes {ds.class_names[:5]}... but training dataset "
                    f"'{train_dataset.name}' has {train_dataset.class_names[:5]}...: data.test must share "
                    "data.train's label space"
                )
        return DetectionData(train=train_dataset, test=test_datasets)

    def build_model(self, cfg) -> nn.Module:
        return build_model(cfg)

    def initialize(self, model: nn.Module, source: str, cfg, data: "DetectionData") -> str:
        return initialize_weights(model, source, cfg, class_names=data.train.class_names)

    def read_checkpoint(self, path: Path) -> dict:
        return load_checkpoint(path)

    def restore(self, model: nn.Module, state: Mapping, *, path: Path, run_dir: Path, data: "DetectionData") -> None:
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise ValueError(
                f"{path}: the checkpoint does not fit the model built from this config ({first}); resume with the "
                f"config it was trained with ({run_dir / 'config.yaml'}) or start a new --output-dir"
            ) from None
        train_dataset = data.train
        if list(state.get("class_names") or []) != list(train_dataset.class_names):
            raise ValueError(
                f"{path}: checkpoint classes {list(state.get('class_names') or [])[:5]}... differ from training "
                f"dataset '{train_dataset.name}' {train_dataset.class_names[:5]}...; resume needs the same data "
                "(use --weights to fine-tune on other classes)"
            )

    def checkpoint_header(self, cfg, model: nn.Module, data: "DetectionData") -> dict:
        train_dataset = data.train
        return {
            "class_names": list(train_dataset.class_names),
            "category_ids": [c if isinstance(c, str) else int(c) for c in train_dataset.category_ids],
            "input": {
                "format": str(cfg.model.input_format),
                "pixel_mean": [float(v) for v in cfg.model.pixel_mean],
                "pixel_std": [float(v) for v in cfg.model.pixel_std],
            },
        }

    def train_loader(self, cfg, data: "DetectionData", *, rank: int, world_size: int, start_iter: int,
                     device: torch.device):
        return make_train_loader(cfg, data.train, rank=rank, world_size=world_size, start_iter=start_iter,
                                 device=device)

    def evaluator(self, run: Run) -> Callable[[bool], dict] | None:
        if not run.data.test:
            return None
        dtype = eval_precision(run.cfg, run.device).dtype
        return lambda final: evaluate(run.cfg, run.model, run.data.test, device=run.device,
                                      output_dir=run.output_dir / "inference", amp_dtype=dtype, progress=False)

    def best_metric(self, cfg) -> str:
        return str(cfg.test.best_metric)

    def add_hooks(self, run: Run, hooks: list[HookBase]) -> list[HookBase]:
        return hooks

    def summary_lines(self, run: Run) -> list[str]:
        """Model, initialization, datasets, input sizes, schedule, checkpoints."""
        cfg, model, train_dataset = run.cfg, run.model, run.data.train
        b, s = cfg.model.backbone, cfg.solver
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        per_rank = s.ims_per_batch // run.dist_info.world_size
        backbone = "VGG-16" if b.name == "vgg16" else (
            f"{'ResNet' if b.residual else 'plain'}-{b.depth} (base width {b.base_channels}, {b.norm}, "
            f"shortcut {b.shortcut}, stride_in_1x1={b.stride_in_1x1}, freeze_at={b.freeze_at})"
        )
        lines = [
            f"model: Faster R-CNN C4, {backbone}; {total / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M trained), "
            f"{cfg.model.roi_heads.num_classes} classes, {cfg.model.roi_heads.pooler_type} "
            f"{cfg.model.roi_heads.pooler_resolution}x{cfg.model.roi_heads.pooler_resolution}",
            f"init: {run.init}",
            f"train: {train_dataset.name}: {len(train_dataset)} images, {train_dataset.report.num_boxes} boxes, "
            f"classes {', '.join(train_dataset.class_names[:8])}{', ...' if train_dataset.num_classes > 8 else ''}",
        ]
        for ds in run.data.test:
            lines.append(f"test: {ds.name}: {len(ds)} images ({', '.join(_evaluator_names(cfg, ds))} evaluation)")
        return lines + [
            f"input: train shorter side {list(cfg.input.min_size_train)} (max {cfg.input.max_size_train}), "
            f"test {cfg.input.min_size_test} (max {cfg.input.max_size_test}), {cfg.model.input_format}",
            f"schedule: {s.max_iter} iterations from {run.start_iter}, global batch {s.ims_per_batch} "
            f"({per_rank} per process), lr {s.base_lr:g} x{s.gamma:g} at {list(s.steps)}, warmup {s.warmup_iters}, "
            f"momentum {s.momentum:g}, weight decay {s.weight_decay:g}"
            + (f", AMP {s.amp.dtype}" if s.amp.enabled else "")
            + (f", clip grad norm {s.clip_grad_norm:g}" if s.clip_grad_norm > 0 else ""),
            f"checkpoints every {s.checkpoint_period} iterations (keep {s.keep_last}); evaluation "
            + (f"every {cfg.test.eval_period} iterations" if cfg.test.eval_period > 0 else "at the end")
            + (f", best by {cfg.test.best_metric}" if cfg.test.best_metric else ""),
        ]

    def evaluation_files(self, cfg) -> list[Path]:
        return [Path("inference") / path_component(str(name), what="dataset name") / "evaluation.json"
                for name in cfg.data.test]

    def evaluable(self, source: str) -> bool:
        return bool(source) and Path(source).is_file() and is_detector_checkpoint(source)

    def evaluate_weights(self, cfg, source: str, *, output_dir: Path, dist_info: DistInfo,
                         device: torch.device) -> dict:
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
        load_all_weights(model, state["model"], source=source, hint="was it trained with this config?")
        model.to(device)
        precision = eval_precision(cfg, device)
        model.prepare_for_inference(precision=precision.name)  # bf16: weights stored in bf16 once
        if dist_info.is_main:
            logger.info("Evaluating %s (iteration %s) on %s", source, state.get("iteration"),
                        ", ".join(ds.name for ds in test_datasets))
        # SIGTERM / SIGUSR1 stop inference before the next batch: EvaluationInterrupted.
        with stop_signals_recorded():
            results = evaluate(cfg, model, test_datasets, device=device, output_dir=output_dir / "inference",
                               amp_dtype=precision.dtype)
        if dist_info.is_main:
            # metrics.json is the run's JSON-lines log (training writes it too): append
            # one line rather than overwrite, so a training run's history survives.
            output_dir.mkdir(parents=True, exist_ok=True)
            record = {"iteration": state.get("iteration"), "eval_only": True, "weights": str(source),
                      **results.get("scalars", {})}
            with open(output_dir / "metrics.json", "a") as f:
                f.write(json.dumps(record) + "\n")
        return results


@dataclass
class DetectionData:
    """The training dataset (``data.train`` concatenated) and the test datasets (``data.test``)."""

    train: Any
    test: list


# ---------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------
def load_train_dataset(cfg):
    """The concatenation of ``cfg.data.train`` (e.g. VOC 07+12)."""
    if not cfg.data.train:
        raise ValueError("config key 'data.train' is empty: name at least one training dataset")
    return get_datasets(list(cfg.data.train), custom=cfg.data.datasets, filter_empty=bool(cfg.data.filter_empty),
                        max_pixels=int(cfg.data.max_pixels))


def load_test_datasets(cfg) -> list:
    """One dataset per name of ``cfg.data.test`` (evaluated separately)."""
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
    # Looked up at each call: the fault tests wrap it to send signals mid-inference.
    from ..data.loader import build_test_loader

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
# training pieces
# ---------------------------------------------------------------------------
def make_train_loader(cfg, dataset, *, rank: int = 0, world_size: int = 1, start_iter: int = 0,
                      device: torch.device = torch.device("cpu")):
    """The infinite, resumable training loader of this process (its share of the global batch)."""
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


def eval_precision(cfg, device: torch.device) -> Precision:
    """The evaluation's precision from config key ``test.precision`` (auto, fp32, bf16), logged once."""
    precision = resolve_precision(str(cfg.test.precision), device, what="test.precision")
    logger.info("Evaluation precision: %s", precision)
    return precision

