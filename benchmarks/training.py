"""One training iteration (forward, backward, SGD step) of ours against torchvision's.

:func:`training_section` times the training step of each variant in turns at one
depth and batch size: ours as ``tools/train_net.py`` trains it and torchvision's
C4 with the same weights, in fp32 (and bf16 autocast, as ``solver.amp``), with
the ablation of the speed options where asked; with ``contention`` > 0 the four
variants of :func:`benchmarks.contention.contention_variants` with busy
processes beside them (the contention part).
"""
from __future__ import annotations

import copy
from typing import Any, Dict

import torch
from torch import nn

from benchmarks.contention import BusyLoad, TrainerThreads, contention_variants, uses_trainer_threads
from benchmarks.detectors import TRAINING_ABLATION, DetectorSpec, ablation_models, make_images, make_targets
from benchmarks.results import precision_of, record_times
from benchmarks.timing import Budget, first_calls, more_rounds
from detectron_res.precision import autocast


def training_step_fn(model: nn.Module, images, targets, device: torch.device, precision: str):
    """One SGD iteration (forward, backward, step) of ``model`` in training mode, the
    forward pass in ``precision`` (fp32 or bf16 autocast, as the trainer's ``solver.amp``)."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # A small learning rate: the weights barely move over the timed iterations.
    optimizer = torch.optim.SGD(params, lr=1e-5, momentum=0.9, weight_decay=1e-4)

    def step():
        with autocast(precision, device):
            losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is not finite: {float(loss)}")

    return step


def training_variants(args, ours: nn.Module, tv: nn.Module, spec: DetectorSpec, *, ablation: bool) -> Dict[str, nn.Module]:
    """The detectors of a training comparison: copies, so that the models passed in keep their weights.

    'ours' is the model as ``tools/train_net.py`` trains it (the config's speed
    options; weights in the default NCHW layout). With ``ablation``: every option
    off (``ours_plain``); with ``--train-ablation`` also each training option left
    out and ours with channels-last weights (``ours+channels_last``).
    """
    variants: Dict[str, nn.Module] = {"ours": copy.deepcopy(ours), "torchvision": copy.deepcopy(tv)}
    if args.bf16:
        variants["ours_bf16"], variants["torchvision_bf16"] = copy.deepcopy(ours), copy.deepcopy(tv)
    if ablation:
        left_out = TRAINING_ABLATION if args.train_ablation else ()
        variants.update(ablation_models(ours, spec, left_out))
        if args.train_ablation:
            variants["ours+channels_last"] = copy.deepcopy(ours).to(memory_format=torch.channels_last)
    return variants


def training_section(
    args, ours: nn.Module, tv: nn.Module, spec: DetectorSpec, batch_size: int, image_size, budget: Budget, share_s: float,
    *, ablation: bool, reserve_s: float = 0.0, contention: int = 0,
) -> Dict[str, Any]:
    """One training iteration: ours vs torchvision (with ``ablation``, ours without its speed options too).

    With ``contention`` > 0, only ours and torchvision in fp32, with that many busy
    processes running beside them all the time (:class:`benchmarks.contention.BusyLoad`).
    """
    device = args.device
    if contention:
        variants = contention_variants(ours, tv)
    else:
        variants = training_variants(args, ours, tv, spec, ablation=ablation)
    for model in variants.values():
        model.to(device)
    images = make_images(batch_size, *image_size, seed=args.seed + 1, device=device)
    targets = make_targets(images, spec.num_classes, seed=args.seed + 1)
    fns = {name: training_step_fn(model, images, targets, device, precision_of(name)) for name, model in variants.items()}
    if device.type == "cpu" and not args.fixed_threads:
        fns = {name: TrainerThreads(fn) if uses_trainer_threads(name) else fn for name, fn in fns.items()}

    result: Dict[str, Any] = {
        "model": spec.name, "depth": spec.depth, "device_type": device.type, "batch_size": batch_size,
        "variants": list(variants), "contention": contention, "torch_threads": torch.get_num_threads(),
    }
    with BusyLoad(contention):
        _time_training(args, fns, result, budget, share_s, reserve_s)
    result["ours_threads"] = {name: fn.threads for name, fn in fns.items() if isinstance(fn, TrainerThreads)}
    result["images_per_s"] = {name: batch_size / s["median_s"] for name, s in result["summary"].items()}
    return result


def _time_training(args, fns, result: Dict[str, Any], budget: Budget, share_s: float, reserve_s: float) -> None:
    """First calls (peak memory) then timed turns of every training step, into ``result``."""
    warmup_s, first_cpu_s, memory = first_calls(fns, args.device)
    result["warmup_s"] = warmup_s
    result["peak_memory"] = memory
    times, cpu_times = more_rounds(args, fns, warmup_s, first_cpu_s, budget, share_s, reserve_s)
    record_times(result, times, cpu_times)
