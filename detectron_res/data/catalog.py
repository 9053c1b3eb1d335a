"""Dataset names -> datasets, and concatenation.

Built-in names resolve under one root folder: ``$DETECTRON_RES_DATASETS`` if set, else
``./datasets`` (relative to the current directory). ``datasets/README.md`` shows each
layout and where the official data comes from.

==================  =========================================================
name                files (under the root)
==================  =========================================================
coco_2014_train     coco/train2014/, coco/annotations/instances_train2014.json
coco_2014_val       coco/val2014/, coco/annotations/instances_val2014.json
coco_2017_train     coco/train2017/, coco/annotations/instances_train2017.json
coco_2017_val       coco/val2017/, coco/annotations/instances_val2017.json
voc_2007_trainval   VOCdevkit/VOC2007 (ImageSets/Main/trainval.txt)
voc_2007_test       VOCdevkit/VOC2007 (ImageSets/Main/test.txt)
voc_2012_trainval   VOCdevkit/VOC2012 (ImageSets/Main/trainval.txt)
voc_2012_test       VOCdevkit/VOC2012 (test.txt; images only, labels not public)
shapes_train/_val   shapes/ demo, COCO json    (python -m detectron_res.data.shapes)
shapes_voc_*        shapes/VOCdevkit/VOC2007   (same images and boxes, VOC layout)
shapes_yolo_*       shapes/yolo/<split>        (same images and boxes, YOLO txt)
==================  =========================================================

A user's own dataset is a *spec*: any object (dataclass, OmegaConf node, dict) with the
fields of the config's ``DatasetSpec``: ``format`` ("coco" | "voc" | "yolo"),
``image_root`` + ``annotation_file`` (coco), ``voc_root`` + ``year`` + ``split`` (voc),
``yolo_root`` + optional ``split`` and ``class_names_file`` (yolo), optional
``class_names``. Empty strings mean "not set".

Relative paths in a spec are looked up under the datasets root first, then under the
current directory; the first that exists is used (if neither exists, the error names
the path under the datasets root).

Paper protocols: VOC "07+12" trains on ``["voc_2007_trainval", "voc_2012_trainval"]``,
"07++12" adds ``"voc_2007_test"`` (ResNet paper Table 7); see :func:`get_datasets`.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .coco import load_coco_json
from .dataset import DatasetReport, DetectionDataset
from .image_io import DEFAULT_MAX_PIXELS
from .shapes import SHAPES_CLASS_NAMES
from .voc import load_voc
from .yolo import load_yolo

__all__ = [
    "DATASETS_ENV_VAR",
    "BUILTIN_DATASETS",
    "datasets_root",
    "get_dataset",
    "get_datasets",
    "concat_datasets",
    "dataset_names",
]

logger = logging.getLogger(__name__)

DATASETS_ENV_VAR = "DETECTRON_RES_DATASETS"

# name -> spec, paths relative to the datasets root.
BUILTIN_DATASETS: Dict[str, Dict[str, Any]] = {}
for _year, _splits in (("2014", ("train", "val")), ("2017", ("train", "val"))):
    for _split in _splits:
        BUILTIN_DATASETS[f"coco_{_year}_{_split}"] = {
            "format": "coco",
            "image_root": f"coco/{_split}{_year}",
            "annotation_file": f"coco/annotations/instances_{_split}{_year}.json",
        }
for _year, _split in (("2007", "trainval"), ("2007", "test"), ("2012", "trainval"), ("2012", "test")):
    BUILTIN_DATASETS[f"voc_{_year}_{_split}"] = {
        "format": "voc",
        "voc_root": f"VOCdevkit/VOC{_year}",
        "year": _year,
        "split": _split,
        # VOC2012 test labels are not public: results go to the evaluation server.
        "images_only": (_year, _split) == ("2012", "test"),
    }
for _split in ("train", "val"):
    BUILTIN_DATASETS[f"shapes_{_split}"] = {
        "format": "coco",
        "image_root": f"shapes/images/{_split}",
        "annotation_file": f"shapes/annotations/instances_{_split}.json",
    }
    BUILTIN_DATASETS[f"shapes_voc_{_split}"] = {
        "format": "voc",
        "voc_root": "shapes/VOCdevkit/VOC2007",
        "year": "2007",
        "split": _split,
        "class_names": list(SHAPES_CLASS_NAMES),
    }
    BUILTIN_DATASETS[f"shapes_yolo_{_split}"] = {
        "format": "yolo",
        "yolo_root": f"shapes/yolo/{_split}",
        "class_names_file": "shapes/yolo/classes.txt",
    }

_SPEC_FIELDS = (
    "format", "image_root", "annotation_file", "voc_root", "year", "split",
    "yolo_root", "class_names_file", "class_names", "images_only",
)  # fmt: skip


def datasets_root(root: Optional[str] = None) -> str:
    """The folder built-in names resolve under: ``root``, else ``$DETECTRON_RES_DATASETS``,
    else ``./datasets``; returned as an absolute path."""
    return os.path.abspath(root or os.environ.get(DATASETS_ENV_VAR) or "datasets")


def _spec_to_dict(spec: Any, where: str) -> Dict[str, Any]:
    """Read the spec fields from a dict, dataclass, OmegaConf node or plain object."""
    if isinstance(spec, Mapping):
        get = spec.get
        keys = set(spec.keys())
    elif dataclasses.is_dataclass(spec) or hasattr(spec, "format"):
        get = lambda k, d=None: getattr(spec, k, d)  # noqa: E731
        keys = {k for k in _SPEC_FIELDS if hasattr(spec, k)}
    else:
        raise TypeError(f"{where}: dataset spec is a {type(spec).__name__}, expected a mapping or an object with 'format'")
    unknown = sorted(str(k) for k in keys if k not in _SPEC_FIELDS)
    if unknown:
        close = difflib.get_close_matches(unknown[0], _SPEC_FIELDS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"{where}: unknown field(s) {unknown}, expected some of {list(_SPEC_FIELDS)}{hint}")
    out = {}
    for k in _SPEC_FIELDS:
        v = get(k, None)
        if v is None or (isinstance(v, str) and v == ""):
            continue
        if k == "class_names":
            v = [str(c) for c in v]
            if not v:
                continue
        out[k] = v
    return out


def _resolve_path(path: str, root: str) -> str:
    """Relative paths: under the datasets root if it exists there, else the CWD."""
    path = os.path.expanduser(os.fspath(path))
    if os.path.isabs(path):
        return path
    under_root = os.path.join(root, path)
    if os.path.exists(under_root) or not os.path.exists(path):
        return under_root
    return os.path.abspath(path)


def _require(spec: Dict[str, Any], fields: Sequence[str], where: str) -> None:
    missing = [f for f in fields if f not in spec]
    if missing:
        raise ValueError(f"{where}: format '{spec['format']}' needs field(s) {missing}; got fields {sorted(spec)}")


def dataset_names(custom: Optional[Mapping[str, Any]] = None) -> List[str]:
    """All names :func:`get_dataset` accepts (built-in and user-declared)."""
    return sorted(set(BUILTIN_DATASETS) | set(custom or {}))


def load_from_spec(
    name: str,
    spec: Any,
    *,
    root: Optional[str] = None,
    filter_empty: bool = False,
    check_images: str = "header",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    where: Optional[str] = None,
) -> DetectionDataset:
    """Load a dataset described by a spec (see the module docstring)."""
    where = where or f"dataset '{name}'"
    s = _spec_to_dict(spec, where)
    root = datasets_root(root)
    fmt = s.get("format")
    common = dict(name=name, filter_empty=filter_empty, check_images=check_images, max_pixels=max_pixels)
    if fmt == "coco":
        _require(s, ("image_root", "annotation_file"), where)
        return load_coco_json(
            _resolve_path(s["annotation_file"], root),
            _resolve_path(s["image_root"], root),
            class_names=s.get("class_names"),
            **common,
        )
    if fmt == "voc":
        _require(s, ("voc_root", "split"), where)
        kwargs = {"class_names": s["class_names"]} if "class_names" in s else {}
        return load_voc(
            _resolve_path(s["voc_root"], root),
            s["split"],
            year=str(s["year"]) if "year" in s else None,
            images_only=bool(s.get("images_only", False)),
            **kwargs,
            **common,
        )
    if fmt == "yolo":
        _require(s, ("yolo_root",), where)
        return load_yolo(
            _resolve_path(s["yolo_root"], root),
            split=s.get("split"),
            class_names_file=_resolve_path(s["class_names_file"], root) if "class_names_file" in s else None,
            class_names=s.get("class_names"),
            **common,
        )
    raise ValueError(f"{where}: format={fmt!r} is not supported, expected one of 'coco', 'voc', 'yolo'")


def get_dataset(
    name: str,
    *,
    custom: Optional[Mapping[str, Any]] = None,
    root: Optional[str] = None,
    filter_empty: bool = False,
    check_images: str = "header",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    log_summary: bool = True,
) -> DetectionDataset:
    """Load a dataset by name, check it and log its summary.

    Args:
        name: a built-in name (module docstring) or a key of ``custom``.
        custom: user-declared specs by name (the config's ``data.datasets``). A custom
            spec with a built-in name replaces the built-in one.
        root: datasets root (default ``$DETECTRON_RES_DATASETS`` or ``./datasets``).
        filter_empty: drop images without training boxes (counted in the report).
        check_images: ``"header"`` (default), ``"exists"`` or ``"none"``.
        max_pixels: decompression-bomb guard.
        log_summary: log ``dataset.summary()`` at INFO level.

    Raises:
        ValueError: unknown name (the message lists the valid names) or a bad spec.
        DatasetError: problems in the data (see :mod:`.dataset`).
    """
    custom = dict(custom or {})
    if name in custom:
        spec, where = custom[name], f"data.datasets.{name}"
    elif name in BUILTIN_DATASETS:
        spec, where = BUILTIN_DATASETS[name], f"dataset '{name}'"
    else:
        names = dataset_names(custom)
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(
            f"unknown dataset name {name!r}{hint}; known names: {names} "
            "(declare your own under data.datasets in the config)"
        )
    dataset = load_from_spec(
        name, spec, root=root, filter_empty=filter_empty, check_images=check_images,
        max_pixels=max_pixels, where=where,
    )  # fmt: skip
    if log_summary:
        logger.info("%s", dataset.summary())
    return dataset


def concat_datasets(datasets: Sequence[DetectionDataset], name: Optional[str] = None) -> DetectionDataset:
    """Concatenate datasets that share one label space.

    The class names (in order) and category ids must agree; otherwise a ValueError
    names the two datasets and the first difference. If image ids collide across the
    parts, every record's id becomes ``"<dataset name>/<id>"`` so that ids stay unique
    (evaluators key results by image id).
    """
    datasets = list(datasets)
    if not datasets:
        raise ValueError("concat_datasets: got an empty list, expected at least one dataset")
    if len(datasets) == 1:
        return datasets[0]
    first = datasets[0]
    for ds in datasets[1:]:
        if list(ds.class_names) != list(first.class_names):
            a, b = list(first.class_names), list(ds.class_names)
            diff = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
            raise ValueError(
                f"concat_datasets: label spaces differ between '{first.name}' ({len(a)} classes) and "
                f"'{ds.name}' ({len(b)} classes): label {diff + 1} is "
                f"{a[diff] if diff < len(a) else '<none>'!r} vs {b[diff] if diff < len(b) else '<none>'!r}"
            )
        if [int(c) for c in ds.category_ids] != [int(c) for c in first.category_ids]:
            raise ValueError(
                f"concat_datasets: category ids differ between '{first.name}' {list(first.category_ids)} "
                f"and '{ds.name}' {list(ds.category_ids)} (same class names, different source ids)"
            )
    all_ids = [r.image_id for ds in datasets for r in ds.records]
    prefix = len(set(all_ids)) != len(all_ids)
    records = []
    for ds in datasets:
        for r in ds.records:
            records.append(dataclasses.replace(r, image_id=f"{ds.name}/{r.image_id}") if prefix else r)
    name = name or "+".join(ds.name for ds in datasets)
    report = DatasetReport(name=name)
    for ds in datasets:
        report.merge(ds.report)
    if prefix:
        report.notes.append("image ids collided across the parts: ids were prefixed with '<dataset name>/'")
    report.update_counts(records, first.class_names)
    formats = {ds.format for ds in datasets}
    limits = [ds.max_pixels for ds in datasets]
    return DetectionDataset(
        name=name,
        records=records,
        class_names=list(first.class_names),
        category_ids=list(first.category_ids),
        format=formats.pop() if len(formats) == 1 else "mixed",
        report=report,
        extra={"parts": [ds.name for ds in datasets], "part_extras": [ds.extra for ds in datasets]},
        # every part passed its check with its own limit: decode with the most permissive
        max_pixels=None if None in limits else max(limits),
    )


def get_datasets(
    names: Sequence[str],
    *,
    custom: Optional[Mapping[str, Any]] = None,
    root: Optional[str] = None,
    filter_empty: bool = False,
    check_images: str = "header",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DetectionDataset:
    """Load several datasets and concatenate them (the config's ``data.train`` list).

    ``["voc_2007_trainval", "voc_2012_trainval"]`` is the paper's VOC 07+12.
    """
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ValueError("get_datasets: no dataset names given (set data.train / data.test in the config)")
    parts = [
        get_dataset(n, custom=custom, root=root, filter_empty=filter_empty, check_images=check_images, max_pixels=max_pixels)
        for n in names
    ]
    dataset = concat_datasets(parts)
    if len(parts) > 1:
        logger.info("%s", dataset.summary())
    return dataset
