"""COCO evaluation: identical to calling pycocotools directly on the same files."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detectron_res.evaluation.coco import (
    COCO_METRIC_NAMES,
    COCOEvaluator,
    dataset_to_coco_dict,
    evaluate_coco,
    load_coco_gt,
    predictions_to_coco_results,
)
from helpers import load_tool

ROOT = Path(__file__).resolve().parent.parent
CATEGORY_IDS = [3, 7, 11, 42]  # original ids, not contiguous
CLASS_NAMES = ["ant", "bee", "cow", "dog"]


def make_records(rng, num_images=16):
    records = []
    for n in range(num_images):
        image_id = 1000 + 7 * n
        k = 0 if n in (3, 9) else int(rng.integers(1, 7))  # two images without objects
        xy = rng.uniform(0, 150, size=(k, 2))
        wh = rng.uniform(4, 120, size=(k, 2))  # small, medium and large areas
        near = rng.random(k) < 0.4  # and sizes near the 32^2 and 96^2 area boundaries
        wh[near] = rng.choice([32.0, 96.0], size=(int(near.sum()), 1)) + rng.normal(0, 1.0, size=(int(near.sum()), 2))
        boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
        records.append(SimpleNamespace(
            image_id=image_id, file_name=f"{image_id}.jpg", height=300, width=320, boxes=boxes,
            labels=rng.integers(1, 5, size=k).astype(np.int64), difficult=np.zeros(k, dtype=bool),
            iscrowd=rng.random(k) < 0.15,
        ))  # fmt: skip
    return records


def make_dataset(records, *, format="yolo", extra=None, class_names=CLASS_NAMES, category_ids=CATEGORY_IDS):
    return SimpleNamespace(name="tiny", records=records, class_names=list(class_names),
                           category_ids=list(category_ids), format=format, extra=extra or {})  # fmt: skip


def reference_gt_json(records):
    """The COCO annotation file of the records, written independently of the toolkit."""
    images, annotations = [], []
    for r in records:
        images.append({"id": r.image_id, "width": r.width, "height": r.height, "file_name": r.file_name})
        for b, label, crowd in zip(r.boxes, r.labels, r.iscrowd):
            x1, y1, x2, y2 = (float(v) for v in b)
            annotations.append({"id": len(annotations) + 1, "image_id": r.image_id,
                                "category_id": CATEGORY_IDS[int(label) - 1], "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": (x2 - x1) * (y2 - y1), "iscrowd": int(crowd)})  # fmt: skip
    return {"images": images, "annotations": annotations,
            "categories": [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, CLASS_NAMES)]}  # fmt: skip


def make_predictions(rng, records):
    preds = {}
    for n, r in enumerate(records):
        if n in (1, 6):  # images with objects but no detection
            preds[r.image_id] = {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
                                 "labels": np.zeros(0, np.int64)}  # fmt: skip
            continue
        boxes = [b + rng.normal(0, 4, size=4) for b in r.boxes for _ in range(int(rng.integers(0, 3)))]
        labels = [int(l) if rng.random() < 0.8 else int(rng.integers(1, 5)) for l in r.labels for _ in range(2)]
        labels = labels[: len(boxes)] + [int(rng.integers(1, 5)) for _ in range(len(boxes) - len(labels))]
        for _ in range(int(rng.integers(0, 4))):  # background
            xy = rng.uniform(0, 250, size=2)
            boxes.append(np.concatenate([xy, xy + rng.uniform(5, 60, size=2)]))
            labels.append(int(rng.integers(1, 5)))
        preds[r.image_id] = {
            "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            "scores": np.round(rng.random(len(boxes)), 2).astype(np.float32),  # with ties
            "labels": np.asarray(labels, dtype=np.int64),
        }
    return preds


def reference_results_json(preds):
    out = []
    for image_id, p in preds.items():
        for b, s, l in zip(p["boxes"], p["scores"], p["labels"]):
            x1, y1, x2, y2 = (float(v) for v in b)
            out.append({"image_id": image_id, "category_id": CATEGORY_IDS[int(l) - 1],
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)})  # fmt: skip
    return out


def pycocotools_directly(gt_path, res_path):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        dt = gt.loadRes(str(res_path))
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def assert_same_as_pycocotools(metrics, ev):
    for i, name in enumerate(COCO_METRIC_NAMES):
        expected = ev.stats[i] * 100
        if ev.stats[i] < 0:
            assert math.isnan(metrics[name]), name
        else:
            assert metrics[name] == expected, (name, metrics[name], expected)  # to the last digit
    for k, cat_id in enumerate(ev.params.catIds):
        p = ev.eval["precision"][:, :, k, 0, -1]
        name = CLASS_NAMES[CATEGORY_IDS.index(cat_id)]
        if np.any(p > -1):
            assert metrics["per_class"][name] == np.mean(p[p > -1]) * 100
        else:
            assert math.isnan(metrics["per_class"][name])


@pytest.mark.parametrize("seed", [0, 1])
def test_identical_to_pycocotools_on_random_data(tmp_path, seed):
    rng = np.random.default_rng(seed)
    records = make_records(rng)
    assert any(r.iscrowd.any() for r in records)
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(reference_gt_json(records)))
    preds = make_predictions(rng, records)
    res_path = tmp_path / "res.json"
    res_path.write_text(json.dumps(reference_results_json(preds)))
    ev = pycocotools_directly(gt_path, res_path)
    assert ev.stats[0] > 0.05  # a non-trivial problem

    # 1. the library function on the same files
    metrics, pr, _ = evaluate_coco(load_coco_gt(gt_path), json.loads(res_path.read_text()))
    assert_same_as_pycocotools(metrics, ev)
    assert set(pr) == set(CLASS_NAMES)
    # 2. the evaluator on a COCO dataset (its json is used as ground truth), fed in batches
    ds = make_dataset(records, format="coco", extra={"json_file": str(gt_path)})
    evaluator = COCOEvaluator(ds, output_dir=tmp_path / "out")
    evaluator.reset()
    items = list(preds.items())
    for i in range(0, len(items), 3):
        evaluator.process([k for k, _ in items[i : i + 3]], [v for _, v in items[i : i + 3]])
    assert_same_as_pycocotools(evaluator.evaluate(), ev)
    written = json.loads((tmp_path / "out" / "coco_instances_results.json").read_text())
    assert written == json.loads(res_path.read_text())
    # 3. the same dataset without an annotation file: ground truth built in memory
    assert_same_as_pycocotools(COCOEvaluator(make_dataset(records)).evaluate_predictions(preds), ev)
    # 4. tools/eval_coco.py
    tool = load_tool("eval_coco")
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert tool.main(["--gt", str(gt_path), "--results", str(res_path), "--json", str(tmp_path / "m.json")]) == 0
    assert "Average Precision" in out.getvalue() and "bee" in out.getvalue()
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["AP"] == ev.stats[0] * 100 and m["AP50"] == ev.stats[1] * 100


def test_with_the_data_readers_coco_json(tmp_path):
    """The data package's COCO reader -> COCOEvaluator, also on a subset of the categories."""
    from detectron_res.data.coco import load_coco_json

    rng = np.random.default_rng(3)
    records = make_records(rng)
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(reference_gt_json(records)))
    preds = make_predictions(rng, records)
    res_path = tmp_path / "res.json"
    res_path.write_text(json.dumps(reference_results_json(preds)))
    ds = load_coco_json(str(gt_path), str(tmp_path), check_images="none")
    assert ds.category_ids == CATEGORY_IDS and [r.image_id for r in ds.records] == [r.image_id for r in records]
    assert_same_as_pycocotools(COCOEvaluator(ds).evaluate_predictions(preds), pycocotools_directly(gt_path, res_path))
    # trained on "bee" and "dog" only: scored on their categories only
    sub = load_coco_json(str(gt_path), str(tmp_path), class_names=["bee", "dog"], check_images="none")
    sub_preds = {}
    for image_id, p in preds.items():
        keep = np.isin(p["labels"], [2, 4])
        sub_preds[image_id] = {"boxes": p["boxes"][keep], "scores": p["scores"][keep],
                               "labels": np.where(p["labels"][keep] == 2, 1, 2)}  # fmt: skip
    m = COCOEvaluator(sub).evaluate_predictions(sub_preds)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        dt = gt.loadRes([r for r in reference_results_json(preds) if r["category_id"] in (7, 42)])
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.catIds = [7, 42]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert set(m["per_class"]) == {"bee", "dog"}
    assert_same_as_pycocotools(m, ev)


