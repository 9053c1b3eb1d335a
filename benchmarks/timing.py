"""How the benchmark times things: turns, CPU and wall time, peak memory, the budget.

* :class:`Timer` times one call (wall and the process's CPU seconds), synchronizing
  the device around it; :func:`interleaved_timings` calls several functions in
  turns (A B, B A, ...) so that each sees the same background load;
* :func:`more_rounds` gives the comparison of one part as many turns as
  :class:`Budget` allows after its first calls (see :func:`first_call_is_timed`);
* :func:`peak_memory` measures one call's peak memory (CUDA allocator or the
  CPU's resident set);
* :func:`first_calls` makes the first call of every variant (peak memory).

A variant's precision is the library's own switch,
:func:`detectron_res.precision.autocast`, as ``Predictor``, evaluation and the
trainer use it.

What is timed: ``inference.py``, ``training.py``, ``contention.py``, ``sweeps.py``.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously; the CPU needs nothing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Wall time of one call, synchronizing the device before and after.

    Also keeps the CPU time the process spent in the call (all threads) in
    ``last_cpu_s``: on a CPU shared with other jobs, wall time grows with their
    load while CPU time mostly does not, so it is a steadier second measure.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.last_cpu_s = 0.0

    def __call__(self, fn: Callable[[], object]) -> float:
        synchronize(self.device)
        cpu_start = time.process_time()
        start = time.perf_counter()
        fn()
        synchronize(self.device)
        wall = time.perf_counter() - start
        self.last_cpu_s = time.process_time() - cpu_start
        return wall


def interleaved_timings(
    fns: Dict[str, Callable[[], object]],
    *,
    device: torch.device,
    warmup: int,
    repeats: int,
    cpu_times: Optional[Dict[str, List[float]]] = None,
) -> Dict[str, List[float]]:
    """Wall seconds per call of each function, the functions run in turns.

    Taking turns (A B, B A, A B, ...) exposes every function to the same
    background load on a shared machine, so their ratio is meaningful even when
    the absolute times drift. ``warmup`` untimed turns come first (allocator,
    oneDNN/cuDNN kernel selection, caches). If ``cpu_times`` is given, the
    process's CPU seconds of each call are appended to ``cpu_times[name]``.
    """
    timer = Timer(device)
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            times[name].append(timer(fns[name]))
            if cpu_times is not None:
                cpu_times.setdefault(name, []).append(timer.last_cpu_s)
    return times


def _rss_bytes(field_name: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_memory(fn: Callable[[], object], device: torch.device) -> Dict[str, Optional[float]]:
    """Peak memory of one call, in MiB, beyond what was allocated before it.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only). CPU: the process's
    resident-set high-water mark (``VmHWM``), reset before the call through
    ``/proc/self/clear_refs``; it includes allocator slack, so it is an upper
    bound of what the tensors need. ``None`` where neither is available.
    """
    mib = 1024.0 * 1024.0
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return {"peak_mib": (torch.cuda.max_memory_allocated(device) - before) / mib, "method": "cuda max_memory_allocated"}
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        return {"peak_mib": None, "method": "unavailable (no /proc/self/clear_refs)"}
    before = _rss_bytes("VmRSS")
    fn()
    peak = _rss_bytes("VmHWM")
    if before is None or peak is None:
        return {"peak_mib": None, "method": "unavailable (no VmHWM in /proc/self/status)"}
    return {"peak_mib": (peak - before) / mib, "method": "RSS high-water mark above the RSS before"}


class Budget:
    """Wall-time bookkeeping: how many repeats fit in what is left of ``total_s``."""

    def __init__(self, total_s: float):
        self.total_s = float(total_s)
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.total_s - self.elapsed()

    def repeats(
        self, seconds_per_round: float, share_s: float, *, minimum: int = 1, maximum: int = 7, reserve_s: float = 0.0
    ) -> int:
        """Timed rounds that fit in ``min(share_s, time left - reserve_s)``, within ``[minimum, maximum]``.

        ``reserve_s``: what the parts still to come need for their first turns.
        """
        room = min(share_s, self.left() - reserve_s)
        return max(minimum, min(maximum, int(room // max(seconds_per_round, 1e-6))))

    def fits(self, estimate_s: float) -> bool:
        """Whether a part estimated to take ``estimate_s`` still fits in what is left."""
        return estimate_s <= self.left()


def first_calls(
    fns: Dict[str, Callable[[], Any]], device: torch.device
) -> Tuple[Dict[str, float], Dict[str, float], Dict[str, Any]]:
    """One call of every function in turn, each measuring its peak memory.

    Returns wall seconds, CPU seconds and :func:`peak_memory` of each call: the
    first turn, which :func:`more_rounds` counts as a timed one on the CPU.
    """
    wall_s: Dict[str, float] = {}
    cpu_s: Dict[str, float] = {}
    memory: Dict[str, Any] = {}
    for name, fn in fns.items():
        cpu_start, start = time.process_time(), time.perf_counter()
        memory[name] = peak_memory(fn, device)
        wall_s[name] = time.perf_counter() - start
        cpu_s[name] = time.process_time() - cpu_start
    return wall_s, cpu_s, memory


def first_call_is_timed(device: torch.device) -> bool:
    """On the CPU the first call of a detector is as fast as later ones (measured: a
    training iteration 49.6 s first, 51.6 s second; torchvision's 54.2 s, 53.8 s), so
    it is a timed sample, once the inference section has made one untimed call of
    ours (the process's very first call at new shapes is slower); on CUDA it pays
    for kernel selection and is a warm-up only."""
    return device.type == "cpu"


def more_rounds(
    args, fns: Dict[str, Callable[[], Any]], first_s: Dict[str, float], first_cpu_s: Dict[str, float],
    budget: Budget, share_s: float, reserve_s: float = 0.0,
) -> Tuple[Dict[str, List[float]], Dict[str, List[float]]]:
    """Timed rounds after the first calls (which took ``first_s``), as many as the budget allows
    (``share_s`` for this part, keeping ``reserve_s`` for the parts to come).

    Returns wall and CPU seconds per call of each function; on the CPU the first
    calls are included (see :func:`first_call_is_timed`).
    """
    device = args.device
    counted = first_call_is_timed(device)
    per_round = sum(first_s.values())
    repeats = budget.repeats(
        per_round, share_s - per_round, minimum=max(args.min_repeats - int(counted), 0),
        maximum=args.max_repeats - int(counted), reserve_s=reserve_s,
    )
    cpu_times: Dict[str, List[float]] = {}
    times = interleaved_timings(fns, device=device, warmup=0, repeats=repeats, cpu_times=cpu_times)
    if counted:
        for name, seconds in first_s.items():
            times[name].insert(0, seconds)
            cpu_times.setdefault(name, []).insert(0, first_cpu_s[name])
    return times, cpu_times
