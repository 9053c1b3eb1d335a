"""The ground truth of a VOCdevkit tree, for scoring result files (tools/eval_voc.py).

The annotation XML files are read by the data package's VOC parser
(:func:`detectron_res.data.voc.parse_voc_xml`, the one XML parser of the toolkit),
which converts the devkit's inclusive 1-based boxes to continuous 0-based ones and
refuses malformed files, NaN and inverted boxes, naming the file and the object.
Unlike the training reader (:func:`~detectron_res.data.voc.load_voc`), boxes are
never clipped to the image (the devkit scores the annotated numbers) and objects of
classes not being scored are skipped (the devkit scores each class separately).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Sequence, Union

import numpy as np

from ..data.dataset import ErrorCollector
from ..data.voc import parse_voc_xml, resolve_voc_root
from .voc_ap import VOC_CLASSES, PathLike, VOCGroundTruth

__all__ = ["parse_voc_annotation", "load_devkit_ground_truth"]


def parse_voc_annotation(xml_path: PathLike) -> Dict[str, Any]:
    """Read one ``Annotations/<id>.xml`` file.

    Returns:
        ``{"filename": str, "height": int, "width": int (0 when not annotated),
        "names": list[str], "boxes": float32 [N, 4] toolkit boxes (xmin - 1, ymin - 1,
        xmax, ymax), "difficult": bool [N]}``; a missing ``<difficult>`` tag means 0.

    Raises:
        ValueError: the file is unreadable or malformed, or an object is (the
            parser's first message: file, object number and what is wrong).
    """
    xml_path = Path(xml_path)
    errors = ErrorCollector(str(xml_path))
    size, filename, objects = parse_voc_xml(str(xml_path), errors)
    if errors.errors:
        raise ValueError(errors.errors[0])
    height, width = size if size is not None else (0, 0)
    return {
        "filename": filename or xml_path.stem,
        "height": int(height),
        "width": int(width),
        "names": [o.name for o in objects],
        "boxes": np.asarray([o.box for o in objects], dtype=np.float32).reshape(-1, 4),
        "difficult": np.asarray([o.difficult for o in objects], dtype=bool),
    }


def load_devkit_ground_truth(
    voc_root: PathLike, year: Union[str, int], split: str, class_names: Sequence[str] = VOC_CLASSES
) -> VOCGroundTruth:
    """Ground truth of ``ImageSets/Main/<split>.txt`` from the devkit's XML files.

    Args:
        voc_root: a VOCdevkit folder (holding ``VOC<year>/``) or a ``VOC<year>`` folder.
        year: the challenge year (picks ``VOC<year>/``).
        split: the image set.
        class_names: the classes scored; objects of other classes are skipped.
    """
    year_dir = Path(resolve_voc_root(str(voc_root), str(year)))
    if not (year_dir / "ImageSets").is_dir():
        raise ValueError(
            f"--voc-root {voc_root}: neither {Path(voc_root) / f'VOC{year}'} nor {Path(voc_root) / 'ImageSets'} "
            "exists; expected a VOCdevkit folder (with VOC<year>/) or a VOC<year> folder (with Annotations/ and "
            "ImageSets/)"
        )
    split_file = year_dir / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        raise ValueError(f"{split_file}: no such image set; expected ImageSets/Main/<split>.txt (--split {split})")
    image_ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
    ann_dir = year_dir / "Annotations"
    if image_ids and not (ann_dir / f"{image_ids[0]}.xml").is_file():
        hint = (
            " (VOC2012 test annotations are not public: pack the results for the evaluation server "
            "with --pack instead)"
            if str(year) == "2012" and split == "test"
            else ""
        )
        raise ValueError(f"{ann_dir / (image_ids[0] + '.xml')}: annotation missing{hint}")
    index = {n: i + 1 for i, n in enumerate(class_names)}
    boxes, labels, difficult = [], [], []
    for image_id in image_ids:
        ann = parse_voc_annotation(ann_dir / f"{image_id}.xml")
        keep = np.array([n in index for n in ann["names"]], dtype=bool)
        boxes.append(ann["boxes"][keep])
        labels.append(np.array([index[n] for n in ann["names"] if n in index], dtype=np.int64))
        difficult.append(ann["difficult"][keep])
    return VOCGroundTruth(image_ids=image_ids, boxes=boxes, labels=labels, difficult=difficult, class_names=class_names)
