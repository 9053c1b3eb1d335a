"""Exit statuses of the tools, and the one place that maps training failures to them.

``tools/train_net.py`` and ``tools/train_classifier.py`` run their job through
:func:`run_job`, which turns every expected failure into one line (stderr for
errors, stdout for a clean stop) and the status documented in the README:

    0  done
    2  a user mistake: config key, dataset file, checkpoint, weights (one line naming it)
    3  a non-finite loss (the last checkpoint is intact)
    4  another rank died or hung under torchrun
    5  stopped by SIGTERM / SIGUSR1 (continue with --resume)
    6  an output could not be written (disk full, permissions; nothing is replaced)

The tools that run a trained model share 0 and 2 (a usage error: one line on
stderr) and give 1 and 3 their own meaning:

    tools/infer.py   1  some inputs failed (each named on stderr); the others were processed
    tools/export.py  1  the exported model disagrees with PyTorch
                     3  exported but not verified (no image with a detection to compare)

Anything else is a bug and keeps its traceback. Importing this module is cheap (no
torch): the tools import it before they parse the config, which they load through
:func:`config_for_tool` (a config mistake: one line, status 2).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Tuple, Type

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_NON_FINITE_LOSS = 3
EXIT_DIST_FAILURE = 4
EXIT_STOPPED_BY_SIGNAL = 5
EXIT_OUTPUT_ERROR = 6

# tools/infer.py and tools/export.py (module docstring).
EXIT_INPUTS_FAILED = 1
EXIT_EXPORT_MISMATCH = 1
EXIT_EXPORT_NOT_VERIFIED = 3


def one_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none), for
    ``error: ...`` lines: a library message may go on with details a tool leaves out."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _error(message: Any) -> None:
    print(f"error: {message}", file=sys.stderr)


def config_for_tool(args: Any, from_args: Optional[Callable[[Any], Any]] = None) -> Tuple[Optional[Any], int]:
    """A tool's config from its parsed arguments, or the status to exit with.

    Args:
        args: parsed arguments with ``config``, ``overrides`` and ``print_config``
            (``detectron_res.config.add_config_arguments``).
        from_args: loads the config, raising ``ConfigError`` on a mistake; default
            ``detectron_res.config.config_from_args`` (the detector's schema).
    Returns:
        ``(cfg, EXIT_OK)`` to go on; ``(None, EXIT_USER_ERROR)`` after printing
        ``config error: ...`` (one line, stderr); ``(None, EXIT_OK)`` after printing the
        resolved config for ``--print-config``.
    """
    from omegaconf import OmegaConf

    from .config import ConfigError, config_from_args

    try:
        cfg = (from_args or config_from_args)(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return None, EXIT_USER_ERROR
    if getattr(args, "print_config", False):
        print(OmegaConf.to_yaml(cfg), end="")
        return None, EXIT_OK
    return cfg, EXIT_OK


def run_job(
    job: Callable[[], dict],
    output_dir: Path,
    *,
    user_errors: Iterable[Type[BaseException]] = (ValueError, FileNotFoundError),
    on_user_error: Optional[Callable[[BaseException], None]] = None,
) -> Tuple[Optional[dict], int]:
    """Run ``job`` (training or evaluation) and map how it ended to an exit status.

    Args:
        job: returns the run's result dict; a ``"stop"`` entry (a signal stopped
            training, see ``engine.run.stop_report``) means status 5.
        output_dir: the run directory, named in the messages.
        user_errors: exception types that are the user's mistakes (status 2); their
            message already names the file or key and what was expected.
        on_user_error: called before the one-line error (e.g. to list every
            problem of a dataset on stdout).
    Returns:
        ``(result, EXIT_OK)`` when the job ran to its end, else ``(None, status)``.
    """
    # Imported here: they import torch, which --help and config errors do not need.
    from .engine.checkpoint import CheckpointWriteError, describe_os_error, find_last_checkpoint
    from .engine.distributed import DistributedTimeoutError
    from .engine.signals import EvaluationInterrupted, StoppedBeforeTraining, StoppedWhileLoadingData
    from .engine.trainer import NonFiniteLossError

    try:
        result = job()
    except NonFiniteLossError as e:
        _error(e)
        return None, EXIT_NON_FINITE_LOSS
    except DistributedTimeoutError as e:
        _error(e)
        return None, EXIT_DIST_FAILURE
    except StoppedWhileLoadingData as e:  # the signal reached the loader's workers too
        last = find_last_checkpoint(output_dir)
        resume = f"continue from {last} with: --resume" if last else "no checkpoint yet: start again"
        print(f"{e}; {resume} (output: {output_dir})")
        return None, EXIT_STOPPED_BY_SIGNAL
    except StoppedBeforeTraining as e:  # during the evaluation a resumed run redoes first
        print(f"{e}; continue with: --resume (output: {output_dir})")
        return None, EXIT_STOPPED_BY_SIGNAL
    except EvaluationInterrupted as e:  # --eval-only (training catches its own)
        print(f"stopped: {e}; run --eval-only again to evaluate (output: {output_dir})")
        return None, EXIT_STOPPED_BY_SIGNAL
    except CheckpointWriteError as e:
        _error(e)
        return None, EXIT_OUTPUT_ERROR
    except tuple(user_errors) as e:
        if on_user_error is not None:
            on_user_error(e)
        _error(e)
        return None, EXIT_USER_ERROR
    except OSError as e:
        # Disk full, quota, permissions, read-only file system while writing logs,
        # metrics or evaluation files: the OS reason and the file, not a traceback.
        where = e.filename if e.filename else f"writing into {output_dir}"
        _error(f"{where}: {describe_os_error(e)}; check free space and permissions of {output_dir}")
        return None, EXIT_OUTPUT_ERROR
    if result.get("stop"):
        print(result["stop"]["message"])
        return None, EXIT_STOPPED_BY_SIGNAL
    return result, EXIT_OK
