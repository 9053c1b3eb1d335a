"""Two training processes joined by environment variables, for the dead- and hung-rank
tests (tests/test_train_net.py, tests/test_faults.py).

torchrun sets the same variables, but its agent would stop the surviving process
itself when one dies; these tests check that the survivor stops on its own.
"""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_two_ranks(tool, args, *, data_root, cwd):
    """``tool args`` as rank 0 and rank 1 of a 2-process group on this machine."""
    port = free_port()
    procs = []
    for rank in (0, 1):
        env = dict(os.environ, DETECTRON_RES_DATASETS=str(data_root), OMP_NUM_THREADS="1", RANK=str(rank),
                   LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, str(tool), *map(str, args)], env=env, cwd=cwd,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    return procs


def wait_until_training(out, procs, timeout_s=180):
    """Until rank 0 has written its first metrics line (training runs on both ranks)."""
    metrics = Path(out) / "metrics.json"
    deadline = time.time() + timeout_s
    while not metrics.exists() or not metrics.read_text():
        assert all(p.poll() is None for p in procs), procs[0].stderr.read()[-2000:]
        assert time.time() < deadline, "training did not start"
        time.sleep(0.05)


def stop_ranks(procs):
    """Kill whatever is still running (a SIGSTOPped process is continued first)."""
    import signal

    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.kill()
            p.wait()


def signal_rank_one_and_wait(procs, out, sig, timeout_s=120):
    """Once training runs on both ranks, send ``sig`` to rank 1 and wait for rank 0 to exit.

    Returns rank 0's stderr and the seconds from the signal to its exit; both
    processes are gone afterwards (rank 0's exit status is ``procs[0].returncode``).
    """
    try:
        wait_until_training(out, procs)
        procs[1].send_signal(sig)
        start = time.time()
        _, err = procs[0].communicate(timeout=timeout_s)
        waited = time.time() - start
    finally:
        stop_ranks(procs)
    return err, waited
