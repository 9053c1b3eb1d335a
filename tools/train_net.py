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

import argparse
import sys
from pathlib import Path

# Runnable from a fresh clone without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detectron_res.config import add_config_arguments  # noqa: E402
from detectron_res.exit_status import EXIT_OK, config_for_tool, run_job  # noqa: E402  (the statuses: detectron_res/exit_status.py)
from detectron_res.outputs import add_overwrite_argument  # noqa: E402

_DEFAULT_OUTPUT_DIR = "output/default"  # the schema's default: replaced by output/<config stem>


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train or evaluate a Faster R-CNN C4 detector (ResNet paper, Appendix A).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Outputs go to")[0].split("Examples::")[1],
    )
    add_config_arguments(parser)
    parser.add_argument("--output-dir", default=None,
                        help="run directory (default: the config's output_dir, else output/<config name>)")
    parser.add_argument("--weights", default=None,
                        help="initial weights: a detector checkpoint (.pth written by this tool), ImageNet weights "
                             "(torchvision://resnet50, msra://R-101, a torchvision/MSRA/Detectron2 file) or a file "
                             "from tools/convert_weights.py; overrides model.weights. With --eval-only: the "
                             "checkpoint to evaluate")
    parser.add_argument("--resume", action="store_true",
                        help="continue from <output-dir>/last_checkpoint (exactly where the run stopped)")
    parser.add_argument("--eval-only", action="store_true", help="evaluate on data.test and exit")
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


def _print_all_problems(error: Exception) -> None:
    """A dataset with several problems: list them all (stdout), so that one run shows
    everything to fix; the one-line error on stderr names the first."""
    problems = getattr(error, "errors", None) or []
    if len(problems) > 1:
        print(f"{len(problems)} problems found:")
        for problem in problems:
            print(f"  {problem}")


def main(argv=None) -> int:
    # Options may come before, between or after the key=value overrides.
    args = build_parser().parse_intermixed_args(argv)
    cfg, status = config_for_tool(args)
    if cfg is None:  # a config mistake (status 2), or --print-config
        return status
    output_dir = output_dir_for(cfg, args)
    cfg.output_dir = str(output_dir)

    from detectron_res.data.image_io import ImageReadError
    from detectron_res.engine.launch import evaluate_checkpoint, train

    def job():
        if args.eval_only:
            return evaluate_checkpoint(cfg, output_dir=output_dir, weights=args.weights, device=args.device,
                                       overwrite=args.overwrite)
        return train(cfg, output_dir=output_dir, resume=args.resume, weights=args.weights, device=args.device,
                     config_source=str(args.config), overwrite=args.overwrite)

    # User mistakes (config keys, dataset files, checkpoints, weights) carry a one-line
    # message naming the file / key and what was expected. An image that passed the
    # header check at start-up but cannot be decoded (truncated) is found when the
    # loader reaches it: the same one line, from a checkpoint on.
    result, status = run_job(job, output_dir, user_errors=(ValueError, FileNotFoundError, ImageReadError),
                             on_user_error=_print_all_problems)
    if status != EXIT_OK:
        return status
    scalars = result.get("scalars", {})
    if scalars:
        shown = ", ".join(f"{k}={v:.2f}" for k, v in sorted(scalars.items()) if k.split("/")[-1] in
                          ("mAP50", "AP", "AP50", "AP75"))
        print(f"final evaluation: {shown}")
    if result.get("stopped_early"):
        print(f"stopped before the end of the schedule; continue with: --resume (output: {output_dir})")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
