#!/usr/bin/env python
"""Time the VOC evaluator on a synthetic VOC07-test-sized problem.

    python benchmarks/bench_voc_eval.py [--images 5000] [--dets-per-image 100] [--seed 0]

5000 images, 20 classes, about 3 objects per image (VOC07 test has 4952 images and
14976 objects), 15% of them difficult; each image gets ``--dets-per-image``
detections (jittered copies of its objects, duplicates, and background boxes over
all classes, as a detector's top 100 are). Timed:

* ``VOCEvaluator``: ``process`` in batches of 8 images, then ``evaluate`` (mAP at
  IoU 0.5 and the mean over 0.50:0.95, i.e. 10 thresholds, 20 classes);
* ``evaluate_voc`` alone on per-class detections;
* a py-faster-rcnn-style loop (one detection at a time, IoU 0.5 only) on a subset
  of the images, extrapolated linearly, for comparison; it also checks that both
  give the same AP on that subset.

Prints one Markdown table row per measurement.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detectron_res.evaluation.voc import VOC_CLASSES, VOCEvaluator, VOCGroundTruth, evaluate_voc, split_by_class, voc_ap  # noqa: E402


def synthetic_problem(num_images: int, dets_per_image: int, seed: int):
    rng = np.random.default_rng(seed)
    records, predictions = [], {}
    for n in range(num_images):
        k = int(rng.integers(1, 6))
        xy = rng.uniform(0, 400, size=(k, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(10, 200, size=(k, 2))], axis=1).astype(np.float32)
        labels = rng.integers(1, 21, size=k)
        difficult = rng.random(k) < 0.15
        image_id = f"{n:06d}"
        records.append(SimpleNamespace(image_id=image_id, file_name="", height=500, width=600, boxes=boxes,
                                       labels=labels, difficult=difficult, iscrowd=np.zeros(k, bool)))  # fmt: skip
        num_copies = min(dets_per_image // 2, 3 * k)
        src = rng.integers(0, k, size=num_copies)
        copies = boxes[src] + rng.normal(0, 8, size=(num_copies, 4)).astype(np.float32)
        copy_labels = np.where(rng.random(num_copies) < 0.85, labels[src], rng.integers(1, 21, size=num_copies))
        num_bg = dets_per_image - num_copies
        xy = rng.uniform(0, 500, size=(num_bg, 2))
        background = np.concatenate([xy, xy + rng.uniform(5, 150, size=(num_bg, 2))], axis=1).astype(np.float32)
        det_boxes = np.concatenate([copies, background])
        det_scores = np.concatenate([rng.uniform(0.3, 1.0, num_copies), rng.uniform(0.0, 0.6, num_bg)])
        det_labels = np.concatenate([copy_labels, rng.integers(1, 21, size=num_bg)])
        predictions[image_id] = {"boxes": det_boxes, "scores": det_scores.astype(np.float32),
                                 "labels": det_labels.astype(np.int64)}  # fmt: skip
    dataset = SimpleNamespace(name="synthetic_voc", records=records, class_names=list(VOC_CLASSES),
                              category_ids=list(range(1, 21)), format="voc",
                              extra={"year": "2007", "split": "test"})  # fmt: skip
    return dataset, predictions


def loop_reference_map(dataset, predictions, image_ids):
    """py-faster-rcnn's voc_eval loop (one detection at a time), IoU 0.5, 11-point."""
    chosen = set(image_ids)
    aps = []
    for label in range(1, 21):
        class_recs, npos = {}, 0
        for r in dataset.records:
            if r.image_id not in chosen:
                continue
            m = r.labels == label
            bb = r.boxes[m].astype(np.float64)
            bb[:, :2] += 1
            class_recs[r.image_id] = {"bbox": bb, "difficult": r.difficult[m], "det": [False] * int(m.sum())}
            npos += int((~r.difficult[m]).sum())
        ids, conf, bbs = [], [], []
        for image_id in image_ids:
            p = predictions[image_id]
            m = p["labels"] == label
            ids += [image_id] * int(m.sum())
            conf.append(p["scores"][m].astype(np.float64))
            b = p["boxes"][m].astype(np.float64)
            b[:, :2] += 1
            bbs.append(b)
        conf = np.concatenate(conf)
        bbs = np.concatenate(bbs)
        order = np.argsort(-conf, kind="stable")
        tp = np.zeros(len(order))
        fp = np.zeros(len(order))
        for d, i in enumerate(order):
            R = class_recs[ids[i]]
            bb = bbs[i]
            ovmax = -np.inf
            BBGT = R["bbox"]
            if BBGT.size > 0:
                ixmin = np.maximum(BBGT[:, 0], bb[0])
                iymin = np.maximum(BBGT[:, 1], bb[1])
                ixmax = np.minimum(BBGT[:, 2], bb[2])
                iymax = np.minimum(BBGT[:, 3], bb[3])
                iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
                ih = np.maximum(iymax - iymin + 1.0, 0.0)
                inters = iw * ih
                uni = (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0) + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (
                    BBGT[:, 3] - BBGT[:, 1] + 1.0
                ) - inters
                overlaps = inters / uni
                ovmax = np.max(overlaps)
                jmax = np.argmax(overlaps)
            if ovmax >= 0.5:  # the devkit's rule, as VOCEvaluator's default protocol
                if not R["difficult"][jmax]:
                    if not R["det"][jmax]:
                        tp[d] = 1.0
                        R["det"][jmax] = True
                    else:
                        fp[d] = 1.0
            else:
                fp[d] = 1.0
        fp = np.cumsum(fp)
        tp = np.cumsum(tp)
        rec = tp / float(npos)
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps.append(voc_ap(rec, prec, use_07_metric=True))
    return float(np.mean(aps)) * 100


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--dets-per-image", type=int, default=100)
    p.add_argument("--loop-images", type=int, default=500, help="images for the loop reference (0 skips it)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    dataset, predictions = synthetic_problem(args.images, args.dets_per_image, args.seed)
    num_dets = sum(len(v["scores"]) for v in predictions.values())
    num_gt = sum(len(r.boxes) for r in dataset.records)
    print(f"synthetic problem: {args.images} images, {num_gt} objects, {num_dets} detections, 20 classes "
          f"(built in {time.perf_counter() - t0:.1f} s)")  # fmt: skip
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"numpy {np.__version__}")  # fmt: skip
    print()
    print("| measurement | seconds |")
    print("|---|---|")

    ev = VOCEvaluator(dataset)
    t0 = time.perf_counter()
    ev.reset()
    items = list(predictions.items())
    for i in range(0, len(items), 8):
        ev.process([k for k, _ in items[i : i + 8]], [v for _, v in items[i : i + 8]])
    t_process = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = ev.evaluate()
    t_eval = time.perf_counter() - t0
    print(f"| VOCEvaluator.process, {args.images} images in batches of 8 | {t_process:.2f} |")
    print(f"| VOCEvaluator.evaluate (mAP@0.5 and 10 IoU thresholds, 20 classes) | {t_eval:.2f} |")

    gt = VOCGroundTruth.from_dataset(dataset)
    dets = split_by_class(predictions, dataset.class_names)
    t0 = time.perf_counter()
    evaluate_voc(gt, dets, use_07_metric=True, iou_threshs=[0.5])
    print(f"| evaluate_voc at IoU 0.5 only (per-class detections given) | {time.perf_counter() - t0:.2f} |")

    if args.loop_images:
        subset = [r.image_id for r in dataset.records[: args.loop_images]]
        t0 = time.perf_counter()
        ref = loop_reference_map(dataset, predictions, subset)
        t_loop = time.perf_counter() - t0
        sub_ds = SimpleNamespace(**{**vars(dataset), "records": dataset.records[: args.loop_images]})
        ours = VOCEvaluator(sub_ds).evaluate_predictions({i: predictions[i] for i in subset})["mAP50"]
        scale = args.images / args.loop_images
        print(f"| py-faster-rcnn-style loop, IoU 0.5 only, {args.loop_images} images "
              f"(x{scale:g} extrapolated: {t_loop * scale:.0f} s; x10 thresholds: {t_loop * scale * 10:.0f} s) "
              f"| {t_loop:.2f} |")  # fmt: skip
        print()
        print(f"check on {args.loop_images} images: loop mAP50 {ref:.6f} vs vectorized {ours:.6f} "
              f"({'same' if abs(ref - ours) < 1e-9 else 'DIFFERENT'})")  # fmt: skip
    print(f"synthetic mAP50 {metrics['mAP50']:.2f}, mAP50_95 {metrics['mAP50_95']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
