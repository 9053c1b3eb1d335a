#!/usr/bin/env python
"""Side-by-side speed benchmark: our Faster R-CNN C4 against torchvision's, same weights, same inputs.

    python benchmarks/run.py                 # CPU, paper scale, writes benchmarks/RESULTS.md (< 16 min)
    python benchmarks/run.py --quick         # every code path at a small scale (< 2 min)
    python benchmarks/run.py --device cuda --train-batch-sizes 2,8 --out OUTDIR

What is measured, all in one process on the same inputs (see ``common.py`` for how
both detectors are built and made equal):

* inference latency of R-50-C4 and R-101-C4 at the paper's scale (shorter side
  600, longer at most 1000; a 600 x 800 image) with 300 proposals: ours (built
  with the config's speed options and prepared by ``prepare_for_inference()``,
  as ``Predictor`` and evaluation run it) against torchvision's ``FasterRCNN``
  built into the same C4 architecture, called in turns; median, min/max and the
  ratio ours / torchvision (of wall time, and of the process's CPU time, which a
  shared CPU's other jobs disturb less);
* one training iteration (forward, backward, SGD step) with batch 2 (and more
  with ``--train-batch-sizes``) for the same pairs, ours as the trainer runs it;
* both in bf16 too, beside fp32 in the same turns (``ours_bf16``,
  ``torchvision_bf16``: the same models under ``torch.autocast(bfloat16)``, as
  ``Predictor(precision="bf16")`` and ``solver.amp`` run ours; in inference ours
  with its weights stored in bf16 once, as ``Predictor`` prepares it), where the device
  computes bf16 natively (CUDA; a CPU with AVX512-BF16 or AMX), or with ``--bf16 on``;
* training under contention (``--contention N``, default 1): the R-50 training
  comparison again with N busy processes competing for the cores, as on a
  machine shared with other jobs;
* the dense fp32 matmul rate of the machine, measured in the same run, and the
  fraction of it our inference reaches (2 x multiply-adds / time);
* latency against the shorter side (400..1000) and the number of proposals
  (100..600), split into stages, as tables and a PNG;
* peak memory of inference and of a training step;
* an operator profile of our inference;
* an ablation of the speed options (config keys ``model.fold_frozen_bn`` and
  ``model.speed.*``, see ``OPTIMIZATIONS.md``): all of them off (``ours_plain``)
  and each one left out of ours (``ours-<option>``), timed in the same turns as
  ours and torchvision; in training ``ours_plain`` only, each option too with
  ``--train-ablation``.

``--budget-s`` is the wall-time budget of the whole run (default 900 s, with
``--quick`` 60 s). The parts run in order of importance (R-50 inference, R-50
training, R-101 inference and training, profile, scaling); each gets one turn
of every detector at least, a part whose first turn would not fit in what is
left is skipped (and listed under "Not measured"; never with ``--quick``, whose
point is to run every code path), and extra turns fill what the budget leaves
after the first turns of the parts still to come.

Outputs under ``--out`` (default ``benchmarks/``, or ``benchmarks/out/`` with
``--quick``): ``RESULTS.md`` (``RESULTS_GPU.md`` on CUDA), ``results_<device>.json``
and ``scaling_<device>.png``.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import signal
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from detectron_res.analysis import count_c4_detector_macs as count_macs  # noqa: E402
from detectron_res.engine.threads import CpuLoadMeter, available_cores, threads_for_load  # noqa: E402
from detectron_res.precision import resolve_precision  # noqa: E402

from common import (  # noqa: E402
    SPEED_OPTIONS,
    DetectorSpec,
    BusyLoad,
    Timer,
    autocast_context,
    build_ours,
    build_pair,
    default_matmul_size,
    interleaved_timings,
    load_average,
    machine_info,
    make_images,
    make_targets,
    match_detections,
    matmul_flops,
    optimize_for_inference,
    paired_ratio,
    peak_memory,
    summarize_times,
    synchronize,
    with_speed_options,
)

# The issue's targets (CPU, measured side by side) and the GPU ones.
TARGET_INFERENCE_RATIO = 0.7
TARGET_MATMUL_FRACTION = 0.5
TARGET_TRAIN_RATIO = 0.85
TARGET_GPU_TRAIN_SPEEDUP = 1.5
TARGET_GPU_R101_LATENCY_S = 0.040
TARGET_BF16_INFERENCE_RATIO = 0.5  # ours bf16 / ours fp32, on a CPU with native bf16
TARGET_CONTENTION_TRAIN_RATIO = 0.85  # ours / torchvision training wall time with a busy process beside

# Variants named <detector>_bf16 run under bf16 autocast; the others in fp32.
BF16_SUFFIX = "_bf16"
# The bf16 ratios reported, numerator and denominator.
BF16_PAIRS = {
    "ours bf16 / ours fp32": ("ours_bf16", "ours"),
    "torchvision bf16 / torchvision fp32": ("torchvision_bf16", "torchvision"),
    "ours bf16 / torchvision bf16": ("ours_bf16", "torchvision_bf16"),
    "ours bf16 / torchvision fp32": ("ours_bf16", "torchvision"),
}


def precision_of(variant: str) -> str:
    """``"bf16"`` for a ``*_bf16`` variant, else ``"fp32"``."""
    return "bf16" if variant.endswith(BF16_SUFFIX) else "fp32"

# Options left out one at a time in the ablations. fused_frozen_bn does nothing in
# inference once FrozenBN is folded, fold_frozen_bn and channels_last nothing in
# training (prepare_for_inference applies them).
INFERENCE_ABLATION = (
    "fold_frozen_bn", "channels_last", "inplace_relu", "res5_conv1_before_pool", "res5_shortcut_before_pool",
    "roi_align_by_matrix",
)
TRAINING_ABLATION = (
    "fused_frozen_bn", "inplace_relu", "res5_conv1_before_pool", "res5_shortcut_before_pool", "roi_align_by_matrix",
)

# Cost of each part's first turn in units of one inference call of R-50 'ours' at the
# run's scale (measured on the 2-core CPU: a training iteration of batch 2 costs ~4.2
# inference calls per detector, R-101 ~1.25x R-50, the scaling sweep ~6 calls plus
# building its detectors). Used to skip a part that would not fit in the budget.
_COST_UNITS = {"inference": 1.4, "training": 4.2, "profile": 1.3, "scaling": 8.0}
# A bf16 variant's cost relative to its fp32 one (a CPU with native bf16, guessed
# from the matmul rates: 2.3x faster products, the rest unchanged).
_BF16_COST = 0.6
_DEPTH_COST = {18: 0.5, 34: 0.7, 50: 1.0, 101: 1.25, 152: 1.6}


# ----------------------------------------------------------------------------- setup
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small scale, R-50 only: exercises every part in < 2 min")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--bf16", default="auto", choices=("auto", "on", "off"),
                        help="also time both detectors under bf16 autocast: auto (default) where the device computes "
                        "bf16 natively (CUDA; CPUs with AVX512-BF16 or AMX), on, off")
    parser.add_argument("--fixed-threads", action="store_true",
                        help="train ours with torch's thread count throughout, not the trainer's (fewer threads while "
                        "other processes keep cores busy)")
    parser.add_argument("--contention", type=int, default=None,
                        help="busy processes competing with the training comparison of the contention part (default "
                        "1 on the CPU, 0 = no such part on CUDA)")
    parser.add_argument("--depths", default=None, help="ResNet depths, comma-separated (default 50,101; --quick: 50)")
    parser.add_argument("--train-batch-sizes", default="2", help="training batch sizes, comma-separated (default 2)")
    parser.add_argument("--budget-s", type=float, default=None, help="wall-time budget of the whole run in seconds (default 900; --quick 60)")
    parser.add_argument("--out", default=None, help="output folder (default benchmarks/, --quick: benchmarks/out/)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--skip", default="", help="parts to leave out, comma-separated: train, ablation, scaling, profile")
    parser.add_argument("--min-repeats", type=int, default=1, help="timed calls per detector at least, even beyond the budget (CPU: the first call counts; CUDA: after an untimed warm-up)")
    parser.add_argument("--train-ablation", action="store_true", help="time each speed option left out of ours in training too (R-50 only; ~4 training steps per turn more)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    if args.device.type == "cuda" and args.device.index is None:
        # torch.cuda.set_device and friends want an index.
        args.device = torch.device("cuda", torch.cuda.current_device())
    if args.device.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu, cuda or cuda:N, got {args.device}")
    default_depths = "50" if args.quick else "50,101"
    try:
        args.depths = [int(d) for d in (args.depths or default_depths).split(",") if d]
        args.train_batch_sizes = [int(b) for b in args.train_batch_sizes.split(",") if b]
    except ValueError:
        parser.error(f"--depths and --train-batch-sizes take comma-separated integers, got {args.depths!r}, {args.train_batch_sizes!r}")
    args.skip = {s for s in args.skip.split(",") if s}
    unknown = args.skip - {"train", "ablation", "scaling", "profile", "contention"}
    if unknown:
        parser.error(f"--skip: unknown parts {sorted(unknown)}; expected some of train, ablation, scaling, profile, "
                     "contention")
    if args.contention is None:
        args.contention = 1 if args.device.type == "cpu" else 0
    if args.contention < 0:
        parser.error(f"--contention must be >= 0, got {args.contention}")
    if args.bf16 == "auto":
        args.bf16_reason = resolve_precision("auto", args.device).reason
        args.bf16 = resolve_precision("auto", args.device).name == "bf16"
    else:
        args.bf16_reason = f"--bf16 {args.bf16}"
        args.bf16 = args.bf16 == "on"
    # Timed calls at most: a GPU call takes milliseconds, a CPU call seconds.
    args.max_repeats = 20 if args.device.type == "cuda" else 7
    if args.quick:
        # --quick checks that everything runs; its numbers (tiny images, oneDNN's first
        # calls at each shape) are not for comparisons. Three calls show the turns work.
        args.max_repeats = 3
    if args.budget_s is None:
        # The full run times fp32 and bf16 of both detectors and the contention part too.
        args.budget_s = 60.0 if args.quick else 900.0
    if args.out is None:
        args.out = str(HERE / "out") if args.quick else str(HERE)
    return args


def scale_settings(quick: bool) -> Dict[str, Any]:
    """Image size, proposal count and sweep points of a full or ``--quick`` run."""
    if quick:
        # Tiny images and few RoIs: the point is to run every code path, fast.
        return {
            "image_size": (128, 160),
            "spec": dict(min_size=128, max_size=160, num_proposals=16, pre_nms_topk=500, rois_per_image_train=8,
                         pre_nms_topk_train=500, post_nms_topk_train=100),
            "sizes": [96, 128],
            "proposals": [8, 16],
        }
    # Appendix A: shorter side 600, longer at most 1000; 300 proposals. A 4:3 image (COCO's typical shape).
    return {
        "image_size": (600, 800),
        "spec": dict(min_size=600, max_size=1000, num_proposals=300),
        # The ends and the middle of each range: 5 distinct detector runs (600 px with
        # 300 proposals is a point of both sweeps); 800 px and 1000 proposals add ~30 s.
        "sizes": [400, 600, 1000],
        "proposals": [100, 300, 600],
    }


class Budget:
    """Wall-time bookkeeping: how many repeats fit in what is left of ``total_s``."""

    def __init__(self, total_s: float):
        self.total_s = float(total_s)
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.total_s - self.elapsed()

    def repeats(
        self, seconds_per_round: float, share_s: float, *, minimum: int = 1, maximum: int = 7, reserve_s: float = 0.0
    ) -> int:
        """Timed rounds that fit in ``min(share_s, time left - reserve_s)``, within ``[minimum, maximum]``.

        ``reserve_s``: what the parts still to come need for their first turns.
        """
        room = min(share_s, self.left() - reserve_s)
        return max(minimum, min(maximum, int(room // max(seconds_per_round, 1e-6))))

    def fits(self, estimate_s: float) -> bool:
        """Whether a part estimated to take ``estimate_s`` still fits in what is left."""
        return estimate_s <= self.left()


# --------------------------------------------------------------------------- helpers
def padded_size(height: int, width: int, divisibility: int = 32) -> Tuple[int, int]:
    return (math.ceil(height / divisibility) * divisibility, math.ceil(width / divisibility) * divisibility)


class StageTimer:
    """Wall time spent in the stages of our detector during calls, via forward hooks.

    Stages: ``trunk`` (backbone), ``rpn``, ``roi_pool``, ``res5``, ``predictor``,
    ``roi_post`` (the rest of the RoI heads: decoding, NMS), ``other``
    (preprocessing, mapping boxes back). The device is synchronized at every
    boundary, so each stage's time is its own. ``res5`` is the time of
    ``ROIHeads.pool_and_res5`` less the pooling in it: res5 is not always called
    as one module (its first conv may run on the map before pooling).
    """

    STAGES = ("trunk", "rpn", "roi_pool", "res5", "predictor", "roi_post", "other")

    def __init__(self, model: nn.Module, device: torch.device):
        self.device = device
        self.totals: Dict[str, float] = {}
        self._start: Dict[str, float] = {}
        self.rois: List[int] = []
        heads = model.roi_heads
        self._modules = {
            "trunk": model.backbone,
            "rpn": model.rpn,
            "roi_heads": heads,
            "roi_pool": heads.pooler,
            "predictor": heads.predictor,
        }
        self._handles = []
        for name, module in self._modules.items():
            self._handles.append(module.register_forward_pre_hook(self._pre(name)))
            self._handles.append(module.register_forward_hook(self._post(name)))
        self._handles.append(heads.register_forward_pre_hook(self._count_rois))
        # A method has no hooks: time it through an instance attribute, removed by remove().
        self._heads = heads
        pool_and_res5 = heads.pool_and_res5

        def timed_pool_and_res5(*args, **kwargs):
            self._pre("pool_and_res5")(None, args)
            out = pool_and_res5(*args, **kwargs)
            self._post("pool_and_res5")(None, args, out)
            return out

        heads.pool_and_res5 = timed_pool_and_res5

    def _pre(self, name):
        def hook(_module, _args):
            synchronize(self.device)
            self._start[name] = time.perf_counter()

        return hook

    def _post(self, name):
        def hook(_module, _args, _output):
            synchronize(self.device)
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - self._start.pop(name)

        return hook

    def _count_rois(self, _module, args):
        self.rois.append(sum(len(p) for p in args[1]))

    def run(self, fn: Callable[[], Any]) -> Dict[str, float]:
        """Call ``fn`` once; seconds per stage and ``total``."""
        self.totals = {}
        total = Timer(self.device)(fn)
        t = self.totals
        stages = {
            "trunk": t.get("trunk", 0.0),
            "rpn": t.get("rpn", 0.0),
            "roi_pool": t.get("roi_pool", 0.0),
            "res5": t.get("pool_and_res5", 0.0) - t.get("roi_pool", 0.0),
            "predictor": t.get("predictor", 0.0),
        }
        stages["roi_post"] = t.get("roi_heads", 0.0) - stages["roi_pool"] - stages["res5"] - stages["predictor"]
        stages["other"] = total - t.get("trunk", 0.0) - t.get("rpn", 0.0) - t.get("roi_heads", 0.0)
        stages["total"] = total
        return stages

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        if "pool_and_res5" in vars(self._heads):
            del self._heads.pool_and_res5


def inference_fn(model: nn.Module, images: List[torch.Tensor], device: torch.device, precision: str, out: Optional[dict] = None, key: str = ""):
    """A no-argument call of ``model(images)`` under inference mode, in ``precision`` (fp32 or bf16 autocast)."""

    def call():
        with torch.inference_mode(), autocast_context(device, precision):
            result = model(images)
        if out is not None:
            out[key] = result

    return call


def training_step_fn(model: nn.Module, images, targets, device: torch.device, precision: str):
    """One SGD iteration (forward, backward, step) of ``model`` in training mode, the
    forward pass in ``precision`` (fp32 or bf16 autocast, as the trainer's ``solver.amp``)."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # A small learning rate: the weights barely move over the timed iterations.
    optimizer = torch.optim.SGD(params, lr=1e-5, momentum=0.9, weight_decay=1e-4)

    def step():
        with autocast_context(device, precision):
            losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is not finite: {float(loss)}")

    return step


class TrainerThreads:
    """A training step of ours with the thread count our trainer would give it.

    ``tools/train_net.py`` on the CPU (config ``cpu_threads=0``) runs
    :class:`detectron_res.engine.threads.ComputeThreads`: no more torch threads than
    the cores other processes leave free. Here the same decision is taken before
    every step of ours, from the load the other processes put on the CPU since its
    previous step (this process's own CPU time, torchvision's steps included, is
    not counted); the count is restored afterwards, so torchvision's steps run with
    torch's own count, as torchvision's users run them. On a quiet machine nothing
    changes. ``threads`` records the count of every call.
    """

    def __init__(self, step: Callable[[], Any]):
        self.step = step
        self.max_threads = torch.get_num_threads()
        self.cores = available_cores()
        self.meter = CpuLoadMeter()
        self.threads: List[int] = []

    def __call__(self) -> None:
        others = self.meter.sample()
        n = self.max_threads if others is None else threads_for_load(others, max_threads=self.max_threads,
                                                                     cores=self.cores)
        self.threads.append(n)
        torch.set_num_threads(n)
        try:
            self.step()
        finally:
            torch.set_num_threads(self.max_threads)


def uses_trainer_threads(variant: str) -> bool:
    """Ours' training variants run with our trainer's thread policy (and torchvision's
    copy named ``torchvision_trainer_threads``); ``ours_torch_threads`` keeps torch's count."""
    return (variant.startswith("ours") and variant != "ours_torch_threads") or variant == "torchvision_trainer_threads"


def first_call_is_timed(device: torch.device) -> bool:
    """On the CPU the first call of a detector is as fast as later ones (measured: a
    training iteration 49.6 s first, 51.6 s second; torchvision's 54.2 s, 53.8 s), so
    it is a timed sample, once the inference section has made one untimed call of
    ours (the process's very first call at new shapes is slower); on CUDA it pays
    for kernel selection and is a warm-up only."""
    return device.type == "cpu"


def _more_rounds(
    args, fns: Dict[str, Callable[[], Any]], first_s: Dict[str, float], first_cpu_s: Dict[str, float],
    budget: Budget, share_s: float, reserve_s: float = 0.0,
) -> Tuple[Dict[str, List[float]], Dict[str, List[float]]]:
    """Timed rounds after the first calls (which took ``first_s``), as many as the budget allows
    (``share_s`` for this part, keeping ``reserve_s`` for the parts to come).

    Returns wall and CPU seconds per call of each function; on the CPU the first
    calls are included (see :func:`first_call_is_timed`).
    """
    device = args.device
    counted = first_call_is_timed(device)
    per_round = sum(first_s.values())
    repeats = budget.repeats(
        per_round, share_s - per_round, minimum=max(args.min_repeats - int(counted), 0),
        maximum=args.max_repeats - int(counted), reserve_s=reserve_s,
    )
    cpu_times: Dict[str, List[float]] = {}
    times = interleaved_timings(fns, device=device, warmup=0, repeats=repeats, cpu_times=cpu_times)
    if counted:
        for name, seconds in first_s.items():
            times[name].insert(0, seconds)
            cpu_times.setdefault(name, []).insert(0, first_cpu_s[name])
    return times, cpu_times


def _record_times(result: Dict[str, Any], times: Dict[str, List[float]], cpu_times: Dict[str, List[float]]) -> None:
    """Store wall and CPU times, their summaries and the paired ratios to torchvision in ``result``."""
    result["times"] = times
    result["summary"] = {name: summarize_times(t) for name, t in times.items()}
    result["ratio_vs_torchvision"] = {
        name: paired_ratio(t, times["torchvision"]) for name, t in times.items() if name != "torchvision"
    }
    # Ablation variants against ours: > 1 means the option left out saves time.
    result["ratio_vs_ours"] = {name: paired_ratio(t, times["ours"]) for name, t in times.items() if name != "ours"}
    result["bf16_ratios"] = {
        label: paired_ratio(times[a], times[b]) for label, (a, b) in BF16_PAIRS.items() if a in times and b in times
    }
    if result.get("device_type", "cpu") == "cpu" and cpu_times:
        result["cpu_times"] = cpu_times
        result["cpu_summary"] = {name: summarize_times(t) for name, t in cpu_times.items()}
        result["cpu_ratio_vs_torchvision"] = {
            name: paired_ratio(t, cpu_times["torchvision"]) for name, t in cpu_times.items() if name != "torchvision"
        }
        result["cpu_ratio_vs_ours"] = {
            name: paired_ratio(t, cpu_times["ours"]) for name, t in cpu_times.items() if name != "ours"
        }
        result["cpu_bf16_ratios"] = {
            label: paired_ratio(cpu_times[a], cpu_times[b])
            for label, (a, b) in BF16_PAIRS.items() if a in cpu_times and b in cpu_times
        }


class _Matmul:
    """A dense ``size x size`` matmul as a no-argument call (timed in turns with the detectors)."""

    def __init__(self, device: torch.device, dtype: torch.dtype, size: int):
        g = torch.Generator().manual_seed(0)
        self.a = torch.randn(size, size, generator=g).to(device=device, dtype=dtype)
        self.b = torch.randn(size, size, generator=g).to(device=device, dtype=dtype)
        self.size, self.dtype, self.flop = size, dtype, 2.0 * size**3

    def __call__(self) -> None:
        if self.a.is_cuda and self.dtype == torch.float32:
            # Match the precision cuDNN gives the detectors' fp32 convolutions
            # (TF32 unless torch.backends.cudnn.allow_tf32 is turned off).
            saved = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
            try:
                torch.mm(self.a, self.b)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = saved
        else:
            torch.mm(self.a, self.b)


def _matmul_fn(device: torch.device) -> _Matmul:
    """The fp32 matmul: the rate that ours' fp32 inference is compared with."""
    return _Matmul(device, torch.float32, default_matmul_size(device, torch.float32))


class Interrupted(BaseException):
    """SIGTERM (e.g. from ``timeout``): stop measuring, write what was measured."""


def _raise_interrupted(signum, _frame):
    raise Interrupted(f"stopped by signal {signum}")


def _error_record(part: str, exc: BaseException) -> Dict[str, str]:
    return {"part": part, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=6)}


