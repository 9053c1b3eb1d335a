"""PASCAL VOC evaluation, following the devkit's rules exactly, vectorized.

The protocol (VOCdevkit ``VOCevaldet.m``; py-faster-rcnn ``voc_eval.py``; see
shared/PAPER_FACTS.md "Evaluation protocols"), per class:

1. All detections of the class over the whole test set are sorted by descending
   score. The sort is stable (MATLAB's ``sort`` is), so equal scores keep the order
   in which the detections were given (the line order of a comp4 file).
2. Each detection takes the ground-truth box of its image with the largest IoU.
   IoU uses the devkit's inclusive-pixel "+1" convention: a box ``xmin..xmax`` is
   ``xmax - xmin + 1`` pixels wide.
3. The detection is a match only if that IoU is strictly greater than the threshold
   (0.5). A match to a "difficult" object is ignored (neither true nor false
   positive); a match to an object already taken by a higher-scoring detection is a
   false positive (duplicate); no match is a false positive.
4. Only non-difficult objects count as positives (the recall denominator).
5. AP: VOC2007 (and 2008/2009) use the 11-point interpolated AP, the mean over
   recall thresholds ``t = 0, 0.1, ..., 1`` of the largest precision at recall
   ``>= t``; VOC2010 and later use the area under the monotone precision envelope.

Step 3 has a property that makes the whole computation vectorizable: the ground
truth a detection is compared with (the max-IoU box of step 2) does not depend on
which boxes earlier detections took. So a detection is a true positive exactly when
it is the FIRST (highest-scoring) detection whose max-IoU box is that ground truth,
among detections above the threshold that do not point at a difficult object. One
pass computes every detection/ground-truth IoU of the same image, a segment max
gives each detection's max-IoU box, and ``np.unique(..., return_index=True)`` finds
the first detection per ground-truth box: no Python loop over detections.

Box conventions: every function here takes the toolkit's boxes (``float [N, 4]``
``x1, y1, x2, y2``, continuous 0-based pixels, a pixel ``i`` spans ``[i, i + 1)``)
and converts them to the devkit's inclusive 1-based pixels ``(x1 + 1, y1 + 1, x2,
y2)`` before applying the devkit's formulas. (Both give the same IoU in exact
arithmetic; doing the devkit's arithmetic keeps the numbers bit-identical to it.)
comp4 result files hold inclusive 1-based coordinates.

Metrics are reported in percent (AP x 100), as the paper's tables are.
"""

from __future__ import annotations

import logging
import math
import os
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..bounded_io import XML_LIMITS, parse_xml_file
from .evaluator import DatasetEvaluator, Prediction
from .report import path_component

logger = logging.getLogger(__name__)

__all__ = [
    "VOC_CLASSES",
    "VOC_IOU_THRESHOLDS",
    "ClassDetections",
    "VOCGroundTruth",
    "VOCEvaluator",
    "voc_ap",
    "voc_box_iou",
    "voc_eval_class",
    "voc_eval_class_thresholds",
    "evaluate_voc",
    "use_07_metric_for_year",
    "split_by_class",
    "write_comp4",
    "read_comp4",
    "comp4_file_name",
    "pack_voc_server_submission",
    "parse_voc_annotation",
    "load_devkit_ground_truth",
    "format_voc_table",
]

VOC_CLASSES: Tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

# IoU thresholds of the extra "mAP50_95" (the COCO-style mean, computed with VOC rules).
# Rounded so that 0.6, 0.7, ... are the doubles nearest to the decimals.
VOC_IOU_THRESHOLDS: Tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))

# A class's detections: {"image_ids": [D] ids, "scores": float [D], "boxes": float [D, 4]
# x1y1x2y2 continuous 0-based}.  Plain data, like the model's outputs.
ClassDetections = Dict[str, Any]

PathLike = Union[str, "os.PathLike[str]"]


