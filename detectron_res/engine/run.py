"""How a run starts: the one training (and ``--eval-only``) skeleton every task uses.

A task (detection: ``detectron_res/detection/task.py``; classification:
``detectron_res/classification/task.py``) hands over its pieces as a :class:`Task`:
its data, model, weight initialization, checkpoint layout, loader, evaluation and
summary lines. :func:`run_training` does everything else, once, in this order::

    refuse an output folder holding another run     (outputs.check_run_dir)
    process group, device, CPU threads              (init_process; torchrun / DDP)
    log.txt                                         (setup_logging)
    global batch split, AMP dtype                   (solver.ims_per_batch, solver.amp)
    data                                            task.load_data
    seed, model                                     seed_everything(seed), task.build_model
    resume from last_checkpoint, or initialize      task.read_checkpoint / restore, task.initialize
    device, SGD + LR schedule, DDP wrap             (engine/solver.py)
    loader, Trainer                                 task.train_loader, task.trainer_class
    hooks: compute threads, default_hooks, task's   (engine/hooks.py), task.evaluator, task.add_hooks
    per-rank seeds, config.yaml, start-up summary   task.summary_lines
    train; result or stop report                    (exit_status.run_job turns it into the exit status)

Distributed runs: every process runs the same code; ``solver.ims_per_batch`` is the
GLOBAL batch, split evenly across processes; only rank 0 writes files. LR scaling
rule: the configs keep the paper's global batch, so the LR does not change with the
number of GPUs; to change the global batch, scale ``solver.base_lr`` linearly with it
and the iteration counts (``steps``, ``max_iter``, ``warmup_iters``, periods)
inversely (Goyal et al. 2017).

This module imports no task code (tests/test_engine_run.py checks it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol

import numpy as np
import torch
from torch import nn

from ..config import config_to_dict, save_config
from ..outputs import check_output_dir, check_run_dir, remove_previous_run
from . import distributed as comm
from .checkpoint import Checkpointer, find_last_checkpoint
from .distributed import DistInfo, resolve_device
from .hooks import EvalHook, HookBase, PreemptionHandler, default_hooks
from .solver import build_optimizer_and_scheduler
from .threads import ComputeThreads
from .trainer import Trainer

logger = logging.getLogger("detectron_res")

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Run:
    """What the skeleton has built so far, handed to the task's later pieces."""

    cfg: Any
    output_dir: Path
    dist_info: DistInfo
    device: torch.device
    amp_dtype: torch.dtype | None  # training's autocast dtype (solver.amp), None = fp32
    data: Any  # what task.load_data returned
    model: nn.Module  # the bare model (not the DDP wrapper)
    init: str = ""  # how the weights were initialized, for the summary
    start_iter: int = 0
    resumed_from_iter: int | None = None  # the iteration of the checkpoint resumed from


