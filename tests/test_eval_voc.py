"""PASCAL VOC evaluation: hand-computed cases, a loop reference written from the
protocol text, comp4 round trips, the devkit tree and tools/eval_voc.py."""

from __future__ import annotations

import json
import math
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from detectron_res.evaluation.voc import (
    DEVKIT_RECALL_THRESHOLDS,
    PY_FASTER_RCNN_RECALL_THRESHOLDS,
    VOC_CLASSES,
    VOCEvaluator,
    VOCGroundTruth,
    evaluate_voc,
    load_devkit_ground_truth,
    matlab_colon,
    pack_voc_server_submission,
    parse_voc_annotation,
    read_comp4,
    split_by_class,
    use_07_metric_for_year,
    voc_ap,
    voc_box_iou,
    voc_eval_class,
    voc_eval_class_thresholds,
    write_comp4,
)
from helpers import load_tool

ROOT = Path(__file__).resolve().parent.parent


def incl(xmin, ymin, xmax, ymax):
    """A VOC inclusive 1-based box -> the toolkit's continuous 0-based box."""
    return [xmin - 1.0, ymin - 1.0, float(xmax), float(ymax)]


def dets(*rows):
    """rows of (image_id, score, toolkit box)."""
    return {
        "image_ids": [r[0] for r in rows],
        "scores": np.array([r[1] for r in rows], dtype=np.float64),
        "boxes": np.array([r[2] for r in rows], dtype=np.float64).reshape(-1, 4),
    }


# ----------------------------------------------------------------------------
# Hand-computed cases
# ----------------------------------------------------------------------------
def test_iou_uses_inclusive_plus_one_pixels():
    # inclusive [1,1,2,2] is 2x2 = 4 pixels; [1,1,2,3] is 2x3 = 6; they share 4.
    assert voc_box_iou(np.array([incl(1, 1, 2, 2)]), np.array([incl(1, 1, 2, 3)]))[0, 0] == pytest.approx(4 / 6)
    # single pixel [1,1,1,1] vs [1,1,1,2]: 1 / 2
    assert voc_box_iou(np.array([incl(1, 1, 1, 1)]), np.array([incl(1, 1, 1, 2)]))[0, 0] == pytest.approx(0.5)
    # touching but not overlapping: [1,1,2,2] and [3,1,4,2] share no pixel
    assert voc_box_iou(np.array([incl(1, 1, 2, 2)]), np.array([incl(3, 1, 4, 2)]))[0, 0] == 0.0


@pytest.mark.parametrize("protocol", ["devkit", "py-faster-rcnn"])
def test_plus_one_convention_decides_the_match(protocol):
    # With +1 pixels the IoU is 4/6 -> match. Reading the inclusive numbers as
    # continuous coordinates (no +1) would give 1/3 -> no match.
    gt = {"im": {"boxes": [incl(1, 1, 2, 2)]}}
    ap, _, rec = voc_eval_class(gt, dets(("im", 1.0, incl(1, 1, 2, 3))), use_07_metric=False, protocol=protocol)
    assert ap == 1.0 and rec[-1] == 1.0
    # Single pixels [1,1,1,1] and [1,1,1,3]: IoU 1/3 -> no match. Adding +1 twice (to
    # boxes that are already continuous) would give 4/8 -> a wrong match (devkit).
    gt = {"im": {"boxes": [incl(1, 1, 1, 1)]}}
    ap, _, rec = voc_eval_class(gt, dets(("im", 1.0, incl(1, 1, 1, 3))), use_07_metric=False, protocol=protocol)
    assert ap == 0.0 and rec[-1] == 0.0


def test_match_at_iou_exactly_half_devkit_yes_py_faster_rcnn_no():
    # VOCevaldet.m: ovmax >= VOCopts.minoverlap; voc_eval.py: ovmax > ovthresh.
    gt = {"im": {"boxes": [incl(1, 1, 10, 10)]}}  # 100 pixels
    exactly_half = dets(("im", 1.0, incl(1, 1, 10, 5)))  # 50 pixels inside: IoU = 0.5
    below_half = dets(("im", 1.0, incl(1, 1, 7, 7)))  # IoU = 0.49
    above_half = dets(("im", 1.0, incl(1, 1, 10, 6)))  # IoU = 0.6
    assert voc_eval_class(gt, exactly_half, use_07_metric=False)[0] == 1.0
    assert voc_eval_class(gt, exactly_half, use_07_metric=False, protocol="py-faster-rcnn")[0] == 0.0
    for protocol in ("devkit", "py-faster-rcnn"):
        assert voc_eval_class(gt, below_half, use_07_metric=False, protocol=protocol)[0] == 0.0
        assert voc_eval_class(gt, above_half, use_07_metric=False, protocol=protocol)[0] == 1.0
        assert voc_eval_class(gt, exactly_half, iou_thresh=0.49, use_07_metric=False, protocol=protocol)[0] == 1.0


def test_difficult_objects_are_ignored():
    # im: a normal object and a difficult one. Detections: on the difficult object
    # (highest score), on the normal one, and a false positive.
    gt = {"im": {"boxes": [incl(1, 1, 10, 10), incl(21, 21, 30, 30)], "difficult": [False, True]}}
    d = dets(("im", 0.9, incl(21, 21, 30, 30)), ("im", 0.8, incl(1, 1, 10, 10)), ("im", 0.7, incl(41, 41, 50, 50)))
    ap, prec, rec = voc_eval_class(gt, d, use_07_metric=False)
    # ignored detection: tp = fp = 0 -> precision 0/0 = NaN at recall 0 (devkit;
    # py-faster-rcnn: 0/eps = 0)
    np.testing.assert_allclose(rec, [0.0, 1.0, 1.0])  # one positive: the difficult one does not count
    np.testing.assert_allclose(prec, [np.nan, 1.0, 0.5])
    assert ap == 1.0
    _, prec_pf, _ = voc_eval_class(gt, d, use_07_metric=False, protocol="py-faster-rcnn")
    np.testing.assert_allclose(prec_pf, [0.0, 1.0, 0.5])
    # Had the difficult object been an ordinary one, the top detection would be a TP.
    # Had its detection been a false positive, AP would be 0.5.
    assert voc_eval_class(gt, d, use_07_metric=True)[0] == pytest.approx(1.0, abs=1e-15)
    # A second detection of the difficult object is ignored as well (not a duplicate FP).
    d2 = dets(("im", 0.95, incl(21, 21, 30, 30)), ("im", 0.9, incl(21, 21, 30, 30)), ("im", 0.8, incl(1, 1, 10, 10)))
    ap2, prec2, _ = voc_eval_class(gt, d2, use_07_metric=False)
    assert ap2 == 1.0 and prec2[-1] == 1.0