def single_object_records(n=10):
    return [
        SimpleNamespace(image_id=i, file_name=f"{i}.jpg", height=100, width=100,
                        boxes=np.array([[20.0, 20.0, 60.0, 60.0]], np.float32), labels=np.array([2]),
                        difficult=np.zeros(1, bool), iscrowd=np.zeros(1, bool))
        for i in range(1, n + 1)
    ]  # fmt: skip


def test_perfect_and_half_shifted_detections():
    records = single_object_records()  # one 40x40 object (medium) per image
    ev = COCOEvaluator(make_dataset(records))
    perfect = {r.image_id: {"boxes": r.boxes, "scores": np.array([0.9]), "labels": np.array([2])} for r in records}
    m = ev.evaluate_predictions(perfect)
    assert m["AP"] == 100.0 and m["AP50"] == 100.0 and m["AP75"] == 100.0 and m["APm"] == 100.0
    assert math.isnan(m["APs"]) and math.isnan(m["APl"])  # no small or large objects
    assert m["per_class"]["bee"] == 100.0 and math.isnan(m["per_class"]["ant"])
    # Half the images detected exactly (score 0.9), the other half shifted by half a
    # box (IoU 1/3 < 0.5: false positives at every threshold, score 0.8).
    half = {}
    for n, r in enumerate(records):
        shift = 0.0 if n < 5 else 20.0
        half[r.image_id] = {"boxes": r.boxes + np.float32([shift, 0, shift, 0]),
                            "scores": np.array([0.9 if n < 5 else 0.8]), "labels": np.array([2])}  # fmt: skip
    m = ev.evaluate_predictions(half)
    # precision 1 at the 51 recall points 0, .01, ..., .50 of 101, 0 above: 51 / 101
    assert m["AP"] == pytest.approx(100 * 51 / 101, abs=1e-12)
    assert m["AP50"] == pytest.approx(100 * 51 / 101, abs=1e-12)
    assert m["AR100"] == pytest.approx(50.0) and m["AR1"] == pytest.approx(50.0)