class Task(Protocol):
    """The pieces of one application (detection, classification) for the run skeleton."""

    trainer_class: type[Trainer]  # Trainer, or a subclass with its own checkpoint layout
    no_weights: str  # the summary's "init:" without model.weights / --weights
    eval_weights_hint: str  # --eval-only without weights: "needs <this>, or train into ..."

    def load_data(self, cfg) -> Any:
        """The training and test data, with their label spaces checked against the config."""

    def build_model(self, cfg) -> nn.Module:
        """The model of ``cfg`` (draws from the global RNG: the skeleton seeds first)."""

    def initialize(self, model: nn.Module, source: str, cfg, data) -> str:
        """Load initial weights from ``source``; a one-line description for the summary."""

    def read_checkpoint(self, path: Path) -> dict:
        """A training checkpoint of this task (``last_checkpoint``), for ``--resume``."""

    def restore(self, model: nn.Module, state: Mapping, *, path: Path, run_dir: Path, data) -> None:
        """Exact weights of a resumed checkpoint; ValueError naming ``path`` when they do not fit."""

    def checkpoint_header(self, cfg, model: nn.Module, data) -> dict:
        """Constant entries of every checkpoint beyond the config (class names, input settings...)."""

    def train_loader(self, cfg, data, *, rank: int, world_size: int, start_iter: int,
                     device: torch.device) -> Iterable:
        """This process's infinite, resumable training batches (its share of the global batch)."""

    def evaluator(self, run: Run) -> Callable[[bool], dict] | None:
        """``evaluate(final)`` -> the run's result (``{"scalars": {"name/metric": x}, ...}``),
        called on every rank by the evaluation hook; None: the run has nothing to evaluate on."""

    def best_metric(self, cfg) -> str:
        """The metric ``model_best.pth`` is kept by ("" = none)."""

    def add_hooks(self, run: Run, hooks: list[HookBase]) -> list[HookBase]:
        """The default hooks with the task's own added (in their place)."""

    def summary_lines(self, run: Run) -> list[str]:
        """The task's lines of the start-up summary (model, data, schedule...)."""

    def evaluation_files(self, cfg) -> list[Path]:
        """``--eval-only``'s outputs under the run folder (refused without --overwrite)."""

    def evaluable(self, source: str) -> bool:
        """Whether ``--eval-only`` can evaluate ``model.weights`` (else the run's last checkpoint)."""

    def evaluate_weights(self, cfg, source: str, *, output_dir: Path, dist_info: DistInfo,
                         device: torch.device) -> dict:
        """``--eval-only``: evaluate the weights of ``source``; the result as for training."""


# ---------------------------------------------------------------------------
# process setup
# ---------------------------------------------------------------------------
def setup_logging(output_dir: str | os.PathLike | None, rank: int = 0) -> None:
    """Console + file logging for the ``detectron_res`` loggers.

    Rank 0 logs INFO to stdout and ``output_dir/log.txt``; other ranks log only
    warnings and errors, to stderr (only rank 0 writes files).
    """
    root = logging.getLogger("detectron_res")
    root.setLevel(logging.INFO)
    root.propagate = False
    for h in list(root.handlers):
        if getattr(h, "_detectron_res", False):
            root.removeHandler(h)
            h.close()
    fmt = logging.Formatter("[%(asctime)s %(name)s] %(message)s", datefmt="%m/%d %H:%M:%S")
    console = logging.StreamHandler(sys.stdout if rank == 0 else sys.stderr)
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    console.setFormatter(fmt)
    console._detectron_res = True  # type: ignore[attr-defined]
    root.addHandler(console)
    if output_dir is not None and rank == 0:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(Path(output_dir) / "log.txt")
        fh.setLevel(logging.INFO)
        fh.setFormatter(fmt)
        fh._detectron_res = True  # type: ignore[attr-defined]
        root.addHandler(fh)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (model initialization, augmentation, RoI sampling)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def init_process(cfg, device_name: str | None) -> tuple[DistInfo, torch.device]:
    """CPU threads (``cpu_threads``), this process's device and its process group (torchrun)."""
    if int(cfg.cpu_threads) > 0:
        torch.set_num_threads(int(cfg.cpu_threads))
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    device = resolve_device(device_name or str(cfg.device) or "auto", local_rank)
    dist_info = comm.init_distributed(device_type=device.type, backend=str(cfg.dist.backend),
                                      timeout_s=float(cfg.dist.timeout_s))
    return dist_info, device


@contextlib.contextmanager
def run_process(cfg, device_name: str | None, output_dir: Path) -> Iterator[tuple[DistInfo, torch.device]]:
    """:func:`init_process` and ``log.txt`` for the body; the process group is torn down
    after it (waiting for the other ranks only when the body completed)."""
    dist_info, device = init_process(cfg, device_name)
    setup_logging(output_dir, dist_info.rank)
    completed = False
    try:
        yield dist_info, device
        completed = True
    finally:
        comm.destroy_distributed(wait_for_all=completed)


