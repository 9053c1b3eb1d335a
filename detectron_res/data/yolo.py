"""YOLO txt reader (the format of Darknet / Ultralytics exports).

Layout (``split`` optional)::

    <yolo_root>/
      classes.txt                 one class name per line (or labels/classes.txt, or
                                  data.yaml with 'names')
      images/[<split>/]**/a.jpg
      labels/[<split>/]**/a.txt   one line per object: "class cx cy w h"

``class`` is a 0-based class index (label ``class + 1`` in the toolkit); ``cx cy w h``
are the box centre and size normalized by the image width/height. Conversion to the
toolkit's continuous 0-based pixel coordinates happens once, here::

    x1 = (cx - w / 2) * W,   x2 = (cx + w / 2) * W      (same for y with H)

The format carries no image size, so every image header is read (``check_images`` is
always ``"header"``). An image without a label file is an image with no objects (as
in YOLO tools), counted in the report; a label file without an image is reported.
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence

import numpy as np
import yaml

from ..bounded_io import DATA_YAML_LIMITS, BoundedInputError, load_yaml_file, read_text
from .dataset import (
    DatasetError,
    DatasetReport,
    DetectionDataset,
    ErrorCollector,
    check_image_files,
    record_from_boxes,
    xywh_problem,
)
from .image_io import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS

__all__ = ["load_yolo", "read_class_names_file"]

# Normalized values may overshoot [0, 1] by rounding in the exporting tool (6 decimals).
_NORMALIZED_TOLERANCE = 1e-4


def read_class_names_file(path: str) -> List[str]:
    """Read class names: a text file with one name per line, or a YOLO ``data.yaml``
    whose ``names`` is a list or an ``{index: name}`` mapping."""
    if not os.path.isfile(path):
        raise DatasetError(f"class names file {path} does not exist")
    if path.endswith((".yaml", ".yml")):
        try:
            cfg = load_yaml_file(path, DATA_YAML_LIMITS)
        except BoundedInputError as e:
            raise DatasetError(str(e)) from None
        except yaml.YAMLError as e:
            raise DatasetError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
        except OSError as e:
            raise DatasetError(f"{path}: cannot be read ({e.strerror})") from None
        names = cfg.get("names") if isinstance(cfg, dict) else None
        if isinstance(names, dict):
            keys = sorted(names, key=int)
            if [int(k) for k in keys] != list(range(len(keys))):
                raise DatasetError(f"{path}: 'names' keys are {keys}, expected 0..{len(keys) - 1}")
            names = [names[k] for k in keys]
        if not isinstance(names, list) or not names:
            raise DatasetError(f"{path}: expected a non-empty 'names' list or mapping")
        names = [str(n) for n in names]
    else:
        try:
            text = read_text(path, DATA_YAML_LIMITS)
        except BoundedInputError as e:
            raise DatasetError(str(e)) from None
        names = [line.strip() for line in text.splitlines() if line.strip()]
        if not names:
            raise DatasetError(f"{path}: no class names (expected one name per line)")
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise DatasetError(f"{path}: class names {dups} appear more than once")
    return names


def _find_images(image_dir: str) -> List[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(image_dir):
        dirnames.sort()
        for fn in sorted(filenames):
            if fn.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.join(dirpath, fn))
    return found


def load_yolo(
    yolo_root: str,
    *,
    split: Optional[str] = None,
    class_names_file: Optional[str] = None,
    class_names: Optional[Sequence[str]] = None,
    name: Optional[str] = None,
    filter_empty: bool = False,
    check_images: str = "header",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DetectionDataset:
    """Load a YOLO-txt dataset.

    Args:
        yolo_root: folder holding ``images/`` and ``labels/``.
        split: optional sub-folder of both (Ultralytics layout ``images/train``).
        class_names_file: class names (default ``<yolo_root>/classes.txt``, then
            ``<yolo_root>/data.yaml``). Ignored when ``class_names`` is given.
        class_names: the label space directly (index ``c`` -> ``class_names[c]``).
        name: dataset name for messages.
        filter_empty: drop images without boxes (counted in the report).
        check_images: accepted for symmetry with the other readers; YOLO always reads
            image headers because the format has no image sizes.
        max_pixels: decompression-bomb guard.

    Raises:
        DatasetError: missing folders or class names, lines that are not
            ``class cx cy w h``, class indices out of range, NaN or negative sizes,
            values outside ``[0, 1]`` (not normalized), unreadable images.
    """
    del check_images  # the sizes are needed: headers are always read
    root = os.path.abspath(os.fspath(yolo_root))
    name = name or f"yolo_{os.path.basename(root)}" + (f"_{split}" if split else "")
    image_dir = os.path.join(root, "images", split) if split else os.path.join(root, "images")
    label_dir = os.path.join(root, "labels", split) if split else os.path.join(root, "labels")
    if not os.path.isdir(image_dir):
        raise DatasetError(f"dataset '{name}': image folder {image_dir} does not exist (expected <yolo_root>/images)")
    if class_names is None:
        if class_names_file is None:
            # LabelImg writes classes.txt next to the labels; Ultralytics uses data.yaml.
            candidates = [
                os.path.join(root, "classes.txt"),
                os.path.join(label_dir, "classes.txt"),
                os.path.join(root, "data.yaml"),
            ]
            class_names_file = next((c for c in candidates if os.path.isfile(c)), None)
            if class_names_file is None:
                raise DatasetError(
                    f"dataset '{name}': no class names: none of {candidates} exists; "
                    "set class_names_file or class_names"
                )
        try:
            class_names = read_class_names_file(os.fspath(class_names_file))
        except DatasetError as e:  # name the dataset, as every other message of this reader does
            raise DatasetError(f"dataset '{name}': {e}") from None
    class_names = [str(c) for c in class_names]
    num_classes = len(class_names)

    errors = ErrorCollector(name)
    report = DatasetReport(name=name)
    image_files = _find_images(image_dir)
    if split is None:
        subdirs = sorted(d for d in os.listdir(image_dir) if os.path.isdir(os.path.join(image_dir, d)))
        if subdirs and os.path.isdir(label_dir) and all(os.path.isdir(os.path.join(label_dir, d)) for d in subdirs):
            # Ultralytics layout (images/train, images/val) read as one dataset.
            report.notes.append(
                f"images/ has sub-folders {subdirs}, all read as one dataset; set 'split' to read one of them"
            )
    rel_ids = [os.path.splitext(os.path.relpath(p, image_dir))[0].replace(os.sep, "/") for p in image_files]
    seen = {}
    for rid, p in zip(rel_ids, image_files):
        if rid in seen:
            errors.add(f"images {seen[rid]} and {p} share the label file {rid}.txt (same name, different extension)")
        seen[rid] = p
    errors.raise_if_any()

    sizes = check_image_files(
        [(p, None, f"{os.path.basename(image_dir)}/{rid}") for p, rid in zip(image_files, rel_ids)],
        mode="header",
        report=report,
        errors=errors,
        max_pixels=max_pixels,
    )
    errors.raise_if_any()

    records = []
    without_labels = []
    for file_name, rid, (height, width) in zip(image_files, rel_ids, sizes):
        label_file = os.path.join(label_dir, rid + ".txt")
        rel_label = os.path.relpath(label_file, root)
        raw, wheres = [], []
        if not os.path.isfile(label_file):
            without_labels.append(rid)
        else:
            try:
                with open(label_file, encoding="utf-8") as f:
                    lines = f.read().splitlines()
            except UnicodeDecodeError as e:
                errors.add(f"{rel_label}: not UTF-8 text (byte {e.start}); expected lines 'class cx cy w h'")
                lines = []
            for lineno, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                where = f"{rel_label} line {lineno}"
                parts = line.split()
                if len(parts) != 5:
                    errors.add(
                        f"{where}: {line.strip()!r} has {len(parts)} values, expected 5 "
                        "('class cx cy w h'; polygon/segmentation lines are not supported)"
                    )
                    continue
                try:
                    cls_f = float(parts[0])
                    cx, cy, w, h = (float(v) for v in parts[1:])
                except ValueError:
                    errors.add(f"{where}: {line.strip()!r} is not numeric, expected 'class cx cy w h'")
                    continue
                if not cls_f.is_integer() or not 0 <= cls_f < num_classes:
                    errors.add(
                        f"{where}: class index {parts[0]} is unknown, expected an integer in "
                        f"0..{num_classes - 1} ({num_classes} class names)"
                    )
                    continue
                problem = xywh_problem(cx, cy, w, h)
                if problem:
                    errors.add(f"{where}: {line.strip()!r} {problem}")
                    continue
                # A value above 1 means the file holds pixel coordinates (a common export
                # mistake); denormalizing them would push every box out of the image and
                # drop it, so it is an error rather than a clipped box. Boxes whose centre
                # lies inside but whose extent crosses the border are still just clipped.
                outside = [
                    f"{k}={v:g}" for k, v in zip(("cx", "cy", "w", "h"), (cx, cy, w, h))
                    if not -_NORMALIZED_TOLERANCE <= v <= 1 + _NORMALIZED_TOLERANCE
                ]
                if outside:
                    errors.add(
                        f"{where}: {line.strip()!r} has {', '.join(outside)} outside [0, 1]; expected "
                        "cx cy w h normalized by the image width and height (pixel coordinates?)"
                    )
                    continue
                raw.append((int(cls_f) + 1, cx, cy, w, h))
                wheres.append(where)
        arr = np.array([r[1:] for r in raw], dtype=np.float64).reshape(-1, 4)
        # normalized centre/size -> continuous 0-based pixel corners (module docstring).
        boxes = np.stack(
            [
                (arr[:, 0] - arr[:, 2] / 2) * width,
                (arr[:, 1] - arr[:, 3] / 2) * height,
                (arr[:, 0] + arr[:, 2] / 2) * width,
                (arr[:, 1] + arr[:, 3] / 2) * height,
            ],
            axis=1,
        )
        records.append(
            record_from_boxes(
                image_id=rid,
                file_name=file_name,
                height=height,
                width=width,
                boxes=boxes,
                labels=[r[0] for r in raw],
                wheres=wheres,
                report=report,
            )
        )
    errors.raise_if_any()

    if without_labels:
        report.notes.append(
            f"{len(without_labels)} image(s) have no label file and are kept with no objects "
            f"(e.g. {', '.join(without_labels[:3])})"
        )
    if os.path.isdir(label_dir):
        known = set(rel_ids)
        for dirpath, _, filenames in os.walk(label_dir):
            for fn in sorted(filenames):
                if not fn.endswith(".txt") or fn == "classes.txt":
                    continue
                rid = os.path.splitext(os.path.relpath(os.path.join(dirpath, fn), label_dir))[0].replace(os.sep, "/")
                if rid not in known:
                    report.add_skipped(
                        "label file without a matching image, ignored", os.path.relpath(os.path.join(dirpath, fn), root)
                    )
    report.update_counts(records, class_names)
    dataset = DetectionDataset(
        name=name,
        records=records,
        class_names=class_names,
        category_ids=list(range(1, num_classes + 1)),
        format="yolo",
        report=report,
        max_pixels=max_pixels,
        extra={"yolo_root": root, "split": split, "class_names_file": class_names_file},
    )
    return dataset.filter_empty() if filter_empty else dataset
