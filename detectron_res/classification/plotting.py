"""Figures of the plain-versus-residual study from run directories (``tools/plot_curves.py``).

One PNG with four panels, every run overlaid in its own colour:

(a) training error (thin dashed) and test error (bold) over iterations: Fig. 6;
(b) the standard deviation of each 3x3 layer's response, by layer index, at the
    last recorded evaluation: Fig. 7 (top);
(c) the same, sorted by magnitude: Fig. 7 (bottom);
(d) the gradient norm of each stage over iterations (log scale), one line style
    per stage.

A run directory holds ``metrics.json`` (``train_error``, ``<split>/top1_err``) and
``diagnostics.json`` (``grad_norm/<stage>``, ``response_std/<layer>``), written by
``tools/train_classifier.py``; a panel whose data no run has says so.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

from ..bounded_io import CONFIG_LIMITS, load_yaml_file
from ..engine.events import headless_pyplot, read_metrics_json, save_figure
from ..outputs import atomic_write_text
from .diagnostics import DIAGNOSTICS_FILE

__all__ = ["RunCurves", "load_run", "plot_runs", "run_label", "summarize_runs", "write_summary"]

_STAGE_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 1)), (0, (3, 1, 1, 1, 1, 1)))


@dataclass
class RunCurves:
    """The series of one run.

    Attributes:
        label: legend name (``"plain-56"``, ``"ResNet-56"``, or the folder name).
        train_error, test_error: ``(iterations, error %)``.
        test_metric: the metrics.json key of ``test_error`` (``"test/top1_err"``).
        grad_norms: stage -> ``(iterations, norm)``.
        response_std: ``(iteration, [(layer, std), ...])`` of the last evaluation, or None.
    """

    label: str
    train_error: Tuple[List[int], List[float]] = field(default_factory=lambda: ([], []))
    test_error: Tuple[List[int], List[float]] = field(default_factory=lambda: ([], []))
    test_metric: str = ""
    grad_norms: Dict[str, Tuple[List[int], List[float]]] = field(default_factory=dict)
    response_std: Optional[Tuple[int, List[Tuple[str, float]]]] = None


def run_label(run_dir: Path) -> str:
    """``plain-56`` / ``ResNet-56`` / ``ResNet-50`` from the run's config.yaml, else the folder name."""
    path = run_dir / "config.yaml"
    try:
        model = (load_yaml_file(path, CONFIG_LIMITS) or {}).get("model", {})
        kind = "ResNet" if model.get("residual", True) else "plain"
        if model.get("arch") == "vgg16":
            return "VGG-16"
        return f"{kind}-{int(model['depth'])}"
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError):  # ValueError: BoundedInputError
        return run_dir.name


def _series(records: Sequence[dict], key: str) -> Tuple[List[int], List[float]]:
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            xs.append(int(r["iteration"]))
            ys.append(float(v))
    return xs, ys


def load_run(run_dir: str | os.PathLike, label: Optional[str] = None) -> RunCurves:
    """Read one run directory.

    Raises:
        FileNotFoundError: the folder has neither ``metrics.json`` nor ``diagnostics.json``.
    """
    run_dir = Path(run_dir)
    metrics_path, diag_path = run_dir / "metrics.json", run_dir / DIAGNOSTICS_FILE
    if not metrics_path.is_file() and not diag_path.is_file():
        raise FileNotFoundError(
            f"{run_dir}: no metrics.json or {DIAGNOSTICS_FILE}; expected the output folder of tools/train_classifier.py"
        )
    curves = RunCurves(label=label or run_label(run_dir))
    if metrics_path.is_file():
        records = read_metrics_json(metrics_path)
        curves.train_error = _series(records, "train_error")
        keys = sorted({k for r in records for k in r if k.endswith("/top1_err")})
        if keys:
            curves.test_metric = keys[0]
            curves.test_error = _series(records, keys[0])
    if diag_path.is_file():
        records = read_metrics_json(diag_path)
        stages = [k for k in dict.fromkeys(k for r in records for k in r) if k.startswith("grad_norm/")]
        curves.grad_norms = {k[len("grad_norm/"):]: _series(records, k) for k in stages}
        std_records = [r for r in records if any(k.startswith("response_std/") for k in r)]
        if std_records:
            last = std_records[-1]
            layers = [(k[len("response_std/"):], float(v)) for k, v in last.items() if k.startswith("response_std/")]
            curves.response_std = (int(last["iteration"]), layers)
    return curves


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} recorded", ha="center", va="center", transform=ax.transAxes, color="gray")


