#!/usr/bin/env python
"""Side-by-side speed benchmark: our Faster R-CNN C4 against torchvision's, same weights, same inputs.

    python benchmarks/run.py                 # CPU, paper scale, writes benchmarks/RESULTS.md (< 16 min)
    python benchmarks/run.py --quick         # every code path at a small scale (< 2 min)
    python benchmarks/run.py --device cuda --train-batch-sizes 2,8 --out OUTDIR
    python benchmarks/run.py --report-only benchmarks/results_cpu.json   # rewrite RESULTS.md, measure nothing

What is measured, all in one process on the same inputs (see ``detectors.py`` for
how both detectors are built and made equal):

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
and ``scaling_<device>.png``. ``--report-only RESULTS_JSON`` writes the Markdown
and the plot again from an earlier run's JSON (into the JSON's folder unless
``--out`` says otherwise) and measures nothing.

This file is the run: its arguments, the parts in order under the budget
(:func:`measure`), the outputs. The pieces, one topic a module:

    plan.py        scale settings; the parts of a run and their estimated costs
    detectors.py   ours and torchvision's C4 made equal: spec, weights, inputs, agreement
    timing.py      timed calls in turns, CPU time, peak memory, the budget
    machine.py     the machine: CPU/GPU, load, dense matmul rate
    inference.py   inference part and the operator profile
    training.py    training part (and, with contention, the contention part)
    contention.py  busy processes and our trainer's thread policy
    sweeps.py      latency by stage against image size and proposals
    results.py     the results dict's vocabulary: variants, summaries, ratios
    targets.py     the targets and their evaluation
    report.py      Markdown, JSON and plot, from the results dict alone

The other scripts here stand alone: ``gpu.sh`` (this benchmark, the CUDA tests
and a demo training on a GPU), ``bench_data_loading.py``, ``bench_voc_eval.py``
and ``table9_cost.py`` (their own RESULTS_*.md).
"""
from __future__ import annotations

import argparse
import datetime
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
# The repository root: ``benchmarks`` and ``detectron_res`` import from this checkout.
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.detectors import DetectorSpec, build_pair, make_images  # noqa: E402
from benchmarks.inference import inference_section, profile_section  # noqa: E402
from benchmarks.machine import format_load, load_average, machine_info, matmul_flops  # noqa: E402
from benchmarks.plan import DEPTH_COST, plan_parts, scale_settings  # noqa: E402
from benchmarks.report import write_outputs  # noqa: E402
from benchmarks.results import error_record  # noqa: E402
from benchmarks.sweeps import scaling_section  # noqa: E402
from benchmarks.targets import evaluate_targets  # noqa: E402
from benchmarks.timing import Budget  # noqa: E402
from benchmarks.training import training_section  # noqa: E402
from detectron_res.precision import resolve_precision  # noqa: E402

# The top-level keys every results JSON has: what --report-only checks before writing.
RESULTS_KEYS = ("argv", "date", "quick", "machine", "spec", "spec_name", "image_size", "inference", "training")


class Interrupted(BaseException):
    """SIGTERM (e.g. from ``timeout``): stop measuring, write what was measured."""


def _raise_interrupted(signum, _frame):
    raise Interrupted(f"stopped by signal {signum}")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line, checked and completed: the device resolved, lists parsed, defaults of ``--quick`` applied."""
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
    parser.add_argument("--report-only", metavar="RESULTS_JSON", default=None,
                        help="measure nothing: write RESULTS.md (RESULTS_GPU.md) and the scaling plot from the results "
                        "JSON of an earlier run, into --out (default: the JSON's folder)")
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
    if args.report_only is not None and not Path(args.report_only).is_file():
        parser.error(f"--report-only {args.report_only}: no such file; expected a results_<device>.json written by "
                     "benchmarks/run.py")
    if args.out is None:
        if args.report_only is not None:
            args.out = str(Path(args.report_only).resolve().parent)
        else:
            args.out = str(HERE / "out") if args.quick else str(HERE)
    return args


def measure(args, results: Dict[str, Any], budget: Budget, settings: Dict[str, Any], log: Callable[[str], None]) -> None:
    """Run every part of the benchmark that fits in the budget, filling ``results``.

    Each part's share of what is left is in proportion to its estimated cost
    times the turns it should get, among the parts still to come; a part whose
    first turn is estimated not to fit is skipped and recorded. A failing part
    is recorded and the next runs.
    """
    image_size = settings["image_size"]
    base_spec = DetectorSpec(**settings["spec"])
    parts = plan_parts(args, "ablation" not in args.skip)

    log(f"machine: {results['machine']}")
    try:
        results["matmul"] = {"fp32": matmul_flops(args.device, dtype=torch.float32)}
        if args.bf16:
            results["matmul"]["bf16"] = matmul_flops(args.device, dtype=torch.bfloat16)
        log(f"matmul: { {k: round(v['median_flops'] / 1e9, 1) for k, v in results['matmul'].items()} } GFLOP/s")
    except Exception as exc:  # noqa: BLE001 - a failing part is recorded, the rest runs
        results["errors"].append(error_record("matmul", exc))

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
            estimate_s = part["cost"] * unit_s + (build_s.get(args.depths[0], 0.0) * DEPTH_COST.get(depth, 1.0)
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
                    unit_s = r["summary"]["ours"]["median_s"] / DEPTH_COST.get(depth, 1.0)
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
            results["errors"].append(error_record(label, exc))
            log(f"  failed: {exc}")


def report_only(json_path: Path, out_dir: Path) -> int:
    """``--report-only``: the Markdown report and the plot from an earlier run's results JSON."""
    try:
        results = json.loads(json_path.read_text())
    except ValueError as exc:
        print(f"--report-only {json_path}: not JSON ({exc}); expected a results_<device>.json written by "
              "benchmarks/run.py", file=sys.stderr)
        return 2
    missing = [key for key in RESULTS_KEYS if not isinstance(results, dict) or key not in results]
    if missing:
        print(f"--report-only {json_path}: no {', '.join(missing)} in it; expected a results_<device>.json written "
              "by benchmarks/run.py", file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    written = write_outputs(results, out_dir, with_json=False)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Measure, then write the outputs (also after SIGTERM); 1 if any part failed, else 0."""
    args = parse_args(argv)
    if args.report_only is not None:
        return report_only(Path(args.report_only), Path(args.out))
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

    results: Dict[str, Any] = {
        "argv": ["benchmarks/run.py"] + list(sys.argv[1:] if argv is None else argv),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "quick": args.quick,
        "bf16": args.bf16,
        "bf16_reason": args.bf16_reason,
        "contention": args.contention,
        "budget_s": args.budget_s,
        "machine": machine_info(args.device),
        "load_start": format_load(load_average()),
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

    results["load_end"] = format_load(load_average())
    results["wall_s"] = budget.elapsed()
    results["targets"] = evaluate_targets(results)
    written = write_outputs(results, out_dir)
    log("wrote " + ", ".join(str(p) if i == 0 else p.name for i, p in enumerate(written)))
    for t in results["targets"]:
        log(f"target: {t['target']}: {t['measured']} ({t['status']})")
    for e in results["errors"]:
        print(f"error in {e['part']}: {e['error']}\n{e['traceback']}", file=sys.stderr)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
