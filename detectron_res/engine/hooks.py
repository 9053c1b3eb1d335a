"""Hooks run around :meth:`Trainer.run_step`: LR schedule, timing, checkpoints,
evaluation, best-model selection, preemption signals and metric writers.

Register them in this order (``build_hooks`` in :mod:`detectron_res.engine.defaults`
does): timer, LR scheduler, periodic checkpointer, evaluation, best checkpointer,
preemption handler, metrics writer.  The checkpoint of an iteration is written
before its evaluation, so a crash in evaluation never costs the checkpoint, and
the writer runs last so that a log line holds everything recorded in the step.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from . import distributed as comm
from .checkpoint import Checkpointer, CheckpointError, CheckpointWriteError, load_checkpoint
from .events import JSONWriter, TensorboardWriter, format_eta, plot_training_curves
from .signals import STOP, STOP_SIGNALS, EvaluationInterrupted, StoppedBeforeTraining, stop_signals_recorded
from .trainer import HookBase, run_without_rng_side_effects

logger = logging.getLogger(__name__)


class IterationTimer(HookBase):
    """Records ``time`` (seconds per iteration, data loading included) and the total."""

    def __init__(self) -> None:
        self._step_start = 0.0
        self._train_start = 0.0
        self._steps = 0
        self._step_time_total = 0.0

    def before_train(self) -> None:
        self._train_start = time.perf_counter()

    def before_step(self) -> None:
        self._step_start = time.perf_counter()

    def after_step(self) -> None:
        elapsed = time.perf_counter() - self._step_start
        self.trainer.storage.put_scalar("time", elapsed)
        self._steps += 1
        self._step_time_total += elapsed

    def after_train(self) -> None:
        total = time.perf_counter() - self._train_start
        if self._steps:
            logger.info(
                "Trained %d iterations in %s (%.4f s/it; hooks and evaluation included: %s)",
                self._steps, format_eta(self._step_time_total), self._step_time_total / self._steps, format_eta(total),
            )


class LRScheduler(HookBase):
    """Records the LR used by the step (``lr``), then steps the scheduler once per iteration."""

    def __init__(self, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
        self.optimizer = optimizer
        self.scheduler = scheduler

    def after_step(self) -> None:
        # param group 0 holds the weights (see build_optimizer); all groups share one LR.
        self.trainer.storage.put_scalar("lr", self.optimizer.param_groups[0]["lr"], smooth=False)
        self.scheduler.step()


def save_on_main_process(checkpointer: Checkpointer, name: str, state: Mapping[str, Any], **kwargs) -> Path | None:
    """``checkpointer.save`` on the main process; called on EVERY rank.

    When the main process cannot write (disk full, read-only directory), every rank
    raises :class:`CheckpointWriteError` at the same point, instead of the other
    ranks running on into a collective that rank 0 never joins.
    """
    error: CheckpointWriteError | None = None
    path = None
    try:
        path = checkpointer.save(name, state, **kwargs)
    except CheckpointWriteError as e:
        error = e
    if comm.any_rank(error is not None):
        if error is not None:
            raise error
        raise CheckpointWriteError(
            f"rank {comm.get_rank()}: the main process could not write {checkpointer.output_dir / (name + '.pth')}; "
            "its log has the reason"
        )
    return path


class PeriodicCheckpointer(HookBase):
    """Writes ``model_{N:07d}.pth`` every ``period`` iterations and ``model_final.pth`` at the end.

    ``N`` is the number of iterations done, as the log's ``iter: N/max_iter`` counts
    them: the checkpoint after the 700th iteration (0-based ``trainer.iter`` 699) is
    ``model_0000700.pth``. The ``iteration`` stored inside stays the 0-based index of
    the last iteration done, which is what ``--resume`` reads, so runs whose files
    were named by that index (``model_0000699.pth``, before this naming) resume alike.

    All ranks call :meth:`Trainer.checkpoint_state` (it gathers every rank's RNG
    state); only the main process writes.  No final checkpoint is written when
    training stopped with an error, so the last good one stays the newest.
    """

    def __init__(self, checkpointer: Checkpointer, period: int) -> None:
        self.checkpointer = checkpointer
        self.period = int(period)
        self.last_saved_iter: int | None = None
        self.last_saved_path: Path | None = None

    def save(self, name: str | None = None) -> None:
        it = self.trainer.iter
        state = self.trainer.checkpoint_state()
        name = name or f"model_{it + 1:07d}"  # iterations done (class docstring)
        save_on_main_process(self.checkpointer, name, state)
        self.last_saved_iter = it
        self.last_saved_path = self.checkpointer.output_dir / f"{name}.pth"

    def after_step(self) -> None:
        it = self.trainer.iter
        if self.period > 0 and (it + 1) % self.period == 0 and it + 1 < self.trainer.max_iter:
            self.save()

    def after_train(self) -> None:
        if self.trainer.completed:
            self.save("model_final")


def _flatten_metrics(metrics: Mapping, prefix: str = "") -> dict[str, float]:
    """``{"coco": {"AP": 1.0}}`` -> ``{"coco/AP": 1.0}`` (non-numbers dropped)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten_metrics(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


class EvalHook(HookBase):
    """Evaluates every ``period`` iterations (0 = only at the end) and at the end of training.

    Args:
        period: evaluation period in iterations (config ``test.eval_period``).
        eval_fn: called on EVERY rank with the model in eval mode; returns the
            metrics (nested dicts of numbers, e.g. ``{"voc": {"mAP50": 0.91}}``) on
            the main process.  They are broadcast, flattened to ``"voc/mAP50"`` and
            recorded in the trainer's storage.
    """

    def __init__(self, period: int, eval_fn: Callable[[], Mapping], metrics_file: str | Path | None = None) -> None:
        self.period = int(period)
        self.eval_fn = eval_fn
        # The run's metrics.json: on resume, whether the evaluation of the resumed
        # checkpoint's iteration was recorded (None: never redo one).
        self.metrics_file = Path(metrics_file) if metrics_file is not None else None
        self.latest: dict[str, float] = {}
        # Set when a stop signal cut an evaluation short (see detectron_res.engine.signals).
        self.interrupted: EvaluationInterrupted | None = None
        self.interrupted_iter: int | None = None
        self.redone_at: int | None = None  # the resumed iteration, when before_train evaluated it

    def _evaluate(self) -> None:
        model = self.trainer.model
        model.eval()
        try:
            # Keep training randomness independent of evaluation (exact resume).
            results = run_without_rng_side_effects(self.eval_fn)
        except EvaluationInterrupted as e:
            # Every rank stopped at the same batch (StoppableLoader agrees across
            # ranks); the partial evaluation is dropped and PreemptionHandler, which
            # runs next, checkpoints this iteration and ends training.
            self.interrupted, self.interrupted_iter = e, self.trainer.iter
            logger.warning("Evaluation at iteration %d abandoned: %s", self.trainer.iter + 1, e)
            return
        finally:
            model.train()
        metrics = comm.broadcast_object(_flatten_metrics(results or {}) if comm.is_main_process() else None)
        self.latest = metrics
        for name, value in metrics.items():
            self.trainer.storage.put_scalar(name, value, smooth=False)
        if metrics:
            logger.info(
                "Evaluation at iteration %d: %s",
                self.trainer.iter + 1, ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())),
            )
        comm.synchronize()

    def _periodic_at(self, it: int) -> bool:
        return self.period > 0 and (it + 1) % self.period == 0 and it + 1 < self.trainer.max_iter

    def before_train(self) -> None:
        # The checkpoint of an evaluation iteration is written before the evaluation
        # (hooks order), so a run killed or signalled during it resumes after that
        # iteration: evaluate the restored weights now unless metrics.json recorded
        # the evaluation. (The final evaluation is redone by after_train: a resumed
        # completed run counts as completed.)
        c = self.trainer.start_iter - 1
        if c < 0 or self.metrics_file is None or not self._periodic_at(c):
            return
        recorded = comm.broadcast_object(
            evaluation_recorded(self.metrics_file, c) if comm.is_main_process() else None)
        if recorded:
            return
        self.redone_at = c
        logger.info("The evaluation at iteration %d did not finish before the run stopped: evaluating now", c + 1)
        trainer = self.trainer
        trainer.iter = trainer.storage.iteration = c  # its metrics belong to iteration c
        # PreemptionHandler installs its handlers after this hook's before_train:
        # record stop signals here too, and stop before training on one.
        with stop_signals_recorded():
            try:
                self._evaluate()
            finally:
                trainer.iter = trainer.storage.iteration = trainer.start_iter
            if comm.any_rank(STOP.signum is not None):
                interrupted = self.interrupted
                self.interrupted = self.interrupted_iter = None  # reported by the exception instead
                detail = (f"{interrupted.images_done}/{interrupted.images_total} images of '{interrupted.dataset}', "
                          "abandoned") if interrupted is not None else ""
                raise StoppedBeforeTraining(STOP.name, c, detail)

    def after_step(self) -> None:
        if self._periodic_at(self.trainer.iter):
            self._evaluate()

    def after_train(self) -> None:
        if self.trainer.completed:
            self._evaluate()


