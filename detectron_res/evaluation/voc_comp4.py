"""PASCAL VOC comp4 result files: per-class detections, writing, reading, packing for the server.

comp4 ("trained on any data") files hold one class each, ``comp4_det_<split>_<class>.txt``,
one line per detection: ``<image_id> <score> <xmin> <ymin> <xmax> <ymax>`` in the
devkit's inclusive 1-based pixels (shared/PAPER_FACTS.md, "VOC results-file format").
The toolkit's boxes (continuous 0-based ``x1, y1, x2, y2``) are written as
``(x1 + 1, y1 + 1, x2, y2)`` and read back as ``(xmin - 1, ymin - 1, xmax, ymax)``.
"""

from __future__ import annotations

import math
import tarfile
from pathlib import Path
from typing import Any, Dict, Hashable, List, Mapping, Sequence

import numpy as np

from ..outputs import atomic_write, atomic_write_text
from .evaluator import Prediction
from .report import path_component
from .voc_ap import VOC_CLASSES, ClassDetections, PathLike, _check_class_detections, _to_inclusive

__all__ = ["comp4_file_name", "split_by_class", "write_comp4", "read_comp4", "pack_voc_server_submission"]


# ----------------------------------------------------------------------------
# comp4 result files
# ----------------------------------------------------------------------------
def comp4_file_name(split: str, class_name: str) -> str:
    """``comp4_det_<split>_<class>.txt`` (comp4: "trained on any data").

    Split and class names come from datasets and annotation files, so they pass
    through :func:`~detectron_res.evaluation.report.path_component`: the VOC names are
    unchanged, while a class named ``"../x"`` or ``"a/b"`` gets ``%2F`` instead of a
    separator and its file stays in the results folder (one file per class, never
    shared).
    """
    split = path_component(split, what="VOC split name")
    class_name = path_component(class_name, what="class name")
    return f"comp4_det_{split}_{class_name}.txt"


def split_by_class(predictions: Mapping[Hashable, Prediction], class_names: Sequence[str]) -> Dict[str, ClassDetections]:
    """Per-image predictions -> per-class detections (the comp4 layout).

    Args:
        predictions: image id -> ``{"boxes" [M, 4], "scores" [M], "labels" [M] in 1..K}``,
            in the order the detections should keep among equal scores.
        class_names: ``K`` names.

    Returns:
        class name -> ``{"image_ids": list, "scores": float64 [D], "boxes": float32 [D, 4]}``.
    """
    keys = list(predictions)
    labels = [np.asarray(predictions[k]["labels"], dtype=np.int64).reshape(-1) for k in keys]
    counts = np.array([len(x) for x in labels], dtype=np.int64)
    all_labels = np.concatenate(labels) if keys else np.zeros(0, dtype=np.int64)
    if len(all_labels) and (all_labels.min() < 1 or all_labels.max() > len(class_names)):
        bad = int(all_labels[(all_labels < 1) | (all_labels > len(class_names))][0])
        raise ValueError(f"predictions: label {bad} outside 1..{len(class_names)}")
    all_scores = (
        np.concatenate([np.asarray(predictions[k]["scores"], dtype=np.float64).reshape(-1) for k in keys])
        if keys
        else np.zeros(0)
    )
    all_boxes = (
        np.concatenate([np.asarray(predictions[k]["boxes"], dtype=np.float32).reshape(-1, 4) for k in keys])
        if keys
        else np.zeros((0, 4), dtype=np.float32)
    )
    id_array = np.empty(len(keys), dtype=object)
    id_array[:] = keys
    all_ids = id_array[np.repeat(np.arange(len(keys)), counts)]
    # A stable sort by label keeps, within a class, the order of the predictions.
    order = np.argsort(all_labels, kind="stable")
    bounds = np.searchsorted(all_labels[order], np.arange(1, len(class_names) + 2))
    out: Dict[str, ClassDetections] = {}
    for k, name in enumerate(class_names):
        sel = order[bounds[k] : bounds[k + 1]]
        out[name] = {"image_ids": list(all_ids[sel]), "scores": all_scores[sel], "boxes": all_boxes[sel]}
    return out


