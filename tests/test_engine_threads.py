"""Tests of detectron_res.engine.threads: compute threads by the load of the other processes.

The policy is checked against hand-worked cases, the meter against /proc/stat
snapshots written by the test (with the clocks it reads faked), and the hook inside
a real Trainer with a meter whose readings the test chooses.
"""

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import detectron_res.engine.threads as threads
from detectron_res.config import ConfigError, load_config
from detectron_res.engine.threads import ComputeThreads, CpuLoadMeter, threads_for_load
from detectron_res.engine.trainer import Trainer

from helpers import ToyDetector, ToyLoader


@pytest.mark.parametrize(
    "others, max_threads, cores, expected",
    [
        (0.0, 2, 2, 2),  # quiet machine: every core
        (0.3, 2, 2, 2),  # loader workers waking up now and then: keep both
        (0.6, 2, 2, 1),  # more than half a core taken: one thread
        (1.0, 2, 2, 1),  # one busy process beside (the benchmark's contention mode)
        (7.5, 2, 2, 1),  # an overloaded machine: never fewer than one
        (0.0, 4, 8, 4),  # never more than training started with
        (5.2, 4, 8, 3),  # 2.8 cores free -> 3
        (-0.1, 2, 2, 2),  # a negative reading (clock skew) counts as idle
    ],
)
def test_threads_for_load(others, max_threads, cores, expected):
    assert threads_for_load(others, max_threads=max_threads, cores=cores) == expected


def _stat_line(user, nice, system, idle, iowait=0, irq=0, softirq=0, steal=0, guest=0):
    return f"cpu  {user} {nice} {system} {idle} {iowait} {irq} {softirq} {steal} {guest} 0\ncpu0 1 2 3 4\n"


def test_meter_subtracts_own_time(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    clock = {"wall": 100.0, "own": 5.0}
    monkeypatch.setattr(threads.time, "perf_counter", lambda: clock["wall"])
    monkeypatch.setattr(threads.time, "process_time", lambda: clock["own"])
    monkeypatch.setattr(threads.os, "sysconf", lambda name: 100)  # 100 ticks per second
    stat.write_text(_stat_line(user=1000, nice=0, system=500, idle=9000, iowait=100))
    meter = CpuLoadMeter(str(stat))
    assert meter.available
    # 2 s later: 300 busy ticks (user 200 + system 50 + steal 50) = 3.0 core-seconds,
    # of which this process used 1.0 s: the others kept 2.0 / 2 s = 1.0 core busy.
    # Idle and iowait ticks are not busy.
    clock["wall"], clock["own"] = 102.0, 6.0
    stat.write_text(_stat_line(user=1200, nice=0, system=550, idle=9100, iowait=150, steal=50))
    assert meter.sample() == pytest.approx(1.0)
    # Then only this process worked: nobody else is busy (never negative).
    clock["wall"], clock["own"] = 103.0, 7.2
    stat.write_text(_stat_line(user=1300, nice=0, system=550, idle=9200, iowait=150, steal=50))
    assert meter.sample() == 0.0


def test_meter_without_proc_stat(tmp_path):
    meter = CpuLoadMeter(str(tmp_path / "missing"))
    assert not meter.available and meter.sample() is None


def test_meter_sees_a_busy_process_and_not_itself():
    """On this machine: a spinning child counts, this process's own spinning does not."""
    meter = CpuLoadMeter()
    if not meter.available:
        pytest.skip("no /proc/stat")
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        with_child = meter.sample()
    finally:
        child.kill()
        child.wait()
    # The child is one runnable thread: close to a core, less what the other jobs of
    # a shared machine take from it; at most every core.
    assert 0.4 <= with_child <= threads.available_cores() + 0.2
    meter.sample()
    wall, start = time.perf_counter(), time.process_time()
    while time.process_time() - start < 0.5:  # this process spins instead
        pass
    alone = meter.sample()
    own = (time.process_time() - start) / (time.perf_counter() - wall)  # cores this process used
    # Its own spinning is not counted as the others' (whatever else the machine runs).
    assert 0.0 <= alone <= threads.available_cores() - own + 0.15, (alone, own)


class FakeMeter:
    available = True

    def __init__(self, readings):
        self.readings = list(readings)

    def sample(self):
        return self.readings.pop(0) if self.readings else 0.0  # None: no reading


def test_hook_lowers_and_restores_threads_in_training(caplog):
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    seen = []

    class Recorder(ToyDetector):
        def forward(self, batch):
            seen.append(torch.get_num_threads())
            return super().forward(batch)

    model = Recorder()
    trainer = Trainer(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), data_loader=ToyLoader(),
                      max_iter=5)
    # A decision after every step: busy (1 core taken), busy, quiet, quiet.
    hook = ComputeThreads(max_threads=2, period_s=0.0, cores=2, meter=FakeMeter([1.0, 1.0, 0.0, 0.0]))
    trainer.register_hooks([hook])
    try:
        with caplog.at_level(logging.INFO, logger="detectron_res"):
            trainer.train()
        assert seen == [2, 1, 1, 2, 2]
        assert [v for _, v in trainer.storage.history("cpu_threads")] == [2.0, 1.0, 1.0, 2.0, 2.0]
        assert "compute threads 2 -> 1 (other processes kept 1.0 of 2 cores busy)" in caplog.text
        assert "compute threads 1 -> 2" in caplog.text
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_hook_is_inert_with_one_thread():
    model = ToyDetector()
    trainer = Trainer(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), data_loader=ToyLoader(),
                      max_iter=2)
    meter = FakeMeter([5.0, 5.0])
    trainer.register_hooks([ComputeThreads(max_threads=1, period_s=0.0, cores=2, meter=meter)])
    trainer.train()
    assert meter.readings == [5.0, 5.0] and not trainer.storage.history("cpu_threads")


def test_config_key():
    assert load_config(None, []).cpu_threads == 0
    with pytest.raises(ConfigError, match=r"config key 'cpu_threads' must be >= 0; got -1"):
        load_config(None, ["cpu_threads=-1"])


def test_benchmark_trains_ours_with_the_trainers_policy():
    """The benchmark's TrainerThreads takes the hook's decision before each step
    of ours and gives torch's count back afterwards; BusyLoad starts and ends its load."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the benchmarks package
    from benchmarks.contention import BusyLoad, TrainerThreads, uses_trainer_threads

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []
        step = TrainerThreads(lambda: seen.append(torch.get_num_threads()))
        step.meter, step.cores = FakeMeter([1.0, 0.2, None]), 2
        for _ in range(3):
            step()
            assert torch.get_num_threads() == 2  # restored for torchvision's turn
        assert seen == step.threads == [1, 2, 2]  # busy core -> 1; quiet -> 2; no reading -> torch's count
    finally:
        torch.set_num_threads(previous)
    assert uses_trainer_threads("ours") and uses_trainer_threads("ours_bf16")
    assert uses_trainer_threads("torchvision_trainer_threads")
    assert not uses_trainer_threads("torchvision") and not uses_trainer_threads("ours_torch_threads")
    with BusyLoad(1) as load:
        (child,) = load._children
        assert child.poll() is None  # spinning
    assert child.poll() is not None  # killed on exit