def evaluation_recorded(metrics_file: str | Path, iteration: int) -> bool:
    """Whether ``metrics.json`` holds evaluation metrics (``dataset/metric`` keys) of ``iteration``."""
    path = Path(metrics_file)
    if not path.is_file():
        return False
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill mid-write
            continue
        if isinstance(record, dict) and record.get("iteration") == iteration and any("/" in k for k in record):
            return True
    return False


class BestCheckpointer(HookBase):
    """Keeps ``model_best.pth``: the checkpoint with the best value of ``metric``.

    Runs after :class:`EvalHook` and looks for ``metric`` among the values recorded
    at the current iteration.  On resume, the best value so far is read back from
    an existing ``model_best.pth`` of an earlier iteration.

    Args:
        checkpointer: where to write.
        metric: flattened metric name, e.g. ``"voc/mAP50"`` or ``"coco/AP"``
            (config ``test.best_metric``).
        mode: ``"max"`` (accuracy-like) or ``"min"`` (loss-like).
    """

    def __init__(self, checkpointer: Checkpointer, metric: str, mode: str = "max") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"BestCheckpointer mode={mode!r}: expected 'max' or 'min'")
        self.checkpointer = checkpointer
        self.metric = metric
        self.mode = mode
        self.best_value: float | None = None
        self.best_iter: int | None = None

    def before_train(self) -> None:
        path = self.checkpointer.output_dir / "model_best.pth"
        if self.trainer.start_iter > 0 and path.is_file():
            try:
                state = load_checkpoint(path)
            except CheckpointError as e:
                logger.warning("Ignoring unreadable %s: %s", path, e)
                return
            best = state.get("best_metric") or {}
            if best.get("name") == self.metric and state["iteration"] < self.trainer.start_iter:
                self.best_value, self.best_iter = float(best["value"]), int(state["iteration"])
        # An evaluation of the resumed iteration that EvalHook.before_train has just
        # redone (or whose model_best write a kill cut short): compare it now.
        c = self.trainer.start_iter - 1
        if c >= 0 and self.metric in self.trainer.storage.latest_at(c) and self.best_iter != c:
            self.trainer.iter = c
            try:
                self._check()
            finally:
                self.trainer.iter = self.trainer.start_iter

    def _better(self, value: float) -> bool:
        if self.best_value is None:
            return True
        return value > self.best_value if self.mode == "max" else value < self.best_value

    def _check(self) -> None:
        recorded = self.trainer.storage.latest_at(self.trainer.iter)
        evaluated = [k for k in recorded if "/" in k]
        if not evaluated:
            return  # no evaluation at this iteration
        if self.metric not in recorded:
            raise ValueError(
                f"test.best_metric={self.metric!r} is not among the evaluation metrics: {', '.join(sorted(evaluated))}"
            )
        value = recorded[self.metric]
        if math.isfinite(value) and self._better(value):
            self.best_value, self.best_iter = value, self.trainer.iter
            state = self.trainer.checkpoint_state()
            state["best_metric"] = {"name": self.metric, "value": value, "mode": self.mode}
            save_on_main_process(self.checkpointer, "model_best", state, update_pointer=False)
            logger.info("New best %s=%.4f at iteration %d: saved model_best.pth", self.metric, value,
                        self.trainer.iter + 1)

    def after_step(self) -> None:
        self._check()

    def after_train(self) -> None:
        if self.trainer.completed:
            self._check()


