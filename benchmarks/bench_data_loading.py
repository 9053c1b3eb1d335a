#!/usr/bin/env python
"""Training data-loading throughput at the paper's scale (shorter side 600, max 1000).

    python benchmarks/bench_data_loading.py [--images 64] [--workers 0 1 2] [--batches 30]

Generates VOC-sized JPEGs (375-500 px sides, the shapes generator at that size) in a
temporary folder, reads them through the COCO reader and times
``build_train_loader(images_per_batch=2, min_sizes=[600], max_size=1000)`` (read +
decode + EXIF + resize + flip + float conversion + padding to a multiple of 32) for
each ``num_workers``. Warm-up batches (worker start-up) are not timed. With
``num_workers=0`` the loading runs in this process with torch's default thread count.
A second table breaks one image's cost down into its steps (one torch thread, as in
a worker).

Prints Markdown tables (paste into benchmarks/RESULTS_DATA.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from detectron_res.data.coco import load_coco_json  # noqa: E402
from detectron_res.data.image_io import read_image  # noqa: E402
from detectron_res.data.loader import build_train_loader, collate_batch  # noqa: E402
from detectron_res.data.shapes import generate_shapes_dataset  # noqa: E402
from detectron_res.data.transforms import apply_transforms, build_transforms  # noqa: E402


def time_loader(dataset, num_workers: int, batches: int, warmup: int, images_per_batch: int) -> float:
    loader = build_train_loader(
        dataset,
        images_per_batch=images_per_batch,
        min_sizes=[600],
        max_size=1000,
        num_workers=num_workers,
        seed=0,
    )
    for _ in range(warmup):
        next(loader)
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        n += len(next(loader))
    return n / (time.perf_counter() - start)


def step_costs(dataset, repeats: int = 30):
    """Milliseconds per image for each step, in this process with one torch thread
    (as in a loader worker: DataLoader sets one thread per worker)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _step_costs(dataset, repeats)
    finally:
        torch.set_num_threads(threads)


def _step_costs(dataset, repeats: int):
    t = build_transforms(is_train=True, min_sizes=[600], max_size=1000, hflip_prob=0.5)
    recs = dataset.records[:repeats]
    out = {}
    s = time.perf_counter()
    imgs = [read_image(r.file_name, format="RGB") for r in recs]
    out["read + decode JPEG (read_image)"] = (time.perf_counter() - s) / len(recs) * 1e3
    s = time.perf_counter()
    res = [apply_transforms(t, im, r.boxes, seed=i) for i, (im, r) in enumerate(zip(imgs, recs))]
    out["resize to 600 + flip (albumentations)"] = (time.perf_counter() - s) / len(recs) * 1e3
    s = time.perf_counter()
    chw = [torch.from_numpy(np.ascontiguousarray(im[:, :, ::-1].transpose(2, 0, 1))) for im, _, _ in res]
    out["RGB -> BGR, HWC -> CHW (uint8)"] = (time.perf_counter() - s) / len(recs) * 1e3
    samples = [{"image": x, "image_size": tuple(x.shape[1:]), "orig_size": (0, 0), "image_id": 0, "file_name": "",
                "boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)} for x in chw]  # fmt: skip
    s = time.perf_counter()
    for i in range(0, len(samples) - 1, 2):
        collate_batch(samples[i : i + 2], size_divisibility=32)
    out["pad to /32 + float32, 2 per batch (collate_batch)"] = (time.perf_counter() - s) / (len(samples) // 2 * 2) * 1e3
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64, help="distinct images (cycled)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=30, help="timed batches per setting")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--images-per-batch", type=int, default=2)
    parser.add_argument("--data", default=None, help="reuse/keep the generated images in this folder")
    args = parser.parse_args(argv)

    tmp = None
    out = args.data
    if out is None:
        tmp = tempfile.TemporaryDirectory()
        out = tmp.name
    generate_shapes_dataset(out, num_train=args.images, num_val=0, image_size=(375, 500), seed=0)
    dataset = load_coco_json(
        os.path.join(out, "annotations", "instances_train.json"), os.path.join(out, "images", "train"), name="bench"
    )

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs visible, Python {platform.python_version()}, "
        f"torch {torch.__version__}, torch threads {torch.get_num_threads()}"
    )
    print(f"{len(dataset)} JPEGs of 375-500 px -> shorter side 600 (max 1000), {args.images_per_batch} images/batch\n")
    print("| num_workers | images/s |")
    print("|---|---|")
    for w in args.workers:
        rate = time_loader(dataset, w, args.batches, args.warmup, args.images_per_batch)
        print(f"| {w} | {rate:.1f} |", flush=True)
    print("\n| step (one process, 1 torch thread, as in a worker) | ms per image |")
    print("|---|---|")
    for name, ms in step_costs(dataset).items():
        print(f"| {name} | {ms:.2f} |")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
