#!/usr/bin/env python
"""Convert ImageNet weights into this toolkit's format (canonical keys + input settings).

Examples::

    python tools/convert_weights.py resnet50-0676ba61.pth r50_tv.pth --from torchvision --arch resnet50
    python tools/convert_weights.py R-101.pkl r101_msra.pth --from msra --arch resnet101
    python tools/convert_weights.py msra://R-101 r101_msra.pth --from msra
    python tools/convert_weights.py R-50-d2.pkl r50.pth --from detectron2 --arch resnet50 --settings torchvision

The output ``.pth`` records the channel order, pixel mean/std and ``stride_in_1x1``
the weights were trained with; ``load_imagenet_weights`` reads them back and the
detector refuses a config that disagrees. Every key that could not be converted
or filled is printed; the exit status is 1 if there are any (use
``--allow-incomplete`` to write the file anyway). See ``detectron_res/weights.py``.
"""
from __future__ import annotations

import argparse
import sys

from detectron_res.weights import ARCHS, load_imagenet_weights


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="weights file (.pth/.pkl) or torchvision://NAME / msra://NAME")
    parser.add_argument("dst", help="output .pth in the detectron_res format")
    parser.add_argument(
        "--from", dest="fmt", required=True, choices=("torchvision", "msra", "detectron2"), help="format of SRC"
    )
    parser.add_argument("--arch", choices=ARCHS, help="architecture (implied by torchvision:// and msra:// names)")
    parser.add_argument(
        "--settings",
        choices=("msra", "torchvision"),
        help="input settings to record when SRC does not determine them (detectron2 files without __author__)",
    )
    parser.add_argument(
        "--allow-incomplete", action="store_true", help="write DST even if some keys were not converted or filled"
    )
    args = parser.parse_args(argv)

    try:
        weights = load_imagenet_weights(args.src, arch=args.arch, fmt=args.fmt, settings=args.settings)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
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
