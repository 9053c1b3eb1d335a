#!/usr/bin/env python
"""Train (or evaluate) an image classifier: the ImageNet backbone a detector starts
from (ResNet paper Sec 3.4, Appendix A), or the CIFAR-10 nets of Sec 4.2.

Examples::

    # ResNet-50 on ImageNet (root/train/<class>/*.JPEG, root/val/<class>/*.JPEG), 8 GPUs
    torchrun --nproc_per_node 8 tools/train_classifier.py --config imagenet_r50.yaml data.root=/data/imagenet

    # continue after an interruption or preemption
    torchrun --nproc_per_node 8 tools/train_classifier.py --config imagenet_r50.yaml --resume

    # centre-crop and 10-crop top-1/top-5 error of a checkpoint (or of torchvision://resnet50
    # with model.input_format=RGB and torchvision's pixel_mean / pixel_std)
    python tools/train_classifier.py --config imagenet_r50.yaml --eval-only \
        --weights output/imagenet_r50/model_final.pth

    # its checkpoint initializes a detector directly
    python tools/train_net.py --config coco_r50.yaml --weights output/imagenet_r50/model_final.pth

    # CIFAR-10 (the official cifar-10-batches-py folder), plain-56 against ResNet-56
    python tools/train_classifier.py --config cifar10_plain56.yaml
    python tools/train_classifier.py --config cifar10_resnet56.yaml
    python tools/plot_curves.py output/cifar10_plain56 output/cifar10_resnet56 --out plain_vs_resnet56.png

Outputs go to ``output/<config name>/`` unless ``--output-dir`` (or the config's
``output_dir``) says otherwise: checkpoints (``model_*.pth``, ``last_checkpoint``),
``config.yaml``, ``log.txt``, ``metrics.json``, ``diagnostics.json``,
``tensorboard/``, ``training_curves.png`` and, with --eval-only,
``inference/evaluation.json``.

Exit status, as ``tools/train_net.py``'s: 0 done; 2 a user mistake (config key,
dataset folder, weights; one line on stderr); 3 a non-finite loss; 4 a rank died
or hung under torchrun; 5 stopped by SIGTERM / SIGUSR1 (a checkpoint was written
after the current iteration: run again with ``--resume``); 6 the output directory
is not writable (disk full, permissions; the previous checkpoint is intact).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Runnable from a fresh clone without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detectron_res.classification.config import (  # noqa: E402
    add_classifier_config_arguments,
    classifier_config_from_args,
)
from detectron_res.exit_status import EXIT_OK, run_job  # noqa: E402  (the statuses: detectron_res/exit_status.py)
from detectron_res.outputs import add_overwrite_argument  # noqa: E402

_DEFAULT_OUTPUT_DIR = "output/default"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train or evaluate an ImageNet / CIFAR-10 classifier (ResNet paper Sec 3.4 and 4.2).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Outputs go to")[0].split("Examples::")[1],
    )
    add_classifier_config_arguments(parser)
    parser.add_argument("--output-dir", default=None,
                        help="run directory (default: the config's output_dir, else output/<config name>)")
    parser.add_argument("--weights", default=None,
                        help="initial weights (overrides model.weights): a checkpoint of this tool or ImageNet "
                             "weights (torchvision://resnet50, msra://R-50, a file). With --eval-only: the weights "
                             "to evaluate (default: the newest checkpoint in the output directory)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from <output-dir>/last_checkpoint (exactly where the run stopped)")
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate test.views (centre crop, 10-crop) on data.test_split and exit")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (overrides the config's device)")
    add_overwrite_argument(parser, what="a previous run in the output directory (training starts over; its "
                                         "checkpoints are deleted) or, with --eval-only, its evaluation")
    return parser


def output_dir_for(cfg, args) -> Path:
    if args.output_dir:
        return Path(args.output_dir)
    if str(cfg.output_dir) != _DEFAULT_OUTPUT_DIR:
        return Path(str(cfg.output_dir))
    return Path("output") / Path(args.config).stem


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cfg = classifier_config_from_args(args)
    output_dir = output_dir_for(cfg, args)
    cfg.output_dir = str(output_dir)

    from detectron_res.classification.train import evaluate_classifier_checkpoint, train_classifier

    def job():
        if args.eval_only:
            return evaluate_classifier_checkpoint(cfg, output_dir=output_dir, weights=args.weights,
                                                  device=args.device, overwrite=args.overwrite)
        return train_classifier(cfg, output_dir=output_dir, resume=args.resume, weights=args.weights,
                                device=args.device, config_source=str(args.config), overwrite=args.overwrite)

    # User mistakes (config keys, dataset folders, checkpoints, weights): one line.
    result, status = run_job(job, output_dir)
    if status != EXIT_OK:
        return status
    scalars = result.get("scalars", {})
    if scalars:
        print("final evaluation (error %): " + ", ".join(f"{k}={v:.2f}" for k, v in sorted(scalars.items())))
    if result.get("stopped_early"):
        print(f"stopped before the end of the schedule; continue with: --resume (output: {output_dir})")
    elif not args.eval_only:
        from detectron_res.classification.checkpoint import detection_overrides, load_classifier_checkpoint

        final = output_dir / "model_final.pth"
        overrides = detection_overrides(load_classifier_checkpoint(final)) if final.is_file() else []
        if overrides:
            print(f"initialize a detector with it: python tools/train_net.py --config <detection config> "
                  f"--weights {final} {' '.join(overrides)}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
