#!/usr/bin/env python
"""Parameters and multiply-adds per stage, measured by running the real model.

A detector from a config (randomly initialized, evaluation mode, one image)::

    python tools/analyze_model.py --config voc07_r101.yaml [section.key=value ...] [--input-size H W] [--json]

A bare backbone (ImageNet classifier; compare with Table 1 of the ResNet paper)::

    python tools/analyze_model.py --arch resnet50 --mode msra            # 3.86e9 multiply-adds
    python tools/analyze_model.py --arch resnet50 --mode torchvision     # 4.09e9
    python tools/analyze_model.py --arch cifar_resnet110 --json          # 32x32 input

Multiply-adds come from ``torch.utils.flop_counter`` (MACs = FLOPs / 2): only
convolutions and matrix products count. For a detector, ``--input-size`` is the
network's input (the config's test resize is set so the image is not rescaled;
default: ``input.min_size_test`` x ``input.max_size_test``), and the per-region
head's cost depends on how many proposals the RPN returns (reported as ``rois``);
with random weights that is usually ``model.rpn.post_nms_topk_test``.
``--json`` prints one JSON object: ``params``, ``trainable_params``, ``macs``,
``input_size``, ``stages`` ({name: {params, macs}}) and, for detectors, ``rois``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict

# Runnable as `python tools/analyze_model.py` from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detectron_res.analysis import ARCH_CHOICES, analyze_backbone, analyze_detector  # noqa: E402
from detectron_res.exit_status import EXIT_OK, EXIT_USER_ERROR, config_for_tool  # noqa: E402


def _print_table(report: Dict) -> None:
    h, w = report["input_size"]
    print(f"{report['model']}, input {h}x{w}")
    print(f"{'stage':<24}{'params':>14}{'GMACs':>12}")
    for name, row in report["stages"].items():
        if row["params"] == 0 and row["macs"] == 0:
            continue  # parameter-free, matmul-free layers (pools, dropout)
        print(f"{name:<24}{row['params']:>14,}{row['macs'] / 1e9:>12.3f}")
    print(f"{'total':<24}{report['params']:>14,}{report['macs'] / 1e9:>12.3f}")
    print(f"trainable parameters: {report['trainable_params']:,}")
    if "rois" in report:
        print(f"regions run through the RoI head: {report['rois']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from detectron_res.config import add_config_arguments

    add_config_arguments(parser, required=False)
    parser.add_argument("--arch", choices=ARCH_CHOICES, help="analyze a bare classifier instead of a config")
    parser.add_argument(
        "--mode",
        choices=("msra", "torchvision"),
        default="msra",
        help="ResNet bottleneck layout: msra = stride in the 1x1 (Table 1 numbers), torchvision = in the 3x3",
    )
    parser.add_argument("--plain", action="store_true", help="the plain (non-residual) network of the same depth")
    parser.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"), help="input height and width")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)

    if (args.arch is None) == (args.config is None):
        parser.error("give exactly one of --config CFG or --arch ARCH")
    if args.arch is not None and args.overrides:
        parser.error(f"config overrides {args.overrides} need --config, not --arch")
    if args.input_size and min(args.input_size) < 32:
        parser.error(f"--input-size must be at least 32x32, got {args.input_size[0]}x{args.input_size[1]}")
    size = tuple(args.input_size) if args.input_size else None
    cfg = None
    if args.config is not None:
        cfg, status = config_for_tool(args)
        if cfg is None:  # a config mistake (status 2), or --print-config
            return status
    try:
        if args.arch:
            report = analyze_backbone(args.arch, mode=args.mode, plain=args.plain, input_size=size)
        else:
            report = analyze_detector(cfg, input_size=size, name=args.config)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    if args.json:
        print(json.dumps(report))
    else:
        _print_table(report)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