def test_duplicates_are_false_positives():
    gt = {"a": {"boxes": [incl(1, 1, 10, 10)]}, "b": {"boxes": [incl(1, 1, 10, 10)]}}
    d = dets(("a", 0.9, incl(1, 1, 10, 10)), ("a", 0.8, incl(1, 1, 10, 10)), ("b", 0.7, incl(1, 1, 10, 10)))
    ap, prec, rec = voc_eval_class(gt, d, use_07_metric=False)
    np.testing.assert_allclose(rec, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(prec, [1.0, 0.5, 2 / 3])
    # area: 0.5 * 1 + 0.5 * 2/3
    assert ap == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-15)
    # 11-point: t = 0..0.5 (6 points) -> 1; t = 0.6..1 (5 points) -> 2/3
    assert voc_eval_class(gt, d, use_07_metric=True)[0] == pytest.approx((6 + 5 * 2 / 3) / 11, abs=1e-15)


def test_duplicate_does_not_fall_back_to_second_best_ground_truth():
    # g1 = [1,1,10,10], g2 = [4,1,13,10]. The second detection [2,1,11,10] overlaps
    # g1 most (IoU 90/110 vs 80/120 with g2); g1 is taken, so it is a false positive even though
    # g2 is free: the devkit compares each detection with its max-IoU box only.
    gt = {"im": {"boxes": [incl(1, 1, 10, 10), incl(4, 1, 13, 10)]}}
    second = incl(2, 1, 11, 10)
    iou = voc_box_iou(np.array([second]), np.array(gt["im"]["boxes"]))[0]
    np.testing.assert_allclose(iou, [90 / 110, 80 / 120])
    d = dets(("im", 0.9, incl(1, 1, 10, 10)), ("im", 0.8, second))
    ap, prec, rec = voc_eval_class(gt, d, use_07_metric=False)
    np.testing.assert_allclose(rec, [0.5, 0.5])
    assert ap == 0.5


def test_11_point_versus_area_on_hand_curve():
    rec = np.array([0.1, 0.2, 0.2, 0.35, 0.5])
    prec = np.array([1.0, 1.0, 2 / 3, 0.75, 0.8])
    # envelope: 1 up to 0.2, then 0.8 up to 0.5, then nothing
    assert voc_ap(rec, prec, use_07_metric=False) == pytest.approx(0.2 * 1.0 + 0.3 * 0.8)
    # 11-point: t=0, .1, .2 -> 1; t=.3, .4, .5 -> 0.8; t >= .6 -> 0
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx((3 * 1.0 + 3 * 0.8) / 11)
    # recall exactly 3/10 does not reach t = 0.30000000000000004 (both protocols)...
    for protocol in ("devkit", "py-faster-rcnn"):
        assert voc_ap(np.array([0.3]), np.array([1.0]), use_07_metric=True, protocol=protocol) == 3 / 11
    # ... but 6/10 reaches the devkit's 0.6, not np.arange's 0.6000000000000001
    assert voc_ap(np.array([0.6]), np.array([1.0]), use_07_metric=True) == pytest.approx(7 / 11, abs=1e-15)
    assert voc_ap(np.array([0.6]), np.array([1.0]), use_07_metric=True, protocol="py-faster-rcnn") == pytest.approx(
        6 / 11, abs=1e-15
    )
    # a perfect class: the references add p / 11 eleven times, 1.0000000000000002
    assert voc_ap(np.array([1.0]), np.array([1.0]), use_07_metric=True) == 1.0000000000000002


def test_class_without_positives_is_nan_and_left_out_of_the_mean():
    gt = VOCGroundTruth(
        image_ids=["a", "b"],
        boxes=[np.array([incl(1, 1, 10, 10), incl(21, 21, 30, 30)]), np.zeros((0, 4))],
        labels=[np.array([1, 2]), np.zeros(0, dtype=np.int64)],
        difficult=[np.array([False, True]), np.zeros(0, dtype=bool)],  # class 2 only difficult
        class_names=["cat", "dog"],
    )
    detections = {
        "cat": dets(("a", 0.9, incl(1, 1, 10, 10))),
        "dog": dets(("b", 0.9, incl(1, 1, 10, 10))),
    }
    metrics, _ = evaluate_voc(gt, detections, use_07_metric=False)
    assert metrics["per_class"]["cat"] == 100.0
    assert math.isnan(metrics["per_class"]["dog"])
    assert metrics["mAP50"] == 100.0 and metrics["mAP50_95"] == 100.0
    # the same with voc_eval_class, also without any detection
    ap, _, rec = voc_eval_class({"a": {"boxes": np.zeros((0, 4))}}, dets(), use_07_metric=True)
    assert math.isnan(ap) and len(rec) == 0


def test_detection_on_unknown_image_is_an_error():
    with pytest.raises(ValueError, match="not in the test set"):
        voc_eval_class({"a": {"boxes": [incl(1, 1, 5, 5)]}}, dets(("zzz", 0.5, incl(1, 1, 5, 5))), use_07_metric=False)


def test_metric_by_year():
    assert use_07_metric_for_year("2007") and use_07_metric_for_year(2009)
    assert not use_07_metric_for_year("2010") and not use_07_metric_for_year(2012)
    with pytest.raises(ValueError, match="2007..2012"):
        use_07_metric_for_year("07")