def amp_dtype(cfg, device: torch.device) -> torch.dtype | None:
    """Training's autocast dtype (``solver.amp``): bf16 on CUDA or the CPU, fp16 on CUDA only."""
    if not cfg.solver.amp.enabled:
        return None
    dtype = str(cfg.solver.amp.dtype)
    if device.type != "cuda" and dtype != "bf16":
        raise ValueError(
            f"solver.amp.dtype={dtype} with solver.amp.enabled=true needs a CUDA device, got device {device}; "
            "use solver.amp.dtype=bf16 on the CPU or set solver.amp.enabled=false"
        )
    return AMP_DTYPES[dtype]


def config_differences(old: Mapping, new: Mapping, prefix: str = "") -> list[str]:
    """``"solver.base_lr: 0.01 -> 0.02"`` for every key whose value differs (nested)."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            diffs += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return diffs


def _run_summary(run: Run, config_source: str) -> list[str]:
    """The summary's first lines, every task's: config, output folder, processes."""
    cfg, info, device = run.cfg, run.dist_info, run.device
    return [
        f"config: {config_source} -> resolved copy {run.output_dir / 'config.yaml'}",
        f"output: {run.output_dir}",
        f"processes: {info.world_size} ({info.backend or 'single process'}), device {device}"
        + (f", {torch.get_num_threads()} compute threads"
           + (" (cpu_threads)" if int(cfg.cpu_threads) > 0 else ", fewer while other processes keep cores busy")
           if device.type == "cpu" else ""),
    ]


# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------
def run_training(
    task: Task,
    cfg,
    *,
    output_dir: str | os.PathLike,
    resume: bool = False,
    weights: str | None = None,
    device: str | None = None,
    config_source: str = "<python>",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train ``task``'s model as ``cfg`` says; returns the last evaluation's result.

    Args:
        task: the application's pieces (:class:`Task`).
        cfg: its resolved config (any schema with the run-level keys of
            ``detectron_res.config.RunConfig`` and a ``solver`` section).
        output_dir: run directory (checkpoints, config.yaml, log.txt, metrics.json...).
        resume: continue from ``output_dir/last_checkpoint`` when there is one
            (model, optimizer, scheduler, scaler, iteration, RNG, data position).
        weights: initialization when not resuming; overrides ``cfg.model.weights``.
        device: overrides ``cfg.device``.
        config_source: the config's name, for the summary.
        overwrite: start a new run in an ``output_dir`` that holds a previous one
            (its checkpoints are deleted first); without it (and without ``resume``)
            such a folder is refused (:func:`~detectron_res.outputs.check_run_dir`).

    Returns:
        on rank 0 the task's evaluation result (``{"scalars": {...}, ...}``; ``{}``
        when nothing was evaluated), plus ``"stopped_early"`` when training ended
        before ``max_iter`` and ``"stop"`` (:func:`stop_report`, in place of the
        metrics) when a SIGTERM / SIGUSR1 stopped it.
    """
    # Before anything is written (log.txt included): a previous run is never replaced by accident.
    output_dir = check_run_dir(output_dir, resume=resume, overwrite=overwrite,
                               inputs=[("--weights", weights), ("model.weights", str(cfg.model.weights))])
    with run_process(cfg, device, output_dir) as (dist_info, dev):
        if overwrite and not resume and dist_info.is_main:
            for p in remove_previous_run(output_dir):
                logger.info("--overwrite: deleted %s of the previous run", p)
        return _train(task, cfg, output_dir=output_dir, resume=resume, weights=weights, dist_info=dist_info,
                      device=dev, config_source=config_source)