def write_comp4(
    results_dir: PathLike,
    split: str,
    class_names: Sequence[str],
    detections: Mapping[str, Mapping[str, Any]],
) -> List[Path]:
    """Write one ``comp4_det_<split>_<class>.txt`` per class (also for classes without detections).

    Each line is ``<image_id> <score> <xmin> <ymin> <xmax> <ymax>``, coordinates in
    the devkit's inclusive 1-based pixels (toolkit box ``(x1, y1, x2, y2)`` is written
    as ``(x1 + 1, y1 + 1, x2, y2)``). Numbers are written with Python's shortest
    round-trip representation, so reading the files back gives exactly the same
    values (and the same AP).

    Args:
        results_dir: folder to write into (created).
        split: image set, e.g. ``"test"``.
        class_names: all class names (one file each).
        detections: class name -> ``{"image_ids", "scores", "boxes"}`` (toolkit boxes).

    Returns:
        The paths written, in ``class_names`` order.
    """
    results_dir = Path(results_dir)
    paths = []
    for name in class_names:
        dets = detections.get(name)
        lines: List[str] = []
        if dets is not None:
            image_ids, scores, boxes = _check_class_detections(dets, f"write_comp4 class '{name}'")
            incl = _to_inclusive(boxes)
            for image_id, s, b in zip(image_ids, scores.tolist(), incl.tolist()):
                sid = str(image_id)
                if not sid or any(c.isspace() for c in sid):
                    raise ValueError(f"write_comp4: image id {sid!r} is empty or contains whitespace; "
                                     "comp4 lines are whitespace-separated")  # fmt: skip
                lines.append(f"{sid} {s!r} {b[0]!r} {b[1]!r} {b[2]!r} {b[3]!r}\n")
        path = results_dir / comp4_file_name(split, name)
        atomic_write_text(path, "".join(lines))
        paths.append(path)
    return paths


def read_comp4(results_dir: PathLike, split: str, class_names: Sequence[str]) -> Dict[str, ClassDetections]:
    """Read ``comp4_det_<split>_<class>.txt`` files (ours or any other toolkit's).

    Returns:
        class name -> ``{"image_ids": list[str], "scores": float64 [D], "boxes":
        float64 [D, 4]}``, boxes converted to the toolkit convention
        ``(xmin - 1, ymin - 1, xmax, ymax)``, in file line order.

    Raises:
        ValueError: a file is missing or a line is malformed (naming file and line).
    """
    results_dir = Path(results_dir)
    out: Dict[str, ClassDetections] = {}
    for name in class_names:
        path = results_dir / comp4_file_name(split, name)
        if not path.is_file():
            raise ValueError(
                f"{path}: no such results file; expected one comp4_det_{split}_<class>.txt per class "
                f"({len(class_names)} classes)"
            )
        ids: List[str] = []
        values: List[List[float]] = []
        with open(path) as f:
            for lineno, line in enumerate(f, 1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != 6:
                    raise ValueError(
                        f"{path}:{lineno}: {len(fields)} fields in {line.strip()!r}, expected "
                        "'<image_id> <score> <xmin> <ymin> <xmax> <ymax>'"
                    )
                try:
                    nums = [float(v) for v in fields[1:]]
                except ValueError:
                    raise ValueError(
                        f"{path}:{lineno}: non-numeric value in {line.strip()!r}, expected "
                        "'<image_id> <score> <xmin> <ymin> <xmax> <ymax>'"
                    ) from None
                if not all(math.isfinite(v) for v in nums):
                    raise ValueError(f"{path}:{lineno}: NaN or infinite value in {line.strip()!r}")
                ids.append(fields[0])
                values.append(nums)
        arr = np.asarray(values, dtype=np.float64).reshape(-1, 5)
        boxes = arr[:, 1:].copy()
        boxes[:, :2] -= 1.0  # inclusive 1-based -> continuous 0-based
        out[name] = {"image_ids": ids, "scores": arr[:, 0].copy(), "boxes": boxes}
    return out


def pack_voc_server_submission(
    results_dir: PathLike,
    out_tgz: PathLike,
    *,
    class_names: Sequence[str] = VOC_CLASSES,
    split: str = "test",
    year: str = "2012",
) -> Path:
    """Pack comp4 files the way the PASCAL VOC evaluation server expects.

    The archive holds ``results/VOC<year>/Main/comp4_det_<split>_<class>.txt`` for
    every class. Upload it at http://host.robots.ox.ac.uk:8080/ (an account is
    needed; the server limits how often a method may be submitted).

    Args:
        results_dir: folder with the comp4 files (see :func:`write_comp4`).
        out_tgz: archive to write (``.tar.gz``), written atomically.

    Returns:
        ``out_tgz`` as a Path.
    """
    results_dir = Path(results_dir)
    out_tgz = Path(out_tgz)
    missing = [n for n in class_names if not (results_dir / comp4_file_name(split, n)).is_file()]
    if missing:
        raise ValueError(
            f"{results_dir}: missing {len(missing)} results file(s), e.g. {comp4_file_name(split, missing[0])}; "
            f"the server expects one file per class for all {len(class_names)} classes"
        )

    def write(f) -> None:
        with tarfile.open(fileobj=f, mode="w:gz") as tar:
            for name in class_names:
                fname = comp4_file_name(split, name)
                tar.add(results_dir / fname, arcname=f"results/VOC{path_component(str(year))}/Main/{fname}")

    return atomic_write(out_tgz, write)