# ----------------------------------------------------------------------------
# Reference implementations from the protocol texts (loops, one detection at a time)
# ----------------------------------------------------------------------------
# The devkit's 11 thresholds, written from the description of MATLAB's colon
# operator for 0:0.1:1 (n = 10 intervals): the first half a + k*d, the second half
# b - k*d, the middle (a + b) / 2.
MATLAB_0_01_1 = [0.0 + k * 0.1 for k in range(5)] + [(0.0 + 1.0) / 2] + [1.0 - k * 0.1 for k in (4, 3, 2, 1, 0)]


def _matlab_max(values):
    """MATLAB's max: NaN entries are skipped; [] is empty; all-NaN gives NaN."""
    if not values:
        return None
    numbers = [v for v in values if not math.isnan(v)]
    return max(numbers) if numbers else math.nan


def _match_step(matched, difficult, taken, jmax):
    """(tp, fp) of one detection, the step both programs write alike: a match to a
    difficult object is ignored, the first match to an object is a true positive (the
    object is then taken), a later one or no match a false positive."""
    if not matched:
        return 0.0, 1.0
    if difficult[jmax]:
        return 0.0, 0.0
    if taken[jmax]:
        return 0.0, 1.0
    taken[jmax] = True
    return 1.0, 0.0


def devkit_reference(gt, det_rows, thresh, use_07_metric):
    """VOCevaldet.m (+ VOCap.m for the area), statement by statement.

    gt: {image_id: (list of inclusive boxes, list of difficult)}; det_rows: list of
    (image_id, score, inclusive box) in file order. Returns AP (fraction)."""
    npos = sum(1 for _, diff in gt.values() for d in diff if not d)
    # [sc,si]=sort(-confidence): MATLAB's sort is stable, as Python's
    order = sorted(range(len(det_rows)), key=lambda i: -det_rows[i][1])
    taken = {k: [False] * len(v[0]) for k, v in gt.items()}
    tp, fp = [0.0] * len(order), [0.0] * len(order)
    for d, i in enumerate(order):
        image_id, _, bb = det_rows[i]
        boxes, diff = gt[image_id]
        ovmax, jmax = -math.inf, -1
        for j, g in enumerate(boxes):
            iw = min(bb[2], g[2]) - max(bb[0], g[0]) + 1
            ih = min(bb[3], g[3]) - max(bb[1], g[1]) + 1
            if iw > 0 and ih > 0:
                ua = (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + (g[2] - g[0] + 1) * (g[3] - g[1] + 1) - iw * ih
                ov = iw * ih / ua
                if ov > ovmax:
                    ovmax, jmax = ov, j
        tp[d], fp[d] = _match_step(ovmax >= thresh, diff, taken[image_id], jmax)
    if npos == 0:
        return math.nan
    rec, prec, ctp, cfp = [], [], 0.0, 0.0
    for a, b in zip(tp, fp):
        ctp, cfp = ctp + a, cfp + b
        rec.append(ctp / npos)
        prec.append(ctp / (cfp + ctp) if cfp + ctp else math.nan)  # 0/0 = NaN in MATLAB
    if use_07_metric:
        ap = 0.0
        for t in MATLAB_0_01_1:
            p = _matlab_max([q for r, q in zip(rec, prec) if r >= t])
            ap = ap + (0.0 if p is None else p) / 11
        return ap
    mrec = [0.0] + rec + [1.0]
    mpre = [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = _matlab_max([mpre[i], mpre[i + 1]])
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])


def py_faster_rcnn_reference(gt, det_rows, thresh, use_07_metric):
    """py-faster-rcnn's lib/datasets/voc_eval.py (voc_eval + voc_ap), statement by
    statement; same arguments as :func:`devkit_reference`."""
    npos = sum(1 for _, diff in gt.values() for d in diff if not d)
    confidence = np.array([r[1] for r in det_rows], dtype=np.float64)
    sorted_ind = np.argsort(-confidence)
    taken = {k: [False] * len(v[0]) for k, v in gt.items()}
    nd = len(det_rows)
    tp, fp = np.zeros(nd), np.zeros(nd)
    for d in range(nd):
        image_id, _, bb = det_rows[sorted_ind[d]]
        bb = np.asarray(bb, dtype=np.float64)
        boxes, diff = gt[image_id]
        bbgt = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        ovmax, jmax = -np.inf, -1  # jmax is read only after a match (voc_eval.py leaves it unset)
        if bbgt.size > 0:
            iw = np.maximum(np.minimum(bbgt[:, 2], bb[2]) - np.maximum(bbgt[:, 0], bb[0]) + 1.0, 0.0)
            ih = np.maximum(np.minimum(bbgt[:, 3], bb[3]) - np.maximum(bbgt[:, 1], bb[1]) + 1.0, 0.0)
            inters = iw * ih
            uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                   + (bbgt[:, 2] - bbgt[:, 0] + 1.0) * (bbgt[:, 3] - bbgt[:, 1] + 1.0) - inters)  # fmt: skip
            overlaps = inters / uni
            ovmax, jmax = np.max(overlaps), np.argmax(overlaps)
        tp[d], fp[d] = _match_step(ovmax > thresh, diff, taken[image_id], jmax)  # ">": see VOC_PROTOCOLS
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos) if npos else tp * math.nan
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if npos == 0:
        return math.nan
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


REFERENCES = {"devkit": devkit_reference, "py-faster-rcnn": py_faster_rcnn_reference}


