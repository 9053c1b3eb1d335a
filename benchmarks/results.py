"""The vocabulary of a benchmark run's results: variant names, time summaries, ratios.

A run's results are one JSON-serialisable dict (written to ``results_<device>.json``,
read back by ``report.py`` and ``targets.py``). Each comparison in it (one
inference or training part) holds, per *variant* (one detector called one way):

* ``times[name]``: wall seconds of every timed call, the variants called in turns;
* ``summary[name]``: :func:`summarize_times` of those;
* ``ratio_vs_torchvision[name]``, ``ratio_vs_ours[name]``: :func:`paired_ratio`,
  the median of the per-turn ratios (each turn sees the same background load);
* ``bf16_ratios[label]`` for the pairs of :data:`BF16_PAIRS` present;
* on the CPU the same four again from the process's CPU seconds (``cpu_times``,
  ``cpu_summary``, ``cpu_ratio_vs_torchvision``, ``cpu_ratio_vs_ours``,
  ``cpu_bf16_ratios``).

Variant names: ``ours``, ``torchvision``; ``<name>_bf16`` is the same detector
under bf16 autocast; ``ours_plain`` / ``ours-<option>`` / ``ours+channels_last``
the ablation of the speed options; ``ours_torch_threads`` /
``torchvision_trainer_threads`` the thread policies of the contention part.

This module imports no torch: the report is written from the dict alone.
"""
from __future__ import annotations

import statistics
import traceback
from typing import Any, Dict, List, Sequence

# Variants named <detector>_bf16 run under bf16 autocast; the others in fp32.
BF16_SUFFIX = "_bf16"
# The bf16 ratios reported, numerator and denominator.
BF16_PAIRS = {
    "ours bf16 / ours fp32": ("ours_bf16", "ours"),
    "torchvision bf16 / torchvision fp32": ("torchvision_bf16", "torchvision"),
    "ours bf16 / torchvision bf16": ("ours_bf16", "torchvision_bf16"),
    "ours bf16 / torchvision fp32": ("ours_bf16", "torchvision"),
}
# The stages of our detector that the scaling sweep times (``sweeps.StageTimer``), in order.
STAGES = ("trunk", "rpn", "roi_pool", "res5", "predictor", "roi_post", "other")


def precision_of(variant: str) -> str:
    """``"bf16"`` for a ``*_bf16`` variant, else ``"fp32"``."""
    return "bf16" if variant.endswith(BF16_SUFFIX) else "fp32"


def summarize_times(times: Sequence[float]) -> Dict[str, float]:
    """Median, min, max and the spread ``(max - min) / median`` of a list of seconds."""
    median = statistics.median(times)
    return {
        "median_s": median,
        "min_s": min(times),
        "max_s": max(times),
        "spread": (max(times) - min(times)) / median if median > 0 else 0.0,
        "n": len(times),
    }


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> Dict[str, float]:
    """Median and range of the per-turn ratios ``numerator[i] / denominator[i]``."""
    ratios = [a / b for a, b in zip(numerator, denominator)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def record_times(result: Dict[str, Any], times: Dict[str, List[float]], cpu_times: Dict[str, List[float]]) -> None:
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


def error_record(part: str, exc: BaseException) -> Dict[str, str]:
    """What ``results["errors"]`` keeps of a part that failed: its name, the error and a short traceback."""
    return {"part": part, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=6)}
