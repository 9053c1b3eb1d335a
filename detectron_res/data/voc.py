"""PASCAL VOC reader (``VOCdevkit/VOC<year>`` layout).

Layout::

    <voc_root>/                      e.g. datasets/VOCdevkit/VOC2007
      Annotations/<id>.xml
      ImageSets/Main/<split>.txt     one image id per line (train, val, trainval, test)
      JPEGImages/<id>.jpg

Coordinates -- the one place they are converted: VOC XML boxes are 1-based pixel
indices with both ends inclusive (``xmin = 1`` is the first column, a box over a
whole ``W``-wide image has ``xmin = 1, xmax = W``). The toolkit uses continuous 0-based
coordinates where pixel ``i`` spans ``[i, i + 1)``, so::

    x1 = xmin - 1,  y1 = ymin - 1,  x2 = xmax,  y2 = ymax        (reading, here)
    xmin = x1 + 1,  ymin = y1 + 1,  xmax = x2,  ymax = y2        (writing results)

and the box width ``x2 - x1`` equals VOC's ``xmax - xmin + 1``.

``difficult`` objects are kept with ``difficult=True``: the VOC evaluation ignores
detections matched to them, and Faster R-CNN (py-faster-rcnn, ``USE_DIFF = False``)
did not train on them, which is the training loader's default (``use_difficult``).
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..bounded_io import XML_LIMITS, BoundedInputError, parse_xml_file
from .dataset import (
    DatasetError,
    DatasetReport,
    DetectionDataset,
    ErrorCollector,
    check_image_files,
    check_unique_ids,
    record_from_boxes,
)
from .image_io import DEFAULT_MAX_PIXELS

__all__ = ["VOC_CLASS_NAMES", "load_voc", "resolve_voc_root", "parse_voc_xml"]

# The 20 PASCAL VOC classes in the devkit's order (label i + 1 = VOC_CLASS_NAMES[i]).
VOC_CLASS_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip


def resolve_voc_root(voc_root: str, year: Optional[str] = None) -> str:
    """Accept either the ``VOC<year>`` folder itself or ``VOCdevkit`` plus ``year``."""
    voc_root = os.path.abspath(os.fspath(voc_root))
    if os.path.isdir(os.path.join(voc_root, "ImageSets")) or os.path.isdir(os.path.join(voc_root, "JPEGImages")):
        return voc_root
    if year is not None and os.path.isdir(os.path.join(voc_root, f"VOC{year}")):
        return os.path.join(voc_root, f"VOC{year}")
    return voc_root


class _Obj:
    __slots__ = ("name", "box", "difficult", "index")

    def __init__(self, name: str, box: Tuple[float, float, float, float], difficult: bool, index: int):
        self.name, self.box, self.difficult, self.index = name, box, difficult, index


def _text(elem: Optional[ET.Element]) -> Optional[str]:
    return None if elem is None or elem.text is None else elem.text.strip()


def parse_voc_xml(
    xml_file: str, errors: ErrorCollector
) -> Tuple[Optional[Tuple[int, int]], Optional[str], List[_Obj]]:
    """Parse one VOC annotation file.

    Returns:
        ``(annotated (height, width) or None, <filename> or None, objects)`` where each
        object's ``box`` is already converted to continuous 0-based ``x1, y1, x2, y2``.
        Problems go to ``errors`` (with the file and the object index).
    """
    src = os.path.basename(xml_file)
    try:
        root = parse_xml_file(xml_file, XML_LIMITS)
    except ET.ParseError as e:
        line, col = e.position
        errors.add(f"{xml_file} line {line} column {col}: invalid XML ({e})")
        return None, None, []
    except BoundedInputError as e:  # too large or too deeply nested
        errors.add(str(e))
        return None, None, []
    except OSError as e:
        errors.add(f"{xml_file}: cannot be read ({e})")
        return None, None, []

    size = None
    size_el = root.find("size")
    if size_el is not None:
        try:
            w, h = int(float(_text(size_el.find("width")))), int(float(_text(size_el.find("height"))))
            size = (h, w) if h > 0 and w > 0 else None
        except (TypeError, ValueError):
            size = None

    objects = []
    for i, obj in enumerate(root.findall("object")):
        where = f"{src} object #{i}"
        name = _text(obj.find("name"))
        if not name:
            errors.add(f"{where}: missing <name>")
            continue
        bb = obj.find("bndbox")
        if bb is None:
            errors.add(f"{where} ('{name}'): missing <bndbox>")
            continue
        try:
            vals = [float(_text(bb.find(k))) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            errors.add(f"{where} ('{name}'): <bndbox> needs numeric xmin, ymin, xmax, ymax")
            continue
        if not all(math.isfinite(v) for v in vals):
            errors.add(f"{where} ('{name}'): bndbox {vals} contains NaN or infinity")
            continue
        xmin, ymin, xmax, ymax = vals
        # 1-based inclusive -> continuous 0-based (see the module docstring).
        box = (xmin - 1.0, ymin - 1.0, xmax, ymax)
        if box[2] < box[0] or box[3] < box[1]:
            errors.add(
                f"{where} ('{name}'): bndbox xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} ymax={ymax:g} "
                "has a negative width or height"
            )
            continue
        diff_text = _text(obj.find("difficult"))
        try:
            difficult = bool(int(float(diff_text))) if diff_text else False
        except ValueError:
            errors.add(f"{where} ('{name}'): <difficult> is {diff_text!r}, expected 0 or 1")
            continue
        objects.append(_Obj(name, box, difficult, i))
    return size, _text(root.find("filename")), objects


def load_voc(
    voc_root: str,
    split: str,
    *,
    year: Optional[str] = None,
    name: Optional[str] = None,
    class_names: Sequence[str] = VOC_CLASS_NAMES,
    images_only: bool = False,
    filter_empty: bool = False,
    check_images: str = "header",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DetectionDataset:
    """Load one split of a VOC-layout dataset.

    Args:
        voc_root: the ``VOC<year>`` folder (or ``VOCdevkit`` together with ``year``).
        split: name of ``ImageSets/Main/<split>.txt`` (``train``, ``val``, ``trainval``, ``test``).
        year: ``"2007"``, ``"2012"`` ... (recorded for the evaluator: 2007 uses 11-point AP).
        name: dataset name for messages (default ``voc_<year>_<split>``).
        class_names: label space; object names not in it are errors. Default: the 20
            VOC classes. Set it for custom data in VOC layout.
        images_only: the split has no public labels (VOC2012 test): read image ids
            and sizes only.
        filter_empty: drop images without a training box (one that is neither
            difficult nor crowd); counted in the report. Default keeps them.
        check_images: ``"header"``, ``"exists"`` or ``"none"``.
        max_pixels: decompression-bomb guard for the header check.

    Raises:
        DatasetError: missing split file / XML / image, invalid XML, unknown class
            names, NaN or negative box sizes, duplicate image ids.
    """
    root = resolve_voc_root(voc_root, year)
    base = os.path.basename(root)
    if year is None and base.startswith("VOC") and base[3:].isdigit():
        year = base[3:]
    name = name or f"voc_{year or os.path.basename(root)}_{split}"
    class_names = [str(c) for c in class_names]
    name_to_label = {c: i + 1 for i, c in enumerate(class_names)}
    split_file = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(split_file):
        main_dir = os.path.dirname(split_file)
        available = (
            sorted(f[:-4] for f in os.listdir(main_dir) if f.endswith(".txt") and "_" not in f)
            if os.path.isdir(main_dir)
            else []
        )
        raise DatasetError(
            f"dataset '{name}': split file {split_file} does not exist"
            + (f"; available splits: {available}" if available else f" (is {root} a VOC<year> folder?)")
        )
    with open(split_file) as f:
        ids = [line.split()[0] for line in f if line.strip()]
    errors = ErrorCollector(name)
    report = DatasetReport(name=name)
    check_unique_ids(ids, os.path.relpath(split_file, os.path.dirname(root)), errors)
    errors.raise_if_any()

    parsed = []
    items = []
    for image_id in ids:
        xml_file = os.path.join(root, "Annotations", f"{image_id}.xml")
        if os.path.isfile(xml_file):
            size, filename, objects = parse_voc_xml(xml_file, errors)
        elif images_only:
            size, filename, objects = None, None, []
        else:
            errors.add(f"annotation file {xml_file} does not exist (image id {image_id!r} in {split}.txt)")
            continue
        if images_only:
            objects = []
        file_name = os.path.join(root, "JPEGImages", f"{image_id}.jpg")
        if not os.path.exists(file_name) and filename:
            # Custom VOC exports often store PNGs; the XML's <filename> then names the file.
            alt = os.path.join(root, "JPEGImages", filename)
            if os.path.exists(alt):
                file_name = alt
        for obj in objects:
            if obj.name not in name_to_label:
                errors.add(
                    f"{image_id}.xml object #{obj.index}: class name '{obj.name}' is not in "
                    f"class_names {class_names}"
                )
        parsed.append((image_id, file_name, objects))
        items.append((file_name, size, f"{image_id}.xml" if not images_only else f"{split}.txt id {image_id}"))
    sizes = check_image_files(items, mode=check_images, report=report, errors=errors, max_pixels=max_pixels)
    for (_, _, where), size in zip(items, sizes):
        if size is None and check_images != "header":
            errors.add(f"{where}: no <size> in the annotation; use check_images='header' to read it")
    errors.raise_if_any()

    records = []
    for (image_id, file_name, objects), (height, width) in zip(parsed, sizes):
        boxes = np.array([o.box for o in objects], dtype=np.float64).reshape(-1, 4)
        wheres = [f"{image_id}.xml object #{o.index} ('{o.name}')" for o in objects]
        records.append(
            record_from_boxes(
                image_id=image_id,
                file_name=file_name,
                height=height,
                width=width,
                boxes=boxes,
                labels=[name_to_label[o.name] for o in objects],
                wheres=wheres,
                report=report,
                difficult=[o.difficult for o in objects],
            )
        )
    if images_only:
        report.notes.append(f"split '{split}' is read as images only (its labels are not public)")
    report.update_counts(records, class_names)
    dataset = DetectionDataset(
        name=name,
        records=records,
        class_names=class_names,
        category_ids=list(range(1, len(class_names) + 1)),
        format="voc",
        report=report,
        max_pixels=max_pixels,
        extra={
            "voc_root": root,
            "year": None if year is None else str(year),
            "split": split,
            "images_only": images_only,
        },
    )
    return dataset.filter_empty() if filter_empty else dataset