def random_voc_problem(rng, num_images=25, num_classes=3):
    """Boxes on a pixel grid and scores in tenths: ties in score, recalls landing on
    the 11-point thresholds and IoUs of exactly 0.5 all happen."""
    image_ids = [f"{i:06d}" for i in range(num_images)]
    boxes, labels, difficult = [], [], []
    det_rows = {k: [] for k in range(1, num_classes + 1)}
    for image_id in image_ids:
        n = rng.integers(0, 6)
        xy = rng.integers(0, 60, size=(n, 2)).astype(np.float64)
        wh = rng.integers(1, 30, size=(n, 2)).astype(np.float64)
        b = np.concatenate([xy, xy + wh], axis=1)
        lab = rng.integers(1, num_classes + 1, size=n)
        boxes.append(b)
        labels.append(lab)
        difficult.append(rng.random(n) < 0.2)
        for j in range(n):  # jittered copies: true positives, duplicates, misses
            for _ in range(rng.integers(0, 3)):
                jit = b[j] + rng.integers(-4, 5, size=4)
                jit[2:] = np.maximum(jit[2:], jit[:2] + 1)
                det_rows[int(lab[j])].append((image_id, float(rng.integers(0, 10)) / 10, jit))
            if wh[j, 0] % 2 == 0 and rng.random() < 0.3:  # the left half: IoU exactly 0.5
                half = b[j].copy()
                half[2] = half[0] + wh[j, 0] / 2
                det_rows[int(lab[j])].append((image_id, float(rng.integers(0, 10)) / 10, half))
        for _ in range(rng.integers(0, 4)):  # background detections
            xy = rng.integers(0, 80, size=2).astype(np.float64)
            bb = np.concatenate([xy, xy + rng.integers(1, 25, size=2)])
            det_rows[int(rng.integers(1, num_classes + 1))].append((image_id, float(rng.integers(0, 10)) / 10, bb))
    return image_ids, boxes, labels, difficult, det_rows


def reference_per_class(image_ids, boxes, labels, difficult, det_rows, k, thresh, use_07_metric, protocol):
    ref_gt = {
        i: ([list(map(float, np.asarray(b) + [1, 1, 0, 0])) for b, l in zip(bx, lb) if l == k],
            [bool(d) for d, l in zip(df, lb) if l == k])
        for i, bx, lb, df in zip(image_ids, boxes, labels, difficult)
    }  # fmt: skip
    ref_rows = [(i, s, list(np.asarray(b, dtype=np.float64) + [1, 1, 0, 0])) for i, s, b in det_rows[k]]
    return REFERENCES[protocol](ref_gt, ref_rows, thresh, use_07_metric)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("use_07_metric", [True, False])
@pytest.mark.parametrize("protocol", ["devkit", "py-faster-rcnn"])
def test_vectorized_matches_loop_reference(seed, use_07_metric, protocol):
    rng = np.random.default_rng(seed)
    image_ids, boxes, labels, difficult, det_rows = random_voc_problem(rng)
    class_names = ["c1", "c2", "c3"]
    gt = VOCGroundTruth(image_ids=image_ids, boxes=boxes, labels=labels, difficult=difficult, class_names=class_names)
    detections = {
        class_names[k - 1]: dets(*[(i, s, b) for i, s, b in rows]) for k, rows in det_rows.items()
    }
    metrics, _ = evaluate_voc(gt, detections, use_07_metric=use_07_metric, protocol=protocol)
    thresholds = [0.5 + 0.05 * i for i in range(10)]
    for k, name in enumerate(class_names, start=1):
        ref = [reference_per_class(image_ids, boxes, labels, difficult, det_rows, k, round(t, 2), use_07_metric,
                                   protocol) for t in thresholds]  # fmt: skip
        if use_07_metric:  # bit for bit
            assert metrics["per_class"][name] == 100 * ref[0] or math.isnan(ref[0])
        assert metrics["per_class"][name] == pytest.approx(100 * ref[0], abs=1e-9, nan_ok=True)
        assert metrics["per_class_50_95"][name] == pytest.approx(100 * float(np.mean(ref)), abs=1e-9, nan_ok=True)
    # the single-class entry point agrees too
    k = 2
    gt_by_image = {
        i: {"boxes": np.asarray(bx).reshape(-1, 4)[lb == k], "difficult": df[lb == k]}
        for i, bx, lb, df in zip(image_ids, boxes, labels, difficult)
    }
    results = voc_eval_class_thresholds(gt_by_image, detections["c2"], iou_threshs=[0.5, 0.7],
                                        use_07_metric=use_07_metric, protocol=protocol)  # fmt: skip
    assert 100 * results[0][0] == pytest.approx(metrics["per_class"]["c2"], abs=1e-12, nan_ok=True)


def test_random_sets_exercise_the_differences():
    """The random sets above do hit the cases where the protocols differ: an IoU of
    exactly 0.5, a recall of exactly 0.6 or 0.7, tied scores."""
    hits = {"half": 0, "recall": 0, "ties": 0, "differ": 0}
    for seed in range(4):
        image_ids, boxes, labels, difficult, det_rows = random_voc_problem(np.random.default_rng(seed))
        for k in det_rows:
            rows = det_rows[k]
            hits["ties"] += len({s for _, s, _ in rows}) < len(rows)
            gt_boxes = {i: np.asarray(bx).reshape(-1, 4)[lb == k] for i, bx, lb in zip(image_ids, boxes, labels)}
            hits["half"] += sum(bool(np.any(voc_box_iou(np.array([b]), gt_boxes[i]) == 0.5)) for i, _, b in rows)
            npos = sum(int(np.sum((lb == k) & ~df)) for lb, df in zip(labels, difficult))
            hits["recall"] += any(npos * t == round(npos * t) for t in (0.6, 0.7))
            a = reference_per_class(image_ids, boxes, labels, difficult, det_rows, k, 0.5, True, "devkit")
            b = reference_per_class(image_ids, boxes, labels, difficult, det_rows, k, 0.5, True, "py-faster-rcnn")
            hits["differ"] += a != b
    assert all(v > 0 for v in hits.values()), hits