# ------------------------------------------------------------------------- sections
def ablation_models(ours: nn.Module, spec: DetectorSpec, left_out: Sequence[str]) -> Dict[str, nn.Module]:
    """``ours_plain`` (every speed option off) and ``ours-<option>`` (ours without it), with ours' weights."""
    models = {"ours_plain": with_speed_options(ours, spec, ())}
    for option in left_out:
        models[f"ours-{option}"] = with_speed_options(ours, spec, [o for o in SPEED_OPTIONS if o != option])
    return models


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
    warmup_s: Dict[str, float] = {}
    memory: Dict[str, Any] = {}
    first_cpu_s: Dict[str, float] = {}
    for name, model in variants.items():
        cpu_start, start = time.process_time(), time.perf_counter()
        memory[name] = peak_memory(inference_fn(model, images, device, precision_of(name), outputs, name), device)
        warmup_s[name] = time.perf_counter() - start
        first_cpu_s[name] = time.process_time() - cpu_start
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
    result["macs"] = count_macs(ours, padded, num_rois)

    fns = {name: inference_fn(model, images, device, precision_of(name)) for name, model in variants.items()}
    matmul = _matmul_fn(device)
    matmul_times = [Timer(device)(matmul) for _ in range(3)]
    fns["matmul"] = matmul
    times, cpu_times = _more_rounds(args, fns, warmup_s, first_cpu_s, budget, share_s, reserve_s)
    matmul_times += times.pop("matmul")
    cpu_times.pop("matmul", None)
    _record_times(result, times, cpu_times)
    result["matmul_interleaved"] = {
        "size": matmul.size,
        "dtype": str(matmul.dtype).replace("torch.", ""),
        "median_flops": matmul.flop / statistics.median(matmul_times),
        "best_flops": matmul.flop / min(matmul_times),
        "n": len(matmul_times),
    }
    return result


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
    processes running beside them all the time (:class:`common.BusyLoad`).
    """
    device = args.device
    if contention:
        # Both thread policies for both detectors: ours as its trainer runs it and with
        # torch's count; torchvision with torch's count and with our trainer's policy.
        variants = {"ours": copy.deepcopy(ours), "torchvision": copy.deepcopy(tv),
                    "ours_torch_threads": copy.deepcopy(ours), "torchvision_trainer_threads": copy.deepcopy(tv)}
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
    device = args.device
    warmup_s, memory = {}, {}
    first_cpu_s: Dict[str, float] = {}
    for name, fn in fns.items():
        cpu_start, start = time.process_time(), time.perf_counter()
        memory[name] = peak_memory(fn, device)
        warmup_s[name] = time.perf_counter() - start
        first_cpu_s[name] = time.process_time() - cpu_start
    result["warmup_s"] = warmup_s
    result["peak_memory"] = memory
    times, cpu_times = _more_rounds(args, fns, warmup_s, first_cpu_s, budget, share_s, reserve_s)
    _record_times(result, times, cpu_times)


def scaling_section(args, ours: nn.Module, base_spec: DetectorSpec, settings, budget: Budget, share_s: float) -> Dict[str, Any]:
    """Latency by stage of our optimized detector against the shorter side and the proposal count.

    Each point is a detector built from its own config (input size, proposal
    count) with the weights of ``ours``.
    """
    device = args.device
    height, width = settings["image_size"]
    points: List[Tuple[str, int, DetectorSpec, Tuple[int, int]]] = []
    for side in settings["sizes"]:
        # Keep the 4:3 image; the max size grows with it so that the shorter side is what is set.
        long_side = int(round(side * width / height))
        points.append(("size", side, base_spec.with_(min_size=side, max_size=long_side), (side, long_side)))
    for n in settings["proposals"]:
        points.append(("proposals", n, base_spec.with_(num_proposals=n), (height, width)))
    state = ours.state_dict()
    rows: List[Dict[str, Any]] = []
    measured: Dict[Tuple[DetectorSpec, Tuple[int, int]], Dict[str, Any]] = {}
    deadline = budget.elapsed() + share_s
    for kind, value, spec, (h, w) in points:
        if (spec, (h, w)) in measured:  # 600 px with 300 proposals is a point of both sweeps
            rows.append(dict(measured[(spec, (h, w))], sweep=kind, value=value))
            continue
        model = build_ours(spec, seed=args.seed)
        model.load_state_dict(state)
        model = optimize_for_inference(model).to(device)
        images = make_images(1, h, w, seed=args.seed, device=device)
        stages = StageTimer(model, device)
        fn = inference_fn(model, images, device, "fp32")
        first = stages.run(fn)  # new shapes: a warm-up on CUDA, a sample on the CPU
        runs = [first] if first_call_is_timed(device) else []
        if not runs or args.quick or budget.elapsed() + first["total"] < deadline:
            runs.append(stages.run(fn))
        stages.remove()
        best = min(runs, key=lambda r: r["total"])
        rows.append(
            {
                "sweep": kind,
                "value": value,
                "image": [h, w],
                "proposals": spec.num_proposals,
                "rois": stages.rois[-1] if stages.rois else None,
                "calls": len(runs),
                "stages_s": best,
                "macs": count_macs(model, padded_size(h, w), spec.num_proposals)["total"],
            }
        )
        measured[(spec, (h, w))] = rows[-1]
    return {"rows": rows}


def profile_section(args, ours: nn.Module, images, row_limit: int = 15) -> Dict[str, Any]:
    """Top operators (self time) of one call of our optimized detector."""
    device = args.device
    model = optimize_for_inference(ours).to(device)
    fn = inference_fn(model, images, device, "fp32")
    if not first_call_is_timed(device):
        fn()  # warm-up: kernel selection would dominate the profile
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        synchronize(device)
    events = prof.key_averages()

    def device_self(e) -> float:
        return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)))

    key = device_self if device.type == "cuda" else (lambda e: float(e.self_cpu_time_total))
    total = sum(key(e) for e in events) or 1.0
    top = sorted(events, key=key, reverse=True)[:row_limit]
    return {
        "clock": "device (CUDA kernels)" if device.type == "cuda" else "CPU",
        "total_ms": total / 1000.0,
        "top": [
            # CUDA kernel names run to hundreds of characters of template arguments.
            {"op": e.key[:90], "self_ms": key(e) / 1000.0, "percent": 100.0 * key(e) / total, "calls": int(e.count)}
            for e in top
        ],
    }


# --------------------------------------------------------------------------- report
def _fmt_s(s: Optional[float]) -> str:
    if s is None:
        return "-"
    return f"{s * 1000:.1f} ms" if s < 1.0 else f"{s:.2f} s"


def _fmt_time_summary(summary: Dict[str, float]) -> str:
    if summary["n"] == 1:
        return f"{_fmt_s(summary['median_s'])} (n=1)"
    return f"{_fmt_s(summary['median_s'])} ({_fmt_s(summary['min_s'])}-{_fmt_s(summary['max_s'])}, n={summary['n']})"


def _fmt_mib(record: Dict[str, Any]) -> str:
    value = record.get("peak_mib") if record else None
    return "-" if value is None else f"{value:.0f} MiB"


def _fmt_cpu_ratio(record: Dict[str, Any], name: str) -> str:
    """Median paired ratio of CPU seconds (CPU runs only), or '-'."""
    ratio = record.get("cpu_ratio_vs_torchvision", {}).get(name)
    return "-" if ratio is None else f"{ratio['median']:.2f}"


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _ablation_table(record: Dict[str, Any], title: str) -> List[str]:
    """Markdown lines: every variant of one comparison against ours and torchvision."""
    lines = [f"### {title}", ""]
    lines.append(
        "| variant | median (min-max, n) | / ours | (CPU time) | / torchvision | (CPU time) | peak memory | "
        "detections equal to tv |"
    )
    lines.append("|---|---|---|---|---|---|---|---|")
    for name, s in record["summary"].items():
        vs_ours = record.get("ratio_vs_ours", {}).get(name)
        vs_ours_cpu = record.get("cpu_ratio_vs_ours", {}).get(name)
        agree = record.get("agreement", {}).get(name)
        lines.append(
            f"| {name} | {_fmt_time_summary(s)} | {'%.2f' % vs_ours['median'] if vs_ours else '1'} | "
            f"{'%.2f' % vs_ours_cpu['median'] if vs_ours_cpu else '-'} | "
            f"{'%.2f' % record['ratio_vs_torchvision'][name]['median'] if name != 'torchvision' else '1'} | "
            f"{_fmt_cpu_ratio(record, name) if name != 'torchvision' else '-'} | "
            f"{_fmt_mib(record['peak_memory'][name])} | "
            f"{'%d/%d' % (agree['matched'], max(agree['num_a'], agree['num_b'])) if agree else '-'} |"
        )
    lines.append("")
    lines.append(
        "ours: every speed option on (the config's defaults); ours_plain: all off (`model.fold_frozen_bn=false`, "
        "`model.speed.*=false`); ours-X: ours with option X off, so '/ ours' above 1 is what X saves. Ratios are "
        "medians of the per-turn ratios. What each option does: `benchmarks/OPTIMIZATIONS.md`."
    )
    lines.append("")
    return lines


def _fmt_isa(isa: Optional[Dict[str, Any]]) -> str:
    if not isa:
        return "-"
    native = isa.get("native_bf16")
    return (", ".join(isa.get("flags") or ["no AVX2"]) + "; native bf16: "
            + (f"yes ({native})" if native else "no (bf16 is emulated: slower than fp32)"))


def _is_ablation(record: Dict[str, Any]) -> bool:
    return any(name.startswith(("ours_plain", "ours-", "ours+")) for name in record.get("summary", {}))


def _bf16_table(results: Dict[str, Any]) -> List[str]:
    """Markdown lines: fp32 and bf16 of both detectors, timed in the same turns."""
    rows = [("inference", r) for r in results.get("inference", [])] + [
        (f"training, batch {r['batch_size']}", r) for r in results.get("training", []) if not r.get("contention")]
    rows = [(kind, r) for kind, r in rows if "error" not in r and r.get("bf16_ratios")]
    if not rows:
        return []
    labels = list(BF16_PAIRS)
    lines = ["## bf16 autocast beside fp32", ""]
    lines.append("| part | model | ours fp32 | ours bf16 | torchvision fp32 | torchvision bf16 | "
                 + " | ".join(labels) + " |")
    lines.append("|---|---|---|---|---|---|" + "---|" * len(labels))
    for kind, r in rows:
        s = r["summary"]
        cells = []
        for label in labels:
            wall = r["bf16_ratios"].get(label)
            cpu = r.get("cpu_bf16_ratios", {}).get(label)
            cells.append("-" if wall is None else f"**{wall['median']:.2f}**" + (f" (CPU {cpu['median']:.2f})" if cpu else ""))
        lines.append(
            f"| {kind} | {r['model']} | " + " | ".join(_fmt_time_summary(s[n]) for n in
                                                      ("ours", "ours_bf16", "torchvision", "torchvision_bf16"))
            + " | " + " | ".join(cells) + " |"
        )
    lines.append("")
    agreement = [f"{r['model']} {name}: {a['matched']}/{max(a['num_a'], a['num_b'])}"
                 for _, r in rows for name, a in r.get("agreement_bf16", {}).items()]
    lines.append(
        "bf16: the same models called under `torch.autocast(dtype=torch.bfloat16)` (ours as "
        "`Predictor(precision=\"bf16\")` and `solver.amp` run it: convolutions and matrix products in bf16, RoIAlign, "
        "box decoding and NMS in fp32; in inference ours with its weights stored in bf16 once, as `Predictor` "
        "prepares it). Ratios: medians of the per-turn ratios, wall time (and CPU time). "
        + ("Detections of bf16 equal to the same detector's fp32 ones (same label, IoU >= 0.99; random weights, so "
           "this checks the path, not accuracy; the accuracy cost is measured on the demo, `OPTIMIZATIONS.md`): "
           + "; ".join(agreement) + "." if agreement else "")
    )
    lines.append("")
    return lines


def _fmt_pair(record: Dict[str, Any], a: str, b: str) -> str:
    """Median per-turn ratio a / b of wall (and CPU) time, or '-'."""
    times, cpu = record.get("times", {}), record.get("cpu_times", {})
    if a not in times or b not in times:
        return "-"
    text = f"{paired_ratio(times[a], times[b])['median']:.2f}"
    if a in cpu and b in cpu:
        text += f" (CPU {paired_ratio(cpu[a], cpu[b])['median']:.2f})"
    return text


def _contention_table(results: Dict[str, Any]) -> List[str]:
    """Markdown lines: training ours / torchvision with and without a competing load."""
    loaded = [r for r in results.get("training", []) if r.get("contention") and "error" not in r]
    if not loaded:
        return []
    quiet = {(r["depth"], r["batch_size"]): r for r in results.get("training", [])
             if not r.get("contention") and "error" not in r}
    lines = ["## Training under contention", ""]
    lines.append("| model | batch | busy processes | ours | torchvision | ours / torchvision | (CPU time) | "
                 "same without the load (this run) | (CPU time) | ours with torch's threads / tv | "
                 "ours / tv with our trainer's threads |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in loaded:
        ratio = r["ratio_vs_torchvision"]["ours"]
        q = quiet.get((r["depth"], r["batch_size"]))
        q_ratio = q["ratio_vs_torchvision"]["ours"]["median"] if q else None
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {r['contention']} | {_fmt_time_summary(r['summary']['ours'])} | "
            f"{_fmt_time_summary(r['summary']['torchvision'])} | **{ratio['median']:.2f}** "
            f"({ratio['min']:.2f}-{ratio['max']:.2f}) | {_fmt_cpu_ratio(r, 'ours')} | "
            f"{'-' if q_ratio is None else '%.2f' % q_ratio} | {_fmt_cpu_ratio(q, 'ours') if q else '-'} | "
            f"{_fmt_pair(r, 'ours_torch_threads', 'torchvision')} | {_fmt_pair(r, 'ours', 'torchvision_trainer_threads')} |"
        )
    lines.append("")
    lines.append(
        "The training comparison (fp32) with `--contention` busy processes (`while True: pass`, one thread each) "
        "running the whole time: what another job on a shared machine does. torchvision's steps run with torch's "
        "thread count; ours with the count our trainer gives it (`cpu_threads=0`: no more threads than the cores "
        "other processes leave free, `detectron_res/engine/threads.py`; `--fixed-threads` turns that off). "
        "Threads per call of ours / of torchvision_trainer_threads: " + "; ".join(
            f"{r['model']}: {r.get('ours_threads', {}).get('ours', '-')} / "
            f"{r.get('ours_threads', {}).get('torchvision_trainer_threads', '-')}" for r in loaded)
        + ". Why: `benchmarks/OPTIMIZATIONS.md`, \"Training under contention\"."
    )
    lines.append("")
    return lines


def write_markdown(results: Dict[str, Any], path: Path, png_name: Optional[str]) -> None:
    info = results["machine"]
    lines: List[str] = []
    device = info["device"]
    cuda = device.startswith("cuda")
    title = "GPU" if cuda else "CPU"
    lines.append(f"# Speed: ours vs torchvision Faster R-CNN C4 ({title}{', --quick' if results['quick'] else ''})")
    lines.append("")
    lines.append(
        "Written by `python " + " ".join(results["argv"]) + "` (benchmarks/run.py); every figure below was "
        "measured in that one run. Method, settings and the weight mapping: `benchmarks/run.py`, `benchmarks/common.py`."
    )
    lines.append("")
    lines.append("## Machine")
    lines.append("")
    lines.append("| | |")
    lines.append("|---|---|")
    rows = [
        ("date", results["date"]),
        ("device", info.get("gpu", info["cpu"]) + (f" (CUDA {info.get('cuda')}, cuDNN {info.get('cudnn')})" if cuda else "")),
        ("CPU", f"{info['cpu']}, {info['cpu_count']} logical cores, torch threads {info['torch_threads']}"),
        ("CPU vector ISA", _fmt_isa(info.get("cpu_isa"))),
        ("versions", f"Python {info['python']}, torch {info['torch']}, torchvision {info['torchvision']}"),
        ("platform", info["platform"]),
        ("precisions", ("fp32 and bf16 autocast" if results["bf16"] else "fp32") + f" ({results['bf16_reason']})" + (
            f"; fp32 convolutions in TF32: {info.get('cudnn_tf32')}, cudnn.benchmark on" if cuda else "")),
        ("load average at start / end", f"{results['load_start']} / {results['load_end']}"),
        ("wall time of the run", f"{results['wall_s']:.0f} s (budget {results['budget_s']:.0f} s)"),
    ]
    for name, value in rows:
        lines.append(f"| {name} | {value} |")
    mm = results.get("matmul", {})
    for key, record in mm.items():
        lines.append(
            f"| dense matmul {record['dtype']} {record['size']}x{record['size']} | "
            f"{record['median_flops'] / 1e9:.1f} GFLOP/s median, {record['best_flops'] / 1e9:.1f} best |"
        )
    lines.append("")
    spec = results["spec"]
    h, w = results["image_size"]
    lines.append(
        f"Settings (both detectors): one {h}x{w} RGB image (shorter side {spec['min_size']}, max {spec['max_size']}), "
        f"RPN {spec['pre_nms_topk']} -> {spec['num_proposals']} proposals (NMS 0.7), RoIAlign 14x14 (aligned=False, "
        f"adaptive sampling) then res5 + average pool, {spec['num_classes']} classes, score > 0.05, NMS 0.3, 100 "
        f"detections; training: {spec['pre_nms_topk_train']} -> {spec['post_nms_topk_train']} proposals, "
        f"{spec['rois_per_image_train']} RoIs per image, SGD. ResNet layout: torchvision v1.5, FrozenBN. Weights: "
        "random (FrozenBN with random statistics), copied into torchvision's model key by key. "
        "'ours' = our detector with the config's speed options (`model.fold_frozen_bn`, `model.speed.*`, all on), "
        "in inference after `prepare_for_inference()` (FrozenBN folded, channels-last weights), in training as "
        "`tools/train_net.py` runs it. Times: median (min-max, n timed calls), the detectors called in turns; on the CPU the first call of each "
        "is one of the n (it also measures peak memory; first calls are no slower there, after one untimed "
        "inference call of ours per model depth), on CUDA it is an untimed warm-up."
    )
    lines.append("")

    inf = results.get("inference", [])
    if inf:
        lines.append("## Inference latency (one image)")
        lines.append("")
        lines.append(
            "| model | ours | torchvision | ours / torchvision | (CPU time) | ours_plain / tv | GMACs | "
            "ours GFLOP/s | % of matmul | peak mem ours / tv | detections equal to tv |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in inf:
            if "error" in r:
                lines.append(f"| {r.get('model', '?')} | error: {r['error']} |")
                continue
            s = r["summary"]
            ratio = r["ratio_vs_torchvision"]["ours"]
            plain_ratio = r["ratio_vs_torchvision"].get("ours_plain")
            macs = r["macs"]["total"]
            rate = 2 * macs / s["ours"]["median_s"]
            peak = r["matmul_interleaved"]["best_flops"]
            agree = r["agreement"]["ours"]
            lines.append(
                f"| {r['model']} | {_fmt_time_summary(s['ours'])} | {_fmt_time_summary(s['torchvision'])} | "
                f"**{ratio['median']:.2f}** ({ratio['min']:.2f}-{ratio['max']:.2f}) | {_fmt_cpu_ratio(r, 'ours')} | "
                f"{'%.2f' % plain_ratio['median'] if plain_ratio else '-'} | {macs / 1e9:.1f} | {rate / 1e9:.1f} | "
                f"{100 * rate / peak:.0f}% | {_fmt_mib(r['peak_memory']['ours'])} / {_fmt_mib(r['peak_memory']['torchvision'])} | "
                f"{agree['matched']}/{max(agree['num_a'], agree['num_b'])} (max score diff {agree['max_score_diff']:.1e}) |"
            )
        lines.append("")
        lines.append(
            "GMACs: multiply-adds of convolutions and linear layers of ours (trunk at the padded size, RPN head, res5 "
            "and predictor on the proposals; res5's first conv on the feature map where it runs there), counted by "
            "`FlopCounterMode`; GFLOP/s = 2 x GMACs / median time; "
            "% of matmul: of the best rate of a dense fp32 matmul (2048^3 on CPU, 8192^3 on CUDA) timed in the "
            "same turns as the detectors: the machine's limit in this run (fp32 rows; bf16 is in its own table). "
            "'Detections equal': detections of ours matched by torchvision's (same label, IoU >= 0.99) over the "
            "larger count. Ratios are medians of the per-turn ratios (range in brackets); '(CPU time)' is the same "
            "ratio of the process's CPU seconds, which other jobs on a shared CPU disturb less than wall time."
        )
        lines.append("")
        for r in inf:
            if "error" not in r and _is_ablation(r):
                lines += _ablation_table(r, f"Ablation of the speed options, inference ({r['model']})")

    train = results.get("training", [])
    if train:
        lines.append("## Training iteration (forward, backward, SGD step)")
        lines.append("")
        lines.append(
            "| model | batch | ours | torchvision | ours / torchvision | (CPU time) | images/s ours / tv | "
            "ours_plain / tv | peak mem ours / tv |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for r in train:
            if r.get("contention"):
                continue  # its own table below
            if "error" in r:
                lines.append(f"| {r.get('model', '?')} | {r.get('batch_size', '?')} | error: {r['error']} |")
                continue
            s = r["summary"]
            ratio = r["ratio_vs_torchvision"]["ours"]
            plain_ratio = r["ratio_vs_torchvision"].get("ours_plain")
            ips = r["images_per_s"]
            lines.append(
                f"| {r['model']} | {r['batch_size']} | {_fmt_time_summary(s['ours'])} | {_fmt_time_summary(s['torchvision'])} | "
                f"**{ratio['median']:.2f}** ({ratio['min']:.2f}-{ratio['max']:.2f}) | {_fmt_cpu_ratio(r, 'ours')} | "
                f"{ips['ours']:.2f} / {ips['torchvision']:.2f} | "
                f"{'%.2f' % plain_ratio['median'] if plain_ratio else '-'} | "
                f"{_fmt_mib(r['peak_memory']['ours'])} / {_fmt_mib(r['peak_memory']['torchvision'])} |"
            )
        lines.append("")
        lines.append(
            "Each detector samples its own RPN anchors and RoIs (random), so the two do the same amount of work but "
            "not the same arithmetic. Ours' steps run with the thread count our trainer gives them on the CPU (no "
            "more threads than the cores other processes leave free; on a quiet machine torch's count), "
            "torchvision's with torch's count; threads of ours per call: " + "; ".join(
                f"{r['model']} batch {r['batch_size']}: {r['ours_threads']['ours']}" for r in train
                if not r.get("contention") and r.get("ours_threads", {}).get("ours")) + ". "
            "Memory: peak of the first iteration above what was in use before it (CUDA: "
            "allocated tensors; CPU: resident set, which the allocator's reuse of freed memory makes approximate)."
        )
        lines.append("")
        for r in train:
            if "error" not in r and _is_ablation(r) and not r.get("contention"):
                lines += _ablation_table(r, f"Ablation of the speed options, training ({r['model']}, batch {r['batch_size']})")

    lines += _bf16_table(results)
    lines += _contention_table(results)

    scaling = results.get("scaling")
    if scaling and scaling.get("rows"):
        lines.append("## Where the time goes: latency of ours by stage")
        lines.append("")
        if png_name:
            lines.append(f"![scaling]({png_name})")
            lines.append("")
        stages = StageTimer.STAGES
        lines.append("| sweep | image | proposals | total | GMACs | " + " | ".join(stages) + " |")
        lines.append("|---|---|---|---|---|" + "---|" * len(stages))
        for row in scaling["rows"]:
            st = row["stages_s"]
            lines.append(
                f"| {row['sweep']} | {row['image'][0]}x{row['image'][1]} | {row['rois']} | "
                f"{_fmt_s(st['total'])} | "
                f"{row['macs'] / 1e9:.1f} | " + " | ".join(f"{100 * st[k] / st['total']:.0f}%" for k in stages) + " |"
            )
        lines.append("")
        lines.append(
            "Best of 1-2 calls per point (CPU: the first call counts; CUDA: after a warm-up call), "
            "R-50-C4 'ours'. trunk = stem..res4; roi_post = box decoding, score threshold, NMS; other = "
            "normalization, padding, mapping boxes back."
        )
        lines.append("")

    profile = results.get("profile")
    if profile and "top" in profile:
        lines.append(f"## Operator profile of ours ({results['spec_name']}, {profile['clock']} self time)")
        lines.append("")
        lines.append("| operator | self time | share | calls |")
        lines.append("|---|---|---|---|")
        for e in profile["top"]:
            lines.append(f"| `{e['op']}` | {e['self_ms']:.1f} ms | {e['percent']:.1f}% | {e['calls']} |")
        lines.append("")

    targets = results.get("targets", [])
    if targets:
        lines.append("## Targets")
        lines.append("")
        lines.append("| target | measured | status |")
        lines.append("|---|---|---|")
        for t in targets:
            lines.append(f"| {t['target']} | {t['measured']} | {t['status']} |")
        lines.append("")
        lines.append("What the speed options save, what did not help, and the gaps: `benchmarks/OPTIMIZATIONS.md`.")
        lines.append("")

    if results.get("errors") or results.get("skipped"):
        lines.append("## Not measured in this run")
        lines.append("")
        for item in results.get("skipped", []):
            lines.append(f"- skipped: {item}")
        for e in results.get("errors", []):
            lines.append(f"- {e['part']}: {e['error']}")
        lines.append("")
    path.write_text("\n".join(lines))


def plot_scaling(results: Dict[str, Any], path: Path) -> bool:
    """Stacked stage times against shorter side and proposal count; False if nothing to plot."""
    rows = (results.get("scaling") or {}).get("rows") or []
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, sweep, xlabel in ((axes[0], "size", "shorter side (px), 4:3 image"), (axes[1], "proposals", "proposals")):
        points = [r for r in rows if r["sweep"] == sweep]
        if not points:
            ax.set_visible(False)
            continue
        xs = [r["value"] for r in points]
        bottom = [0.0] * len(points)
        for stage in StageTimer.STAGES:
            ys = [r["stages_s"][stage] for r in points]
            ax.bar([str(x) for x in xs], ys, bottom=bottom, label=stage)
            bottom = [b + y for b, y in zip(bottom, ys)]
        ax.set_xlabel(xlabel)
        ax.set_ylabel("seconds per image")
        ax.set_title(f"{results['spec_name']} ours, {results['machine'].get('gpu', results['machine']['cpu'])}")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def evaluate_targets(results: Dict[str, Any]) -> List[Dict[str, str]]:
    """The issue's targets, checked against this run's numbers."""
    targets = []
    cuda = results["machine"]["device"].startswith("cuda")
    native_bf16 = (results["machine"].get("cpu_isa") or {}).get("native_bf16")
    for r in results.get("inference", []):
        if "error" in r:
            continue
        ratio = r["ratio_vs_torchvision"]["ours"]["median"]
        bf16 = r.get("bf16_ratios", {}).get("ours bf16 / ours fp32")
        if not cuda and bf16 is not None:
            cpu = r.get("cpu_bf16_ratios", {}).get("ours bf16 / ours fp32")
            targets.append({
                "target": f"{r['model']} inference bf16 <= {TARGET_BF16_INFERENCE_RATIO}x ours fp32 (CPU with native bf16)",
                "measured": f"{bf16['median']:.2f}x" + (f" (CPU time {cpu['median']:.2f}x)" if cpu else "")
                + f"; torchvision bf16 / fp32: {r['bf16_ratios']['torchvision bf16 / torchvision fp32']['median']:.2f}x",
                "status": _met(bf16["median"] <= TARGET_BF16_INFERENCE_RATIO) if native_bf16
                else "not applicable (no native bf16 on this CPU)",
            })
        if not cuda:
            targets.append({
                "target": f"{r['model']} inference <= {TARGET_INFERENCE_RATIO}x torchvision",
                "measured": f"{ratio:.2f}x (CPU time {_fmt_cpu_ratio(r, 'ours')}x)" + (
                    f"; all speed options off: {r['ratio_vs_torchvision']['ours_plain']['median']:.2f}x"
                    if "ours_plain" in r["ratio_vs_torchvision"] else ""),
                "status": _met(ratio <= TARGET_INFERENCE_RATIO),
            })
            peak = r["matmul_interleaved"]["best_flops"]
            if peak:
                fraction = 2 * r["macs"]["total"] / r["summary"]["ours"]["median_s"] / peak
                targets.append({
                    "target": f"{r['model']} inference >= {TARGET_MATMUL_FRACTION:.0%} of matmul FLOP/s",
                    "measured": f"{fraction:.0%}",
                    "status": _met(fraction >= TARGET_MATMUL_FRACTION),
                })
        elif r["depth"] == 101:
            for name in ("ours", "ours_bf16"):
                if name not in r["summary"]:
                    continue
                median = r["summary"][name]["median_s"]
                targets.append({
                    "target": f"R-101-C4 inference < {TARGET_GPU_R101_LATENCY_S * 1000:.0f} ms per image "
                              f"({precision_of(name)})",
                    "measured": _fmt_s(median),
                    "status": _met(median < TARGET_GPU_R101_LATENCY_S),
                })
        agree = r["agreement"]["ours"]["agreement"]
        targets.append({
            "target": f"{r['model']} detections equal to torchvision's (same weights)",
            "measured": f"{agree:.1%} matched",
            "status": _met(agree >= 0.95),
        })
    for r in results.get("training", []):
        if "error" in r:
            continue
        ratio = r["ratio_vs_torchvision"]["ours"]["median"]
        if r.get("contention"):
            targets.append({
                "target": f"{r['model']} batch {r['batch_size']} training with {r['contention']} busy process(es) "
                          f"beside <= {TARGET_CONTENTION_TRAIN_RATIO}x torchvision",
                "measured": f"{ratio:.2f}x (CPU time {_fmt_cpu_ratio(r, 'ours')}x); ours with torch's threads: "
                            f"{_fmt_pair(r, 'ours_torch_threads', 'torchvision')}x",
                "status": _met(ratio <= TARGET_CONTENTION_TRAIN_RATIO),
            })
        elif cuda:
            ips = r["images_per_s"]
            for ours_name, tv_name in (("ours", "torchvision"), ("ours_bf16", "torchvision_bf16")):
                if ours_name not in ips:
                    continue
                speedup = ips[ours_name] / ips[tv_name]
                targets.append({
                    "target": f"{r['model']} batch {r['batch_size']} training >= {TARGET_GPU_TRAIN_SPEEDUP}x "
                              f"torchvision images/s ({precision_of(ours_name)})",
                    "measured": f"{speedup:.2f}x",
                    "status": _met(speedup >= TARGET_GPU_TRAIN_SPEEDUP),
                })
        else:
            targets.append({
                "target": f"{r['model']} batch {r['batch_size']} training <= {TARGET_TRAIN_RATIO}x torchvision",
                "measured": f"{ratio:.2f}x (CPU time {_fmt_cpu_ratio(r, 'ours')}x)" + (
                    f"; all speed options off: {r['ratio_vs_torchvision']['ours_plain']['median']:.2f}x"
                    if "ours_plain" in r["ratio_vs_torchvision"] else ""),
                "status": _met(ratio <= TARGET_TRAIN_RATIO),
            })
    return targets


# ----------------------------------------------------------------------------- main
def _plan(args, ablation: bool) -> List[Dict[str, Any]]:
    """The parts of a run in order of importance, each with its estimated cost.

    ``cost``: seconds of one turn of every detector in the part, in units of one
    R-50 'ours' inference call (``_COST_UNITS``); ``turns``: how many turns the
    part should get when the budget allows, which sets its share of the budget.
    """
    parts: List[Dict[str, Any]] = []
    n_inference_ablation = 1 + len(INFERENCE_ABLATION)
    n_training_ablation = 1 + (len(TRAINING_ABLATION) + 1 if args.train_ablation else 0)
    pair = 2 + (2 * _BF16_COST if args.bf16 else 0)  # ours and torchvision, fp32 (and bf16)
    for i, depth in enumerate(args.depths):
        depth_cost = _DEPTH_COST.get(depth, 1.0)
        with_ablation = ablation and i == 0
        variants = pair + (n_inference_ablation if with_ablation else 0)
        parts.append({"kind": "inference", "depth": depth, "ablation": with_ablation,
                      "cost": _COST_UNITS["inference"] * depth_cost * variants, "turns": 2})
        if "train" in args.skip:
            continue
        for batch_size in args.train_batch_sizes:
            variants = pair + (n_training_ablation if with_ablation else 0)
            parts.append({"kind": "training", "depth": depth, "batch_size": batch_size, "ablation": with_ablation,
                          "cost": _COST_UNITS["training"] * depth_cost * variants * batch_size / 2,
                          "turns": 2 if i == 0 else 1})
    if args.contention and "train" not in args.skip and "contention" not in args.skip:
        # The first depth's first batch size; slower by the load (one core of two taken: ~1.5x).
        depth, batch_size = args.depths[0], args.train_batch_sizes[0]
        parts.append({"kind": "contention", "depth": depth, "batch_size": batch_size, "ablation": False,
                      "cost": _COST_UNITS["training"] * _DEPTH_COST.get(depth, 1.0) * 4 * batch_size / 2 * 1.5,
                      "turns": 2})
    if "profile" not in args.skip:
        parts.append({"kind": "profile", "cost": _COST_UNITS["profile"], "turns": 1})
    if "scaling" not in args.skip:
        parts.append({"kind": "scaling", "cost": _COST_UNITS["scaling"], "turns": 1})
    return parts


def measure(args, results: Dict[str, Any], budget: Budget, settings: Dict[str, Any], log: Callable[[str], None]) -> None:
    """Run every part of the benchmark that fits in the budget, filling ``results``.

    Each part's share of what is left is in proportion to its estimated cost
    times the turns it should get, among the parts still to come; a part whose
    first turn is estimated not to fit is skipped and recorded. A failing part
    is recorded and the next runs.
    """
    image_size = settings["image_size"]
    base_spec = DetectorSpec(**settings["spec"])
    parts = _plan(args, "ablation" not in args.skip)

    log(f"machine: {results['machine']}")
    try:
        results["matmul"] = {"fp32": matmul_flops(args.device, dtype=torch.float32)}
        if args.bf16:
            results["matmul"]["bf16"] = matmul_flops(args.device, dtype=torch.bfloat16)
        log(f"matmul: { {k: round(v['median_flops'] / 1e9, 1) for k, v in results['matmul'].items()} } GFLOP/s")
    except Exception as exc:  # noqa: BLE001 - a failing part is recorded, the rest runs
        results["errors"].append(_error_record("matmul", exc))

    images = make_images(1, *image_size, seed=args.seed, device=args.device)
    pairs: Dict[int, Tuple[nn.Module, nn.Module]] = {}
    unit_s: Optional[float] = None  # one R-50 'ours' inference call, once measured
    build_s: Dict[int, float] = {}
    for k, part in enumerate(parts):
        kind, depth = part["kind"], part.get("depth", args.depths[0])
        spec = base_spec.with_(depth=depth)
        label = {"inference": f"inference {spec.name}", "training": f"training {spec.name} batch {part.get('batch_size')}",
                 "contention": f"training {spec.name} batch {part.get('batch_size')} with {args.contention} busy "
                               "process(es)"}.get(kind, kind)
        weight = lambda p: p["cost"] * p["turns"]  # noqa: E731
        share_s = budget.left() * weight(part) / sum(weight(p) for p in parts[k:])
        # --quick runs every part whatever the budget: its point is to exercise every code path.
        if unit_s is not None and not args.quick:
            estimate_s = part["cost"] * unit_s + (build_s.get(args.depths[0], 0.0) * _DEPTH_COST.get(depth, 1.0)
                                                  if kind == "inference" else 0.0)
            if not budget.fits(estimate_s):
                results["skipped"].append(
                    f"{label}: its first turn (~{estimate_s:.0f} s) did not fit in the {budget.left():.0f} s left of "
                    f"--budget-s {args.budget_s:.0f}"
                )
                log(f"skipped {label} (~{estimate_s:.0f} s estimated, {budget.left():.0f} s left)")
                continue
        reserve_s = 0.0 if unit_s is None else sum(p["cost"] for p in parts[k + 1:]) * unit_s
        try:
            log(f"{label} (share {share_s:.0f} s)")
            if kind == "inference":
                start = time.perf_counter()
                ours, tv = build_pair(spec, seed=args.seed)
                pairs[depth] = (ours.to(args.device), tv.to(args.device))
                build_s[depth] = time.perf_counter() - start
                r = inference_section(args, ours, tv, spec, images, budget, share_s,
                                      ablation=part["ablation"], reserve_s=reserve_s)
                results["inference"].append(r)
                if unit_s is None:
                    unit_s = r["summary"]["ours"]["median_s"] / _DEPTH_COST.get(depth, 1.0)
            elif kind in ("training", "contention"):
                if depth not in pairs:
                    results["skipped"].append(f"{label}: its inference part did not run")
                    continue
                r = training_section(args, *pairs[depth], spec, part["batch_size"], image_size, budget, share_s,
                                     ablation=part["ablation"], reserve_s=reserve_s,
                                     contention=args.contention if kind == "contention" else 0)
                results["training"].append(r)
            elif kind == "profile" and args.depths[0] in pairs:
                results["profile"] = profile_section(args, pairs[args.depths[0]][0], images)
            elif kind == "scaling" and args.depths[0] in pairs:
                results["scaling"] = scaling_section(
                    args, pairs[args.depths[0]][0], base_spec.with_(depth=args.depths[0]), settings, budget, share_s
                )
            else:
                results["skipped"].append(f"{kind} (no {base_spec.with_(depth=args.depths[0]).name} model was built)")
                continue
            if kind in ("inference", "training", "contention"):
                log(f"  medians: { {name: round(v['median_s'], 4) for name, v in r['summary'].items()} }")
        except Exception as exc:  # noqa: BLE001
            results["errors"].append(_error_record(label, exc))
            log(f"  failed: {exc}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device.type == "cuda":
        # torch 2.11 refuses a device without an index here ("cuda"): default to GPU 0.
        torch.cuda.set_device(args.device.index if args.device.index is not None else 0)
        # Fixed input shapes: let cuDNN pick its fastest kernels (both detectors benefit).
        torch.backends.cudnn.benchmark = True
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.budget_s)
    settings = scale_settings(args.quick)
    image_size = settings["image_size"]
    base_spec = DetectorSpec(**settings["spec"])
    suffix = "cuda" if args.device.type == "cuda" else "cpu"

    results: Dict[str, Any] = {
        "argv": ["benchmarks/run.py"] + list(sys.argv[1:] if argv is None else argv),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "quick": args.quick,
        "bf16": args.bf16,
        "bf16_reason": args.bf16_reason,
        "contention": args.contention,
        "budget_s": args.budget_s,
        "machine": machine_info(args.device),
        "load_start": _fmt_load(load_average()),
        "spec": base_spec.__dict__ | {"anchor_sizes": list(base_spec.anchor_sizes)},
        "spec_name": base_spec.with_(depth=args.depths[0]).name,
        "image_size": list(image_size),
        "errors": [],
        "skipped": [],
        "inference": [],
        "training": [],
    }

    def log(message: str) -> None:
        print(f"[{budget.elapsed():6.0f} s] {message}", flush=True)

    # `timeout` sends SIGTERM: stop measuring and still write what was measured.
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        measure(args, results, budget, settings, log)
    except (Interrupted, KeyboardInterrupt) as exc:
        results["errors"].append({"part": "run", "error": f"interrupted after {budget.elapsed():.0f} s ({exc!r})",
                                  "traceback": ""})
        log("interrupted: writing the results measured so far")
    finally:
        signal.signal(signal.SIGTERM, previous)

    results["load_end"] = _fmt_load(load_average())
    results["wall_s"] = budget.elapsed()
    results["targets"] = evaluate_targets(results)
    png = out_dir / f"scaling_{suffix}.png"
    try:
        has_png = plot_scaling(results, png)
    except Exception as exc:  # noqa: BLE001
        results["errors"].append(_error_record("plot", exc))
        has_png = False
    json_path = out_dir / f"results_{suffix}.json"
    json_path.write_text(json.dumps(results, indent=1, default=str))
    md_name = "RESULTS_GPU.md" if args.device.type == "cuda" else "RESULTS.md"
    write_markdown(results, out_dir / md_name, png.name if has_png else None)
    log(f"wrote {out_dir / md_name}, {json_path.name}" + (f", {png.name}" if has_png else ""))
    for t in results["targets"]:
        log(f"target: {t['target']}: {t['measured']} ({t['status']})")
    for e in results["errors"]:
        print(f"error in {e['part']}: {e['error']}\n{e['traceback']}", file=sys.stderr)
    return 1 if results["errors"] else 0


def _fmt_load(load: Optional[Tuple[float, float, float]]) -> str:
    return "-" if load is None else ", ".join(f"{v:.1f}" for v in load)


if __name__ == "__main__":
    sys.exit(main())
