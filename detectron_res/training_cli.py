"""The command line of the training tools, shared by both tasks.

``tools/train_net.py`` (detection) and ``tools/train_classifier.py`` (classification)
are :func:`main` with their task's words and entry points: the same options
(``--config``, overrides, ``--output-dir``, ``--weights``, ``--resume``,
``--eval-only``, ``--device``, ``--overwrite``, ``--print-config``), the same output
folder rule (:func:`output_dir_for`) and the same exit statuses
(:func:`detectron_res.exit_status.run_job`).

Importing this module is cheap (no torch): the task's code is imported through
``entry_points`` only after the config has parsed, so ``--help`` and config
mistakes answer at once.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Type

from .config import add_config_arguments
from .exit_status import EXIT_OK, config_for_tool, run_job
from .outputs import add_overwrite_argument

# The schemas' output_dir default (config.RunConfig): replaced by output/<config stem>.
DEFAULT_OUTPUT_DIR = "output/default"


@dataclass
class EntryPoints:
    """What a training tool runs (imported late: they import torch)."""

    train: Callable[..., dict]  # train(cfg, output_dir=, resume=, weights=, device=, config_source=, overwrite=)
    evaluate: Callable[..., dict]  # evaluate(cfg, output_dir=, weights=, device=, overwrite=)
    # Exceptions that are the user's mistakes (exit status 2, one line).
    user_errors: Sequence[Type[BaseException]] = (ValueError, FileNotFoundError)
    on_user_error: Optional[Callable[[BaseException], None]] = None


def build_parser(*, description: str, doc: str, config_example: str, override_example: str, weights_help: str,
                 eval_only_help: str) -> argparse.ArgumentParser:
    """The training tools' parser; ``doc`` is the tool's docstring, whose ``Examples::``
    (up to "Outputs go to") become the help's epilog."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=doc.split("Outputs go to")[0].split("Examples::")[1],
    )
    add_config_arguments(parser, example=config_example, override_example=override_example)
    parser.add_argument("--output-dir", default=None,
                        help="run directory (default: the config's output_dir, else output/<config name>)")
    parser.add_argument("--weights", default=None, help=weights_help)
    parser.add_argument("--resume", action="store_true",
                        help="continue from <output-dir>/last_checkpoint (exactly where the run stopped)")
    parser.add_argument("--eval-only", action="store_true", help=eval_only_help)
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (overrides the config's device)")
    add_overwrite_argument(parser, what="a previous run in the output directory (training starts over; its "
                                         "checkpoints are deleted) or, with --eval-only, its evaluation")
    return parser


def output_dir_for(cfg, args: argparse.Namespace) -> Path:
    """``--output-dir``, else the config's ``output_dir`` when set, else ``output/<config name>``."""
    if args.output_dir:
        return Path(args.output_dir)
    if str(cfg.output_dir) != DEFAULT_OUTPUT_DIR:
        return Path(str(cfg.output_dir))
    return Path("output") / Path(args.config).stem


def main(
    argv: Optional[Sequence[str]],
    *,
    parser: argparse.ArgumentParser,
    load_config: Callable,
    entry_points: Callable[[], EntryPoints],
    final_line: Callable[[dict], str],
    after_training: Optional[Callable[[Path], None]] = None,
) -> int:
    """Parse, load the config, train or evaluate, and return the exit status.

    A config mistake is one line on stderr and status 2; ``--print-config`` prints the
    resolved config and returns 0.

    Args:
        load_config: the task's ``load(path, overrides)``, raising ``ConfigError``.
        entry_points: imports and returns the task's train / evaluate functions.
        final_line: the line printed for the final metrics (``{name: value}``, not empty).
        after_training: called with the run folder after a training run that reached
            its end (e.g. to say how to use the result).
    """
    # Options may come before, between or after the key=value overrides.
    args = parser.parse_intermixed_args(argv)
    cfg, status = config_for_tool(args, from_args=lambda a: load_config(a.config, a.overrides))
    if cfg is None:  # a config mistake (status 2), or --print-config (status 0)
        return status
    output_dir = output_dir_for(cfg, args)
    cfg.output_dir = str(output_dir)
    task = entry_points()

    def job() -> dict:
        if args.eval_only:
            return task.evaluate(cfg, output_dir=output_dir, weights=args.weights, device=args.device,
                                 overwrite=args.overwrite)
        return task.train(cfg, output_dir=output_dir, resume=args.resume, weights=args.weights, device=args.device,
                          config_source=str(args.config), overwrite=args.overwrite)

    result, status = run_job(job, output_dir, user_errors=task.user_errors, on_user_error=task.on_user_error)
    if status != EXIT_OK:
        return status
    scalars = result.get("scalars", {})
    if scalars:
        print(final_line(scalars))
    if result.get("stopped_early"):
        print(f"stopped before the end of the schedule; continue with: --resume (output: {output_dir})")
    elif not args.eval_only and after_training is not None:
        after_training(output_dir)
    return EXIT_OK
