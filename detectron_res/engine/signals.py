"""Stop requests from cluster schedulers: SIGTERM and SIGUSR1.

Schedulers (SLURM, Kubernetes, torchrun's agent) send SIGTERM, or SIGUSR1 a while
before the time limit, and SIGKILL after a grace period.  The handler installed
here only records the signal; the work stops at the next safe point:

* training: after the current iteration, which is then checkpointed
  (:class:`detectron_res.engine.hooks.PreemptionHandler`);
* evaluation (periodic, final or ``--eval-only``): before the next batch, by
  :class:`StoppableLoader` raising :class:`EvaluationInterrupted`; the partial
  evaluation is abandoned (nothing is written for that dataset);
* the evaluation a resumed run redoes before training (an earlier run was stopped
  during it): :class:`StoppedBeforeTraining`, the checkpoint is unchanged.

In a distributed run the ranks agree (one tiny all-reduce) so that all stop at the
same iteration or batch, even when only some of them were signalled.

Signal handlers belong to the process, so the request is one process-wide object,
:data:`STOP`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
from typing import Any, Iterable, Iterator

from . import distributed as comm

logger = logging.getLogger(__name__)

STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s is not None)


class EvaluationInterrupted(Exception):
    """A stop signal arrived during evaluation; the evaluation was abandoned.

    Attributes:
        signal_name: ``"SIGTERM"``, ``"SIGUSR1"`` or ``"a signal on another rank"``.
        dataset: name of the dataset being evaluated.
        images_done: images this rank had processed.
        images_total: images this rank had to process.
    """

    def __init__(self, signal_name: str, dataset: str, images_done: int, images_total: int) -> None:
        self.signal_name = signal_name
        self.dataset = dataset
        self.images_done = images_done
        self.images_total = images_total
        super().__init__(f"evaluation of '{dataset}' stopped by {signal_name} after {images_done}/{images_total} "
                         "images; no results were written for it")


class StoppedBeforeTraining(Exception):
    """A stop signal arrived while a resumed run redid the evaluation that an earlier
    kill or signal cut short (:meth:`detectron_res.engine.hooks.EvalHook.before_train`);
    nothing was trained and nothing new was written, so ``--resume`` starts over
    from the same checkpoint.

    Attributes:
        signal_name: ``"SIGTERM"``, ``"SIGUSR1"`` or ``"a signal on another rank"``.
        iteration: the checkpoint's iteration, whose evaluation was being redone.
    """

    def __init__(self, signal_name: str, iteration: int, detail: str = "") -> None:
        self.signal_name = signal_name
        self.iteration = iteration
        super().__init__(f"stopped by {signal_name} while redoing the evaluation of iteration {iteration + 1}"
                         f"{f' ({detail})' if detail else ''}; nothing was trained")


class StoppedWhileLoadingData(Exception):
    """A stop signal arrived while training waited for a batch, and the data
    loader's worker processes died of it (the scheduler signalled the whole process
    group). The iteration did not run; the last checkpoint is the one to resume from.

    Attributes:
        signal_name: ``"SIGTERM"`` or ``"SIGUSR1"``.
        iteration: the iteration that was waiting for its batch (0-based).
    """

    def __init__(self, signal_name: str, iteration: int, reason: str) -> None:
        self.signal_name = signal_name
        self.iteration = iteration
        super().__init__(f"stopped by {signal_name} while iteration {iteration + 1} waited for its batch; the "
                         f"signal also stopped the data loader's worker processes ({reason})")


class StopRequest:
    """Records SIGTERM / SIGUSR1 while installed (see the module docstring)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._sigchld_handler: Any = None  # DataLoader's, while set aside after a signal

    def install(self) -> bool:
        """Start recording (and clear an earlier request).  Returns False, with a
        warning, outside the main thread, where Python cannot install handlers."""
        self.signum = None
        if threading.current_thread() is not threading.main_thread():
            logger.warning("Not in the main thread: SIGTERM/SIGUSR1 keep their default action (no checkpoint on "
                           "preemption)")
            return False
        for s in STOP_SIGNALS:
            previous = signal.signal(s, self._handle)
            self._previous.setdefault(s, previous)
        return True

    def restore(self) -> None:
        """Put the previous handlers back; the recorded signal is kept for reporting."""
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous.clear()
        if self._sigchld_handler is not None:
            signal.signal(signal.SIGCHLD, self._sigchld_handler)
            self._sigchld_handler = None

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            logger.warning("Received %s: stopping at the next safe point (end of the current iteration, or the "
                           "next evaluation batch)", signal.Signals(signum).name)
            self._set_aside_worker_death_alarm()

    def _set_aside_worker_death_alarm(self) -> None:
        """Keep the DataLoader's worker processes from ending the current step.

        Schedulers that signal every process of a job (SLURM at the time limit or on
        ``scancel``; ``kill -TERM -- -PGID``) stop the loader's workers with the same
        SIGTERM. PyTorch's SIGCHLD handler would then raise "DataLoader worker
        ... is killed by signal" wherever the main process is, in the middle of the
        step whose batch it already has, and no checkpoint would be written. Until
        :meth:`restore`, SIGCHLD gets a handler that does nothing (a handler rather
        than SIG_DFL: Python warns about a pending signal whose handler became
        SIG_DFL). A fetch that then finds a dead worker raises
        :class:`StoppedWhileLoadingData` in the trainer instead.
        """
        sigchld = getattr(signal, "SIGCHLD", None)
        if sigchld is None or self._sigchld_handler is not None:
            return
        current = signal.getsignal(sigchld)
        if callable(current):  # the DataLoader's (or another library's) handler
            self._sigchld_handler = current
            signal.signal(sigchld, _ignore_signal)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "a signal on another rank"

    def agreed(self) -> bool:
        """True on every rank when any rank received a stop signal (a collective)."""
        return comm.any_rank(self.signum is not None)