# ----------------------------------------------------------------------------
# AP from a precision/recall curve
# ----------------------------------------------------------------------------
def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """Average precision of one class from its cumulative recall/precision arrays.

    Args:
        recall: ``float [D]`` recall after each detection (non-decreasing).
        precision: ``float [D]`` precision after each detection.
        use_07_metric: True for the VOC2007 11-point interpolated AP: the mean over
            ``t = 0, 0.1, ..., 1`` of ``max(precision[recall >= t])`` (0 if empty).
            The thresholds are exactly ``k / 10`` (py-faster-rcnn's
            ``np.arange(0., 1.1, 0.1)`` yields 0.30000000000000004, ...; the two
            differ only when a recall equals one of those values exactly).
            False for VOC2010+: the area under the precision envelope
            (``precision`` made non-increasing from the right), summed where the
            recall changes.

    Returns:
        AP as a fraction in ``[0, 1]``.
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if use_07_metric:
        points = []
        for k in range(11):
            above = precision[recall >= k / 10.0]
            points.append(float(above.max()) if above.size else 0.0)
        # sum / 11 rather than 11 additions of p / 11: perfect detections give exactly 1.0
        return sum(points) / 11.0
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    # precision envelope: the max precision at any recall to the right
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changes = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


def use_07_metric_for_year(year: Union[str, int]) -> bool:
    """The devkit's metric by year: 11-point AP up to VOC2009, area from VOC2010 on."""
    try:
        y = int(str(year).strip())
    except ValueError:
        raise ValueError(f"VOC year {year!r} is not a year; expected 2007..2012") from None
    if not 2005 <= y <= 2012:
        raise ValueError(f"VOC year {year!r} is not a PASCAL VOC challenge year; expected 2007..2012")
    return y < 2010


# ----------------------------------------------------------------------------
# IoU with the +1 convention
# ----------------------------------------------------------------------------
def _to_inclusive(boxes: np.ndarray) -> np.ndarray:
    """Toolkit boxes (0-based continuous) -> devkit inclusive 1-based, float64 ``[N, 4]``."""
    out = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    out[:, :2] += 1.0
    return out