def _train(task: Task, cfg, *, output_dir: Path, resume: bool, weights: str | None, dist_info: DistInfo,
           device: torch.device, config_source: str) -> dict[str, Any]:
    world, rank = dist_info.world_size, dist_info.rank
    cfg.output_dir = str(output_dir)  # the saved config says where its outputs are
    s = cfg.solver
    if s.ims_per_batch % world != 0:
        raise ValueError(
            f"solver.ims_per_batch={s.ims_per_batch} (the global batch) is not divisible by the {world} processes; "
            f"use a multiple of {world}"
        )
    dtype = amp_dtype(cfg, device)
    data = task.load_data(cfg)

    # Model initialization draws from the global RNG; the same seed on every rank
    # (DDP also broadcasts rank 0's weights). Per-rank streams are re-seeded below.
    seed_everything(int(cfg.seed))
    model = task.build_model(cfg)

    state = None
    if resume:
        last = find_last_checkpoint(output_dir)
        if last is None:
            logger.info("--resume: no checkpoint in %s, starting from the initial weights", output_dir)
        else:
            state = task.read_checkpoint(last)
    if state is not None:
        task.restore(model, state, path=last, run_dir=output_dir, data=data)
        diffs = config_differences(state.get("config") or {}, config_to_dict(cfg))
        if diffs:
            logger.warning("Resuming %s with a config that differs from the checkpoint's: %s", last, "; ".join(diffs))
        init = f"resumed from {last} (after {state['iteration'] + 1} iterations)"
    else:
        source = weights if weights else str(cfg.model.weights)
        init = task.initialize(model, source, cfg, data) if source else task.no_weights
    start_iter = int(state["iteration"]) + 1 if state is not None else 0

    model.to(device)
    optimizer, scheduler = build_optimizer_and_scheduler(cfg, model)
    train_model: nn.Module = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if state is not None and state.get("sampler", {}).get("world_size", world) != world:
        logger.warning("Checkpoint was written by %d processes, resuming with %d: the data order differs from an "
                       "uninterrupted run", state["sampler"]["world_size"], world)
    loader = task.train_loader(cfg, data, rank=rank, world_size=world, start_iter=start_iter, device=device)

    trainer = task.trainer_class(
        model=train_model, optimizer=optimizer, scheduler=scheduler, data_loader=loader, max_iter=int(s.max_iter),
        start_iter=start_iter, device=device, amp_dtype=dtype, clip_grad_norm=float(s.clip_grad_norm),
        sampler_seed=int(cfg.seed),
        extra_state={"config": config_to_dict(cfg), **task.checkpoint_header(cfg, model, data)},
    )
    run = Run(cfg=cfg, output_dir=output_dir, dist_info=dist_info, device=device, amp_dtype=dtype, data=data,
              model=model, init=init, start_iter=start_iter,
              resumed_from_iter=int(state["iteration"]) if state is not None else None)
    evaluate = task.evaluator(run)
    last_eval: dict[str, Any] = {}

    def eval_fn() -> Mapping:
        nonlocal last_eval
        last_eval = evaluate(trainer.iter + 1 >= trainer.max_iter)
        return last_eval.get("scalars", {})

    if device.type == "cpu" and int(cfg.cpu_threads) == 0:
        # Fewer compute threads while other processes keep cores busy (engine/threads.py).
        trainer.register_hooks([ComputeThreads(max_threads=torch.get_num_threads())])
    checkpointer = Checkpointer(output_dir, keep_last=int(s.keep_last), save_to_disk=dist_info.is_main)
    trainer.register_hooks(task.add_hooks(run, default_hooks(
        checkpointer=checkpointer,
        optimizer=optimizer,
        scheduler=scheduler,
        checkpoint_period=int(s.checkpoint_period),
        output_dir=output_dir,
        log_period=int(cfg.log_period),
        eval_period=int(cfg.test.eval_period),
        eval_fn=eval_fn if evaluate is not None else None,
        best_metric=task.best_metric(cfg),
        resume_from_iter=run.resumed_from_iter,
        is_main=dist_info.is_main,
    )))
    if state is not None:
        trainer.load_training_state(state)
    else:
        # Per-rank random streams (augmentation, RoI sampling) after the shared
        # initialization; a resumed run has just restored its streams instead.
        seed_everything(int(cfg.seed) + rank)

    if dist_info.is_main:
        checkpointer.remove_stale_temporaries()  # left by a process killed while writing
        save_config(cfg, output_dir / "config.yaml")
        lines = _run_summary(run, config_source) + task.summary_lines(run)
        logger.info("Training summary:\n%s", "\n".join("  " + line for line in lines))
    comm.synchronize()
    start = time.perf_counter()
    trainer.train()
    logger.info("Training ended after %.1f s; outputs in %s", time.perf_counter() - start, output_dir)
    result = dict(last_eval)
    if not trainer.completed:
        result["stopped_early"] = True
    stop = stop_report(trainer, output_dir)
    if stop is not None:
        result["stop"] = stop
        result.pop("scalars", None)  # metrics of an earlier evaluation, not of the final model
        result.pop("full", None)
        if dist_info.is_main:
            logger.warning("%s", stop["message"])
    return result


