"""Scalar metrics recorded during training, and the writers that publish them.

The trainer and its hooks ``put`` scalars into a :class:`MetricStorage` keyed by
iteration; the ``MetricsWriter`` hook (:mod:`.hooks`) reads from it and writes
console lines, :class:`JSONWriter` lines and :class:`TensorboardWriter` events.
Only the main process writes files.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import statistics
from collections import defaultdict, deque
from pathlib import Path
from typing import Iterable

from ..bounded_io import RESULTS_JSON_LIMITS, BoundedInputError, load_json_text, read_text
from ..outputs import atomic_write, atomic_write_bytes

logger = logging.getLogger(__name__)


class MetricStorage:
    """History of named scalars, one value per (name, iteration).

    Attributes:
        iteration: the iteration being recorded (set by the trainer before each step).
    """

    def __init__(self, start_iter: int = 0, window: int = 20) -> None:
        self.iteration = start_iter
        self._window = window
        self._history: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self._recent: dict[str, deque] = defaultdict(lambda: deque(maxlen=self._window))
        self._smoothing: dict[str, bool] = {}

    def put_scalar(self, name: str, value: float, *, smooth: bool = True) -> None:
        """Record ``value`` for ``name`` at the current iteration.

        ``smooth=True`` scalars are reported as the median over the last ``window``
        iterations (losses, timings); ``False`` reports the latest value (LR, metrics).
        """
        value = float(value)
        self._history[name].append((self.iteration, value))
        self._recent[name].append(value)
        self._smoothing[name] = smooth

    def put_scalars(self, *, smooth: bool = True, **values: float) -> None:
        for name, value in values.items():
            self.put_scalar(name, value, smooth=smooth)

    def state_dict(self) -> dict:
        """For checkpoints: the smoothing windows and the raw values of the current
        iteration, so that a resumed run logs the same values as an uninterrupted
        one, and can write the current iteration's line if a kill prevented it::

            {"iteration": int, "recent": {name: [float, ...]}, "latest": {name: float}}
        """
        return {
            "iteration": self.iteration,
            "recent": {name: list(values) for name, values in self._recent.items() if self._smoothing.get(name, True)},
            "latest": {name: values[-1][1] for name, values in self._history.items()
                       if values and values[-1][0] == self.iteration},
        }

    def load_state_dict(self, state: dict) -> None:
        """Inverse of :meth:`state_dict` (an empty dict, from older checkpoints, restores nothing)."""
        recent = state.get("recent") or {}
        for name, values in recent.items():
            self._recent[name].extend(float(v) for v in values)
            self._smoothing[name] = True
        it = state.get("iteration")
        for name, value in (state.get("latest") or {}).items():
            self._history[name].append((int(it), float(value)))
            self._smoothing.setdefault(name, False)

    def history(self, name: str) -> list[tuple[int, float]]:
        return list(self._history.get(name, []))

    def names(self) -> list[str]:
        return list(self._history)

    def median(self, name: str) -> float:
        return statistics.median(self._recent[name])

    def global_average(self, name: str, skip_first: int = 0) -> float:
        values = [v for _, v in self._history[name][skip_first:]]
        return sum(values) / max(len(values), 1)

    def latest(self, names: Iterable[str] | None = None) -> dict[str, tuple[float, int]]:
        """``{name: (reported value, iteration of its latest record)}``."""
        out = {}
        for name in names if names is not None else self._history:
            if not self._history.get(name):
                continue
            it, value = self._history[name][-1]
            out[name] = (self.median(name) if self._smoothing.get(name, True) else value, it)
        return out

    def latest_at(self, iteration: int) -> dict[str, float]:
        """Reported values of every scalar recorded at ``iteration``."""
        return {name: value for name, (value, it) in self.latest().items() if it == iteration}


class JSONWriter:
    """Appends one JSON object per logged iteration to ``output_dir/metrics.json``.

    A resumed run appends to the same file; lines of iterations after the resumed
    checkpoint (written before an interruption) are dropped first, so the file
    stays monotonic in ``iteration``.
    """

    def __init__(self, path: str | os.PathLike, *, resume_from_iter: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.last_iteration = -1  # of the lines kept on resume
        if resume_from_iter is not None and self.path.is_file():
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    it = json.loads(line).get("iteration", -1)
                except json.JSONDecodeError:  # a line cut by a kill mid-write
                    continue
                if it <= resume_from_iter:
                    kept.append(line)
                    self.last_iteration = max(self.last_iteration, it)
            # Atomic: a kill during this rewrite must not cost the history.
            text = "".join(k + "\n" for k in kept).encode()
            atomic_write_bytes(self.path, lambda f: f.write(text))
        elif resume_from_iter is None and self.path.is_file():
            self.path.unlink()
        self._file = open(self.path, "a")

    def write(self, iteration: int, values: dict[str, float]) -> None:
        record = {"iteration": iteration}
        record.update({k: (v if math.isfinite(v) else str(v)) for k, v in values.items()})
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorboardWriter:
    """TensorBoard event files under ``output_dir/tensorboard``."""

    def __init__(self, log_dir: str | os.PathLike) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported lazily: tensorboard is heavy

        self._writer = SummaryWriter(log_dir=str(log_dir))

    def write(self, iteration: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self._writer.add_scalar(name, value, iteration)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


_HEADLINE_METRICS = ("AP", "AP50", "AP75", "mAP50", "mAP75", "mAP50_95")


def format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


def read_metrics_json(path: str | os.PathLike) -> list[dict]:
    """Records of a ``metrics.json`` file (unreadable, too deep or non-object lines skipped).

    Raises:
        BoundedInputError: the file is larger than ``RESULTS_JSON_LIMITS`` or not UTF-8.
    """
    return json_lines_records(read_text(path, RESULTS_JSON_LIMITS), str(path))


def json_lines_records(text: str, source: str) -> list[dict]:
    """The JSON objects of a JSON-lines text such as ``metrics.json`` (unreadable, too
    deep or non-object lines skipped: a run killed mid-write leaves a partial last line)."""
    out = []
    for line in text.splitlines():
        try:
            record = load_json_text(line, RESULTS_JSON_LIMITS, source)
        except (json.JSONDecodeError, BoundedInputError):
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def headless_pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed); imported on first use
    so that training does not pay for matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out_path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write ``fig`` to ``out_path`` (PNG; missing folders created), close it and return
    the path.  The write is atomic: a kill while the PNG is drawn leaves the previous
    plot (training curves are redrawn at every evaluation) instead of half a file."""
    try:
        return atomic_write(out_path, lambda f: fig.savefig(f, dpi=dpi, format="png"))
    finally:
        headless_pyplot().close(fig)