def plot_runs(runs: Sequence[RunCurves], out_path: str | os.PathLike, *, title: str = "") -> Path:
    """Draw the four panels for ``runs`` into ``out_path`` (PNG); returns the path."""
    plt = headless_pyplot()
    if not runs:
        raise ValueError("plot_runs: no run to plot")
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    (ax_err, ax_std), (ax_sorted, ax_grad) = axes
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    for k, run in enumerate(runs):
        c = colors[k % len(colors)]
        if run.train_error[0]:
            ax_err.plot(*run.train_error, "--", color=c, linewidth=1, label=f"{run.label} train")
        if run.test_error[0]:
            ax_err.plot(*run.test_error, "-", color=c, linewidth=2.2, marker="o" if len(run.test_error[0]) < 15
                        else None, markersize=3, label=f"{run.label} {run.test_metric.split('/')[0]}")
        if run.response_std is not None:
            it, layers = run.response_std
            stds = [v for _, v in layers]
            ax_std.plot(range(1, len(stds) + 1), stds, "-", color=c, linewidth=1.2,
                        label=f"{run.label} (iter {it + 1})")
            ax_sorted.plot(range(1, len(stds) + 1), sorted(stds, reverse=True), "-", color=c, linewidth=1.2,
                           label=run.label)
        for s, (stage, series) in enumerate(run.grad_norms.items()):
            if series[0]:
                ax_grad.plot(*series, linestyle=_STAGE_STYLES[s % len(_STAGE_STYLES)], color=c, linewidth=1.1,
                             label=f"{run.label} {stage}")

    ax_err.set_title("(a) error (%): training (dashed), test (bold)  [Fig. 6]")
    ax_err.set_xlabel("iteration")
    ax_err.set_ylabel("top-1 error (%)")
    ax_std.set_title("(b) std of each 3x3 layer's response  [Fig. 7 top]")
    ax_std.set_xlabel("layer index (forward order)")
    ax_std.set_ylabel("std")
    ax_sorted.set_title("(c) the same, sorted by magnitude  [Fig. 7 bottom]")
    ax_sorted.set_xlabel("layer index (sorted)")
    ax_sorted.set_ylabel("std")
    ax_grad.set_title("(d) gradient norm of each stage")
    ax_grad.set_xlabel("iteration")
    ax_grad.set_ylabel("||dL/dw|| of the stage")
    for ax, what in ((ax_err, "error curve"), (ax_std, "response std"), (ax_sorted, "response std"),
                     (ax_grad, "gradient norm")):
        if ax.lines:
            ax.legend(fontsize=7, ncol=2 if ax is ax_grad else 1)
            ax.grid(alpha=0.3)
        else:
            _no_data(ax, what)
    if ax_grad.lines and all(y > 0 for line in ax_grad.lines for y in line.get_ydata()):
        ax_grad.set_yscale("log")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out_path)


def summarize_runs(runs: Sequence[RunCurves]) -> List[dict]:
    """Final numbers of each run (for reports): last train/test error, mean response std,
    first/last gradient norm of each stage."""
    out = []
    for run in runs:
        row: dict = {"run": run.label}
        if run.train_error[1]:
            row["train_error"] = run.train_error[1][-1]
        if run.test_error[1]:
            row["test_error"] = run.test_error[1][-1]
        if run.response_std is not None:
            stds = [v for _, v in run.response_std[1]]
            row["response_std_mean"] = sum(stds) / len(stds)
        for stage, (_, ys) in run.grad_norms.items():
            if ys:
                row[f"grad_norm_{stage}_first"], row[f"grad_norm_{stage}_last"] = ys[0], ys[-1]
        out.append(row)
    return out


def write_summary(runs: Sequence[RunCurves], path: str | os.PathLike) -> None:
    atomic_write_text(path, json.dumps(summarize_runs(runs), indent=2) + "\n")