def _pair_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of matched rows of two inclusive ``[P, 4]`` arrays, devkit arithmetic."""
    iw = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + 1.0
    ih = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + 1.0
    inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
    union = (a[:, 2] - a[:, 0] + 1.0) * (a[:, 3] - a[:, 1] + 1.0) + (b[:, 2] - b[:, 0] + 1.0) * (
        b[:, 3] - b[:, 1] + 1.0
    ) - inter
    out = np.zeros(len(a), dtype=np.float64)
    np.divide(inter, union, out=out, where=union > 0)  # degenerate boxes overlap nothing
    return out


def voc_box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """IoU matrix with the devkit's inclusive-pixel convention.

    Args:
        boxes1: ``float [N, 4]`` toolkit boxes (x1y1x2y2, continuous 0-based).
        boxes2: ``float [M, 4]`` toolkit boxes.

    Returns:
        ``float64 [N, M]``.
    """
    a = _to_inclusive(boxes1)
    b = _to_inclusive(boxes2)
    n, m = len(a), len(b)
    return _pair_iou(np.repeat(a, m, axis=0), np.tile(b, (n, 1))).reshape(n, m)


# ----------------------------------------------------------------------------
# Ground truth, packed for vectorized matching
# ----------------------------------------------------------------------------
class VOCGroundTruth:
    """All ground truth of a test set, concatenated so that one class is a slice.

    Image ids are compared as strings (comp4 files are text), so ``5`` and ``"5"``
    name the same image.

    Args:
        image_ids: ``I`` image ids of the test set (images without objects included:
            detections on them are false positives).
        boxes: per image, ``float [G_i, 4]`` toolkit boxes.
        labels: per image, ``int [G_i]`` labels in ``1..K``.
        difficult: per image, ``bool [G_i]``.
        class_names: ``K`` names; ``class_names[k]`` is label ``k + 1``.
    """

    def __init__(
        self,
        *,
        image_ids: Sequence[Hashable],
        boxes: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        difficult: Sequence[np.ndarray],
        class_names: Sequence[str],
    ) -> None:
        if not (len(image_ids) == len(boxes) == len(labels) == len(difficult)):
            raise ValueError(
                f"VOCGroundTruth: {len(image_ids)} image ids, {len(boxes)} box arrays, {len(labels)} label "
                f"arrays, {len(difficult)} difficult arrays; expected one of each per image"
            )
        self.class_names = list(class_names)
        self.image_ids = [str(i) for i in image_ids]
        self._row: Dict[str, int] = {}
        for row, image_id in enumerate(self.image_ids):
            if image_id in self._row:
                raise ValueError(f"VOCGroundTruth: image id {image_id!r} appears twice; expected unique ids")
            self._row[image_id] = row
        counts = np.array([len(np.asarray(b).reshape(-1, 4)) for b in boxes], dtype=np.int64)
        self._gt_image = np.repeat(np.arange(len(self.image_ids), dtype=np.int64), counts)
        cat = lambda arrays, shape, dtype: (  # noqa: E731
            np.concatenate([np.asarray(a, dtype=dtype).reshape(shape) for a in arrays])
            if len(arrays)
            else np.zeros((0,) + shape[1:], dtype=dtype)
        )
        self._boxes = _to_inclusive(cat(boxes, (-1, 4), np.float64))
        self._labels = cat(labels, (-1,), np.int64)
        self._difficult = cat(difficult, (-1,), bool)
        if not (len(self._boxes) == len(self._labels) == len(self._difficult)):
            raise ValueError("VOCGroundTruth: boxes, labels and difficult flags differ in length for some image")
        k = len(self.class_names)
        if len(self._labels) and (self._labels.min() < 1 or self._labels.max() > k):
            raise ValueError(f"VOCGroundTruth: label {int(self._labels.max())} outside 1..{k}")
        self._class_cache: Dict[int, Tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    @classmethod
    def from_dataset(cls, dataset: Any) -> "VOCGroundTruth":
        """From a ``DetectionDataset`` (``records`` with boxes/labels/difficult, ``class_names``)."""
        records = dataset.records
        return cls(
            image_ids=[r.image_id for r in records],
            boxes=[r.boxes for r in records],
            labels=[r.labels for r in records],
            difficult=[np.asarray(r.difficult, dtype=bool) for r in records],
            class_names=dataset.class_names,
        )

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    def num_positives(self, label: int) -> int:
        """Non-difficult objects of class ``label`` (the recall denominator)."""
        return int(np.count_nonzero((self._labels == label) & ~self._difficult))

    def rows(self, image_ids: Sequence[Hashable], *, where: str = "") -> np.ndarray:
        """Row (image index) of each id, ``int64 [D]``; unknown ids are an error."""
        index = self._row
        try:
            return np.fromiter((index[str(i)] for i in image_ids), dtype=np.int64, count=len(image_ids))
        except KeyError:
            unknown = sorted({str(i) for i in image_ids if str(i) not in index})
            shown = ", ".join(repr(u) for u in unknown[:5])
            raise ValueError(
                f"{where or 'detections'}: {len(unknown)} image id(s) are not in the test set "
                f"(e.g. {shown}); expected ids of the {self.num_images} ground-truth images "
                "(wrong split or year?)"
            ) from None

    def for_class(self, label: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ground truth of one class as CSR arrays.

        Returns:
            ``offsets int64 [I + 1]`` (image ``i``'s boxes are rows
            ``offsets[i]:offsets[i+1]``), ``boxes float64 [G, 4]`` inclusive 1-based,
            ``difficult bool [G]``.
        """
        if label not in self._class_cache:
            mask = self._labels == label
            counts = np.bincount(self._gt_image[mask], minlength=self.num_images)
            offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
            # self._gt_image is sorted, so masking keeps the boxes grouped by image.
            self._class_cache[label] = (offsets, self._boxes[mask], self._difficult[mask])
        return self._class_cache[label]


