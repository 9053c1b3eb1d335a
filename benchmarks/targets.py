"""The speed targets of the benchmark and their evaluation against one run's results.

CPU (measured side by side with torchvision's C4, same weights, same inputs):
inference <= 0.7x torchvision's wall time and >= 50% of the machine's dense
fp32 matmul rate; a training iteration <= 0.85x, also with a busy process
beside it; bf16 inference <= 0.5x ours in fp32 where the CPU computes bf16
natively. GPU: R-101-C4 inference under 40 ms per image and training >= 1.5x
torchvision's images/s. Everywhere: ours' detections equal torchvision's.

:func:`evaluate_targets` reads the results dict only (it runs at the end of a
run; its rows are stored in ``results["targets"]`` and printed as ``target:``
lines).
"""
from __future__ import annotations

from typing import Any, Dict, List

from benchmarks.report import fmt_cpu_ratio, fmt_pair, fmt_s
from benchmarks.results import precision_of

TARGET_INFERENCE_RATIO = 0.7
TARGET_MATMUL_FRACTION = 0.5
TARGET_TRAIN_RATIO = 0.85
TARGET_GPU_TRAIN_SPEEDUP = 1.5
TARGET_GPU_R101_LATENCY_S = 0.040
TARGET_BF16_INFERENCE_RATIO = 0.5  # ours bf16 / ours fp32, on a CPU with native bf16
TARGET_CONTENTION_TRAIN_RATIO = 0.85  # ours / torchvision training wall time with a busy process beside
# The share of torchvision's detections ours must reproduce (same label, IoU >= 0.99).
TARGET_AGREEMENT = 0.95


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _ratio_measured(record: Dict[str, Any]) -> str:
    """ours / torchvision of wall and CPU time, and the same with every speed option off where measured."""
    ratios = record["ratio_vs_torchvision"]
    return f"{ratios['ours']['median']:.2f}x (CPU time {fmt_cpu_ratio(record, 'ours')}x)" + (
        f"; all speed options off: {ratios['ours_plain']['median']:.2f}x" if "ours_plain" in ratios else "")


def evaluate_targets(results: Dict[str, Any]) -> List[Dict[str, str]]:
    """The issue's targets, checked against this run's numbers."""
    targets = []
    cuda = results["machine"]["device"].startswith("cuda")
    native_bf16 = (results["machine"].get("cpu_isa") or {}).get("native_bf16")
    # The profile part's convolutions-only bf16 / fp32 ratio (first depth): the floor of the whole call's.
    convolutions = (results.get("profile") or {}).get("convolutions")
    for i, r in enumerate(results.get("inference", [])):
        if "error" in r:
            continue
        ratio = r["ratio_vs_torchvision"]["ours"]["median"]
        bf16 = r.get("bf16_ratios", {}).get("ours bf16 / ours fp32")
        if not cuda and bf16 is not None:
            cpu = r.get("cpu_bf16_ratios", {}).get("ours bf16 / ours fp32")
            floor = (f"; convolutions alone (operator profile): {convolutions['ratio_convolutions']:.2f}x"
                     if convolutions and i == 0 else "")
            targets.append({
                "target": f"{r['model']} inference bf16 <= {TARGET_BF16_INFERENCE_RATIO}x ours fp32 (CPU with native bf16)",
                "measured": f"{bf16['median']:.2f}x" + (f" (CPU time {cpu['median']:.2f}x)" if cpu else "")
                + f"; torchvision bf16 / fp32: {r['bf16_ratios']['torchvision bf16 / torchvision fp32']['median']:.2f}x"
                + floor,
                "status": _met(bf16["median"] <= TARGET_BF16_INFERENCE_RATIO) if native_bf16
                else "not applicable (no native bf16 on this CPU)",
            })
        if not cuda:
            targets.append({
                "target": f"{r['model']} inference <= {TARGET_INFERENCE_RATIO}x torchvision",
                "measured": _ratio_measured(r),
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
                    "measured": fmt_s(median),
                    "status": _met(median < TARGET_GPU_R101_LATENCY_S),
                })
        agree = r["agreement"]["ours"]["agreement"]
        targets.append({
            "target": f"{r['model']} detections equal to torchvision's (same weights)",
            "measured": f"{agree:.1%} matched",
            "status": _met(agree >= TARGET_AGREEMENT),
        })
    for r in results.get("training", []):
        if "error" in r:
            continue
        ratio = r["ratio_vs_torchvision"]["ours"]["median"]
        if r.get("contention"):
            targets.append({
                "target": f"{r['model']} batch {r['batch_size']} training with {r['contention']} busy process(es) "
                          f"beside <= {TARGET_CONTENTION_TRAIN_RATIO}x torchvision",
                "measured": f"{ratio:.2f}x (CPU time {fmt_cpu_ratio(r, 'ours')}x); ours with torch's threads: "
                            f"{fmt_pair(r, 'ours_torch_threads', 'torchvision')}x",
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
                "measured": _ratio_measured(r),
                "status": _met(ratio <= TARGET_TRAIN_RATIO),
            })
    return targets
