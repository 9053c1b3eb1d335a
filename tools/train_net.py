#!/usr/bin/env python
"""Train (or evaluate) a Faster R-CNN C4 detector from a config.

Examples::

    # the paper's COCO ResNet-101 run on 8 GPUs (Table 8)
    torchrun --nproc_per_node 8 tools/train_net.py --config coco_r101.yaml

    # continue it after an interruption or preemption
    torchrun --nproc_per_node 8 tools/train_net.py --config coco_r101.yaml --resume

    # start over in a folder that holds a finished run (refused without --resume / --overwrite)
    python tools/train_net.py --config demo_shapes.yaml --overwrite

    # two machines (run on each; HOST is the first machine)
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
        --rdzv_id myjob tools/train_net.py --config coco_r101.yaml

    # fine-tune a COCO detector on your data (see configs/finetune_custom.yaml)
    python tools/train_net.py --config finetune_custom.yaml --weights output/coco_r101/model_final.pth

    # evaluate a checkpoint
    python tools/train_net.py --config voc07_r101.yaml --eval-only --weights model_final.pth

    # any config key can be overridden at the end
    python tools/train_net.py --config demo_shapes.yaml solver.max_iter=500 solver.steps=[375,455] test.eval_period=100

Outputs go to ``output/<config name>/`` unless ``--output-dir`` (or the config's
``output_dir``) says otherwise: checkpoints (``model_*.pth``, ``last_checkpoint``),
``config.yaml``, ``log.txt``, ``metrics.json``, ``tensorboard/``,
``training_curves.png`` and ``inference/<dataset>/``. A folder that holds a
previous run (``last_checkpoint``, ``model_*.pth`` or a ``metrics.json``) is
continued with ``--resume`` or replaced with ``--overwrite``; anything else is refused.

Exit status:

* 0: finished (training to ``solver.max_iter`` and its final evaluation, or ``--eval-only``);
* 2: a user error (config, dataset, weights), one line naming the file / key;
* 3: a non-finite loss; the last checkpoint is intact;
* 4: another distributed rank died or hung (after ``dist.timeout_s``);
* 5: stopped by SIGTERM or SIGUSR1: training writes a checkpoint after the current
  iteration (an evaluation in progress is abandoned before its next batch) and is
  continued with ``--resume``; ``--eval-only`` writes nothing for the interrupted dataset;
* 6: a file could not be written or accessed (disk full, quota, read-only or
  unwritable output directory); the previous checkpoint and ``last_checkpoint`` are intact.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Runnable from a fresh clone without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detectron_res import training_cli  # noqa: E402  (parser, output folder, exit status: shared with train_classifier)
from detectron_res.config import load_config  # noqa: E402


def build_parser():
    return training_cli.build_parser(
        description="Train or evaluate a Faster R-CNN C4 detector (ResNet paper, Appendix A).",
        doc=__doc__,
        config_example="coco_r101.yaml",
        override_example="solver.base_lr=0.002 input.min_size_train=[480,600]",
        weights_help="initial weights: a detector checkpoint (.pth written by this tool), ImageNet weights "
                     "(torchvision://resnet50, msra://R-101, a torchvision/MSRA/Detectron2 file) or a file "
                     "from tools/convert_weights.py; overrides model.weights. With --eval-only: the "
                     "checkpoint to evaluate",
        eval_only_help="evaluate on data.test and exit",
    )


def _print_all_problems(error: Exception) -> None:
    """A dataset with several problems: list them all (stdout), so that one run shows
    everything to fix; the one-line error on stderr names the first."""
    problems = getattr(error, "errors", None) or []
    if len(problems) > 1:
        print(f"{len(problems)} problems found:")
        for problem in problems:
            print(f"  {problem}")


def _entry_points() -> training_cli.EntryPoints:
    from detectron_res.data.image_io import ImageReadError
    from detectron_res.detection import evaluate_checkpoint, train

    # User mistakes (config keys, dataset files, checkpoints, weights) carry a one-line
    # message naming the file / key and what was expected. An image that passed the
    # header check at start-up but cannot be decoded (truncated) is found when the
    # loader reaches it: the same one line, from a checkpoint on.
    return training_cli.EntryPoints(train=train, evaluate=evaluate_checkpoint,
                                    user_errors=(ValueError, FileNotFoundError, ImageReadError),
                                    on_user_error=_print_all_problems)


def _final_line(scalars: dict) -> str:
    shown = ", ".join(f"{k}={v:.2f}" for k, v in sorted(scalars.items()) if k.split("/")[-1] in
                      ("mAP50", "AP", "AP50", "AP75"))
    return f"final evaluation: {shown}"


def main(argv=None) -> int:
    return training_cli.main(argv, parser=build_parser(), load_config=load_config, entry_points=_entry_points,
                             final_line=_final_line)


if __name__ == "__main__":
    sys.exit(main())
