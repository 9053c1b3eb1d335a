"""PASCAL VOC AP, bit for bit as the official devkit (or py-faster-rcnn), vectorized.

Two protocols (``protocol=``; see shared/PAPER_FACTS.md "Evaluation protocols"):
``"devkit"``, the official MATLAB devkit (``VOCevaldet.m``, ``VOCap.m``), the
default; ``"py-faster-rcnn"``, its ``lib/datasets/voc_eval.py``, which Detectron2
and most Python toolkits copy. Per class:

1. All detections of the class over the whole test set are sorted by descending
   score. devkit: the sort is stable (MATLAB's ``sort`` is), so equal scores keep
   the order in which the detections were given (the line order of a comp4 file).
   py-faster-rcnn: ``np.argsort(-confidence)``, numpy's default unstable sort.
2. Each detection takes the ground-truth box of its image with the largest IoU.
   IoU uses the devkit's inclusive-pixel "+1" convention: a box ``xmin..xmax`` is
   ``xmax - xmin + 1`` pixels wide.
3. The detection is a match only if that IoU is at least the threshold 0.5
   (devkit: ``ovmax >= VOCopts.minoverlap``) or strictly greater (py-faster-rcnn:
   ``ovmax > ovthresh``). A match to a "difficult" object is ignored (neither true
   nor false positive); a match to an object already taken by a higher-scoring
   detection is a false positive (duplicate); no match is a false positive.
4. Only non-difficult objects count as positives (the recall denominator).
5. AP: VOC2007 (and 2008/2009) use the 11-point interpolated AP, ``ap = ap + p /
   11`` over recall thresholds ``t`` from ``0:0.1:1`` of ``p``, the largest
   precision at recall ``>= t``. The devkit's thresholds are MATLAB's colon
   operator's doubles (0.30000000000000004 but 0.6 and 0.7), py-faster-rcnn's
   those of ``np.arange(0., 1.1, 0.1)`` (0.30000000000000004, 0.6000000000000001,
   0.7000000000000001): the two disagree when a recall is exactly 0.6 or 0.7.
   VOC2010 and later use the area under the monotone precision envelope (the same
   in both).

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
from typing import Any, Dict, Hashable, List, Mapping, Sequence, Tuple, Union

import numpy as np

from ..data.voc import VOC_CLASS_NAMES

logger = logging.getLogger(__name__)

__all__ = [
    "VOC_CLASSES",
    "VOC_IOU_THRESHOLDS",
    "VOC_PROTOCOLS",
    "DEVKIT_RECALL_THRESHOLDS",
    "PY_FASTER_RCNN_RECALL_THRESHOLDS",
    "matlab_colon",
    "check_voc_protocol",
    "ClassDetections",
    "VOCGroundTruth",
    "voc_ap",
    "voc_box_iou",
    "voc_eval_class",
    "voc_eval_class_thresholds",
    "evaluate_voc",
    "use_07_metric_for_year",
    "format_voc_table",
]

# The 20 classes in the devkit's order (label i + 1 = VOC_CLASSES[i]); the data reader's list.
VOC_CLASSES: Tuple[str, ...] = tuple(VOC_CLASS_NAMES)

# IoU thresholds of the extra "mAP50_95" (the COCO-style mean, computed with VOC rules).
# Rounded so that 0.6, 0.7, ... are the doubles nearest to the decimals.
VOC_IOU_THRESHOLDS: Tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))

# A class's detections: {"image_ids": [D] ids, "scores": float [D], "boxes": float [D, 4]
# x1y1x2y2 continuous 0-based}.  Plain data, like the model's outputs.
ClassDetections = Dict[str, Any]

PathLike = Union[str, "os.PathLike[str]"]


# ----------------------------------------------------------------------------
# The two protocols and AP from a precision/recall curve
# ----------------------------------------------------------------------------
# "devkit": the official MATLAB devkit (VOCevaldet.m / VOCap.m), bit for bit.
# "py-faster-rcnn": py-faster-rcnn's lib/datasets/voc_eval.py (copied by Detectron2
#     and most Python toolkits), bit for bit. It differs from the devkit in three
#     places, each of which moves AP only on exact ties:
#       - the 11 recall thresholds (see DEVKIT_RECALL_THRESHOLDS below);
#       - a match needs IoU > 0.5 (the devkit: ``ovmax >= VOCopts.minoverlap``);
#       - detections are sorted with ``np.argsort(-confidence)`` (quicksort, not
#         stable) instead of MATLAB's stable ``sort``.
VOC_PROTOCOLS: Tuple[str, ...] = ("devkit", "py-faster-rcnn")


def matlab_colon(start: float, step: float, stop: float) -> Tuple[float, ...]:
    """The doubles of MATLAB's ``start:step:stop``, as MATLAB computes them.

    MATLAB's colon operator does not accumulate ``start + k * step`` over the whole
    vector: with ``n = round((stop - start) / step)`` intervals it computes the first
    half as ``start + k * step`` and the second half as ``stop - (n - k) * step``
    (and, for even ``n``, the middle element as ``(start + stop) / 2``). For
    ``0:0.1:1`` that gives 0.30000000000000004 (= 3 * 0.1) but 0.6 (= 1 - 4 * 0.1)
    and 0.7 (= 1 - 3 * 0.1), where ``np.arange(0., 1.1, 0.1)`` gives
    0.6000000000000001 and 0.7000000000000001.
    """
    n = int(round((stop - start) / step))
    out = [0.0] * (n + 1)
    for k in range(n // 2 + 1):
        out[k] = start + k * step
        out[n - k] = stop - k * step
    if n % 2 == 0:
        out[n // 2] = (start + stop) / 2.0
    return tuple(out)


# The official devkit's 11-point thresholds: VOCevaldet.m loops ``for t=0:0.1:1``.
DEVKIT_RECALL_THRESHOLDS: Tuple[float, ...] = matlab_colon(0.0, 0.1, 1.0)
# py-faster-rcnn's voc_eval.py: ``for t in np.arange(0., 1.1, 0.1)``.
PY_FASTER_RCNN_RECALL_THRESHOLDS: Tuple[float, ...] = tuple(float(t) for t in np.arange(0.0, 1.1, 0.1))


def check_voc_protocol(protocol: str, where: str = "protocol") -> str:
    """``protocol`` if it is one of :data:`VOC_PROTOCOLS`, else a ValueError naming ``where``."""
    if protocol not in VOC_PROTOCOLS:
        raise ValueError(f"{where} is {protocol!r}; expected one of {', '.join(VOC_PROTOCOLS)}")
    return protocol


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool, protocol: str = "devkit") -> float:
    """Average precision of one class from its cumulative recall/precision arrays.

    Args:
        recall: ``float [D]`` recall after each detection (non-decreasing).
        precision: ``float [D]`` precision after each detection. NaN marks the 0/0
            of a prefix holding only detections matched to difficult objects (the
            devkit's ``tp ./ (fp + tp)``); like MATLAB's ``max``, the AP ignores it.
        use_07_metric: True for the VOC2007 11-point interpolated AP: ``ap = ap +
            p / 11`` over the 11 recall thresholds ``t`` of ``protocol``, ``p`` the
            largest precision at recall ``>= t`` (0 if there is none; NaN if all of
            them are NaN, as in MATLAB). The sum is accumulated in that order, as
            both references do, so a perfect class scores 1.0000000000000002.
            False for VOC2010+: the area under the precision envelope (``precision``
            made non-increasing from the right), summed where the recall changes;
            the same in both protocols.
        protocol: ``"devkit"`` (thresholds from MATLAB's ``0:0.1:1``) or
            ``"py-faster-rcnn"`` (``np.arange(0., 1.1, 0.1)``).

    Returns:
        AP as a fraction in ``[0, 1]`` (up to the last bit, see above).
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if use_07_metric:
        thresholds = (
            DEVKIT_RECALL_THRESHOLDS if check_voc_protocol(protocol) == "devkit" else PY_FASTER_RCNN_RECALL_THRESHOLDS
        )
        ap = 0.0
        for t in thresholds:
            above = precision[recall >= t]
            if above.size == 0:
                p = 0.0
            elif np.isnan(above).all():
                p = math.nan  # MATLAB: max of an all-NaN vector is NaN
            else:
                p = float(np.nanmax(above))  # MATLAB's max skips NaN
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    # precision envelope: the max precision at any recall to the right (fmax: as
    # MATLAB's max, a NaN loses against any number)
    mpre = np.fmax.accumulate(mpre[::-1])[::-1]
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
    protocol: str,
) -> Tuple[float, np.ndarray, np.ndarray]:
    """AP, precision and recall for detections already sorted by descending score."""
    num_dets = len(ovmax)
    if protocol == "devkit":
        matched = ovmax >= iou_thresh  # VOCevaldet.m: if ovmax>=VOCopts.minoverlap
    else:
        matched = ovmax > iou_thresh  # voc_eval.py: if ovmax > ovthresh
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
    if protocol == "devkit":
        # prec=tp./(fp+tp): 0/0 = NaN while only difficult objects have been matched
        with np.errstate(invalid="ignore"):
            precision = tp / (tp + fp)
    else:
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if num_pos == 0:
        # No positives: recall (and so AP) is undefined; reported as NaN and left
        # out of the mean.
        return math.nan, precision, np.full(num_dets, np.nan)
    recall = tp / float(num_pos)
    return voc_ap(recall, precision, use_07_metric=use_07_metric, protocol=protocol), precision, recall


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
    protocol: str,
) -> List[Tuple[float, np.ndarray, np.ndarray]]:
    check_voc_protocol(protocol)
    where = f"class '{gt.class_names[label - 1]}'"
    image_ids, scores, boxes = _check_class_detections(dets, where)
    rows = gt.rows(image_ids, where=f"detections of {where}")
    if protocol == "devkit":
        order = np.argsort(-scores, kind="stable")  # [sc,si]=sort(-confidence): MATLAB's sort is stable
    else:
        # voc_eval.py: sorted_ind = np.argsort(-confidence), numpy's default
        # (not stable): equal scores come out in that algorithm's order, which is
        # the same as voc_eval.py's when run with the same numpy
        order = np.argsort(-scores)
    offsets, gt_boxes, gt_difficult = gt.for_class(label)
    ovmax, jmax = _max_iou_match(offsets, gt_boxes, rows[order], _to_inclusive(boxes[order]))
    num_pos = gt.num_positives(label)
    return [_eval_one_threshold(ovmax, jmax, gt_difficult, num_pos, t, use_07_metric, protocol) for t in iou_threshs]


