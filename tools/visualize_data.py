#!/usr/bin/env python
"""Write PNGs of dataset images with their ground truth after augmentation.

    python tools/visualize_data.py --config demo_shapes.yaml --split train --num 16
    python tools/visualize_data.py --config my.yaml --out /tmp/vis data.train=[my_coco]

The first thing to run on a custom dataset: it loads the datasets named in
``data.train`` (or ``data.test``), prints the validation summary (what was clipped,
dropped, mismatched), and draws the boxes on the images exactly as the loader
delivers them (resize from ``input.*``, flips for ``--split train``).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detectron_res.config import add_config_arguments  # noqa: E402
from detectron_res.data.catalog import get_datasets  # noqa: E402
from detectron_res.data.dataset import DatasetError  # noqa: E402
from detectron_res.data.image_io import ImageReadError  # noqa: E402
from detectron_res.data.preview import write_previews  # noqa: E402
from detectron_res.data.transforms import build_transforms  # noqa: E402
from detectron_res.exit_status import config_for_tool  # noqa: E402
from detectron_res.outputs import add_overwrite_argument, atomic_write_text, check_output_dir  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--split", choices=("train", "test"), default="train", help="data.train or data.test")
    parser.add_argument("--num", type=int, default=16, help="number of images to draw")
    parser.add_argument("--out", default=None, help="output folder (default: <output_dir>/data_vis/<split>)")
    add_overwrite_argument(parser, what="existing previews of the same names in --out")
    args = parser.parse_args(argv)
    cfg, status = config_for_tool(args)
    if cfg is None:  # a config mistake (status 2), or --print-config
        return status
    is_train = args.split == "train"
    names = list(cfg.data.train if is_train else cfg.data.test)
    if not names:
        print(f"error: config key data.{args.split} is empty; name the dataset(s) to look at", file=sys.stderr)
        return 2
    out = args.out or os.path.join(cfg.output_dir, "data_vis", args.split)
    try:
        check_output_dir(out, flag="--out")  # a file there: say so before loading the dataset
        dataset = get_datasets(
            names, custom=cfg.data.datasets, filter_empty=bool(cfg.data.filter_empty) and is_train,
            max_pixels=int(cfg.data.max_pixels),
        )
        print(dataset.summary())
        if is_train:
            transform = build_transforms(
                is_train=True,
                min_sizes=list(cfg.input.min_size_train),
                max_size=cfg.input.max_size_train,
                hflip_prob=cfg.input.hflip_prob,
                photometric=cfg.input.photometric,
            )
        else:
            transform = build_transforms(
                is_train=False, min_sizes=[cfg.input.min_size_test], max_size=cfg.input.max_size_test
            )
        paths = write_previews(
            dataset, transform, out, num=args.num, is_train=is_train, seed=cfg.seed,
            use_difficult=bool(cfg.data.use_difficult), overwrite=args.overwrite, extra_files=["summary.txt"],
        )  # fmt: skip
    except (DatasetError, ImageReadError, ValueError) as e:
        problems = getattr(e, "errors", None) or []
        if len(problems) > 1:  # all of them (stdout); the error line names the first
            print(f"{len(problems)} problems found:")
            for problem in problems:
                print(f"  {problem}")
        print(f"error: {e}", file=sys.stderr)
        return 2
    atomic_write_text(os.path.join(out, "summary.txt"), dataset.summary() + "\n")
    print(f"wrote {len(paths)} images to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