def _ignore_signal(signum, frame) -> None:
    """A handler that does nothing (see StopRequest._set_aside_worker_death_alarm)."""


STOP = StopRequest()


@contextlib.contextmanager
def stop_signals_recorded() -> Iterator[StopRequest]:
    """``with stop_signals_recorded():`` records SIGTERM / SIGUSR1 in :data:`STOP` inside the block."""
    STOP.install()
    try:
        yield STOP
    finally:
        STOP.restore()


class StoppableLoader:
    """An evaluation loader that raises :class:`EvaluationInterrupted` before the next
    batch once a stop signal was received.

    Attributes other than iteration (``dataset``, ``batch_sampler``, ``len()``) are
    those of the wrapped loader.

    Args:
        loader: the test loader of this rank; batches have ``image_ids``.
        dataset_name: for the message.
        num_images: images of this rank.
        aligned_batches: number of leading batches that EVERY rank has (rank shares
            differ by one image); the cross-rank check runs before each of them only,
            so that all ranks take part in the same number of collectives.  None in a
            single process (check before every batch).
    """

    def __init__(self, loader: Iterable, *, dataset_name: str, num_images: int,
                 aligned_batches: int | None = None) -> None:
        self.loader = loader
        self.dataset_name = dataset_name
        self.num_images = int(num_images)
        self.aligned_batches = aligned_batches

    @staticmethod
    def aligned_batch_count(dataset_size: int, world_size: int, images_per_batch: int) -> int | None:
        """Batches that every rank's share has (the smallest share is ``size // world``)."""
        if world_size <= 1:
            return None
        return math.ceil((dataset_size // world_size) / images_per_batch)

    def __getattr__(self, name: str):
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self):
        done = 0
        index = 0
        iterator = iter(self.loader)
        while True:
            if self.aligned_batches is None:
                stop = STOP.signum is not None
            else:
                stop = index < self.aligned_batches and STOP.agreed()
            if stop:
                raise EvaluationInterrupted(STOP.name, self.dataset_name, done, self.num_images)
            try:
                batch = next(iterator)
            except StopIteration:
                return
            yield batch
            done += len(batch.image_ids)
            index += 1
