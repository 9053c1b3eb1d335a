"""The iteration-based training loop.

:class:`Trainer` does one thing per iteration (:meth:`Trainer.run_step`: fetch a
batch, forward, check the losses, backward, optimizer step); everything else
(LR schedule, checkpoints, evaluation, logging, preemption) is a :class:`HookBase`
called around it, in registration order::

    hook.before_train()
    for iteration in range(start_iter, max_iter):
        hook.before_step(); trainer.run_step(); hook.after_step()
    hook.after_train()

Iterations are 0-based: ``trainer.iter`` is the iteration being run; after a
checkpoint of iteration ``i``, a resumed trainer starts at ``i + 1``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from . import distributed as comm
from .checkpoint import CHECKPOINT_FORMAT_VERSION, capture_rng_state, restore_rng_state
from .events import MetricStorage
from .signals import STOP, StoppedWhileLoadingData

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; training stops before the weights are touched."""


class HookBase:
    """Something that runs around every training step.

    Subclasses override any of the four methods (the defaults do nothing, so a hook
    only implements the events it cares about); ``self.trainer`` is set by
    :meth:`Trainer.register_hooks`.
    """

    trainer: "Trainer"

    def before_train(self) -> None:
        """Called once before the first iteration."""

    def after_train(self) -> None:
        """Called once after the loop, also when it stopped by an exception or a signal."""

    def before_step(self) -> None:
        """Called before each :meth:`Trainer.run_step`."""

    def after_step(self) -> None:
        """Called after each successful :meth:`Trainer.run_step`."""

    def state_dict(self) -> dict:
        """State to keep in checkpoints (e.g. the best metric so far)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class Trainer:
    """SGD training of a detector for ``max_iter`` iterations.

    Args:
        model: a module (optionally wrapped in DistributedDataParallel) that, in
            training mode, maps a batch to a dict of scalar losses.
        optimizer: the optimizer (see :func:`detectron_res.engine.solver.build_optimizer`).
        data_loader: an INFINITE iterable of batches; each batch is moved with
            ``batch.to(device)`` when it has a ``to`` method.
        max_iter: number of iterations of the full schedule.
        device: device the model lives on.
        scheduler: LR scheduler stepped after every iteration (may be None).
        start_iter: first iteration to run (0, or checkpoint iteration + 1).
        amp_dtype: ``torch.bfloat16`` (CUDA or CPU) / ``torch.float16`` (CUDA only)
            to run the forward pass under autocast, or None for float32. The losses
            are computed in float32 either way (the heads cast their outputs).
        clip_grad_norm: clip the global gradient norm to this value (0 = no clipping).
        extra_state: constant entries added to every checkpoint (config, class
            names, category ids, input format).
        sampler_seed: seed of the training data order, recorded in checkpoints.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        data_loader: Iterable,
        max_iter: int,
        device: torch.device | str = "cpu",
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        start_iter: int = 0,
        amp_dtype: torch.dtype | None = None,
        clip_grad_norm: float = 0.0,
        extra_state: Mapping[str, Any] | None = None,
        sampler_seed: int = 0,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.data_loader = data_loader
        self.scheduler = scheduler
        self.max_iter = int(max_iter)
        self.start_iter = int(start_iter)
        self.iter = self.start_iter
        self.device = torch.device(device)
        self.clip_grad_norm = float(clip_grad_norm)
        self.extra_state = dict(extra_state or {})
        self.sampler_seed = int(sampler_seed)
        if amp_dtype not in (None, torch.bfloat16) and self.device.type != "cuda":
            raise ValueError(
                f"solver.amp.dtype={amp_dtype} needs a CUDA device, got device {self.device}; use "
                "solver.amp.dtype=bf16 on the CPU or set solver.amp.enabled=false"
            )
        self.amp_dtype = amp_dtype
        # fp16 gradients underflow without loss scaling; bf16 has float32's exponent range.
        self.grad_scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
        self.hooks: list[HookBase] = []
        self.storage = MetricStorage(start_iter=self.start_iter)
        self.completed = False  # True once iteration max_iter - 1 ran
        self.stop_requested = False  # set by a hook (preemption) to leave the loop cleanly
        self._data_iter = None

    # -- hooks --------------------------------------------------------------
    def register_hooks(self, hooks: Iterable[HookBase | None]) -> None:
        for h in hooks:
            if h is None:
                continue
            h.trainer = self
            self.hooks.append(h)

    # -- loop ---------------------------------------------------------------
    def train(self) -> None:
        """Run iterations ``start_iter .. max_iter - 1`` (or until a hook asks to stop)."""
        logger.info("Starting training from iteration %d of %d", self.start_iter, self.max_iter)
        self.model.train()
        # Creating a DataLoader iterator draws a seed from the global torch RNG;
        # fork it so that a resumed run's RNG stream matches an uninterrupted one.
        with torch.random.fork_rng(devices=[]):
            self._data_iter = iter(self.data_loader)
        if self.start_iter >= self.max_iter:
            logger.info("Checkpoint iteration %d already reaches solver.max_iter=%d: nothing to train",
                        self.start_iter - 1, self.max_iter)
            self.iter = self.max_iter - 1
        error: BaseException | None = None
        try:
            for h in self.hooks:
                h.before_train()
            for self.iter in range(self.start_iter, self.max_iter):
                self.storage.iteration = self.iter
                for h in self.hooks:
                    h.before_step()
                try:
                    self.run_step()
                except RuntimeError as e:
                    # DDP's gradient all-reduce fails when a peer is gone: say so in one line.
                    if comm.get_world_size() > 1 and comm.is_collective_failure(e):
                        comm.raise_collective_failure(f"iteration {self.iter}", e)
                    raise
                for h in self.hooks:
                    h.after_step()
                if self.stop_requested:
                    break
            else:
                self.completed = True
        except BaseException as e:
            error = e
            raise
        finally:
            self._after_train(error)

    def _after_train(self, error: BaseException | None) -> None:
        """Every hook's ``after_train``, even when one of them fails.

        A hook failing while training is already failing (e.g. a plot that cannot be
        written to the full disk that also stopped the checkpoint) is logged, so the
        user sees the original error; otherwise the first hook error is raised after
        all hooks ran (so signal handlers are restored in any case).
        """
        first: Exception | None = None
        for h in self.hooks:
            try:
                h.after_train()
            except Exception as e:
                if error is None and first is None:
                    first = e
                else:
                    logger.error("%s.after_train failed (%s: %s) after an earlier error", type(h).__name__,
                                 type(e).__name__, str(e).strip().splitlines()[0] if str(e).strip() else "")
        if first is not None:
            raise first

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def run_step(self) -> None:
        """One iteration: batch -> losses -> finite check -> backward -> (clip) -> step."""
        t0 = time.perf_counter()
        try:
            batch = next(self._data_iter)
        except RuntimeError as e:
            if STOP.signum is not None:  # a stop signal sent to the process group killed the workers too
                raise StoppedWhileLoadingData(STOP.name, self.iter, str(e).strip().splitlines()[0]) from None
            raise
        data_time = time.perf_counter() - t0
        if hasattr(batch, "to"):
            batch = batch.to(self.device)

        with self._autocast():
            loss_dict = self.model(batch)
        if not isinstance(loss_dict, Mapping) or not loss_dict:
            raise TypeError(f"model(batch) in training mode must return a non-empty dict of losses, got {type(loss_dict)}")
        losses = sum(loss_dict.values())

        # Mean over ranks, every iteration: for logging, and so that every rank
        # takes the same decision about a non-finite loss (none is left waiting).
        names = sorted(loss_dict)
        values = torch.stack([loss_dict[k].detach().float() for k in names])
        reduced = comm.all_reduce_mean(values).cpu().tolist()
        reduced_dict = dict(zip(names, reduced))
        total = float(sum(reduced))
        if not math.isfinite(total):
            # Numbered as the log's "iter: k/M" lines and checkpoint names count: iterations done.
            shown = ", ".join(f"{k}={v:.4g}" for k, v in reduced_dict.items())
            raise NonFiniteLossError(
                f"non-finite loss in iteration {self.iter + 1}/{self.max_iter}: {shown}; training stopped before the optimizer step, "
                "the last checkpoint is intact (lower solver.base_lr, raise solver.warmup_iters, "
                "or set solver.clip_grad_norm)"
            )

        self.optimizer.zero_grad(set_to_none=True)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
            if self.clip_grad_norm > 0:
                self.grad_scaler.unscale_(self.optimizer)
                self._clip()
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            losses.backward()
            if self.clip_grad_norm > 0:
                self._clip()
            self.optimizer.step()

        self.storage.put_scalars(total_loss=total, **reduced_dict)
        self.storage.put_scalar("data_time", data_time)

    def _clip(self) -> None:
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
        self.storage.put_scalar("grad_norm", float(norm))

    # -- state --------------------------------------------------------------
    def checkpoint_state(self) -> dict:
        """Everything needed to continue exactly after the current iteration."""
        # Every rank has its own random stream (RoI sampling, augmentation); keep
        # them all so that a resumed multi-process run continues each one.
        rng_all = comm.all_gather_object(capture_rng_state())
        rng = rng_all[0]
        state = {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "model": unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "scaler": self.grad_scaler.state_dict() if self.grad_scaler is not None else {},
            "iteration": self.iter,
            "rng": rng,
            # The loader is resumable by the number of batches each rank consumed.
            "sampler": {
                "batches_consumed": self.iter + 1,
                "seed": self.sampler_seed,
                "world_size": comm.get_world_size(),
            },
            "rng_ranks": rng_all if len(rng_all) > 1 else [],
            "hooks": {type(h).__name__: h.state_dict() for h in self.hooks if h.state_dict()},
            "metrics": self.storage.state_dict(),
        }
        state.update(self.extra_state)
        return state

    def load_training_state(self, state: Mapping[str, Any]) -> None:
        """Restore optimizer, scheduler, scaler, RNG and hook state from a checkpoint.

        The model weights are loaded by the caller (before wrapping in DDP); the
        iteration counter is set to resume after the checkpoint's iteration.
        """
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        if self.grad_scaler is not None and state.get("scaler"):
            self.grad_scaler.load_state_dict(state["scaler"])
        hook_states = state.get("hooks", {})
        for h in self.hooks:
            if type(h).__name__ in hook_states:
                h.load_state_dict(hook_states[type(h).__name__])
        rank, world = comm.get_rank(), comm.get_world_size()
        per_rank = state.get("rng_ranks") or []
        if len(per_rank) == world and world > 1:
            restore_rng_state(per_rank[rank])
        elif "rng" in state:
            if world > 1 or per_rank:
                logger.warning("Checkpoint was written by %d processes, resuming with %d: RNG streams "
                               "restart from rank 0's state", max(len(per_rank), 1), world)
            restore_rng_state(state["rng"])
        self.start_iter = self.iter = int(state["iteration"]) + 1
        self.storage = MetricStorage(start_iter=self.start_iter)
        self.storage.load_state_dict(state.get("metrics") or {})


def run_without_rng_side_effects(fn: Callable[[], Any]) -> Any:
    """Call ``fn`` and restore the Python, NumPy and torch RNG states afterwards.

    Periodic evaluation builds data loaders (which draw seeds) and may run random
    code; isolating it keeps a run's training randomness identical whether or not,
    and how often, it evaluates, which exact resume relies on.
    """
    state = capture_rng_state()
    try:
        return fn()
    finally:
        restore_rng_state(state)
