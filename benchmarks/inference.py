"""Inference of ours against torchvision's: latency, memory, agreement, FLOP/s; the operator profile.

* :func:`inference_section`: ours (the config's speed options, prepared for
  inference as ``Predictor`` runs it) and torchvision's C4 with the same
  weights, in fp32 (and bf16 autocast), optionally with the ablation of the
  speed options, all called in turns on one image; the dense fp32 matmul timed
  in the same turns; the detections compared; the multiply-adds counted
  (:func:`detectron_res.analysis.count_c4_detector_macs`);
* :func:`profile_section`: the top operators of one call of ours.
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from benchmarks.detectors import (
    INFERENCE_ABLATION,
    DetectorSpec,
    ablation_models,
    match_detections,
    optimize_for_inference,
)
from benchmarks.machine import fp32_matmul
from benchmarks.results import BF16_SUFFIX, precision_of, record_times
from benchmarks.timing import (
    Budget,
    Timer,
    first_call_is_timed,
    first_calls,
    more_rounds,
    synchronize,
)
from detectron_res.analysis import count_c4_detector_macs
from detectron_res.precision import autocast


def padded_size(height: int, width: int, divisibility: int = 32) -> Tuple[int, int]:
    """``(height, width)`` rounded up to ``divisibility``: the size the trunk sees after padding."""
    return (math.ceil(height / divisibility) * divisibility, math.ceil(width / divisibility) * divisibility)


def inference_fn(model: nn.Module, images: List[torch.Tensor], device: torch.device, precision: str, out: Optional[dict] = None, key: str = ""):
    """A no-argument call of ``model(images)`` under inference mode, in ``precision`` (fp32 or bf16 autocast)."""

    def call():
        with torch.inference_mode(), autocast(precision, device):
            result = model(images)
        if out is not None:
            out[key] = result

    return call


def inference_section(
    args, ours: nn.Module, tv: nn.Module, spec: DetectorSpec, images, budget: Budget, share_s: float, *,
    ablation: bool, reserve_s: float = 0.0,
) -> Dict[str, Any]:
    """Ours (all speed options, prepared for inference) vs torchvision at one depth; with
    ``ablation``, every option off and each one left out, in the same turns.

    The dense matmul of the machine is timed in the same turns, so that the
    fraction of it our inference reaches compares numbers taken under the same
    background load.
    """
    device = args.device
    result: Dict[str, Any] = {"model": spec.name, "depth": spec.depth, "device_type": device.type}
    variants: Dict[str, nn.Module] = {"ours": optimize_for_inference(ours), "torchvision": tv}
    if args.bf16:
        # Under bf16 autocast: ours as Predictor(precision="bf16") prepares it (weights
        # stored in bf16 once), torchvision's model as it is.
        variants["ours_bf16"], variants["torchvision_bf16"] = optimize_for_inference(ours, "bf16"), tv
    if ablation:
        for name, model in ablation_models(ours, spec, INFERENCE_ABLATION).items():
            variants[name] = optimize_for_inference(model)
    result["variants"] = list(variants)

    if first_call_is_timed(device):
        # One untimed call first: the process's first detector call at these shapes
        # pays for oneDNN's kernel generation (measured: ours 6.5 s first, then 4.9 s;
        # the other detectors' first calls were no slower than their later ones).
        # Each bf16 variant generates its own bf16 kernels: one untimed call each.
        for name in ("ours", "ours_bf16", "torchvision_bf16"):
            if name in variants:
                inference_fn(variants[name], images, device, precision_of(name))()
    # First call of every variant: it measures peak memory and gives the detections compared below.
    outputs: Dict[str, Any] = {}
    warmup_s, first_cpu_s, memory = first_calls(
        {name: inference_fn(model, images, device, precision_of(name), outputs, name) for name, model in variants.items()},
        device,
    )
    result["warmup_s"] = warmup_s
    result["peak_memory"] = memory
    result["agreement"] = {
        name: match_detections(outputs[name], outputs["torchvision"])
        for name in variants if name != "torchvision" and precision_of(name) == "fp32"
    }
    # bf16 against the same detector in fp32 (random weights: a check that bf16 runs
    # the same detector, not an accuracy figure; that is measured on the demo).
    result["agreement_bf16"] = {
        name: match_detections(outputs[name], outputs[name[: -len(BF16_SUFFIX)]])
        for name in variants if precision_of(name) == "bf16"
    }
    result["num_detections"] = {name: sum(len(d["boxes"]) for d in out) for name, out in outputs.items()}
    del outputs

    padded = padded_size(*images[0].shape[-2:])
    num_rois = spec.num_proposals
    result["macs"] = count_c4_detector_macs(ours, padded, num_rois)

    fns = {name: inference_fn(model, images, device, precision_of(name)) for name, model in variants.items()}
    matmul = fp32_matmul(device)
    matmul_times = [Timer(device)(matmul) for _ in range(3)]
    fns["matmul"] = matmul
    times, cpu_times = more_rounds(args, fns, warmup_s, first_cpu_s, budget, share_s, reserve_s)
    matmul_times += times.pop("matmul")
    cpu_times.pop("matmul", None)
    record_times(result, times, cpu_times)
    result["matmul_interleaved"] = {
        "size": matmul.size,
        "dtype": str(matmul.dtype).replace("torch.", ""),
        "median_flops": matmul.flop / statistics.median(matmul_times),
        "best_flops": matmul.flop / min(matmul_times),
        "n": len(matmul_times),
    }
    return result


# Operators that are convolutions (their self time): oneDNN with packed weights, with
# dense ones, and torch's own im2col + GEMM fallback.
CONVOLUTION_OPS = ("mkldnn::_convolution_pointwise", "aten::mkldnn_convolution", "aten::_slow_conv2d_forward",
                   "aten::cudnn_convolution", "aten::thnn_conv2d")


def _profile_call(fn, device: torch.device):
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        synchronize(device)
    return prof.key_averages()


def profile_section(args, ours: nn.Module, images, row_limit: int = 15, bf16_calls: int = 3) -> Dict[str, Any]:
    """Top operators (self time) of one call of our optimized detector; on a CPU with
    native bf16 also the convolutions' self time in fp32 and bf16 (``bf16_calls``
    profiled calls of each, in turns): the floor of ours' bf16 / fp32 ratio, since
    everything else costs about the same in both precisions."""
    device = args.device
    model = optimize_for_inference(ours).to(device)
    fn = inference_fn(model, images, device, "fp32")
    if not first_call_is_timed(device):
        fn()  # warm-up: kernel selection would dominate the profile
    events = _profile_call(fn, device)

    def device_self(e) -> float:
        return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)))

    key = device_self if device.type == "cuda" else (lambda e: float(e.self_cpu_time_total))
    total = sum(key(e) for e in events) or 1.0
    top = sorted(events, key=key, reverse=True)[:row_limit]
    result = {
        "clock": "device (CUDA kernels)" if device.type == "cuda" else "CPU",
        "total_ms": total / 1000.0,
        "top": [
            # CUDA kernel names run to hundreds of characters of template arguments.
            {"op": e.key[:90], "self_ms": key(e) / 1000.0, "percent": 100.0 * key(e) / total, "calls": int(e.count)}
            for e in top
        ],
    }
    if device.type == "cpu" and args.bf16:
        result["convolutions"] = _convolution_share_by_precision(ours, images, device, fn, bf16_calls)
    return result


def _convolution_share_by_precision(ours: nn.Module, images, device, fp32_fn, calls: int) -> Dict[str, Any]:
    """Self time of the convolutions and of the whole call, ours in fp32 and in bf16 (medians of ``calls``)."""
    bf16_fn = inference_fn(optimize_for_inference(ours, "bf16").to(device), images, device, "bf16")
    bf16_fn()  # oneDNN's bf16 kernels and the packings for this shape: not part of the profile
    fp32_fn()
    times = {"fp32": [], "bf16": []}
    for _ in range(calls):
        for precision, fn in (("fp32", fp32_fn), ("bf16", bf16_fn)):
            events = _profile_call(fn, device)
            convs = sum(float(e.self_cpu_time_total) for e in events if e.key in CONVOLUTION_OPS)
            times[precision].append((convs / 1000.0, sum(float(e.self_cpu_time_total) for e in events) / 1000.0))
    median = lambda values: statistics.median(values)  # noqa: E731
    out = {precision: {"convolutions_ms": median([c for c, _ in t]), "total_ms": median([a for _, a in t])}
           for precision, t in times.items()}
    out["calls"] = calls
    out["ratio_convolutions"] = median([b[0] / a[0] for a, b in zip(times["fp32"], times["bf16"])])
    out["ratio_total"] = median([b[1] / a[1] for a, b in zip(times["fp32"], times["bf16"])])
    return out