def test_exact_recall_case_three_protocols(tmp_path):
    """10 objects, one per image; the ranking TP TP TP FP FP TP FP TP TP FP FP TP FP TP TP
    reaches recall exactly 3/10 (after 3), 6/10 (after 9) and 7/10 (after 12).
    Precision at recall >= t, by hand: 1 for t <= 0.3; 2/3 (4/6, 6/9) for t in
    (0.3, 0.6]; 3/5 (9/15) for t in (0.6, 0.9]; 0 for t = 1.
      devkit (0, .1, .2, .30000000000000004, .4, .5, .6, .7, .8, .9, 1):
          (3 + 4 * 2/3 + 3 * 3/5) / 11 = 0.6788
      py-faster-rcnn (... .6000000000000001, .7000000000000001 ...):
          (3 + 3 * 2/3 + 4 * 3/5) / 11 = 0.6727
      k / 10 (recall 0.3 counts at t = 0.3, the code before this protocol):
          (4 + 3 * 2/3 + 3 * 3/5) / 11 = 0.7091
    """
    ranking = [1, 1, 1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 1]
    image_ids = [f"{i:06d}" for i in range(1, 11)]
    gt_box = incl(11, 11, 40, 40)
    far = incl(61, 61, 80, 80)
    rows, next_image = [], 0
    for rank, is_tp in enumerate(ranking):
        score = 1.0 - rank / 100
        if is_tp:
            rows.append((image_ids[next_image], score, gt_box))
            next_image += 1
        else:
            rows.append((image_ids[0], score, far))
    expected = {"devkit": (3 + 4 * 2 / 3 + 3 * 3 / 5) / 11, "py-faster-rcnn": (3 + 3 * 2 / 3 + 4 * 3 / 5) / 11}
    assert round(expected["devkit"], 4) == 0.6788 and round(expected["py-faster-rcnn"], 4) == 0.6727
    gt = {i: {"boxes": [gt_box]} for i in image_ids}
    bitwise = {}
    for protocol, value in expected.items():
        ap, _, rec = voc_eval_class(gt, dets(*rows), use_07_metric=True, protocol=protocol)
        assert rec[2] == 0.3 and rec[8] == 0.6 and rec[11] == 0.7
        assert ap == pytest.approx(value, abs=1e-15)
        ref_rows = [(i, s, list(np.asarray(b) + [1, 1, 0, 0])) for i, s, b in rows]
        ref_gt = {i: ([list(np.asarray(gt_box) + [1, 1, 0, 0])], [False]) for i in image_ids}
        assert ap == REFERENCES[protocol](ref_gt, ref_rows, 0.5, True)  # bit for bit
        bitwise[protocol] = ap
    # thresholds k / 10 (neither reference's): 0.7091
    _, prec, rec = voc_eval_class(gt, dets(*rows), use_07_metric=True)
    k10 = sum(max(p for r, p in zip(rec, prec) if r >= k / 10) if k < 10 else 0.0 for k in range(11)) / 11
    assert round(k10, 4) == 0.7091 and k10 == pytest.approx((4 + 3 * 2 / 3 + 3 * 3 / 5) / 11)
    # the same through the devkit tree and tools/eval_voc.py, both protocols
    root = write_devkit_tree(tmp_path, image_ids, {i: [("dog", (11, 11, 40, 40), 0)] for i in image_ids})
    write_comp4(tmp_path / "results", "test", ["dog"], {"dog": dets(*rows)})
    tool = load_tool("eval_voc")
    for protocol, value in bitwise.items():
        out = tmp_path / f"{protocol}.json"
        assert tool.main(["--voc-root", str(root), "--year", "2007", "--results-dir", str(tmp_path / "results"),
                          "--classes", "dog", "--protocol", protocol, "--json", str(out)]) == 0  # fmt: skip
        m = json.loads(out.read_text())
        assert m["per_class"]["dog"] == 100 * value and m["protocol"] == protocol


@pytest.mark.parametrize("use_07_metric", [True, False])
def test_eval_voc_tool_matches_references_on_random_sets(tmp_path, use_07_metric):
    rng = np.random.default_rng(7)
    image_ids, boxes, labels, difficult, det_rows = random_voc_problem(rng, num_images=30)
    names = ["c1", "c2", "c3"]
    objects = {
        i: [(names[int(l) - 1], tuple(int(v) for v in np.asarray(b) + [1, 1, 0, 0]), int(d))
            for b, l, d in zip(bx, lb, df)]
        for i, bx, lb, df in zip(image_ids, boxes, labels, difficult)
    }  # fmt: skip
    root = write_devkit_tree(tmp_path, image_ids, objects)
    write_comp4(tmp_path / "results", "test", names,
                {names[k - 1]: dets(*rows) for k, rows in det_rows.items()})  # fmt: skip
    tool = load_tool("eval_voc")
    for protocol in ("devkit", "py-faster-rcnn"):
        out = tmp_path / f"{protocol}.json"
        args = ["--voc-root", str(root), "--year", "2007", "--results-dir", str(tmp_path / "results"),
                "--classes", ",".join(names), "--json", str(out), "--metric", "11point" if use_07_metric else "area"]
        if protocol != "devkit":  # the devkit is the default
            args += ["--protocol", protocol]
        assert tool.main(args) == 0
        m = json.loads(out.read_text())
        for k, name in enumerate(names, start=1):
            ref = reference_per_class(image_ids, boxes, labels, difficult, det_rows, k, 0.5, use_07_metric, protocol)
            assert m["per_class"][name] == pytest.approx(100 * ref, abs=1e-9)


def test_area_ap_is_the_same_in_both_protocols():
    """VOC2010+ (area under the envelope) is computed as before: both protocols give
    it, and they agree wherever neither an IoU of exactly 0.5 nor a tie decides."""
    rng = np.random.default_rng(5)
    image_ids, boxes, labels, difficult, det_rows = random_voc_problem(rng)
    gt = VOCGroundTruth(image_ids=image_ids, boxes=boxes, labels=labels, difficult=difficult, class_names=["a", "b", "c"])
    # distinct scores, and no half boxes (IoU exactly 0.5 happens only with them here)
    detections = {}
    for k, rows in det_rows.items():
        kept = [(i, s, b) for i, s, b in rows if not np.any(voc_box_iou(np.array([b]), np.asarray(boxes[image_ids.index(i)]).reshape(-1, 4)) == 0.5)]  # noqa: E501
        detections["abc"[k - 1]] = dets(*[(i, float(rng.random()), b) for i, _, b in kept])
    a, _ = evaluate_voc(gt, detections, use_07_metric=False, protocol="devkit")
    b, _ = evaluate_voc(gt, detections, use_07_metric=False, protocol="py-faster-rcnn")
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert 0 < a["mAP50"] < 100