def _max_iou_match(
    offsets: np.ndarray, gt_boxes: np.ndarray, det_rows: np.ndarray, det_boxes: np.ndarray
) -> Tuple[np.ndarray, np.ndarray]:
    """Each detection's largest IoU with the ground truth of its image, and which box.

    Args:
        offsets: ``int64 [I + 1]`` CSR offsets of the class's ground truth per image.
        gt_boxes: ``float64 [G, 4]`` inclusive boxes.
        det_rows: ``int64 [D]`` image row of each detection.
        det_boxes: ``float64 [D, 4]`` inclusive boxes.

    Returns:
        ``ovmax float64 [D]`` (-inf where the image has no box of the class) and
        ``jmax int64 [D]`` (global index into ``gt_boxes`` of the first box reaching
        the max, as ``argmax`` in the devkit; -1 where none).
    """
    num_dets = len(det_rows)
    ovmax = np.full(num_dets, -np.inf)
    jmax = np.full(num_dets, -1, dtype=np.int64)
    starts = offsets[det_rows]
    counts = offsets[det_rows + 1] - starts
    with_gt = np.flatnonzero(counts > 0)
    if with_gt.size == 0:
        return ovmax, jmax
    counts = counts[with_gt]
    # All (detection, ground truth of the same image) pairs, grouped by detection:
    # pair p belongs to detection pair_det[p] and ground-truth box pair_gt[p].
    seg_start = np.cumsum(counts) - counts  # first pair of each detection
    pair_det = np.repeat(np.arange(len(with_gt)), counts)
    pair_gt = np.repeat(starts[with_gt] - seg_start, counts) + np.arange(int(counts.sum()))
    ov = _pair_iou(det_boxes[with_gt][pair_det], gt_boxes[pair_gt])
    seg_max = np.maximum.reduceat(ov, seg_start)
    # argmax per segment = first pair equal to the segment max
    at_max = np.flatnonzero(ov == seg_max[pair_det])
    first = at_max[np.concatenate(([True], pair_det[at_max[1:]] != pair_det[at_max[:-1]]))]
    assert len(first) == len(with_gt)
    ovmax[with_gt] = seg_max
    jmax[with_gt] = pair_gt[first]
    return ovmax, jmax


def _eval_one_threshold(
    ovmax: np.ndarray,
    jmax: np.ndarray,
    gt_difficult: np.ndarray,
    num_pos: int,
    iou_thresh: float,
    use_07_metric: bool,
) -> Tuple[float, np.ndarray, np.ndarray]:
    """AP, precision and recall for detections already sorted by descending score."""
    num_dets = len(ovmax)
    matched = ovmax > iou_thresh  # strictly greater, as py-faster-rcnn's voc_eval
    on_difficult = np.zeros(num_dets, dtype=bool)
    on_difficult[matched] = gt_difficult[jmax[matched]]
    candidates = np.flatnonzero(matched & ~on_difficult)
    tp = np.zeros(num_dets, dtype=np.float64)
    if candidates.size:
        # the first (highest-scoring) detection per ground-truth box is the true
        # positive; later ones are duplicates, i.e. false positives
        _, first = np.unique(jmax[candidates], return_index=True)
        tp[candidates[first]] = 1.0
    fp = 1.0 - tp - on_difficult  # a match to a difficult object is neither
    tp = np.cumsum(tp)
    fp = np.cumsum(fp)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if num_pos == 0:
        # No positives: recall (and so AP) is undefined; reported as NaN and left
        # out of the mean.
        return math.nan, precision, np.full(num_dets, np.nan)
    recall = tp / float(num_pos)
    return voc_ap(recall, precision, use_07_metric=use_07_metric), precision, recall


