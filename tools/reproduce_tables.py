#!/usr/bin/env python
"""Print the ResNet paper's Tables 7, 8 and 9 with our runs' numbers beside the paper's.

    python tools/reproduce_tables.py output/vgg16_voc07 output/r101_voc07 output/r101_coco ...
    python tools/reproduce_tables.py output/* --markdown docs/RESULTS_TABLES.md

Each RUN_DIR is a tools/train_net.py output directory: config.yaml, and the
metrics in inference/<dataset>/evaluation.json (preferred) or metrics.json. Its
place in the tables comes from config.yaml: model.backbone.name ("vgg16", or
"resnet" with model.backbone.depth 101) and data.test (voc_2007_test -> Table 7
VOC07 column, voc_2012_test -> Table 7 VOC12 column, coco_2014_val -> Table 8).
Directories that are none of the six runs are listed and ignored. To place a
directory by hand, use --run SLOT=DIR with SLOT one of

    vgg16-voc07  vgg16-voc12  vgg16-coco  resnet101-voc07  resnet101-voc12  resnet101-coco

Table 9 (Appendix B, ResNet-101 on COCO val) takes its rows from the same runs'
config.yaml: the baseline is Table 8's run; model.roi_heads.box_refinement,
then + model.roi_heads.global_context, then + test.scales make the rows below
(configs/coco_r101_table9_*.yaml; evaluate one trained model with --eval-only and
the test-time overrides for the rows that need no retraining). Slots:
resnet101-coco+box  resnet101-coco+ctx  resnet101-coco+ms

Each cell shows ours, the paper's value and ours - paper. Runs that are missing
show "not run". VOC 2012 test labels are not public: the VOC12 column shows
"server" and the path of the submission archive to upload; once the server has
answered, --server-result resnet101=73.1 shows its number.

Exit status: 0 on success, 2 on a usage error (one line on stderr).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from detectron_res.evaluation.paper_tables import BACKBONES, collect_runs, format_tables, parse_slot  # noqa: E402
from detectron_res.outputs import add_overwrite_argument, atomic_write_text, check_output_file  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="training output directories")
    p.add_argument("--run", action="append", default=[], metavar="SLOT=DIR", help="place DIR in SLOT explicitly")
    p.add_argument("--server-result", action="append", default=[], metavar="BACKBONE=MAP",
                   help="VOC12 test mAP returned by the evaluation server, e.g. resnet101=73.1")
    p.add_argument("--markdown", metavar="OUT_MD", help="also write the tables as Markdown to this file")
    add_overwrite_argument(p, what="an existing --markdown file")
    return p


def _pairs(items, what):
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{what} {item!r}: expected KEY=VALUE")
        out.append((key.strip(), value.strip()))
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        explicit = {parse_slot(k): Path(v) for k, v in _pairs(args.run, "--run")}
        server = {}
        for k, v in _pairs(args.server_result, "--server-result"):
            if k not in BACKBONES:
                raise ValueError(f"--server-result {k}={v}: backbone must be one of {list(BACKBONES)}")
            try:
                server[k] = float(v)
            except ValueError:
                raise ValueError(f"--server-result {k}={v}: expected a number (mAP in percent)") from None
        if args.markdown:  # before the work; the run folders are what the tables are read from
            check_output_file(args.markdown, inputs=[*args.run_dirs, *explicit.values()], overwrite=args.overwrite,
                              flag="--markdown")
        runs, notes = collect_runs([Path(d) for d in args.run_dirs], explicit)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_tables(runs, notes=notes, server_results=server), end="")
    if args.markdown:
        out = atomic_write_text(args.markdown, format_tables(runs, notes=notes, server_results=server, markdown=True))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
