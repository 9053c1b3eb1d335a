"""Writing evaluation results: ``metrics.json`` and precision-recall curve PNGs."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Union

import numpy as np

from ..outputs import atomic_write, atomic_write_text

__all__ = ["to_jsonable", "write_json", "write_metrics", "plot_pr_curves", "path_component"]

PathLike = Union[str, "os.PathLike[str]"]


def to_jsonable(obj: Any) -> Any:
    """Plain JSON data: numpy/torch scalars and arrays become numbers and lists;
    NaN and infinities become ``null`` (strict JSON has no NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:  # numpy / torch scalar
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (bool, int, float, str)) or obj is None:
        return obj
    raise TypeError(f"cannot write a {type(obj).__name__} ({obj!r}) to JSON; expected numbers, strings, lists, dicts")


def write_json(path: PathLike, obj: Any, *, indent: int | None = None) -> Path:
    """Write ``obj`` as JSON atomically (temporary file + ``os.replace``): a reader
    never sees a half-written file, even if the process is killed."""
    text = json.dumps(to_jsonable(obj), indent=indent, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def write_metrics(metrics: Mapping[str, Any], output_dir: PathLike, *, filename: str = "metrics.json") -> Path:
    """Write evaluation metrics to ``output_dir/metrics.json`` (atomically).

    Layout used by ``tools/train_net.py --eval-only`` and read by
    ``tools/reproduce_tables.py``: ``{"<test dataset name>": {"<evaluator name>":
    {metric: value}}}``, e.g. ``{"voc_2007_test": {"voc": {"mAP50": 76.4, ...}}}``.
    NaN becomes ``null``. The file is written on ONE line, so it is at the same time
    a JSON document and a one-record JSON-lines file (the format of the training
    log ``metrics.json``).

    Returns:
        The path written.
    """
    return write_json(Path(output_dir) / filename, metrics)


# Characters kept as they are in a name turned into one path component (besides
# letters and digits, Unicode ones included): everything in the built-in dataset
# and class names (voc_2007_test, coco_2017_val+..., "traffic light").
_PATH_SAFE = frozenset("_-.~ +,=@()")


def path_component(name: str, *, what: str = "name") -> str:
    """``name`` as ONE path component that cannot leave its folder.

    Dataset names (``inference/<dataset>/``) and class names (``comp4_det_<split>_<class>.txt``)
    come from configs and annotation files. Letters, digits and ``_-.~ +,=@()`` are kept,
    so ordinary names are unchanged; every other character (``/``, ``\\``, ``%``, control
    characters, ...) becomes ``%XX`` (its UTF-8 bytes), and so do the dots of ``.`` and
    ``..``. The mapping is one-to-one (``%`` itself is encoded): two different names never
    share a file, and ``urllib.parse.unquote`` gives the name back.

    Raises:
        ValueError: ``name`` is empty (``what`` names it in the message).
    """
    name = str(name)
    if not name:
        raise ValueError(f"{what} is empty; expected a non-empty string (it names a file or folder)")
    if name in (".", ".."):
        return "%2E" * len(name)
    return "".join(
        c if (c.isalnum() or c in _PATH_SAFE) and c.isprintable() else "".join(f"%{b:02X}" for b in c.encode())
        for c in name
    )


def _safe_file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "class"


def plot_pr_curves(
    pr_curves: Mapping[str, Mapping[str, Any]],
    output_dir: PathLike,
    *,
    prefix: str = "pr_",
    title: str = "",
    ap_name: str = "AP",
) -> List[Path]:
    """One precision-recall PNG per class.

    Args:
        pr_curves: class name -> ``{"precision": [D], "recall": [D], "ap": float}``
            (the evaluators' ``pr_curves`` attribute; AP in percent). NaN points are
            skipped.
        output_dir: folder for ``<prefix><class>.png`` (created).
        prefix: file name prefix (e.g. ``"voc_2007_test_pr_"``).
        title: prepended to each plot's title.
        ap_name: what the AP is, named in each title: the evaluator and the IoU
            (the evaluators' ``pr_curve_ap_name``: "VOC07 11-point AP at IoU 0.5",
            "COCO AP at IoU 0.5").

    Returns:
        The PNG paths, in ``pr_curves`` order.
    """
    # The Agg canvas directly, not pyplot: no global backend switch, no GUI, and
    # figures are freed with their objects (safe in a training process).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths: List[Path] = []
    used: Dict[str, int] = {}
    for name, curve in pr_curves.items():
        precision = np.asarray(curve["precision"], dtype=np.float64).reshape(-1)
        recall = np.asarray(curve["recall"], dtype=np.float64).reshape(-1)
        ok = np.isfinite(precision) & np.isfinite(recall)
        fig = Figure(figsize=(4.5, 4.0))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        if ok.any():
            ax.plot(recall[ok], precision[ok], drawstyle="steps-post", linewidth=1.5)
        ap = curve.get("ap", math.nan)
        ap_text = "n/a" if ap is None or not math.isfinite(float(ap)) else f"{float(ap):.1f}"
        ax.set_title(f"{title + ': ' if title else ''}{name}: {ap_name} = {ap_text}", fontsize=9)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.02)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        base = prefix + _safe_file_name(name)
        stem, n = base, 1
        while stem in used:  # two names that sanitize alike ("a b", "a_b"; also "a_b_2")
            n += 1
            stem = f"{base}_{n}"
        used[stem] = 1
        path = output_dir / f"{stem}.png"
        atomic_write(path, lambda f, fig=fig: fig.savefig(f, dpi=80, format="png"))  # no half PNG after a kill
        paths.append(path)
    return paths
