"""COCO evaluation: pycocotools' ``COCOeval`` on results in the official JSON format.

The numbers are exactly pycocotools': this module only converts (predictions to
the results format, a non-COCO dataset to COCO ground truth) and reads
``COCOeval.stats`` / ``COCOeval.eval["precision"]``. The protocol (IoU 0.50:0.05:0.95,
101 recall points, 1/10/100 detections, small/medium/large areas, crowd boxes
ignored) is pycocotools' own; see shared/PAPER_FACTS.md.

Results format: a list of ``{"image_id", "category_id", "bbox": [x, y, w, h],
"score"}`` with the ORIGINAL category ids of the annotation file; a toolkit box
``(x1, y1, x2, y2)`` becomes ``[x1, y1, x2 - x1, y2 - y1]`` (computed in float64).

Ground truth:

* a COCO dataset (``format == "coco"`` with ``extra["json_file"]``) is evaluated
  against its annotation file itself, restricted to the dataset's images and
  categories;
* any other dataset (VOC, YOLO, a COCO dataset built in memory) is converted to
  COCO ground truth in memory: category ids are ``dataset.category_ids``, ``area``
  is the box area ``w * h`` (there are no masks), ``iscrowd`` is the record's crowd
  flag. A VOC "difficult" object is marked ``iscrowd = 1``: COCOeval's only way to
  ignore a ground truth (its ``ignore`` field is overwritten from ``iscrowd`` in
  ``COCOeval._prepare``). So, as in the VOC protocol, difficult objects are not
  counted as misses and detections on them are not false positives; unlike VOC,
  a detection is matched to them by crowd-region overlap (intersection over the
  detection's area) and several detections may fall on one of them.

Metrics are in percent (``COCOeval.stats`` x 100), as the paper's tables; a value
pycocotools reports as -1 (no ground truth in that area range) becomes NaN.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
from pathlib import Path
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..bounded_io import DATASET_JSON_LIMITS, load_json_document
from .evaluator import DatasetEvaluator, Prediction

logger = logging.getLogger(__name__)

__all__ = [
    "COCO_METRIC_NAMES",
    "COCOEvaluator",
    "dataset_to_coco_dict",
    "predictions_to_coco_results",
    "load_coco_gt",
    "evaluate_coco",
    "format_coco_table",
]

# Order of COCOeval.stats for iouType "bbox".
COCO_METRIC_NAMES: Tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip


def _quiet(fn, *args, **kwargs):
    """Run a pycocotools call, returning (result, what it printed)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = fn(*args, **kwargs)
    return result, buf.getvalue()


def load_coco_gt(source: Union[str, Path, Mapping[str, Any]]):
    """A ``pycocotools.coco.COCO`` from a json path or an in-memory dict."""
    from pycocotools.coco import COCO

    if isinstance(source, Mapping):
        coco = COCO()
        coco.dataset = copy.deepcopy(dict(source))
        _quiet(coco.createIndex)
        return coco
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"{path}: no such COCO annotation file")
    # pycocotools' own json.load is unbounded.
    data = load_json_document(path, DATASET_JSON_LIMITS, expected=dict, expected_what="a COCO annotation object")
    coco = COCO()
    coco.dataset = data
    _quiet(coco.createIndex)
    return coco