class PreemptionHandler(HookBase):
    """On SIGTERM or SIGUSR1 (sent by cluster schedulers before preemption), finish the
    current iteration, write a checkpoint and leave the loop cleanly.

    The signal only sets a flag (:data:`detectron_res.engine.signals.STOP`, which
    also makes a running evaluation stop before its next batch); the decision is
    shared across ranks each iteration (one tiny all-reduce) so that all ranks stop
    at the same iteration even when the scheduler signals only some of them.

    After training, ``stopped_at`` is the last iteration run (None when no signal
    stopped training) and ``checkpoint`` the file written for it.
    """

    SIGNALS = STOP_SIGNALS

    def __init__(self, periodic: PeriodicCheckpointer) -> None:
        self.periodic = periodic
        self.stopped_at: int | None = None
        self.checkpoint: Path | None = None
        self.signal_name: str | None = None

    @property
    def received(self) -> int | None:
        """The signal this process received (None if none)."""
        return STOP.signum

    def before_train(self) -> None:
        STOP.install()

    def after_step(self) -> None:
        if not STOP.agreed():
            return
        it = self.trainer.iter
        if self.periodic.last_saved_iter != it:
            self.periodic.save()
        self.trainer.stop_requested = True
        self.stopped_at, self.checkpoint, self.signal_name = it, self.periodic.last_saved_path, STOP.name
        logger.warning("Stopped by %s after iteration %d; checkpoint %s written, continue with --resume",
                       STOP.name, it + 1, self.checkpoint)

    def after_train(self) -> None:
        STOP.restore()


