#!/usr/bin/env python
"""The demo, end to end on a CPU: data, training, evaluation, inference.

    python tools/demo.py

1. generates the synthetic "shapes" dataset (600 train + 100 val images, 4 classes)
   under ``$DETECTRON_RES_DATASETS/shapes`` (default ``datasets/shapes``), unless it
   is already there;
2. trains the small residual detector of ``configs/demo_shapes.yaml`` (C4 layout,
   reduced widths, trained from scratch) into ``output/demo_shapes/``;
3. evaluates it on the validation split with the VOC evaluator (VOC07 11-point
   mAP@0.5) and the COCO evaluator (pycocotools AP);
4. runs ``tools/infer.py`` on a validation image;
5. prints where everything was written and how long each step took.

A second run into the same ``--output-dir`` is refused (it would replace the
trained model); pass ``--overwrite`` to train again from scratch there.

Trailing ``section.key=value`` arguments override the demo config
(e.g. ``solver.max_iter=300 solver.steps=[225,275]`` for a quicker, less
accurate run: the LR steps must stay below ``solver.max_iter``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from detectron_res.outputs import OutputError, add_overwrite_argument, check_run_dir  # noqa: E402

# The demo's quality bar: VOC07 mAP@0.5 (percent) on shapes_val.
MAP50_BAR = 90.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--output-dir", default="output/demo_shapes", help="run directory (default output/demo_shapes)")
    parser.add_argument("--datasets-root", default=None,
                        help="where datasets live (default $DETECTRON_RES_DATASETS, else ./datasets)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch compute threads (default 1: with the loader process this fills 2 cores; the "
                             "demo's small convolutions run several times slower with 2 threads on a busy 2-core "
                             "machine)")
    add_overwrite_argument(parser, what="a previous demo run in --output-dir (trains again from scratch)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="demo config overrides")
    args = parser.parse_args(argv)
    output_dir = Path(args.output_dir)
    try:  # before the data and the training: a finished demo is never replaced by accident
        check_run_dir(output_dir, resume=False, overwrite=args.overwrite)
    except OutputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from detectron_res.config import ConfigError, load_config
    from detectron_res.data.catalog import DATASETS_ENV_VAR, datasets_root
    from detectron_res.data.shapes import generate_shapes_dataset
    from detectron_res.detection import train

    import torch

    torch.set_num_threads(max(1, args.threads))
    if args.datasets_root:
        os.environ[DATASETS_ENV_VAR] = os.path.abspath(args.datasets_root)
    times = {}
    t0 = time.perf_counter()

    # 1. data
    shapes_dir = Path(datasets_root()) / "shapes"
    try:
        info = generate_shapes_dataset(str(shapes_dir))
    except OutputError as e:  # the folder holds another dataset
        print(f"error: {e}", file=sys.stderr)
        return 2
    times["data"] = time.perf_counter() - t0
    print(f"[demo] shapes dataset {'generated' if info['generated'] else 'already present'} in {shapes_dir} "
          f"({info['num_train']} train / {info['num_val']} val images)", flush=True)

    # 2 + 3. training, then evaluation with both evaluators (test.evaluators: [voc, coco])
    try:
        cfg = load_config(ROOT / "configs" / "demo_shapes.yaml", args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    cfg.output_dir = str(output_dir)
    t1 = time.perf_counter()
    result = train(cfg, output_dir=output_dir, device=args.device, config_source="configs/demo_shapes.yaml",
                   overwrite=args.overwrite)
    times["train + evaluation"] = time.perf_counter() - t1
    scalars = result.get("scalars", {})

    # 4. inference on one validation image, with the tool a user would run
    t2 = time.perf_counter()
    images = sorted((shapes_dir / "images" / "val").glob("*.jpg"))
    infer_dir = output_dir / "infer"
    infer_status = None
    if images:
        cmd = [sys.executable, str(ROOT / "tools" / "infer.py"), str(images[0]),
               "--weights", str(output_dir / "model_final.pth"), "--output", str(infer_dir), "--device", args.device,
               "--quiet"] + (["--overwrite"] if args.overwrite else [])
        print(f"[demo] {' '.join(cmd)}", flush=True)
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, args.threads)))
        infer_status = subprocess.run(cmd, env=env).returncode
    times["inference"] = time.perf_counter() - t2
    total = time.perf_counter() - t0

    # 5. where everything is
    voc = scalars.get("voc/mAP50", float("nan"))
    print("\n[demo] done in {:.0f} s ({})".format(total, ", ".join(f"{k} {v:.0f} s" for k, v in times.items())))
    print(f"[demo] VOC07 mAP@0.5 on shapes_val: {voc:.1f} (bar: {MAP50_BAR:.0f}); "
          f"COCO AP: {scalars.get('coco/AP', float('nan')):.1f}, AP50: {scalars.get('coco/AP50', float('nan')):.1f}")
    print(f"[demo] outputs in {output_dir}/:")
    for name, what in (
        ("model_final.pth", "the trained detector (model_best.pth: best voc/mAP50)"),
        ("config.yaml", "the resolved config"),
        ("log.txt", "the training log"),
        ("metrics.json", "losses, LR, timings and evaluations (JSON lines); tensorboard/ has the same"),
        ("training_curves.png", "loss / LR / mAP curves"),
        ("inference/shapes_val", "evaluation.json, COCO results, VOC comp4 files, PR curves"),
        ("infer", "tools/infer.py output: annotated image and detections JSON"),
    ):
        mark = "" if (output_dir / name).exists() else "  (missing)"
        print(f"  {output_dir / name}: {what}{mark}")
    if infer_status not in (None, 0):
        print(f"[demo] tools/infer.py exited with status {infer_status}", file=sys.stderr)
        return 1
    if not voc >= MAP50_BAR:
        print(f"[demo] warning: mAP@0.5 {voc:.1f} is below the demo's bar of {MAP50_BAR:.0f}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