def _check_class_detections(dets: Mapping[str, Any], where: str) -> Tuple[Sequence[Hashable], np.ndarray, np.ndarray]:
    for key in ("image_ids", "scores", "boxes"):
        if key not in dets:
            raise ValueError(f"{where}: detections lack key '{key}'; expected 'image_ids', 'scores', 'boxes'")
    image_ids = dets["image_ids"]
    scores = np.asarray(dets["scores"], dtype=np.float64).reshape(-1)
    boxes = np.asarray(dets["boxes"], dtype=np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{where}: boxes have shape {tuple(boxes.shape)}, expected [D, 4]")
    if not (len(image_ids) == len(scores) == len(boxes)):
        raise ValueError(
            f"{where}: {len(image_ids)} image ids, {len(scores)} scores, {len(boxes)} boxes; expected equal lengths"
        )
    return image_ids, scores, boxes


def _eval_class_packed(
    gt: VOCGroundTruth,
    label: int,
    dets: Mapping[str, Any],
    iou_threshs: Sequence[float],
    use_07_metric: bool,
) -> List[Tuple[float, np.ndarray, np.ndarray]]:
    where = f"class '{gt.class_names[label - 1]}'"
    image_ids, scores, boxes = _check_class_detections(dets, where)
    rows = gt.rows(image_ids, where=f"detections of {where}")
    order = np.argsort(-scores, kind="stable")  # MATLAB's sort is stable
    offsets, gt_boxes, gt_difficult = gt.for_class(label)
    ovmax, jmax = _max_iou_match(offsets, gt_boxes, rows[order], _to_inclusive(boxes[order]))
    num_pos = gt.num_positives(label)
    return [_eval_one_threshold(ovmax, jmax, gt_difficult, num_pos, t, use_07_metric) for t in iou_threshs]


def voc_eval_class_thresholds(
    gt_by_image: Mapping[Hashable, Mapping[str, Any]],
    dets: Mapping[str, Any],
    *,
    iou_threshs: Sequence[float],
    use_07_metric: bool,
) -> List[Tuple[float, np.ndarray, np.ndarray]]:
    """:func:`voc_eval_class` at several IoU thresholds (the matching is computed once)."""
    image_ids = list(gt_by_image)
    boxes, difficult = [], []
    for image_id in image_ids:
        g = gt_by_image[image_id]
        b = np.asarray(g["boxes"], dtype=np.float64).reshape(-1, 4)
        d = np.asarray(g.get("difficult", np.zeros(len(b), dtype=bool)), dtype=bool).reshape(-1)
        if len(d) != len(b):
            raise ValueError(f"ground truth of image {image_id!r}: {len(b)} boxes but {len(d)} difficult flags")
        boxes.append(b)
        difficult.append(d)
    gt = VOCGroundTruth(
        image_ids=image_ids,
        boxes=boxes,
        labels=[np.ones(len(b), dtype=np.int64) for b in boxes],
        difficult=difficult,
        class_names=["class"],
    )
    return _eval_class_packed(gt, 1, dets, iou_threshs, use_07_metric)


def voc_eval_class(
    gt_by_image: Mapping[Hashable, Mapping[str, Any]],
    dets: Mapping[str, Any],
    *,
    iou_thresh: float = 0.5,
    use_07_metric: bool,
) -> Tuple[float, np.ndarray, np.ndarray]:
    """Devkit AP of one class.

    Args:
        gt_by_image: EVERY test image (also those without an object of the class) ->
            ``{"boxes": float [G, 4] toolkit boxes, "difficult": bool [G] (optional)}``.
        dets: ``{"image_ids": [D], "scores": [D], "boxes": [D, 4] toolkit boxes}``;
            every image id must be a key of ``gt_by_image`` (compared as strings).
        iou_thresh: a detection matches when its IoU is strictly greater.
        use_07_metric: 11-point AP (VOC2007) or area under the envelope (VOC2010+).

    Returns:
        ``(ap, precision, recall)``: AP as a fraction (NaN when the class has no
        non-difficult object), and ``float64 [D]`` cumulative precision and recall
        in descending-score order (recall NaN without positives).
    """
    return voc_eval_class_thresholds(gt_by_image, dets, iou_threshs=[iou_thresh], use_07_metric=use_07_metric)[0]


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def evaluate_voc(
    gt: VOCGroundTruth,
    detections: Mapping[str, Mapping[str, Any]],
    *,
    use_07_metric: bool,
    iou_threshs: Sequence[float] = VOC_IOU_THRESHOLDS,
) -> Tuple[Dict[str, Any], Dict[str, Dict[str, Any]]]:
    """Score a whole test set.

    Args:
        gt: the test set's ground truth.
        detections: class name -> :data:`ClassDetections`; a missing class has no
            detections.
        use_07_metric: 11-point AP (VOC2007) or area (VOC2010+).
        iou_threshs: thresholds of the extra ``mAP50_95``; must contain 0.5 (and
            0.75 for ``mAP75``).

    Returns:
        ``(metrics, pr_curves)``. ``metrics`` (percent): ``mAP50`` (the VOC metric,
        the paper's "mAP"), ``mAP75``, ``mAP50_95`` (mean over ``iou_threshs``),
        ``per_class`` {name: AP at 0.5}, ``per_class_50_95`` {name: AP averaged over
        ``iou_threshs``}. Classes without a non-difficult object get NaN and are left
        out of the means. ``pr_curves``: name -> ``{"precision", "recall"}`` arrays at
        IoU 0.5 and ``"ap"`` (percent), for the PR-curve plots.
    """
    unknown = sorted(set(detections) - set(gt.class_names))
    if unknown:
        raise ValueError(f"detections for unknown class(es) {unknown}; expected names from {gt.class_names}")
    threshs = [float(t) for t in iou_threshs]
    if 0.5 not in threshs:
        raise ValueError(f"iou_threshs={threshs} must contain 0.5 (the VOC threshold)")
    i50 = threshs.index(0.5)
    i75 = threshs.index(0.75) if 0.75 in threshs else None
    empty = {"image_ids": [], "scores": np.zeros(0), "boxes": np.zeros((0, 4))}
    per_class: Dict[str, float] = {}
    per_class_75: Dict[str, float] = {}
    per_class_50_95: Dict[str, float] = {}
    pr_curves: Dict[str, Dict[str, Any]] = {}
    for k, name in enumerate(gt.class_names):
        results = _eval_class_packed(gt, k + 1, detections.get(name, empty), threshs, use_07_metric)
        aps = [r[0] for r in results]
        per_class[name] = 100.0 * aps[i50]
        if i75 is not None:
            per_class_75[name] = 100.0 * aps[i75]
        per_class_50_95[name] = 100.0 * (math.nan if any(math.isnan(a) for a in aps) else sum(aps) / len(aps))
        _, precision, recall = results[i50]
        pr_curves[name] = {"precision": precision, "recall": recall, "ap": per_class[name]}
    no_positives = [n for n, ap in per_class.items() if math.isnan(ap)]
    if no_positives:
        logger.warning(
            "VOC evaluation: class(es) %s have no non-difficult ground truth in this test set; "
            "their AP is undefined (NaN) and left out of the mean",
            no_positives,
        )
    metrics: Dict[str, Any] = {
        "mAP50": _nanmean(list(per_class.values())),
        "mAP75": _nanmean(list(per_class_75.values())) if i75 is not None else math.nan,
        "mAP50_95": _nanmean(list(per_class_50_95.values())),
        "per_class": per_class,
        "per_class_50_95": per_class_50_95,
    }
    return metrics, pr_curves


def format_voc_table(metrics: Mapping[str, Any], *, title: str = "") -> str:
    """Per-class AP table (AP@0.5 and AP@[.5,.95]) followed by the means."""
    names = list(metrics["per_class"])
    width = max([len(n) for n in names] + [8])
    lines = [title] if title else []
    lines.append(f"{'class':<{width}}  {'AP50':>6}  {'AP50:95':>7}")
    for n in names:
        lines.append(f"{n:<{width}}  {metrics['per_class'][n]:6.2f}  {metrics['per_class_50_95'][n]:7.2f}")
    lines.append(f"{'mean':<{width}}  {metrics['mAP50']:6.2f}  {metrics['mAP50_95']:7.2f}")
    lines.append(f"mAP@0.5 = {metrics['mAP50']:.2f}   mAP@0.75 = {metrics['mAP75']:.2f}   "
                 f"mAP@[.5:.95] = {metrics['mAP50_95']:.2f}")  # fmt: skip
    return "\n".join(lines)


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


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
        _atomic_write_text(path, "".join(lines))
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
    out_tgz.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_tgz.parent, prefix=f".{out_tgz.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            for name in class_names:
                fname = comp4_file_name(split, name)
                tar.add(results_dir / fname, arcname=f"results/VOC{path_component(str(year))}/Main/{fname}")
        os.replace(tmp, out_tgz)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return out_tgz


# ----------------------------------------------------------------------------
# Reading the devkit tree (for tools/eval_voc.py)
# ----------------------------------------------------------------------------
def parse_voc_annotation(xml_path: PathLike) -> Dict[str, Any]:
    """Read one ``Annotations/<id>.xml`` file.

    Returns:
        ``{"filename": str, "height": int, "width": int, "names": list[str],
        "boxes": float32 [N, 4] toolkit boxes (xmin - 1, ymin - 1, xmax, ymax),
        "difficult": bool [N]}``; a missing ``<difficult>`` tag means 0.
    """
    xml_path = Path(xml_path)
    try:
        root = parse_xml_file(xml_path, XML_LIMITS)  # BoundedInputError is a ValueError
    except ET.ParseError as e:
        raise ValueError(f"{xml_path}: invalid XML ({e})") from None
    except OSError as e:
        raise ValueError(f"{xml_path}: cannot read annotation ({e.strerror})") from None

    def text(node: ET.Element, tag: str, where: str) -> str:
        child = node.find(tag)
        if child is None or child.text is None or not child.text.strip():
            raise ValueError(f"{xml_path}: {where} has no <{tag}>")
        return child.text.strip()

    def number(node: ET.Element, tag: str, where: str) -> float:
        value = text(node, tag, where)
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{xml_path}: {where} <{tag}> is {value!r}, expected a number") from None

    size = root.find("size")
    height = int(number(size, "height", "<size>")) if size is not None else 0
    width = int(number(size, "width", "<size>")) if size is not None else 0
    names, boxes, difficult = [], [], []
    for i, obj in enumerate(root.findall("object")):
        where = f"<object> #{i + 1}"
        names.append(text(obj, "name", where))
        bb = obj.find("bndbox")
        if bb is None:
            raise ValueError(f"{xml_path}: {where} ({names[-1]}) has no <bndbox>")
        xmin, ymin, xmax, ymax = (number(bb, t, f"{where} <bndbox>") for t in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append([xmin - 1.0, ymin - 1.0, xmax, ymax])
        d = obj.find("difficult")
        difficult.append(d is not None and d.text is not None and d.text.strip() not in ("", "0"))
    fn = root.find("filename")
    return {
        "filename": fn.text.strip() if fn is not None and fn.text else xml_path.stem,
        "height": height,
        "width": width,
        "names": names,
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "difficult": np.asarray(difficult, dtype=bool),
    }


def _voc_year_dir(voc_root: Path, year: str) -> Path:
    """``ROOT/VOC<year>`` for a VOCdevkit folder, or ``ROOT`` itself if it is the year folder."""
    candidate = voc_root / f"VOC{year}"
    if candidate.is_dir():
        return candidate
    if (voc_root / "ImageSets").is_dir():
        return voc_root
    raise ValueError(
        f"--voc-root {voc_root}: neither {candidate} nor {voc_root}/ImageSets exists; expected a VOCdevkit "
        "folder (with VOC<year>/) or a VOC<year> folder (with Annotations/ and ImageSets/)"
    )


def load_devkit_ground_truth(
    voc_root: PathLike, year: Union[str, int], split: str, class_names: Sequence[str] = VOC_CLASSES
) -> VOCGroundTruth:
    """Ground truth of ``ImageSets/Main/<split>.txt`` from the devkit's XML files.

    Objects whose name is not in ``class_names`` are skipped (the devkit scores each
    class separately).
    """
    year_dir = _voc_year_dir(Path(voc_root), str(year))
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


# ----------------------------------------------------------------------------
# The evaluator
# ----------------------------------------------------------------------------
# Split names recognized at the end of a dataset name (shapes_val -> val).
_KNOWN_SPLITS = ("trainval", "train", "val", "test", "minival", "valminusminival", "testdev")


def split_from_dataset_name(name: str) -> str:
    """The split a dataset name ends with (``shapes_val`` -> ``val``), else the whole name.

    Names the comp4 files of datasets that do not record their split, so that a
    validation set's files never read ``comp4_det_test_*``.
    """
    tail = str(name).rsplit("_", 1)[-1].lower()
    return tail if tail in _KNOWN_SPLITS else str(name)  # write_comp4 makes it one path component


class VOCEvaluator(DatasetEvaluator):
    """PASCAL VOC evaluator (devkit rules) for any dataset the toolkit reads.

    Args:
        dataset: a ``DetectionDataset``; ``extra["year"]`` and ``extra["split"]`` are
            used when present.
        year: overrides the dataset's year; decides the metric (2007-2009: 11-point
            AP; 2010+: area). ``None`` = ``dataset.extra["year"]``.
        use_07_metric: overrides the year's choice of metric.
        output_dir: if given, the comp4 result files are written to
            ``output_dir/comp4/`` (and, in submission mode, packed).
        submission_only: True when the test labels are not public (VOC2012 test): no
            AP is computed; the comp4 files are written to ``output_dir`` and packed
            into ``output_dir/voc<year>_<split>_submission.tar.gz`` for the
            evaluation server. ``None`` = True when ``dataset.extra["images_only"]`` is
            set or for year 2012, split "test".

    ``evaluate()`` returns (percent): ``mAP50`` (the VOC metric), ``mAP75``,
    ``mAP50_95``, ``per_class``, ``per_class_50_95`` (see :func:`evaluate_voc`); in
    submission mode ``{"submission": path of the archive, "num_detections": n}``.
    After ``evaluate()``, :attr:`pr_curves` holds per-class precision/recall arrays
    (IoU 0.5) for :func:`~detectron_res.evaluation.report.plot_pr_curves`.
    """

    name = "voc"

    def __init__(
        self,
        dataset: Any,
        *,
        year: Optional[Union[str, int]] = None,
        use_07_metric: Optional[bool] = None,
        output_dir: Optional[PathLike] = None,
        submission_only: Optional[bool] = None,
    ) -> None:
        super().__init__(dataset)
        extra = getattr(dataset, "extra", None) or {}
        year = year if year not in (None, "") else extra.get("year")
        self.year = str(year) if year not in (None, "") else None
        # The split names the comp4 files (comp4_det_<split>_<class>.txt): a dataset that
        # does not record one (COCO / YOLO formats) takes it from its name's suffix.
        self.split = str(extra.get("split") or split_from_dataset_name(dataset.name))
        if use_07_metric is None:
            if self.year is None:
                raise ValueError(
                    f"VOCEvaluator: dataset '{dataset.name}' has no extra['year'] to choose the VOC metric; "
                    "pass year='2007' (11-point AP) or year='2012' (area), or use_07_metric=True|False "
                    "(config key test.voc_year)"
                )
            use_07_metric = use_07_metric_for_year(self.year)
        self.use_07_metric = bool(use_07_metric)
        if submission_only is None:
            # the data catalog marks splits without public labels with extra["images_only"]
            submission_only = bool(extra.get("images_only")) or (self.year == "2012" and self.split == "test")
        self.submission_only = bool(submission_only)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        if self.submission_only and self.output_dir is None:
            raise ValueError(
                f"VOCEvaluator: dataset '{dataset.name}' (VOC{self.year} {self.split}) has no public labels; "
                "pass output_dir so the results can be written and packed for the evaluation server"
            )
        self.pr_curves: Dict[str, Dict[str, Any]] = {}
        # What the PR curves' AP is, for their titles.
        self.pr_curve_ap_name = "VOC07 11-point AP at IoU 0.5" if self.use_07_metric else "VOC area AP at IoU 0.5"

    def evaluate_predictions(self, predictions: Mapping[Hashable, Prediction]) -> Dict[str, Any]:
        class_names = list(self.dataset.class_names)
        detections = split_by_class(predictions, class_names)
        if self.submission_only:
            assert self.output_dir is not None
            results_dir = self.output_dir / "comp4"
            write_comp4(results_dir, self.split, class_names, detections)
            year = self.year or "2012"
            archive = pack_voc_server_submission(
                results_dir,
                self.output_dir / f"voc{path_component(year)}_{path_component(self.split)}_submission.tar.gz",
                class_names=class_names,
                split=self.split,
                year=year,
            )
            num = sum(len(d["scores"]) for d in detections.values())
            logger.info("VOC%s %s: labels are not public; results for the evaluation server: %s", year, self.split,
                        archive)  # fmt: skip
            # absolute: the path stays valid wherever the metrics file is read from
            return {"submission": str(archive.resolve()), "num_detections": num}
        if self.output_dir is not None:
            write_comp4(self.output_dir / "comp4", self.split, class_names, detections)
        gt = VOCGroundTruth.from_dataset(self.dataset)
        metrics, self.pr_curves = evaluate_voc(gt, detections, use_07_metric=self.use_07_metric)
        metric = "11-point" if self.use_07_metric else "area"
        logger.info(
            "%s",
            format_voc_table(
                metrics, title=f"VOC evaluation of '{self.dataset.name}' ({metric} AP, {gt.num_images} images):"
            ),
        )
        return metrics