def test_protocol_thresholds_and_errors():
    assert DEVKIT_RECALL_THRESHOLDS == tuple(MATLAB_0_01_1)
    # shared/PAPER_FACTS.md, "Evaluation protocols", to the last bit
    assert [repr(t) for t in DEVKIT_RECALL_THRESHOLDS] == [
        "0.0", "0.1", "0.2", "0.30000000000000004", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "1.0"]  # fmt: skip
    assert [repr(t) for t in PY_FASTER_RCNN_RECALL_THRESHOLDS][6:8] == ["0.6000000000000001", "0.7000000000000001"]
    assert matlab_colon(0.0, 0.25, 1.0) == (0.0, 0.25, 0.5, 0.75, 1.0)
    with pytest.raises(ValueError, match="py-faster-rcnn"):
        voc_ap(np.array([1.0]), np.array([1.0]), use_07_metric=True, protocol="matlab")
    with pytest.raises(ValueError, match="test.voc_protocol"):
        VOCEvaluator(make_dataset([], [], [], [], ["a"]), protocol="detectron2")


def test_devkit_nan_precision_when_only_difficult_objects_are_matched():
    """VOCevaldet.m computes prec = tp ./ (fp + tp), 0/0 = NaN while only difficult
    objects have been matched; MATLAB's max skips it; if every detection is on a
    difficult object the 11-point AP is NaN. py-faster-rcnn divides by eps: 0."""
    gt = {"im": {"boxes": [incl(1, 1, 10, 10), incl(21, 21, 30, 30)], "difficult": [False, True]}}
    on_difficult = dets(("im", 0.9, incl(21, 21, 30, 30)))
    assert math.isnan(voc_eval_class(gt, on_difficult, use_07_metric=True)[0])
    assert voc_eval_class(gt, on_difficult, use_07_metric=True, protocol="py-faster-rcnn")[0] == 0.0
    assert voc_eval_class(gt, on_difficult, use_07_metric=False)[0] == 0.0  # VOCap.m's max skips the NaN


# ----------------------------------------------------------------------------
# The evaluator on a dataset; comp4 files
# ----------------------------------------------------------------------------
def make_dataset(image_ids, boxes, labels, difficult, class_names, *, year="2007", split="test", name="voc_test"):
    records = [
        SimpleNamespace(image_id=i, file_name=f"{i}.jpg", height=100, width=100,
                        boxes=np.asarray(b, dtype=np.float32).reshape(-1, 4), labels=np.asarray(l, dtype=np.int64),
                        difficult=np.asarray(d, dtype=bool), iscrowd=np.zeros(len(l), dtype=bool))
        for i, b, l, d in zip(image_ids, boxes, labels, difficult)
    ]  # fmt: skip
    return SimpleNamespace(name=name, records=records, class_names=list(class_names),
                           category_ids=list(range(1, len(class_names) + 1)), format="voc",
                           extra={"year": year, "split": split, "voc_root": "/nonexistent"})  # fmt: skip


def predictions_from_rows(image_ids, det_rows):
    preds = {i: {"boxes": [], "scores": [], "labels": []} for i in image_ids}
    for k, rows in det_rows.items():
        for i, s, b in rows:
            preds[i]["boxes"].append(b)
            preds[i]["scores"].append(s)
            preds[i]["labels"].append(k)
    return [
        (i, {"boxes": np.asarray(p["boxes"], dtype=np.float32).reshape(-1, 4),
             "scores": np.asarray(p["scores"], dtype=np.float32), "labels": np.asarray(p["labels"], dtype=np.int64)})
        for i, p in preds.items()
    ]  # fmt: skip


def test_evaluator_and_comp4_round_trip(tmp_path):
    rng = np.random.default_rng(7)
    image_ids, boxes, labels, difficult, det_rows = random_voc_problem(rng, num_images=30)
    names = ["c1", "c2", "c3"]
    ds = make_dataset(image_ids, boxes, labels, difficult, names)
    ev = VOCEvaluator(ds, output_dir=tmp_path)
    assert ev.use_07_metric  # 2007
    ev.reset()
    preds = predictions_from_rows(image_ids, det_rows)
    for start in range(0, len(preds), 4):
        chunk = preds[start : start + 4]
        ev.process([i for i, _ in chunk], [p for _, p in chunk])
    metrics = ev.evaluate()
    assert set(ev.pr_curves) == set(names)
    # read back what the evaluator wrote and score it again
    read = read_comp4(tmp_path / "comp4", "test", names)
    gt = VOCGroundTruth.from_dataset(ds)
    again, _ = evaluate_voc(gt, read, use_07_metric=True)
    assert json.dumps(again, sort_keys=True) == json.dumps(metrics, sort_keys=True)
    # the files hold the devkit's inclusive 1-based coordinates
    first = (tmp_path / "comp4" / "comp4_det_test_c1.txt").read_text().splitlines()[0].split()
    c1 = split_by_class(dict(preds), names)["c1"]
    assert first[0] == c1["image_ids"][0]
    assert float(first[1]) == float(c1["scores"][0])
    np.testing.assert_array_equal(np.array(first[2:], dtype=np.float64), c1["boxes"][0].astype(np.float64) + [1, 1, 0, 0])


def test_comp4_errors_name_file_and_line(tmp_path):
    write_comp4(tmp_path, "test", ["a"], {"a": dets(("000001", 0.5, incl(1, 1, 5, 5)))})
    path = tmp_path / "comp4_det_test_a.txt"
    path.write_text(path.read_text() + "000002 0.3 1 2 3\n")
    with pytest.raises(ValueError, match=r"comp4_det_test_a.txt:2: 5 fields"):
        read_comp4(tmp_path, "test", ["a"])
    with pytest.raises(ValueError, match="comp4_det_test_b.txt: no such results file"):
        read_comp4(tmp_path, "test", ["b"])


