#!/usr/bin/env python
"""Score a COCO results JSON against a COCO annotation file with pycocotools.

    python tools/eval_coco.py --gt datasets/coco/annotations/instances_val2014.json \\
        --results output/r101_coco/coco_instances_results.json [--json OUT.json]

The results file is the official format: a list of ``{"image_id", "category_id",
"bbox": [x, y, w, h], "score"}`` with the annotation file's category ids. Prints
pycocotools' 12 numbers and a per-category AP table; ``--json`` writes them (percent).

Exit status: 0 on success, 2 on a usage or data error (one line on stderr).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from detectron_res.bounded_io import RESULTS_JSON_LIMITS, load_json_document  # noqa: E402
from detectron_res.data.coco import validate_coco_json  # noqa: E402
from detectron_res.evaluation.coco import evaluate_coco, format_coco_table, load_coco_gt  # noqa: E402
from detectron_res.evaluation.report import write_json  # noqa: E402
from detectron_res.outputs import add_overwrite_argument, check_output_file  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gt", required=True, help="COCO instances annotation JSON")
    p.add_argument("--results", required=True, help="detections in the COCO results format (JSON list)")
    p.add_argument("--json", help="also write the metrics (percent) to this JSON file")
    add_overwrite_argument(p, what="an existing --json file")
    return p


def _read_results(path: str) -> list:
    results = load_json_document(
        path, RESULTS_JSON_LIMITS, expected=list, expected_what="a list of detections", source=f"--results {path}"
    )
    for i, r in enumerate(results):
        if not isinstance(r, dict) or not {"image_id", "category_id", "bbox", "score"} <= set(r):
            raise ValueError(
                f"--results {path}: entry {i} is {str(r)[:80]!r}, expected "
                '{"image_id", "category_id", "bbox": [x, y, w, h], "score"}'
            )
        # pycocotools would crash on a short box and score NaN boxes as quietly unmatched.
        bbox, score = r["bbox"], r["score"]
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_finite(v) for v in bbox) or min(bbox[2:]) < 0:
            raise ValueError(
                f"--results {path}: entry {i} has bbox {bbox!r}, expected [x, y, w, h]: 4 finite numbers, w and h >= 0"
            )
        if not _finite(score):
            raise ValueError(f"--results {path}: entry {i} has score {score!r}, expected a finite number")
    return results


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.json:  # before the work: an input or an earlier result is never replaced by accident
            check_output_file(args.json, inputs=[args.gt, args.results], overwrite=args.overwrite, flag="--json")
        # pycocotools trusts the file (a list crashes it, NaN boxes or unknown category
        # ids go unnoticed): the toolkit's reader checks it first, without the images.
        validate_coco_json(args.gt, name=args.gt)
        coco_gt = load_coco_gt(args.gt)
        results = _read_results(args.results)
        try:
            metrics, _, summary = evaluate_coco(coco_gt, results)
        except ValueError as e:  # results that do not fit the ground truth: name the file
            raise ValueError(f"--results {args.results}: {e}") from None
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(results)} detections on {len(coco_gt.getImgIds())} images (pycocotools COCOeval, bbox):")
    print(summary.rstrip())
    print(format_coco_table(metrics, title="per-category AP (%):"))
    if args.json:
        write_json(args.json, metrics, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