class MetricsWriter(HookBase):
    """Console lines, ``metrics.json`` (JSON lines) and TensorBoard events, every
    ``period`` iterations, at evaluations and at the end; the training-curves PNG
    after training.  Only constructed on the main process.

    Args:
        output_dir: run directory.
        period: log every this many iterations (config ``log_period``).
        resume_from_iter: checkpoint iteration when resuming (keeps earlier JSON
            lines), None for a fresh run (the file is started over).
        tensorboard: write TensorBoard events under ``output_dir/tensorboard``.
    """

    def __init__(self, output_dir: str | Path, *, period: int = 20, resume_from_iter: int | None = None,
                 tensorboard: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.period = max(1, int(period))
        self.resume_from_iter = resume_from_iter
        self.json = JSONWriter(self.output_dir / "metrics.json", resume_from_iter=resume_from_iter)
        self.tb = None
        if tensorboard:
            try:
                self.tb = TensorboardWriter(self.output_dir / "tensorboard")
            except ImportError as e:  # a declared dependency; a broken install should not stop training
                logger.warning("TensorBoard events disabled: %s (pip install tensorboard)", e)
        self._last_written = -1
        self._written_names: set[str] = set()

    def _write(self) -> None:
        trainer = self.trainer
        it = trainer.iter
        values = trainer.storage.latest_at(it)
        if it == self._last_written:
            # Second write at one iteration (the final evaluation after the last
            # step's line): only what was not written yet.
            values = {k: v for k, v in values.items() if k not in self._written_names}
        else:
            self._written_names = set()
        if not values:
            return
        self._last_written = it
        self._written_names |= set(values)
        self.json.write(it, values)
        if self.tb is not None:
            self.tb.write(it, values)
        self._console(it, values)

    def _console(self, it: int, values: dict[str, float]) -> None:
        storage = self.trainer.storage
        losses = "  ".join(f"{k}: {v:.4g}" for k, v in values.items() if k.startswith("loss") or k == "total_loss")
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted(values.items()) if "/" in k)
        parts = [f"iter: {it + 1}/{self.trainer.max_iter}", losses, metrics]
        if "lr" in values:
            parts.append(f"lr: {values['lr']:.3g}")
        if "time" in values:
            remaining = self.trainer.max_iter - it - 1
            parts.append(f"time: {values['time']:.3f} s/it")
            parts.append(f"data_time: {values.get('data_time', 0.0):.3f}")
            # ETA from the median iteration time of the recent window.
            parts.append(f"eta: {format_eta(storage.median('time') * remaining)}")
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            parts.append(f"max_mem: {torch.cuda.max_memory_allocated() / 2**20:.0f}M")
        logger.info("  ".join(p for p in parts if p))

    def before_train(self) -> None:
        # The checkpoint of iteration c is written before c's line (hooks order), so
        # a kill in between leaves no line for c; the checkpoint holds c's values.
        c = self.resume_from_iter
        if c is None:
            return
        values = self.trainer.storage.latest_at(c)
        # Metrics of an evaluation of c that EvalHook.before_train has just redone.
        redone = any(getattr(h, "redone_at", None) == c for h in self.trainer.hooks)
        if self.json.last_iteration >= c:
            # c's line is there (a signal stopped the run during c's evaluation):
            # add the redone evaluation's metrics as a second line of c.
            values = {k: v for k, v in values.items() if "/" in k} if redone else {}
        elif not ((c + 1) % self.period == 0 or c + 1 == self.trainer.max_iter or redone):
            values = {}
        if values:
            self.json.write(c, values)
            if self.tb is not None:
                self.tb.write(c, values)
            self._last_written, self._written_names = c, set(values)

    def after_step(self) -> None:
        it = self.trainer.iter
        evaluated = any("/" in k for k in self.trainer.storage.latest_at(it))
        if (it + 1) % self.period == 0 or it + 1 == self.trainer.max_iter or evaluated or self.trainer.stop_requested:
            self._write()

    def after_train(self) -> None:
        self._write()  # the final evaluation's metrics, or the step where training stopped
        self.json.close()
        if self.tb is not None:
            self.tb.close()
        try:
            png = plot_training_curves(self.output_dir / "metrics.json", self.output_dir / "training_curves.png")
        except ImportError as e:
            logger.warning("Training curves not plotted: %s (pip install matplotlib)", e)
            return
        if png is not None:
            logger.info("Training curves: %s", png)