def test_perfect_and_half_shifted_detections(tmp_path):
    # 10 images with one 20x20 object each; the first 5 detected exactly (score
    # 0.9), the last 5 detected shifted by half a box width (IoU 1/3, score 0.8).
    ids = [f"im{i}" for i in range(10)]
    boxes = [np.array([[10.0, 10.0, 30.0, 30.0]]) for _ in ids]
    labels = [np.array([1]) for _ in ids]
    diff = [np.array([False]) for _ in ids]
    perfect = {i: {"boxes": b, "scores": np.array([0.9]), "labels": np.array([1])} for i, b in zip(ids, boxes)}
    for year, metric_07 in (("2007", True), ("2012", False)):
        ds = make_dataset(ids, boxes, labels, diff, ["thing"], year=year, split="val")
        ev = VOCEvaluator(ds)
        assert ev.use_07_metric == metric_07
        m = ev.evaluate_predictions(perfect)
        # 11-point: the devkit adds p / 11 eleven times, 1.0000000000000002
        assert m["mAP50"] == m["mAP75"] == pytest.approx(100.0, abs=1e-12)
        assert m["mAP50_95"] == pytest.approx(100.0, abs=1e-12)
        half = {}
        for n, i in enumerate(ids):
            shift = 0.0 if n < 5 else 10.0
            half[i] = {"boxes": boxes[n] + [shift, 0, shift, 0], "scores": np.array([0.9 if n < 5 else 0.8]),
                       "labels": np.array([1])}  # fmt: skip
        m = ev.evaluate_predictions(half)
        # precision 1 up to recall 0.5, then only false positives:
        # area = 0.5; 11-point = 6 of 11 thresholds (0, .1, ..., .5) at precision 1
        expected = 100 * (6 / 11 if metric_07 else 0.5)
        assert m["mAP50"] == pytest.approx(expected, abs=1e-12)
        assert m["mAP50_95"] == pytest.approx(expected, abs=1e-12)


def test_year_and_metric_selection_and_submission(tmp_path):
    ids, boxes = ["a"], [np.array([[0.0, 0.0, 5.0, 5.0]])]
    ds = make_dataset(ids, boxes, [np.array([1])], [np.array([False])], ["thing"], year="2012", split="val")
    assert not VOCEvaluator(ds).use_07_metric
    assert VOCEvaluator(ds, year="2007").use_07_metric
    assert VOCEvaluator(ds, year="2007", use_07_metric=False).use_07_metric is False
    ds.extra = {}
    with pytest.raises(ValueError, match="no extra\\['year'\\]"):
        VOCEvaluator(ds)
    # VOC2012 test: labels are not public -> comp4 files packed for the server
    names = list(VOC_CLASSES)
    test = make_dataset(["2012_000001", "2012_000002"], [np.zeros((0, 4))] * 2, [np.zeros(0)] * 2,
                        [np.zeros(0)] * 2, names, year="2012", split="test")  # fmt: skip
    with pytest.raises(ValueError, match="pass output_dir"):
        VOCEvaluator(test)
    ev = VOCEvaluator(test, output_dir=tmp_path)
    out = ev.evaluate_predictions({
        "2012_000001": {"boxes": np.array([[1.0, 2.0, 30.0, 40.0]]), "scores": np.array([0.7]), "labels": np.array([15])},
        "2012_000002": {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, dtype=np.int64)},
    })  # fmt: skip
    assert out["num_detections"] == 1 and Path(out["submission"]).is_absolute()
    # the data catalog's flag for splits without public labels also selects it
    test.extra = {"year": "2012", "split": "val", "images_only": True}
    assert VOCEvaluator(test, output_dir=tmp_path / "x").submission_only
    with tarfile.open(out["submission"]) as tar:
        members = sorted(tar.getnames())
        assert members == sorted(f"results/VOC2012/Main/comp4_det_test_{c}.txt" for c in names)
        person = tar.extractfile("results/VOC2012/Main/comp4_det_test_person.txt").read().decode()
    assert person.split() == ["2012_000001", "0.7", "2.0", "3.0", "30.0", "40.0"]
    with pytest.raises(ValueError, match="missing 20 results file"):
        pack_voc_server_submission(tmp_path / "empty", tmp_path / "x.tar.gz")


# ----------------------------------------------------------------------------
# Devkit tree and tools/eval_voc.py
# ----------------------------------------------------------------------------
def write_xml(path, objects):
    objs = "".join(
        f"<object><name>{n}</name><difficult>{int(d)}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects
    )
    path.write_text(f"<annotation><filename>{path.stem}.jpg</filename><size><width>100</width><height>80</height>"
                    f"<depth>3</depth></size>{objs}</annotation>")  # fmt: skip


def write_devkit_tree(tmp_path, image_ids, objects):
    """VOCdevkit/VOC2007 with ImageSets/Main/test.txt and one XML per image;
    objects: image id -> [(name, inclusive box, difficult)]. Returns the VOCdevkit path."""
    year_dir = tmp_path / "VOCdevkit" / "VOC2007"
    (year_dir / "Annotations").mkdir(parents=True)
    (year_dir / "ImageSets" / "Main").mkdir(parents=True)
    (year_dir / "ImageSets" / "Main" / "test.txt").write_text("".join(f"{i}\n" for i in image_ids))
    for image_id in image_ids:
        write_xml(year_dir / "Annotations" / f"{image_id}.xml", objects.get(image_id, []))
    return tmp_path / "VOCdevkit"


