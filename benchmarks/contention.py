"""Training under contention: a competing load, and the thread policy of our trainer under it.

* :class:`BusyLoad` starts busy processes beside the timed training steps (the
  contention part, ``--contention N``): what another job on a shared machine does;
* :class:`TrainerThreads` runs a training step of ours with the thread count
  ``tools/train_net.py`` would give it (:mod:`detectron_res.engine.threads`);
  :func:`uses_trainer_threads` says which variants run that way;
* :func:`contention_variants` are the four detectors the contention part times.

The part itself is ``training.training_section(..., contention=N)``: the same
timed training steps with the load running.
"""
from __future__ import annotations

import copy
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List

import torch
from torch import nn

from detectron_res.engine.threads import CpuLoadMeter, available_cores, threads_for_load


class BusyLoad:
    """A competing load: ``processes`` child processes spinning on the CPU.

    Each is a plain Python busy loop (``while True: pass``), one runnable thread,
    like another engineer's single-threaded job; with ``processes=1`` on a 2-core
    machine it takes one core's worth of time from whoever runs beside it. A context
    manager: started on entry, killed (by process id) on exit.
    """

    def __init__(self, processes: int):
        self.processes = int(processes)
        self._children: List[subprocess.Popen] = []

    def __enter__(self) -> "BusyLoad":
        for _ in range(self.processes):
            self._children.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        time.sleep(0.2 if self.processes else 0.0)  # let the scheduler see them
        return self

    def __exit__(self, *exc) -> None:
        for child in self._children:
            child.kill()
        for child in self._children:
            child.wait()
        self._children = []


class TrainerThreads:
    """A training step of ours with the thread count our trainer would give it.

    ``tools/train_net.py`` on the CPU (config ``cpu_threads=0``) runs
    :class:`detectron_res.engine.threads.ComputeThreads`: no more torch threads than
    the cores other processes leave free. Here the same decision is taken before
    every step of ours, from the load the other processes put on the CPU since its
    previous step (this process's own CPU time, torchvision's steps included, is
    not counted); the count is restored afterwards, so torchvision's steps run with
    torch's own count, as torchvision's users run them. On a quiet machine nothing
    changes. ``threads`` records the count of every call.
    """

    def __init__(self, step: Callable[[], Any]):
        self.step = step
        self.max_threads = torch.get_num_threads()
        self.cores = available_cores()
        self.meter = CpuLoadMeter()
        self.threads: List[int] = []

    def __call__(self) -> None:
        others = self.meter.sample()
        n = self.max_threads if others is None else threads_for_load(others, max_threads=self.max_threads,
                                                                     cores=self.cores)
        self.threads.append(n)
        torch.set_num_threads(n)
        try:
            self.step()
        finally:
            torch.set_num_threads(self.max_threads)


def uses_trainer_threads(variant: str) -> bool:
    """Ours' training variants run with our trainer's thread policy (and torchvision's
    copy named ``torchvision_trainer_threads``); ``ours_torch_threads`` keeps torch's count."""
    return (variant.startswith("ours") and variant != "ours_torch_threads") or variant == "torchvision_trainer_threads"


def contention_variants(ours: nn.Module, tv: nn.Module) -> Dict[str, nn.Module]:
    """Copies of both detectors under both thread policies: ours as its trainer runs it
    and with torch's count; torchvision with torch's count and with our trainer's policy."""
    return {"ours": copy.deepcopy(ours), "torchvision": copy.deepcopy(tv),
            "ours_torch_threads": copy.deepcopy(ours), "torchvision_trainer_threads": copy.deepcopy(tv)}