def default_hooks(
    *,
    checkpointer: Checkpointer,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    checkpoint_period: int,
    output_dir: str | Path,
    log_period: int = 20,
    eval_period: int = 0,
    eval_fn: Callable[[], Mapping] | None = None,
    best_metric: str = "",
    resume_from_iter: int | None = None,
    is_main: bool = True,
    tensorboard: bool = True,
) -> list[HookBase]:
    """The standard hooks in their required order (see the module docstring).

    Args:
        checkpointer: writes into the run directory (``save_to_disk`` only on rank 0).
        optimizer, scheduler: the scheduler is stepped once per iteration.
        checkpoint_period: ``solver.checkpoint_period``.
        output_dir: run directory for metrics.json, TensorBoard and the curves PNG.
        log_period: ``log_period``.
        eval_period: ``test.eval_period`` (0 = only at the end).
        eval_fn: evaluation callable (None = no evaluation).
        best_metric: ``test.best_metric`` ("" = no model_best.pth).
        resume_from_iter: iteration of the checkpoint resumed from, or None.
        is_main: only the main process gets a metrics writer.
    """
    periodic = PeriodicCheckpointer(checkpointer, checkpoint_period)
    hooks: list[HookBase] = [IterationTimer()]
    if scheduler is not None:
        hooks.append(LRScheduler(optimizer, scheduler))
    hooks.append(periodic)
    if eval_fn is not None:
        hooks.append(EvalHook(eval_period, eval_fn, metrics_file=Path(output_dir) / "metrics.json"))
        if best_metric:
            hooks.append(BestCheckpointer(checkpointer, best_metric))
    elif best_metric:
        raise ValueError(f"test.best_metric={best_metric!r} needs evaluation: set data.test to a dataset")
    hooks.append(PreemptionHandler(periodic))
    if is_main:
        hooks.append(MetricsWriter(output_dir, period=log_period, resume_from_iter=resume_from_iter,
                                   tensorboard=tensorboard))
    return hooks
