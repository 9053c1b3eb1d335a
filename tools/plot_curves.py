#!/usr/bin/env python
"""Plot the training diagnostics of one or more classifier runs into one PNG.

Overlays the runs, so that plain-56 against ResNet-56 is one picture::

    python tools/plot_curves.py output/cifar10_plain56 output/cifar10_resnet56 --out plain_vs_resnet56.png

Panels (see detectron_res/classification/plotting.py): (a) training and test error
over iterations (ResNet paper Fig. 6), (b)-(c) the standard deviation of each 3x3
layer's response, by layer and sorted (Fig. 7), (d) the gradient norm of each
stage over training. Each RUN_DIR is an output folder of tools/train_classifier.py
(metrics.json, diagnostics.json). ``--summary FILE`` also writes the final numbers
of each run as JSON.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detectron_res.classification.plotting import load_run, plot_runs, summarize_runs, write_summary  # noqa: E402
from detectron_res.outputs import OutputError, add_overwrite_argument, check_output_file  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="output folders of tools/train_classifier.py")
    parser.add_argument("--out", default=None, help="PNG to write (default: <first RUN_DIR>/curves.png)")
    parser.add_argument("--labels", nargs="+", default=None,
                        help="legend names, one per RUN_DIR (default: from config.yaml)")
    parser.add_argument("--title", default="", help="figure title")
    parser.add_argument("--summary", default=None, help="also write the final numbers of each run to this JSON file")
    add_overwrite_argument(parser, what="an existing --out image or --summary file")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.labels is not None and len(args.labels) != len(args.run_dirs):
        print(f"error: --labels has {len(args.labels)} names for {len(args.run_dirs)} RUN_DIRs", file=sys.stderr)
        return 2
    labels = args.labels or [None] * len(args.run_dirs)
    try:
        runs = [load_run(d, label) for d, label in zip(args.run_dirs, labels)]
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.run_dirs[0]) / "curves.png"
    # The files the curves are read from: neither output may be one of them, nor replace an earlier plot.
    inputs = [Path(d) / name for d in args.run_dirs for name in ("metrics.json", "diagnostics.json")]
    try:
        check_output_file(out, inputs=inputs, overwrite=args.overwrite, flag="--out")
        if args.summary:
            if Path(args.summary).resolve() == out.resolve():
                raise OutputError(f"--summary {args.summary} is also the --out image; choose another file")
            check_output_file(args.summary, inputs=inputs, overwrite=args.overwrite, flag="--summary")
    except OutputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    plot_runs(runs, out, title=args.title)
    print(f"wrote {out}")
    for row in summarize_runs(runs):
        print("  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    if args.summary:
        write_summary(runs, args.summary)
        print(f"wrote {args.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
