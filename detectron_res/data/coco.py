"""COCO-format json reader.

Reads any file in the COCO detection format (the official COCO 2014/2017 files and
custom data exported "as COCO"), validates it and returns a :class:`DetectionDataset`.

Label space: COCO category ids are not contiguous (1..90 with gaps for 80 classes).
Categories are sorted by id and numbered ``1..K``; ``dataset.category_ids[i]`` keeps the
COCO id of label ``i + 1`` (saved with every checkpoint so that predictions are written
back with the original ids for ``COCOeval``).

Boxes: COCO ``bbox = [x, y, w, h]`` (continuous, 0-based) converts to
``[x, y, x + w, y + h]``; no +1 anywhere.

``iscrowd = 1`` boxes are kept (flag ``iscrowd``) because COCOeval needs them to ignore
detections on crowds; the training loader never trains on them. An optional per
annotation ``"difficult": 0/1`` key (written by the demo dataset; not part of the
official format) sets the ``difficult`` flag.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..bounded_io import DATASET_JSON_LIMITS, BoundedInputError, load_json_file
from .dataset import (
    DatasetError,
    DatasetReport,
    DetectionDataset,
    ErrorCollector,
    ImageRecord,
    check_image_files,
    check_unique_ids,
    record_from_boxes,
    xywh_problem,
)
from .image_io import DEFAULT_MAX_PIXELS

__all__ = ["load_coco_json", "validate_coco_json"]


def _read_json(json_file: str, name: str) -> Dict[str, Any]:
    if not os.path.isfile(json_file):
        raise DatasetError(f"dataset '{name}': annotation file {json_file} does not exist")
    try:
        data = load_json_file(json_file, DATASET_JSON_LIMITS)
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"dataset '{name}': {json_file} line {e.lineno} column {e.colno}: invalid JSON ({e.msg})"
        ) from None
    except BoundedInputError as e:  # too large or deep, not UTF-8
        raise DatasetError(f"dataset '{name}': {e}") from None
    except OSError as e:
        raise DatasetError(f"dataset '{name}': {json_file}: cannot be read ({e.strerror})") from None
    if not isinstance(data, dict):
        raise DatasetError(
            f"dataset '{name}': {json_file}: top level is a {type(data).__name__}, expected an object "
            "with keys 'images', 'annotations', 'categories'"
        )
    return data


def _is_id(v: Any) -> bool:
    # ids are dictionary keys here and in pycocotools: lists or dicts would crash both.
    return isinstance(v, (int, str)) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_coco_dict(data: Dict[str, Any], json_file: str, name: str, errors: ErrorCollector) -> Dict[Any, tuple]:
    """The checks that need no image file: structure, ids, and every annotation.

    Structural problems that make the rest unreadable raise :class:`DatasetError`
    at once; problems of single annotations go to ``errors`` (not raised here).

    Returns:
        annotation id -> ``(x, y, w, h)`` floats for every annotation that passed.
    """
    src = os.path.basename(json_file)
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(
                f"dataset '{name}': {json_file}: key '{key}' is "
                f"{'missing' if key not in data else type(data[key]).__name__}, expected a list"
            )
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise DatasetError(
            f"dataset '{name}': {json_file}: key 'annotations' is {type(annotations).__name__}, expected a list"
        )

    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
            errors.add(f"{src}: images[{i}] = {str(img)[:80]} lacks 'id' or 'file_name'")
        elif not _is_id(img["id"]):
            errors.add(f"{src}: images[{i}] has id {img['id']!r}, expected an integer or a string")
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or "name" not in cat:
            errors.add(f"{src}: categories[{i}] = {str(cat)[:80]} lacks an integer 'id' or a 'name'")
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict) or any(k not in ann for k in ("id", "image_id", "category_id", "bbox")):
            errors.add(
                f"{src}: annotations[{i}] = {str(ann)[:80]} lacks one of 'id', 'image_id', 'category_id', 'bbox'"
            )
            continue
        for key in ("id", "image_id", "category_id"):
            if not _is_id(ann[key]):
                errors.add(f"{src}: annotations[{i}] has {key} {ann[key]!r}, expected an integer or a string")
    errors.raise_if_any()

    # Duplicates would merge two images (or annotations) in pycocotools' index.
    check_unique_ids([img["id"] for img in data["images"]], src, errors)
    check_unique_ids([c["id"] for c in data["categories"]], src, errors, what="category id")
    check_unique_ids([a["id"] for a in annotations], src, errors, what="annotation id")
    errors.raise_if_any()

    image_ids = {img["id"] for img in data["images"]}
    known_cats = sorted(c["id"] for c in data["categories"])
    known_cat_set = set(known_cats)
    valid: Dict[Any, tuple] = {}
    for ann in annotations:
        if ann["image_id"] not in image_ids:
            errors.add(f"{src} annotation id {ann['id']!r}: image_id {ann['image_id']!r} is not in 'images'")
            continue
        where = f"{src} annotation id {ann['id']!r} (image id {ann['image_id']!r})"
        bbox = ann["bbox"]
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            errors.add(f"{where}: bbox = {bbox!r}, expected [x, y, width, height] numbers")
            continue
        x, y, bw, bh = (float(v) for v in bbox)
        problem = xywh_problem(x, y, bw, bh)
        if problem:
            errors.add(f"{where}: bbox = {bbox!r} {problem}")
            continue
        if ann["category_id"] not in known_cat_set:
            errors.add(f"{where}: category_id {ann['category_id']!r} is not in 'categories' (known ids: {known_cats})")
            continue
        valid[ann["id"]] = (x, y, bw, bh)
    return valid


def validate_coco_json(json_file: str, *, name: Optional[str] = None) -> Dict[str, Any]:
    """Check a COCO json without its images (e.g. ground truth given to an evaluator).

    Applies every check of :func:`load_coco_json` that needs no image file: valid
    JSON, structure, unique ids, annotations of known images and categories, boxes
    of 4 finite numbers with non-negative sizes.

    Returns:
        the parsed json.

    Raises:
        DatasetError: one line naming the file and the first problem (all of them in
            ``err.errors``).
    """
    json_file = os.path.abspath(os.fspath(json_file))
    name = name or os.path.basename(json_file)
    data = _read_json(json_file, name)
    errors = ErrorCollector(name)
    _check_coco_dict(data, json_file, name, errors)
    errors.raise_if_any()
    return data


def load_coco_json(
    json_file: str,
    image_root: str,
    *,
    name: Optional[str] = None,
    class_names: Optional[Sequence[str]] = None,
    filter_empty: bool = False,
    check_images: str = "header",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DetectionDataset:
    """Load a COCO-format detection json.

    Args:
        json_file: path of the annotation json.
        image_root: folder that ``images[i].file_name`` is relative to.
        name: dataset name for messages (default: the json file name).
        class_names: optional subset/re-ordering of the json's category names; label
            ``i + 1`` is then ``class_names[i]``. Boxes of other categories are dropped
            and counted in the report.
        filter_empty: drop images without any non-crowd box (counted in the report).
            Default keeps them (they are useful negatives).
        check_images: ``"header"``, ``"exists"`` or ``"none"``
            (see :data:`~detectron_res.data.dataset.CHECK_IMAGES_MODES`).
        max_pixels: decompression-bomb guard for the header check.

    Returns:
        a :class:`DetectionDataset` with ``format="coco"`` and ``extra["json_file"]``.

    Raises:
        DatasetError: malformed json, NaN or negative box sizes, unknown category ids,
            annotations of unknown images, duplicate ids, missing/unreadable images.
    """
    json_file = os.path.abspath(os.fspath(json_file))
    image_root = os.path.abspath(os.fspath(image_root))
    name = name or os.path.basename(json_file)
    src = os.path.basename(json_file)
    data = _read_json(json_file, name)
    errors = ErrorCollector(name)
    report = DatasetReport(name=name)
    if "annotations" not in data:
        report.notes.append(f"{src} has no 'annotations' key (image-only split, e.g. test-dev)")
    # Everything that needs no image file; the annotations' errors are collected with
    # the image files' below, so that one run reports all of them.
    valid_boxes = _check_coco_dict(data, json_file, name, errors)

    # pycocotools builds the image -> annotations index (and is what COCOeval uses, so
    # reading through it guarantees both sides see the same data). It prints progress.
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()

    # --- label space ---------------------------------------------------------------------
    cats = sorted(coco.cats.values(), key=lambda c: c["id"])
    if class_names is None:
        selected = cats
    else:
        by_name = {}
        for c in cats:
            by_name.setdefault(str(c["name"]), c)
        unknown = [n for n in class_names if n not in by_name]
        if unknown:
            raise DatasetError(
                f"dataset '{name}': class_names {unknown} are not categories of {src}; "
                f"its categories are {sorted(by_name)}"
            )
        selected = [by_name[n] for n in class_names]
    cat_to_label = {c["id"]: i + 1 for i, c in enumerate(selected)}
    known_cats = {c["id"]: str(c["name"]) for c in cats}
    out_class_names = [str(c["name"]) for c in selected]
    out_category_ids = [int(c["id"]) for c in selected]

    # --- images ---------------------------------------------------------------------------
    images = data["images"]
    items = []
    for img in images:
        h, w = img.get("height"), img.get("width")
        size = (int(h), int(w)) if _is_number(h) and _is_number(w) else None
        where = f"{src} image id {img['id']!r}"
        items.append((os.path.join(image_root, img["file_name"]), size, where))
    sizes = check_image_files(items, mode=check_images, report=report, errors=errors, max_pixels=max_pixels)
    for (file_name, _, where), size in zip(items, sizes):
        if size is None and check_images != "header":
            errors.add(f"{where}: no 'height'/'width' in the json; use check_images='header' to read them")
    errors.raise_if_any()

    # --- annotations ----------------------------------------------------------------------
    records: List[ImageRecord] = []
    for img, (file_name, _, _), size in zip(images, items, sizes):
        height, width = size
        boxes, labels, difficult, crowd, wheres = [], [], [], [], []
        for ann in coco.imgToAnns.get(img["id"], []):
            where = f"{src} annotation id {ann['id']!r} (image id {img['id']!r})"
            x, y, bw, bh = valid_boxes[ann["id"]]  # every annotation passed _check_coco_dict
            cat = ann["category_id"]
            if cat not in cat_to_label:
                report.add_skipped(f"box of category '{known_cats[cat]}' not in class_names, dropped", where)
                continue
            boxes.append((x, y, x + bw, y + bh))
            labels.append(cat_to_label[cat])
            crowd.append(bool(ann.get("iscrowd", 0)))
            difficult.append(bool(ann.get("difficult", 0)))
            wheres.append(where)
        records.append(
            record_from_boxes(
                image_id=img["id"],
                file_name=file_name,
                height=height,
                width=width,
                boxes=np.array(boxes, dtype=np.float64),
                labels=labels,
                wheres=wheres,
                report=report,
                difficult=difficult,
                iscrowd=crowd,
            )
        )
    errors.raise_if_any()

    report.update_counts(records, out_class_names)
    dataset = DetectionDataset(
        name=name,
        records=records,
        class_names=out_class_names,
        category_ids=out_category_ids,
        format="coco",
        report=report,
        max_pixels=max_pixels,
        extra={"json_file": json_file, "image_root": image_root},
    )
    return dataset.filter_empty() if filter_empty else dataset