def test_voc_difficult_objects_are_ignored_not_missed():
    # a VOC-style dataset (string ids): each image has a normal and a difficult object
    records = [
        SimpleNamespace(image_id=f"{i:06d}", file_name="", height=100, width=100,
                        boxes=np.array([[10, 10, 50, 50], [60, 60, 90, 95]], np.float32), labels=np.array([1, 1]),
                        difficult=np.array([False, True]), iscrowd=np.zeros(2, bool))
        for i in range(4)
    ]  # fmt: skip
    ds = make_dataset(records, format="voc", class_names=["cat"], category_ids=[1])
    gt = dataset_to_coco_dict(ds)
    assert [a["iscrowd"] for a in gt["annotations"]] == [0, 1] * 4
    ev = COCOEvaluator(ds)
    only_normal = {r.image_id: {"boxes": r.boxes[:1], "scores": np.array([0.5]), "labels": np.array([1])}
                   for r in records}  # fmt: skip
    assert ev.evaluate_predictions(only_normal)["AP"] == 100.0  # the difficult ones are not misses
    both = {r.image_id: {"boxes": r.boxes[::-1].copy(), "scores": np.array([0.9, 0.5]), "labels": np.array([1, 1])}
            for r in records}  # fmt: skip
    assert ev.evaluate_predictions(both)["AP"] == 100.0  # detecting them is not a false positive


def test_no_detections_at_all_and_bad_results(tmp_path):
    records = single_object_records(3)
    ev = COCOEvaluator(make_dataset(records))
    empty = {r.image_id: {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, np.int64)}
             for r in records}  # fmt: skip
    m = ev.evaluate_predictions(empty)
    assert m["AP"] == 0.0 and m["AR100"] == 0.0
    assert predictions_to_coco_results(empty, CATEGORY_IDS) == []
    coco_gt = load_coco_gt(dataset_to_coco_dict(make_dataset(records)))
    with pytest.raises(ValueError, match="image ids not in the ground truth"):
        evaluate_coco(coco_gt, [{"image_id": 999, "category_id": 7, "bbox": [0, 0, 5, 5], "score": 0.5}])
    with pytest.raises(ValueError, match="category id"):
        evaluate_coco(coco_gt, [{"image_id": 1, "category_id": 8, "bbox": [0, 0, 5, 5], "score": 0.5}])
    ds = make_dataset(records, format="coco", extra={"json_file": str(tmp_path / "missing.json")})
    with pytest.raises(ValueError, match="no such COCO annotation file"):
        COCOEvaluator(ds).evaluate_predictions(empty)