def plot_training_curves(metrics_path: str | os.PathLike, out_path: str | os.PathLike) -> Path | None:
    """Plot losses, learning rate and evaluation metrics from ``metrics.json`` into a PNG.

    Returns the PNG path, or None when the file holds no records.
    """
    plt = headless_pyplot()
    records = read_metrics_json(metrics_path)
    if not records:
        return None

    def series(key: str) -> tuple[list[int], list[float]]:
        xs, ys = [], []
        for r in records:
            v = r.get(key)
            if isinstance(v, (int, float)):
                xs.append(r["iteration"])
                ys.append(float(v))
        return xs, ys

    keys = sorted({k for r in records for k in r})
    loss_keys = [k for k in keys if k.startswith("loss") or k == "total_loss"]
    # Evaluator metrics ("coco/AP", "voc/mAP50"): the headline ones, if present.
    metric_keys = [k for k in keys if "/" in k]
    headline = [k for k in metric_keys if k.rsplit("/", 1)[-1] in _HEADLINE_METRICS]
    metric_keys = headline or metric_keys
    panels = [("losses", loss_keys, True), ("learning rate", ["lr"] if "lr" in keys else [], False)]
    if metric_keys:
        panels.append(("evaluation", metric_keys, False))
    panels = [p for p in panels if p[1]]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (title, names, logy) in zip(axes[0], panels):
        for name in names:
            xs, ys = series(name)
            if xs:
                ax.plot(xs, ys, label=name, marker="o" if len(xs) < 20 else None, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("iteration")
        if logy and all(y > 0 for name in names for y in series(name)[1]):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out_path)