def voc_eval_class_thresholds(
    gt_by_image: Mapping[Hashable, Mapping[str, Any]],
    dets: Mapping[str, Any],
    *,
    iou_threshs: Sequence[float],
    use_07_metric: bool,
    protocol: str = "devkit",
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
    return _eval_class_packed(gt, 1, dets, iou_threshs, use_07_metric, protocol)


def voc_eval_class(
    gt_by_image: Mapping[Hashable, Mapping[str, Any]],
    dets: Mapping[str, Any],
    *,
    iou_thresh: float = 0.5,
    use_07_metric: bool,
    protocol: str = "devkit",
) -> Tuple[float, np.ndarray, np.ndarray]:
    """AP of one class, by the devkit's or py-faster-rcnn's rules (``protocol``).

    Args:
        gt_by_image: EVERY test image (also those without an object of the class) ->
            ``{"boxes": float [G, 4] toolkit boxes, "difficult": bool [G] (optional)}``.
        dets: ``{"image_ids": [D], "scores": [D], "boxes": [D, 4] toolkit boxes}``;
            every image id must be a key of ``gt_by_image`` (compared as strings).
        iou_thresh: a detection matches when its IoU is at least this (devkit) or
            strictly greater (py-faster-rcnn).
        use_07_metric: 11-point AP (VOC2007) or area under the envelope (VOC2010+).
        protocol: ``"devkit"`` or ``"py-faster-rcnn"`` (see :data:`VOC_PROTOCOLS`).

    Returns:
        ``(ap, precision, recall)``: AP as a fraction (NaN when the class has no
        non-difficult object), and ``float64 [D]`` cumulative precision and recall
        in descending-score order (recall NaN without positives; with the devkit,
        precision NaN while only difficult objects have been matched).
    """
    return voc_eval_class_thresholds(
        gt_by_image, dets, iou_threshs=[iou_thresh], use_07_metric=use_07_metric, protocol=protocol
    )[0]


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def evaluate_voc(
    gt: VOCGroundTruth,
    detections: Mapping[str, Mapping[str, Any]],
    *,
    use_07_metric: bool,
    iou_threshs: Sequence[float] = VOC_IOU_THRESHOLDS,
    protocol: str = "devkit",
) -> Tuple[Dict[str, Any], Dict[str, Dict[str, Any]]]:
    """Score a whole test set.

    Args:
        gt: the test set's ground truth.
        detections: class name -> :data:`ClassDetections`; a missing class has no
            detections.
        use_07_metric: 11-point AP (VOC2007) or area (VOC2010+).
        iou_threshs: thresholds of the extra ``mAP50_95``; must contain 0.5 (and
            0.75 for ``mAP75``).
        protocol: ``"devkit"`` (the official MATLAB devkit, bit for bit) or
            ``"py-faster-rcnn"`` (its ``voc_eval.py``, bit for bit).

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
        results = _eval_class_packed(gt, k + 1, detections.get(name, empty), threshs, use_07_metric, protocol)
        aps = [r[0] for r in results]
        per_class[name] = 100.0 * aps[i50]
        if i75 is not None:
            per_class_75[name] = 100.0 * aps[i75]
        per_class_50_95[name] = 100.0 * (math.nan if any(math.isnan(a) for a in aps) else sum(aps) / len(aps))
        _, precision, recall = results[i50]
        pr_curves[name] = {"precision": precision, "recall": recall, "ap": per_class[name]}
    no_positives = [n for k, n in enumerate(gt.class_names) if gt.num_positives(k + 1) == 0]
    if no_positives:
        logger.warning(
            "VOC evaluation: class(es) %s have no non-difficult ground truth in this test set; "
            "their AP is undefined (NaN) and left out of the mean",
            no_positives,
        )
    only_difficult = [n for n, ap in per_class.items() if math.isnan(ap) and n not in no_positives]
    if only_difficult:
        logger.warning(
            "VOC evaluation: every detection of class(es) %s matched a difficult object; the devkit's "
            "11-point AP is then NaN (max of an all-NaN precision), left out of the mean",
            only_difficult,
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
