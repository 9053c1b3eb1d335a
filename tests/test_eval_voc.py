"""PASCAL VOC evaluation: hand-computed cases, a loop reference written from the
protocol text, comp4 round trips, the devkit tree and tools/eval_voc.py."""

from __future__ import annotations

import importlib.util
import json
import math
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from detectron_res.evaluation.voc import (
    VOC_CLASSES,
    VOCEvaluator,
    VOCGroundTruth,
    evaluate_voc,
    load_devkit_ground_truth,
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


def test_plus_one_convention_decides_the_match():
    # With +1 pixels the IoU is 4/6 -> match. Reading the inclusive numbers as
    # continuous coordinates (no +1) would give 1/2 -> no match.
    gt = {"im": {"boxes": [incl(1, 1, 2, 2)]}}
    ap, _, rec = voc_eval_class(gt, dets(("im", 1.0, incl(1, 1, 2, 3))), use_07_metric=False)
    assert ap == 1.0 and rec[-1] == 1.0
    # Single pixels: IoU 1/2, not > 0.5 -> no match. Adding +1 twice (to boxes that
    # are already continuous) would give 4/6 -> a wrong match.
    gt = {"im": {"boxes": [incl(1, 1, 1, 1)]}}
    ap, _, rec = voc_eval_class(gt, dets(("im", 1.0, incl(1, 1, 1, 2))), use_07_metric=False)
    assert ap == 0.0 and rec[-1] == 0.0


def test_match_needs_iou_strictly_greater_than_half():
    gt = {"im": {"boxes": [incl(1, 1, 10, 10)]}}  # 100 pixels
    exactly_half = dets(("im", 1.0, incl(1, 1, 10, 5)))  # 50 pixels inside: IoU = 0.5
    above_half = dets(("im", 1.0, incl(1, 1, 10, 6)))  # IoU = 0.6
    assert voc_eval_class(gt, exactly_half, use_07_metric=False)[0] == 0.0
    assert voc_eval_class(gt, above_half, use_07_metric=False)[0] == 1.0
    assert voc_eval_class(gt, exactly_half, iou_thresh=0.49, use_07_metric=False)[0] == 1.0


def test_difficult_objects_are_ignored():
    # im: a normal object and a difficult one. Detections: on the difficult object
    # (highest score), on the normal one, and a false positive.
    gt = {"im": {"boxes": [incl(1, 1, 10, 10), incl(21, 21, 30, 30)], "difficult": [False, True]}}
    d = dets(("im", 0.9, incl(21, 21, 30, 30)), ("im", 0.8, incl(1, 1, 10, 10)), ("im", 0.7, incl(41, 41, 50, 50)))
    ap, prec, rec = voc_eval_class(gt, d, use_07_metric=False)
    # ignored detection: tp = fp = 0 -> precision 0/eps = 0 at recall 0
    np.testing.assert_allclose(rec, [0.0, 1.0, 1.0])  # one positive: the difficult one does not count
    np.testing.assert_allclose(prec, [0.0, 1.0, 0.5])
    assert ap == 1.0
    # Had the difficult object been an ordinary one, the top detection would be a TP.
    # Had its detection been a false positive, AP would be 0.5.
    assert voc_eval_class(gt, d, use_07_metric=True)[0] == pytest.approx(1.0)
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
    # recall exactly 3/10 counts at t = 0.3
    assert voc_ap(np.array([0.3]), np.array([1.0]), use_07_metric=True) == pytest.approx(4 / 11)


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
# Reference implementation from the protocol text (loops, one detection at a time)
# ----------------------------------------------------------------------------
def reference_voc_eval(gt, det_rows, thresh, use_07_metric):
    """gt: {image_id: (list of inclusive boxes, list of difficult)}; det_rows: list of
    (image_id, score, inclusive box) in input order. Returns AP (fraction)."""
    npos = sum(1 for boxes, diff in gt.values() for d in diff if not d)
    order = sorted(range(len(det_rows)), key=lambda i: -det_rows[i][1])  # stable
    taken = {k: [False] * len(v[0]) for k, v in gt.items()}
    tp, fp = [], []
    for i in order:
        image_id, _, bb = det_rows[i]
        boxes, diff = gt[image_id]
        ovmax, jmax = -math.inf, -1
        for j, g in enumerate(boxes):
            iw = max(min(bb[2], g[2]) - max(bb[0], g[0]) + 1.0, 0.0)
            ih = max(min(bb[3], g[3]) - max(bb[1], g[1]) + 1.0, 0.0)
            inter = iw * ih
            union = (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0) + (g[2] - g[0] + 1.0) * (g[3] - g[1] + 1.0) - inter
            ov = inter / union
            if ov > ovmax:
                ovmax, jmax = ov, j
        if ovmax > thresh:
            if diff[jmax]:
                tp.append(0.0)
                fp.append(0.0)
            elif not taken[image_id][jmax]:
                taken[image_id][jmax] = True
                tp.append(1.0)
                fp.append(0.0)
            else:
                tp.append(0.0)
                fp.append(1.0)
        else:
            tp.append(0.0)
            fp.append(1.0)
    if npos == 0:
        return math.nan
    rec, prec = [], []
    ctp = cfp = 0.0
    for a, b in zip(tp, fp):
        ctp += a
        cfp += b
        rec.append(ctp / npos)
        prec.append(ctp / max(ctp + cfp, np.finfo(np.float64).eps))
    if use_07_metric:
        ap = 0.0
        for k in range(11):
            ps = [p for r, p in zip(rec, prec) if r >= k / 10]
            ap += (max(ps) if ps else 0.0) / 11
        return ap
    # area under the envelope: at each recall step, the best precision at any
    # recall at least as large
    ap, prev = 0.0, 0.0
    for i, r in enumerate(rec):
        if r > prev:
            ap += (r - prev) * max(prec[i:])
            prev = r
    return ap


def random_voc_problem(rng, num_images=25, num_classes=3):
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
        for _ in range(rng.integers(0, 4)):  # background detections
            xy = rng.integers(0, 80, size=2).astype(np.float64)
            bb = np.concatenate([xy, xy + rng.integers(1, 25, size=2)])
            det_rows[int(rng.integers(1, num_classes + 1))].append((image_id, float(rng.integers(0, 10)) / 10, bb))
    return image_ids, boxes, labels, difficult, det_rows


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("use_07_metric", [True, False])
def test_vectorized_matches_loop_reference(seed, use_07_metric):
    rng = np.random.default_rng(seed)
    image_ids, boxes, labels, difficult, det_rows = random_voc_problem(rng)
    class_names = ["c1", "c2", "c3"]
    gt = VOCGroundTruth(image_ids=image_ids, boxes=boxes, labels=labels, difficult=difficult, class_names=class_names)
    detections = {
        class_names[k - 1]: dets(*[(i, s, b) for i, s, b in rows]) for k, rows in det_rows.items()
    }
    metrics, _ = evaluate_voc(gt, detections, use_07_metric=use_07_metric)
    thresholds = [0.5 + 0.05 * i for i in range(10)]
    for k, name in enumerate(class_names, start=1):
        ref_gt = {
            i: ([list(map(float, np.asarray(b) + [1, 1, 0, 0])) for b, l in zip(bx, lb) if l == k],
                [bool(d) for d, l in zip(df, lb) if l == k])
            for i, bx, lb, df in zip(image_ids, boxes, labels, difficult)
        }  # fmt: skip
        ref_rows = [(i, s, list(np.asarray(b, dtype=np.float64) + [1, 1, 0, 0])) for i, s, b in det_rows[k]]
        ref = [reference_voc_eval(ref_gt, ref_rows, round(t, 2), use_07_metric) for t in thresholds]
        assert metrics["per_class"][name] == pytest.approx(100 * ref[0], abs=1e-12, nan_ok=True)
        assert metrics["per_class_50_95"][name] == pytest.approx(100 * float(np.mean(ref)), abs=1e-12, nan_ok=True)
    # the single-class entry point agrees too
    k = 2
    gt_by_image = {
        i: {"boxes": np.asarray(bx).reshape(-1, 4)[lb == k], "difficult": df[lb == k]}
        for i, bx, lb, df in zip(image_ids, boxes, labels, difficult)
    }
    results = voc_eval_class_thresholds(gt_by_image, detections["c2"], iou_threshs=[0.5, 0.7], use_07_metric=use_07_metric)
    assert 100 * results[0][0] == pytest.approx(metrics["per_class"]["c2"], abs=1e-12, nan_ok=True)


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
        assert m["mAP50"] == 100.0 and m["mAP50_95"] == 100.0 and m["mAP75"] == 100.0
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


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