def dataset_to_coco_dict(dataset: Any) -> Dict[str, Any]:
    """COCO ground truth (the json's dict) of any dataset the toolkit reads.

    Args:
        dataset: ``DetectionDataset``-like: ``records`` (``image_id``, ``height``,
            ``width``, ``boxes`` toolkit x1y1x2y2, ``labels`` 1..K, ``difficult``,
            ``iscrowd``), ``class_names`` and optionally ``category_ids``.

    Returns:
        ``{"images", "annotations", "categories"}``; annotation ids start at 1
        (COCOeval marks "unmatched" with id 0). Difficult or crowd boxes get
        ``iscrowd = 1`` (see the module docstring).
    """
    class_names = list(dataset.class_names)
    category_ids = [int(c) for c in (getattr(dataset, "category_ids", None) or range(1, len(class_names) + 1))]
    if len(category_ids) != len(class_names):
        raise ValueError(
            f"dataset '{dataset.name}': {len(category_ids)} category ids for {len(class_names)} classes; "
            "expected one id per class"
        )
    images, annotations = [], []
    for r in dataset.records:
        images.append({"id": r.image_id, "height": int(r.height), "width": int(r.width),
                       "file_name": str(getattr(r, "file_name", ""))})  # fmt: skip
        boxes = np.asarray(r.boxes, dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(r.labels, dtype=np.int64).reshape(-1)
        n = len(boxes)
        crowd = np.asarray(getattr(r, "iscrowd", np.zeros(n)), dtype=bool).reshape(-1)
        difficult = np.asarray(getattr(r, "difficult", np.zeros(n)), dtype=bool).reshape(-1)
        crowd = crowd if len(crowd) == n else np.zeros(n, dtype=bool)
        difficult = difficult if len(difficult) == n else np.zeros(n, dtype=bool)
        for b, label, c, d in zip(boxes.tolist(), labels.tolist(), crowd.tolist(), difficult.tolist()):
            if not 1 <= label <= len(class_names):
                raise ValueError(f"dataset '{dataset.name}' image {r.image_id!r}: label {label} outside 1..{len(class_names)}")
            w, h = b[2] - b[0], b[3] - b[1]
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": r.image_id,
                "category_id": category_ids[label - 1],
                "bbox": [b[0], b[1], w, h],
                "area": w * h,
                "iscrowd": int(c or d),
            })  # fmt: skip
    categories = [{"id": cid, "name": name} for cid, name in zip(category_ids, class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def predictions_to_coco_results(
    predictions: Mapping[Hashable, Prediction], category_ids: Sequence[int]
) -> List[Dict[str, Any]]:
    """Per-image predictions -> the official results list.

    Args:
        predictions: image id -> ``{"boxes" [M, 4] toolkit x1y1x2y2, "scores" [M],
            "labels" [M] in 1..K}``.
        category_ids: ``category_ids[k]`` is the original id of label ``k + 1``.

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]``.
    """
    cats = np.asarray([int(c) for c in category_ids], dtype=np.int64)
    results: List[Dict[str, Any]] = []
    for image_id, pred in predictions.items():
        boxes = np.asarray(pred["boxes"], dtype=np.float64).reshape(-1, 4)
        if len(boxes) == 0:
            continue
        xywh = boxes.copy()
        xywh[:, 2:] -= boxes[:, :2]
        labels = np.asarray(pred["labels"], dtype=np.int64).reshape(-1)
        if labels.min() < 1 or labels.max() > len(cats):
            raise ValueError(f"prediction for image {image_id!r}: label outside 1..{len(cats)}")
        scores = np.asarray(pred["scores"], dtype=np.float64).reshape(-1)
        for b, c, s in zip(xywh.tolist(), cats[labels - 1].tolist(), scores.tolist()):
            results.append({"image_id": image_id, "category_id": c, "bbox": b, "score": s})
    return results


def _load_results(coco_gt, results: Sequence[Mapping[str, Any]]):
    """``coco_gt.loadRes`` (which cannot take an empty list: it reads ``anns[0]``)."""
    from pycocotools.coco import COCO

    if len(results) == 0:
        coco_dt = COCO()
        coco_dt.dataset = {
            "images": list(coco_gt.dataset["images"]),
            "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
            "annotations": [],
        }
        _quiet(coco_dt.createIndex)
        return coco_dt
    gt_ids = set(coco_gt.getImgIds())
    bad = [r["image_id"] for r in results if r["image_id"] not in gt_ids]
    if bad:
        raise ValueError(
            f"results name {len(bad)} detection(s) on image ids not in the ground truth (e.g. {bad[0]!r}); "
            "expected the annotation file's image ids"
        )
    gt_cats = set(coco_gt.getCatIds())
    bad_cats = sorted({r["category_id"] for r in results} - gt_cats)
    if bad_cats:
        raise ValueError(
            f"results use category id(s) {bad_cats[:5]} that the ground truth does not define; "
            f"expected original category ids such as {sorted(gt_cats)[:5]}"
        )
    # loadRes adds fields to the dicts it gets: give it copies.
    coco_dt, _ = _quiet(coco_gt.loadRes, [dict(r) for r in results])
    return coco_dt


def evaluate_coco(
    coco_gt,
    results: Sequence[Mapping[str, Any]],
    *,
    img_ids: Optional[Sequence[Hashable]] = None,
    cat_ids: Optional[Sequence[int]] = None,
) -> Tuple[Dict[str, Any], Dict[str, Dict[str, Any]], str]:
    """Run ``COCOeval`` (bbox) and read its numbers.

    Args:
        coco_gt: a ``pycocotools.coco.COCO`` ground truth.
        results: the official results list (original category ids, xywh boxes).
        img_ids: restrict the evaluation to these images (default: all of ``coco_gt``).
        cat_ids: restrict it to these categories (default: all of ``coco_gt``), e.g.
            when the model was trained on a subset of the file's categories.

    Returns:
        ``(metrics, pr_curves, summary)``: ``metrics`` in percent, the 12 names of
        :data:`COCO_METRIC_NAMES` plus ``per_class`` {category name: AP@[.5:.95]} and
        ``per_class_AP50``; ``pr_curves``: name -> ``{"precision", "recall", "ap"}``
        at IoU 0.5 (all areas, 100 detections, pycocotools' 101 recall points);
        ``summary``: the text ``COCOeval.summarize()`` printed.
    """
    from pycocotools.cocoeval import COCOeval

    coco_dt = _load_results(coco_gt, results)
    coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
    if img_ids is not None:
        coco_eval.params.imgIds = list(img_ids)
    if cat_ids is not None:
        coco_eval.params.catIds = sorted(int(c) for c in cat_ids)
    _quiet(coco_eval.evaluate)
    _quiet(coco_eval.accumulate)
    _, summary = _quiet(coco_eval.summarize)
    stats = coco_eval.stats
    metrics: Dict[str, Any] = {
        name: (float(stats[i] * 100) if stats[i] >= 0 else math.nan) for i, name in enumerate(COCO_METRIC_NAMES)
    }
    # precision: [T IoUs, R recall points, K categories, A areas, M max-dets]
    precision = coco_eval.eval["precision"]
    rec_thrs = np.asarray(coco_eval.params.recThrs)
    iou_thrs = np.asarray(coco_eval.params.iouThrs)
    t50 = int(np.argmin(np.abs(iou_thrs - 0.5)))
    per_class: Dict[str, float] = {}
    per_class_50: Dict[str, float] = {}
    pr_curves: Dict[str, Dict[str, Any]] = {}
    for k, cat_id in enumerate(coco_eval.params.catIds):
        name = str(coco_gt.cats[cat_id].get("name", cat_id))
        p = precision[:, :, k, 0, -1]  # all areas, maxDets 100
        p50 = precision[t50, :, k, 0, -1]
        per_class[name] = float(np.mean(p[p > -1]) * 100) if np.any(p > -1) else math.nan
        per_class_50[name] = float(np.mean(p50[p50 > -1]) * 100) if np.any(p50 > -1) else math.nan
        pr_curves[name] = {"precision": np.where(p50 > -1, p50, np.nan), "recall": rec_thrs.copy(),
                           "ap": per_class_50[name]}  # fmt: skip
    metrics["per_class"] = per_class
    metrics["per_class_AP50"] = per_class_50
    return metrics, pr_curves, summary


def format_coco_table(metrics: Mapping[str, Any], *, title: str = "", columns: int = 3) -> str:
    """Per-category AP table, ``columns`` categories per line."""
    items = list(metrics["per_class"].items())
    width = max([len(n) for n, _ in items] + [8])
    lines = [title] if title else []
    header = "  ".join(f"{'category':<{width}} {'AP':>6}" for _ in range(min(columns, max(len(items), 1))))
    lines.append(header)
    for i in range(0, len(items), columns):
        lines.append("  ".join(f"{n:<{width}} {ap:6.2f}" for n, ap in items[i : i + columns]))
    return "\n".join(lines)


class COCOEvaluator(DatasetEvaluator):
    """COCO-style evaluation with pycocotools, for any dataset the toolkit reads.

    Args:
        dataset: a ``DetectionDataset``. A COCO dataset with ``extra["json_file"]``
            is scored against that file; any other is converted in memory
            (:func:`dataset_to_coco_dict`).
        output_dir: if given, the results are also written to
            ``output_dir/coco_instances_results.json`` (the official format, e.g. for
            the test-dev server).

    ``evaluate()`` returns, in percent: ``AP, AP50, AP75, APs, APm, APl, AR1, AR10,
    AR100, ARs, ARm, ARl`` (NaN where pycocotools says -1), ``per_class`` {name:
    AP@[.5:.95]} and ``per_class_AP50``. After ``evaluate()``, :attr:`pr_curves`
    holds per-class precision/recall at IoU 0.5.
    """

    name = "coco"

    def __init__(self, dataset: Any, *, output_dir: Optional[Union[str, Path]] = None) -> None:
        super().__init__(dataset)
        extra = getattr(dataset, "extra", None) or {}
        self.category_ids = [int(c) for c in (getattr(dataset, "category_ids", None) or
                                              range(1, self.num_classes + 1))]  # fmt: skip
        json_file = extra.get("json_file") or extra.get("annotation_file")
        self.json_file = str(json_file) if getattr(dataset, "format", "") == "coco" and json_file else None
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.pr_curves: Dict[str, Dict[str, Any]] = {}
        # What the PR curves' AP is, for their titles: pycocotools' 101-point AP at IoU 0.5.
        self.pr_curve_ap_name = "COCO AP at IoU 0.5"
        self._coco_gt = None

    def _ground_truth(self):
        if self._coco_gt is None:
            if self.json_file is not None:
                coco_gt = load_coco_gt(self.json_file)
                known = set(coco_gt.getImgIds())
                missing = [i for i in self._image_ids if i not in known]
                if missing:
                    raise ValueError(
                        f"COCOEvaluator: {len(missing)} image id(s) of dataset '{self.dataset.name}' are not in "
                        f"{self.json_file} (e.g. {missing[0]!r}); expected the file's image ids"
                    )
                unknown_cats = sorted(set(self.category_ids) - set(coco_gt.getCatIds()))
                if unknown_cats:
                    raise ValueError(
                        f"COCOEvaluator: category ids {unknown_cats[:5]} of dataset '{self.dataset.name}' are not "
                        f"defined in {self.json_file}"
                    )
            else:
                coco_gt = load_coco_gt(dataset_to_coco_dict(self.dataset))
            self._coco_gt = coco_gt
        return self._coco_gt

    def evaluate_predictions(self, predictions: Mapping[Hashable, Prediction]) -> Dict[str, Any]:
        results = predictions_to_coco_results(predictions, self.category_ids)
        if self.output_dir is not None:
            from .report import write_json

            write_json(self.output_dir / "coco_instances_results.json", results)
        coco_gt = self._ground_truth()
        # Only the dataset's categories: a model trained on a subset of the file's
        # categories is not charged with the others.
        metrics, self.pr_curves, summary = evaluate_coco(coco_gt, results, img_ids=self._image_ids,
                                                         cat_ids=self.category_ids)
        if not results:
            logger.warning("COCO evaluation of '%s': the model made no detection", self.dataset.name)
        logger.info("COCO evaluation of '%s' (%d images, pycocotools):\n%s%s", self.dataset.name,
                    len(self._image_ids), summary, format_coco_table(metrics, title="per-category AP:"))  # fmt: skip
        return metrics
