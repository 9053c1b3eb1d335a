"""Compute threads on a shared CPU: no more torch threads than the cores other processes leave free.

Why: torch runs every large operator (oneDNN convolutions, elementwise ops, the
sparse RoIAlign product) as an OpenMP parallel region over all its threads, and a
region ends when its slowest thread does. With 2 threads on 2 cores and one other
busy process, the scheduler parks one of our threads behind that process for a time
slice now and then, and every region waits for it: the cost is per region, not per
multiply-add. A training step is a few thousand regions, so the more efficient a
detector is (fewer multiply-adds per region), the larger the share of its time
spent waiting; that is why our detector lost more than torchvision's under load
(``benchmarks/OPTIMIZATIONS.md``, "Training under contention"). One thread per free
core never waits for a parked sibling.

:class:`CpuLoadMeter` measures how many cores the OTHER processes kept busy
(``/proc/stat`` less this process's own CPU time); :func:`threads_for_load` turns
that into a thread count; :class:`ComputeThreads` is the training hook that
re-decides every few seconds (config key ``cpu_threads``: 0 = this policy, N = a
fixed N).
"""

from __future__ import annotations

import logging
import math
import os
import time

import torch

from .trainer import HookBase

logger = logging.getLogger(__name__)

__all__ = ["CpuLoadMeter", "ComputeThreads", "available_cores", "threads_for_load"]


def available_cores() -> int:
    """Cores this process may run on (its affinity mask; ``os.cpu_count()`` where unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_for_load(others_busy: float, *, max_threads: int, cores: int) -> int:
    """Threads for one process when other processes keep ``others_busy`` cores busy.

    The cores left free, rounded to the nearest whole core, within ``[1, max_threads]``:
    2 cores with one busy process beside -> 1 thread; half a core taken -> still 2.
    """
    free = cores - max(0.0, others_busy)
    return max(1, min(int(max_threads), int(math.floor(free + 0.5))))


class CpuLoadMeter:
    """Busy cores of the other processes between two calls of :meth:`sample`.

    System-wide busy time from the ``cpu`` line of ``/proc/stat`` (everything but
    idle and iowait; steal counts as busy: another VM took the core), less this
    process's CPU time (``time.process_time``, all its threads), over the wall time
    between samples. Loader workers are other processes: when they keep a core
    busy, training should leave it to them.
    """

    def __init__(self, stat_path: str = "/proc/stat") -> None:
        self.stat_path = stat_path
        self._ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._last = self._read()

    def _read(self):
        try:
            with open(self.stat_path) as f:
                fields = f.readline().split()
        except OSError:
            return None
        if not fields or fields[0] != "cpu":
            return None
        values = [int(v) for v in fields[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        # guest and guest_nice (fields 9, 10) are already counted in user and nice.
        busy = sum(values[:8]) - idle
        return time.perf_counter(), busy / self._ticks, time.process_time()

    @property
    def available(self) -> bool:
        """Whether the system's CPU time can be read (Linux)."""
        return self._last is not None

    def sample(self) -> float | None:
        """Cores the other processes kept busy since the previous sample (None without ``/proc/stat``)."""
        now = self._read()
        last, self._last = self._last, now
        if now is None or last is None or now[0] - last[0] <= 0:
            return None
        wall = now[0] - last[0]
        others = (now[1] - last[1]) - (now[2] - last[2])
        return max(0.0, others / wall)


class ComputeThreads(HookBase):
    """Training hook: every ``period_s`` seconds (at the end of a step), set torch's
    thread count to :func:`threads_for_load` of the load the other processes put on
    the CPU in that time, between 1 and the count training started with.

    Logs every change and records ``cpu_threads`` in the metrics. Inert where the
    start count is 1, or without ``/proc/stat``. Results do not depend on the
    thread count beyond float rounding (a reduction split over other threads), so
    with it a run is not bitwise reproducible; ``cpu_threads=N`` fixes the count.
    """

    def __init__(self, *, max_threads: int, period_s: float = 2.0, cores: int | None = None,
                 meter: CpuLoadMeter | None = None) -> None:
        self.max_threads = int(max_threads)
        self.period_s = float(period_s)
        self.cores = int(cores) if cores is not None else available_cores()
        self.meter = meter
        self._last_check = 0.0

    def before_train(self) -> None:
        if self.max_threads <= 1:
            return
        self.meter = self.meter or CpuLoadMeter()
        if not self.meter.available:
            logger.info("cpu_threads: no /proc/stat; keeping %d compute threads", self.max_threads)
            return
        self._last_check = time.perf_counter()

    def after_step(self) -> None:
        if self.max_threads <= 1 or self.meter is None or not self.meter.available:
            return
        # The count this step ran with, in metrics.json beside its time.
        self.trainer.storage.put_scalar("cpu_threads", float(torch.get_num_threads()), smooth=False)
        now = time.perf_counter()
        if now - self._last_check < self.period_s:
            return
        self._last_check = now
        others = self.meter.sample()
        if others is None:
            return
        current = torch.get_num_threads()
        wanted = threads_for_load(others, max_threads=self.max_threads, cores=self.cores)
        if wanted != current:
            logger.info("compute threads %d -> %d (other processes kept %.1f of %d cores busy)", current, wanted,
                        others, self.cores)
            torch.set_num_threads(wanted)

    def after_train(self) -> None:
        if self.max_threads > 1 and torch.get_num_threads() != self.max_threads:
            torch.set_num_threads(self.max_threads)  # leave the process as training found it
