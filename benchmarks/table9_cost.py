#!/usr/bin/env python
"""What each Table 9 option (Appendix B) and flip testing costs and gives on one trained detector.

    DETECTRON_RES_DATASETS=/path/to/datasets python benchmarks/table9_cost.py \\
        --weights output/demo/model_final.pth --scales 128,192,256,320,384 --target-size 64 \\
        [--context-weights output/demo_ctx/model_final.pth --context-baseline output/demo_plain/model_final.pth]

The checkpoint's stored config is used, with the test-time options as overrides:

* plain; + box refinement (``model.roi_heads.box_refinement``); + flip (``test.hflip``);
  + multi-scale (``test.scales``, ``test.scale_target_size``); all three together;
* with ``--context-weights``: a model trained with ``model.roi_heads.global_context``,
  against ``--context-baseline`` (a plain model trained on the same schedule).

Every variant is evaluated on the config's ``data.test`` (VOC and COCO metrics) and
timed on the same preloaded batches, model forward only (no loading, no
evaluation), in ``--repeats`` rounds that interleave the variants so that load on a
shared machine hits all of them alike. The cost is the median over rounds of the
process's CPU time per image (one thread: the work done, not the waiting for a
shared machine's other jobs), as a ratio to the plain detector's in the same run;
the median wall time is shown beside it. Prints a
Markdown table; ``--json`` also writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detectron_res.config import apply_overrides, config_from_dict  # noqa: E402
from detectron_res.engine.checkpoint import load_checkpoint, load_model_weights  # noqa: E402
from detectron_res.detection.task import build_evaluators, load_test_datasets  # noqa: E402
from detectron_res.evaluation import inference_on_dataset  # noqa: E402
from detectron_res.modeling.build import build_model  # noqa: E402


def load_model(checkpoint_path: str, overrides):
    state = load_checkpoint(checkpoint_path)
    cfg = config_from_dict(state["config"], source=f"{checkpoint_path} (stored config)")
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    model = build_model(cfg)
    report = load_model_weights(model, state["model"], strict_shapes=True)
    if report.missing:
        raise SystemExit(f"{checkpoint_path}: checkpoint lacks {report.missing[0]} (config mismatch)")
    return cfg, model.prepare_for_inference()


def preload(cfg):
    from detectron_res.data.loader import build_test_loader

    (dataset,) = load_test_datasets(cfg)[:1]
    loader = build_test_loader(
        dataset,
        images_per_batch=1,
        min_size=int(cfg.input.min_size_test),
        max_size=int(cfg.input.max_size_test),
        size_divisibility=int(cfg.input.size_divisibility),
        num_workers=0,
        input_format=str(cfg.model.input_format),
    )
    return dataset, list(loader)


def evaluate(cfg, model, dataset, batches):
    with tempfile.TemporaryDirectory() as out:
        results = inference_on_dataset(
            model, batches, build_evaluators(cfg, dataset, out), device="cpu", progress=False
        )
    voc, coco = results.get("voc", {}), results.get("coco", {})  # test.evaluators may hold one of them
    nan = float("nan")
    return {"voc/mAP50": voc.get("mAP50", nan), "coco/AP": coco.get("AP", nan), "coco/AP50": coco.get("AP50", nan)}


def time_once(model, batches) -> tuple:
    """(CPU seconds of this process, wall seconds) per image. With one thread the
    process's CPU time is what the work costs; wall time also counts waiting for
    the other jobs of a shared machine."""
    cpu, wall = time.process_time(), time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            model(batch)
    return (time.process_time() - cpu) / len(batches), (time.perf_counter() - wall) / len(batches)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="trained detector checkpoint (the plain detector)")
    p.add_argument("--scales", default="", help="test.scales for + multi-scale, comma separated (pixels)")
    p.add_argument("--target-size", type=int, default=224, help="test.scale_target_size for + multi-scale")
    p.add_argument("--context-weights", help="a checkpoint trained with model.roi_heads.global_context")
    p.add_argument("--context-baseline", help="the plain checkpoint trained on the context run's schedule")
    p.add_argument("--repeats", type=int, default=3, help="timing rounds (median)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the shared CPU's fairest setting)")
    p.add_argument("--json", help="also write the numbers here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    ms = [f"test.scales=[{args.scales}]", f"test.scale_target_size={args.target_size}"] if args.scales else []
    refine, flip = ["model.roi_heads.box_refinement=true"], ["test.hflip=true"]
    variants = [("plain", args.weights, []), ("+ box refinement", args.weights, refine), ("+ flip", args.weights, flip)]
    if ms:
        variants += [("+ multi-scale", args.weights, ms), ("+ refinement + flip + multi-scale", args.weights,
                                                            refine + flip + ms)]
    if args.context_weights and args.context_baseline:
        variants += [("context baseline (plain, same schedule)", args.context_baseline, []),
                     ("+ context (trained)", args.context_weights, [])]

    load_before = os.getloadavg()
    rows = []
    dataset = batches = None
    for name, weights, overrides in variants:
        cfg, model = load_model(weights, overrides)
        if batches is None:
            dataset, batches = preload(cfg)
        rows.append({"variant": name, "weights": weights, "overrides": overrides, "model": model,
                     "metrics": evaluate(cfg, model, dataset, batches), "times": []})
    for _ in range(args.repeats):
        for row in rows:  # interleaved: load drift hits every variant alike
            row["times"].append(time_once(row["model"], batches))
    load_after = os.getloadavg()

    def per_image(row, which=0):  # 0: CPU time, 1: wall time
        return statistics.median(t[which] for t in row["times"])

    plain = per_image(rows[0])
    base_ctx = next((r for r in rows if r["variant"].startswith("context baseline")), None)
    lines = [
        f"{len(batches)} images of {dataset.name}, torch {torch.__version__}, {args.threads} thread(s), "
        f"{platform.processor() or platform.machine()}; load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after (a shared machine: ratios are what to read, not seconds)",
        "",
        "| variant | voc mAP50 (change) | coco AP | coco AP50 | CPU s / image (median of %d) | cost vs plain | "
        "wall s / image |" % args.repeats,
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        m = row["metrics"]
        ref = base_ctx if row["variant"].startswith("+ context") and base_ctx else rows[0]
        delta = "" if row is ref or row is rows[0] or row is base_ctx else (
            f" ({m['voc/mAP50'] - ref['metrics']['voc/mAP50']:+.2f})"
        )
        ratio = per_image(row) / (per_image(ref) if ref is base_ctx else plain)
        lines.append(
            f"| {row['variant']} | {m['voc/mAP50']:.2f}{delta} | {m['coco/AP']:.2f} | {m['coco/AP50']:.2f} | "
            f"{per_image(row):.4f} | {ratio:.2f}x | {per_image(row, 1):.4f} |"
        )
    print("\n".join(lines))
    if args.json:
        out = [{k: v for k, v in r.items() if k != "model"} | {"cpu_s_per_image": per_image(r),
                                                               "wall_s_per_image": per_image(r, 1)} for r in rows]
        Path(args.json).write_text(json.dumps({"rows": out, "load_average": [load_before, load_after]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
