#!/usr/bin/env python
"""Convert ImageNet weights into this toolkit's format (canonical keys + input settings).

Examples::

    python tools/convert_weights.py resnet50-0676ba61.pth r50_tv.pth --from torchvision --arch resnet50
    python tools/convert_weights.py R-101.pkl r101_msra.pth --from msra --arch resnet101
    python tools/convert_weights.py msra://R-101 r101_msra.pth --from msra
    python tools/convert_weights.py R-50-d2.pkl r50.pth --from detectron2 --arch resnet50 --settings torchvision
    python tools/convert_weights.py model_final_721ade.pkl r50_c4_d2.pth --from detectron2

``--arch`` may be left out: it is inferred from the keys (ResNet depth from the
blocks per stage, VGG-16 from its layers) and printed.

A Detectron2 DETECTOR checkpoint of the C4 family (``faster_rcnn_R_50_C4_*``'s
``model_final_*.pkl`` or a training ``.pth``) converts whole: backbone, RPN and
res5 head, background-last classes turned background-first. The result is a
detector checkpoint for ``--weights`` (tools/infer.py, tools/train_net.py), run with
``--config`` (default ``coco_r50_c4_d2_1x``, Detectron2's recipe; depth and number
of classes are taken from the checkpoint).

The output ``.pth`` records the channel order, pixel mean/std and ``stride_in_1x1``
the weights were trained with; ``load_imagenet_weights`` reads them back and the
detector refuses a config that disagrees. Every key that could not be converted
or filled is printed; the exit status is 1 if there are any (use
``--allow-incomplete`` to write the file anyway). See ``detectron_res/weights.py``.
"""
from __future__ import annotations

import argparse
import sys

from detectron_res.engine.checkpoint import save_checkpoint
from detectron_res.modeling.build import build_model
from detectron_res.outputs import add_overwrite_argument, check_output_file
from detectron_res.weights import ARCHS, NotADetectorError, detectron2_detector_checkpoint, load_imagenet_weights


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="weights file (.pth/.pkl) or torchvision://NAME / msra://NAME")
    parser.add_argument("dst", help="output .pth in the detectron_res format")
    parser.add_argument(
        "--from", dest="fmt", required=True, choices=("torchvision", "msra", "detectron2"), help="format of SRC"
    )
    parser.add_argument("--arch", choices=ARCHS,
                        help="architecture (implied by torchvision:// and msra:// names; else inferred from the keys)")
    parser.add_argument("--config", default="coco_r50_c4_d2_1x",
                        help="Detectron2 detector checkpoints: the config they run with (default coco_r50_c4_d2_1x)")
    parser.add_argument(
        "--settings",
        choices=("msra", "torchvision"),
        help="input settings to record when SRC does not determine them (detectron2 files without __author__)",
    )
    parser.add_argument(
        "--allow-incomplete", action="store_true", help="write DST even if some keys were not converted or filled"
    )
    add_overwrite_argument(parser, what="an existing DST file")
    args = parser.parse_args(argv)

    try:
        # Before the (slow) conversion: DST must not be SRC (or a link to it) nor an earlier file.
        check_output_file(args.dst, inputs=[args.src], overwrite=args.overwrite, flag="DST")
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if args.fmt == "detectron2":
        try:
            checkpoint, converted = detectron2_detector_checkpoint(
                args.src, build_model=build_model, config=args.config, arch=args.arch
            )
        except NotADetectorError:
            pass  # a backbone: ImageNet weights, below
        except (ValueError, OSError) as e:  # ConfigError is a ValueError
            print(f"error: {e}", file=sys.stderr)
            return 2
        else:
            how = f"({converted['arch_evidence']})" + ("" if args.arch else ", inferred from the keys as --arch was not given")
            print(f"{args.src}: Detectron2 C4 detector, arch {converted['arch']} {how}, "
                  f"{converted['num_classes']} classes (background moved from last to first), "
                  f"{len(converted['state_dict'])} tensors; config {args.config}")  # fmt: skip
            if converted["ignored_keys"]:
                print(f"  {len(converted['ignored_keys'])} keys ignored on purpose: {', '.join(converted['ignored_keys'])}")
            if converted["unconverted_keys"] and not args.allow_incomplete:
                print(f"error: not writing {args.dst}: {len(converted['unconverted_keys'])} keys not converted: "
                      f"{', '.join(converted['unconverted_keys'])}; pass --allow-incomplete to write it anyway",
                      file=sys.stderr)  # fmt: skip
                return 1
            save_checkpoint(checkpoint, args.dst)
            print(f"wrote {args.dst} (a detector checkpoint: --weights {args.dst} --config {args.config})")
            return 0

    try:
        weights = load_imagenet_weights(args.src, arch=args.arch, fmt=args.fmt, settings=args.settings)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if weights.arch_inferred:
        print(f"--arch not given: {weights.arch}, {weights.arch_inferred}")
    print(weights.summary())
    incomplete = bool(weights.missing_keys or weights.unconverted_keys)
    if incomplete and not args.allow_incomplete:
        print(f"error: not writing {args.dst}: the conversion is incomplete (see above); "
              "pass --allow-incomplete to write it anyway", file=sys.stderr)
        return 1
    weights.save(args.dst)
    print(f"wrote {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