def test_devkit_tree_and_eval_voc_tool(tmp_path, capsys):
    year_dir = tmp_path / "VOCdevkit" / "VOC2007"
    (year_dir / "Annotations").mkdir(parents=True)
    (year_dir / "ImageSets" / "Main").mkdir(parents=True)
    (year_dir / "ImageSets" / "Main" / "test.txt").write_text("000001\n000002\n000003\n")
    write_xml(year_dir / "Annotations" / "000001.xml", [("dog", (1, 1, 10, 10), 0), ("cat", (5, 5, 20, 20), 1)])
    write_xml(year_dir / "Annotations" / "000002.xml", [("dog", (11, 11, 40, 40), 0), ("unicorn", (1, 1, 5, 5), 0)])
    write_xml(year_dir / "Annotations" / "000003.xml", [])
    ann = parse_voc_annotation(year_dir / "Annotations" / "000001.xml")
    assert ann["names"] == ["dog", "cat"] and ann["height"] == 80 and ann["width"] == 100
    np.testing.assert_array_equal(ann["boxes"], [[0, 0, 10, 10], [4, 4, 20, 20]])
    np.testing.assert_array_equal(ann["difficult"], [False, True])

    names = ["cat", "dog"]
    gt = load_devkit_ground_truth(tmp_path / "VOCdevkit", "2007", "test", names)
    assert gt.num_images == 3 and gt.num_positives(2) == 2 and gt.num_positives(1) == 0
    results = tmp_path / "results"
    write_comp4(results, "test", names, {
        "cat": dets(("000001", 0.9, incl(5, 5, 20, 20))),
        "dog": dets(("000001", 0.9, incl(1, 1, 10, 10)), ("000003", 0.8, incl(1, 1, 10, 10)),
                    ("000002", 0.7, incl(11, 11, 40, 40))),
    })  # fmt: skip
    tool = load_tool("eval_voc")
    out_json = tmp_path / "m.json"
    rc = tool.main(["--voc-root", str(tmp_path / "VOCdevkit"), "--year", "2007", "--split", "test",
                    "--results-dir", str(results), "--classes", "cat,dog", "--json", str(out_json)])  # fmt: skip
    assert rc == 0
    m = json.loads(out_json.read_text())
    # dog: TP, FP, TP -> rec .5 .5 1, prec 1 .5 .667 -> 11-point (6 + 5 * 2/3) / 11
    assert m["per_class"]["dog"] == pytest.approx(100 * (6 + 5 * 2 / 3) / 11)
    assert m["per_class"]["cat"] is None  # only a difficult cat: no positives
    assert m["mAP50"] == pytest.approx(m["per_class"]["dog"])
    assert "dog" in capsys.readouterr().out
    # --pack builds the server archive; a bad root is a one-line error
    rc = tool.main(["--results-dir", str(results), "--classes", "cat,dog", "--pack", str(tmp_path / "s.tar.gz")])
    assert rc == 0 and (tmp_path / "s.tar.gz").is_file()
    assert tool.main(["--voc-root", str(tmp_path / "nope"), "--results-dir", str(results)]) == 2
    assert "--voc-root" in capsys.readouterr().err


def test_with_the_data_readers_voc_tree(tmp_path):
    """The data package's VOC reader -> VOCEvaluator agrees with scoring the devkit tree directly."""
    from detectron_res.data.voc import load_voc

    rng = np.random.default_rng(11)
    year_dir = tmp_path / "VOCdevkit" / "VOC2007"
    (year_dir / "Annotations").mkdir(parents=True)
    (year_dir / "ImageSets" / "Main").mkdir(parents=True)
    image_ids = [f"{i:06d}" for i in range(1, 13)]
    (year_dir / "ImageSets" / "Main" / "test.txt").write_text("\n".join(image_ids) + "\n")
    names = ["cat", "dog", "cow"]
    predictions = {}
    for image_id in image_ids:
        objects = []
        for _ in range(int(rng.integers(0, 4))):
            x, y = int(rng.integers(1, 60)), int(rng.integers(1, 40))
            objects.append((str(rng.choice(names)), (x, y, x + int(rng.integers(5, 35)), y + int(rng.integers(5, 35))),
                            rng.random() < 0.2))  # fmt: skip
        write_xml(year_dir / "Annotations" / f"{image_id}.xml", objects)
        boxes = [incl(*b) for _, b, _ in objects for _ in range(2)]
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) + rng.normal(0, 2, size=(len(boxes), 4))
        predictions[image_id] = {
            "boxes": boxes.astype(np.float32),
            "scores": rng.random(len(boxes)).astype(np.float32),
            "labels": np.array([names.index(n) + 1 for n, _, _ in objects for _ in range(2)], dtype=np.int64),
        }
    ds = load_voc(str(tmp_path / "VOCdevkit"), "test", year="2007", class_names=names, check_images="none")
    ev = VOCEvaluator(ds, output_dir=tmp_path / "out")
    assert ev.use_07_metric
    ours = ev.evaluate_predictions(predictions)
    gt = load_devkit_ground_truth(tmp_path / "VOCdevkit", "2007", "test", names)
    direct, _ = evaluate_voc(gt, read_comp4(tmp_path / "out" / "comp4", "test", names), use_07_metric=True)
    assert json.dumps(ours, sort_keys=True) == json.dumps(direct, sort_keys=True)
    assert 0 < ours["mAP50"] < 100


def test_config_key_chooses_the_protocol(tmp_path):
    from detectron_res.config import ConfigError, load_config
    from detectron_res.detection.task import build_evaluators

    ds = make_dataset(["a"], [np.array([incl(1, 1, 10, 10)])], [np.array([1])], [np.array([False])], ["thing"])
    assert load_config().test.voc_protocol == "devkit"  # the official numbers by default
    [default] = build_evaluators(load_config(None, ["test.evaluators=[voc]"]), ds, tmp_path)
    assert default.protocol == "devkit"
    cfg = load_config(None, ["test.evaluators=[voc]", "test.voc_protocol=py-faster-rcnn"])
    [chosen] = build_evaluators(cfg, ds, tmp_path)
    assert chosen.protocol == "py-faster-rcnn"
    with pytest.raises(ConfigError, match="test.voc_protocol"):
        load_config(None, ["test.voc_protocol=matlab"])
