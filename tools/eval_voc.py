#!/usr/bin/env python
"""Score PASCAL VOC comp4 result files against a VOCdevkit tree (devkit rules).

    python tools/eval_voc.py --voc-root datasets/VOCdevkit --year 2007 --split test \\
        --results-dir output/r101_voc07/comp4 [--json OUT.json]

The results directory holds one ``comp4_det_<split>_<class>.txt`` per class, lines
``<image_id> <score> <xmin> <ymin> <xmax> <ymax>`` in 1-based inclusive pixels, as
written by this toolkit or any other (py-faster-rcnn, Detectron, mmdetection ...).
The metric follows the year (2007: 11-point AP; 2010+: area) unless --metric says
otherwise. ``--protocol devkit`` (default) scores exactly as the official MATLAB
devkit; ``--protocol py-faster-rcnn`` exactly as py-faster-rcnn's voc_eval.py (which
Detectron2 and most Python toolkits copy), to compare with the numbers they publish
(README, "Evaluation"). VOC2012 test labels are not public: ``--pack OUT.tar.gz`` packs the
files as the evaluation server expects (``results/VOC2012/Main/...``) instead.

Exit status: 0 on success, 2 on a usage or data error (one line on stderr).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from detectron_res.evaluation.report import write_json  # noqa: E402
from detectron_res.outputs import add_overwrite_argument, check_output_file  # noqa: E402
from detectron_res.evaluation.voc import (  # noqa: E402
    VOC_CLASSES,
    VOC_PROTOCOLS,
    evaluate_voc,
    format_voc_table,
    load_devkit_ground_truth,
    pack_voc_server_submission,
    read_comp4,
    use_07_metric_for_year,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--voc-root", help="VOCdevkit folder (holding VOC<year>/) or a VOC<year> folder")
    p.add_argument("--year", default="2007", help="challenge year: picks VOC<year>/ and the metric (default 2007)")
    p.add_argument("--split", default="test", help="image set ImageSets/Main/<split>.txt (default test)")
    p.add_argument("--results-dir", required=True, help="folder with comp4_det_<split>_<class>.txt files")
    p.add_argument("--classes", default="", help="comma-separated class names (default: the 20 VOC classes)")
    p.add_argument("--metric", choices=("auto", "11point", "area"), default="auto",
                   help="AP definition; auto = by year (2007-2009: 11point, 2010+: area)")
    p.add_argument("--protocol", choices=VOC_PROTOCOLS, default="devkit",
                   help="devkit: the official MATLAB devkit, bit for bit (default); py-faster-rcnn: its "
                        "voc_eval.py, bit for bit (thresholds np.arange(0., 1.1, 0.1), IoU > 0.5, unstable sort)")
    p.add_argument("--json", help="also write the metrics (percent) to this JSON file")
    p.add_argument("--pack", metavar="OUT_TGZ",
                   help="instead of scoring, pack the files for the VOC evaluation server into this .tar.gz")
    add_overwrite_argument(p, what="an existing --json or --pack file")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    class_names = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else list(VOC_CLASSES)
    try:
        # Before the work: no input (a results file, the devkit) or earlier output is replaced by accident.
        inputs = [args.voc_root, args.results_dir]
        if args.pack:
            check_output_file(args.pack, inputs=inputs, overwrite=args.overwrite, flag="--pack")
        elif args.json:
            check_output_file(args.json, inputs=inputs, overwrite=args.overwrite, flag="--json")
        if args.pack:
            out = pack_voc_server_submission(args.results_dir, args.pack, class_names=class_names,
                                             split=args.split, year=str(args.year))
            print(f"wrote {out}: upload it at http://host.robots.ox.ac.uk:8080/")
            return 0
        if not args.voc_root:
            raise ValueError("--voc-root is required to score results (or pass --pack OUT.tar.gz)")
        if args.metric == "auto":
            use_07 = use_07_metric_for_year(args.year)
        else:
            use_07 = args.metric == "11point"
        # NaN or inverted ground-truth boxes are refused there (the data package's
        # XML parser), naming the file and the object
        gt = load_devkit_ground_truth(args.voc_root, args.year, args.split, class_names)
        detections = read_comp4(args.results_dir, args.split, class_names)
        metrics, _ = evaluate_voc(gt, detections, use_07_metric=use_07, protocol=args.protocol)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    metric = "11-point" if use_07 else "area"
    print(format_voc_table(metrics, title=f"VOC{args.year} {args.split}: {gt.num_images} images, {metric} AP (%), "
                                          f"{args.protocol} protocol"))
    if args.json:
        write_json(args.json, {**metrics, "year": str(args.year), "split": args.split, "metric": metric,
                               "protocol": args.protocol}, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