def stop_report(trainer: Trainer, output_dir: Path) -> dict[str, Any] | None:
    """What a SIGTERM / SIGUSR1 interrupted, with the one-line message for the user (None: nothing)."""
    preemption = next((h for h in trainer.hooks if isinstance(h, PreemptionHandler)), None)
    evaluation = next((h for h in trainer.hooks if isinstance(h, EvalHook)), None)
    interrupted = evaluation.interrupted if evaluation is not None else None
    if preemption is not None and preemption.stopped_at is not None:
        it = preemption.stopped_at
        during_eval = interrupted is not None and evaluation.interrupted_iter == it
        where = (f"during the evaluation after {it + 1} of {trainer.max_iter} iterations ({interrupted.images_done}/"
                 f"{interrupted.images_total} images of '{interrupted.dataset}', abandoned)" if during_eval
                 else f"after {it + 1} of {trainer.max_iter} iterations")
        return {
            "signal": preemption.signal_name, "iteration": it, "checkpoint": str(preemption.checkpoint),
            "phase": "evaluation" if during_eval else "training",
            "message": f"stopped by {preemption.signal_name} {where}; checkpoint {preemption.checkpoint} written; "
                       f"continue with: --resume (output: {output_dir})",
        }
    if interrupted is not None and trainer.completed:
        final = output_dir / "model_final.pth"
        return {
            "signal": interrupted.signal_name, "iteration": trainer.max_iter - 1, "checkpoint": str(final),
            "phase": "final evaluation",
            "message": f"stopped by {interrupted.signal_name} during the final evaluation ({interrupted.images_done}/"
                       f"{interrupted.images_total} images of '{interrupted.dataset}', abandoned); training is "
                       f"complete ({final}); evaluate it with: --resume (output: {output_dir}), or --eval-only",
        }
    return None


# ---------------------------------------------------------------------------
# --eval-only
# ---------------------------------------------------------------------------
def run_evaluation(
    task: Task,
    cfg,
    *,
    output_dir: str | os.PathLike,
    weights: str | None = None,
    device: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """``--eval-only``: evaluate trained weights with ``task``'s evaluation.

    The weights are ``weights``, else ``cfg.model.weights`` when the task can
    evaluate them (:meth:`Task.evaluable`), else the latest checkpoint in
    ``output_dir``. The task's evaluation files are replaced only with ``overwrite``.

    Raises:
        EvaluationInterrupted: SIGTERM or SIGUSR1 arrived during inference (the
            interrupted dataset's results are not written).
    """
    output_dir = check_output_dir(output_dir, flag="--output-dir", overwrite=overwrite,
                                  files=task.evaluation_files(cfg))
    with run_process(cfg, device, output_dir) as (dist_info, dev):
        source = weights or str(cfg.model.weights)
        # An explicit --weights file is evaluated or refused with its own error, never
        # silently replaced by the run's last checkpoint.
        if not weights and not task.evaluable(source):
            last = find_last_checkpoint(output_dir)
            if last is None:
                raise ValueError(
                    f"--eval-only needs {task.eval_weights_hint}, or train into {output_dir} first "
                    f"(no {output_dir}/last_checkpoint); got model.weights={str(cfg.model.weights)!r}"
                )
            source = str(last)
        return task.evaluate_weights(cfg, source, output_dir=output_dir, dist_info=dist_info, device=dev)
