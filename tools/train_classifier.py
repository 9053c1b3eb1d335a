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

import sys
from pathlib import Path

# Runnable from a fresh clone without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detectron_res import training_cli  # noqa: E402  (parser, output folder, exit status: shared with train_net)
from detectron_res.classification.config import load_classifier_config  # noqa: E402


def build_parser():
    return training_cli.build_parser(
        description="Train or evaluate an ImageNet / CIFAR-10 classifier (ResNet paper Sec 3.4 and 4.2).",
        doc=__doc__,
        config_example="imagenet_r50.yaml",
        override_example="solver.max_iter=1000 data.root=/data/imagenet",
        weights_help="initial weights (overrides model.weights): a checkpoint of this tool or ImageNet "
                     "weights (torchvision://resnet50, msra://R-50, a file). With --eval-only: the weights "
                     "to evaluate (default: the newest checkpoint in the output directory)",
        eval_only_help="evaluate test.views (centre crop, 10-crop) on data.test_split and exit",
    )


def _entry_points() -> training_cli.EntryPoints:
    from detectron_res.classification import evaluate_classifier_checkpoint, train_classifier

    return training_cli.EntryPoints(train=train_classifier, evaluate=evaluate_classifier_checkpoint)


def _final_line(scalars: dict) -> str:
    return "final evaluation (error %): " + ", ".join(f"{k}={v:.2f}" for k, v in sorted(scalars.items()))


def _how_to_use(output_dir: Path) -> None:
    """The train_net command line that initializes a detector with the final checkpoint."""
    from detectron_res.classification.checkpoint import detection_overrides, load_classifier_checkpoint

    final = output_dir / "model_final.pth"
    overrides = detection_overrides(load_classifier_checkpoint(final)) if final.is_file() else []
    if overrides:
        print(f"initialize a detector with it: python tools/train_net.py --config <detection config> "
              f"--weights {final} {' '.join(overrides)}")


def main(argv=None) -> int:
    return training_cli.main(argv, parser=build_parser(), load_config=load_classifier_config,
                             entry_points=_entry_points, final_line=_final_line, after_training=_how_to_use)


if __name__ == "__main__":
    sys.exit(main())
