#!/usr/bin/env python
"""Kill a short CPU training run with SIGKILL at random points, resume it after each
kill, and check that nothing is lost.

    python tests/fault_inject.py                 # 10 kills, seed 0, about a minute on 2 cores
    python tests/fault_inject.py --kills 20 --seed 3 --keep

A test harness, kept beside the tests that use it (``tests/test_faults.py`` runs it
as a script and imports its kill plan; ``tests/test_outputs.py`` checks its output
rules); run it from a checkout with the command above.

What it does:

1. generates the tiny "shapes" data set (16 training, 4 validation images) in a
   temporary directory and trains a tiny residual detector (ResNet-18 layout at 1/8
   width, 96-pixel inputs) with ``tools/train_net.py`` for ``--max-iter`` iterations,
   a checkpoint every ``--checkpoint-period`` iterations and a periodic evaluation
   (so ``model_best.pth`` and evaluation are part of the run);
2. an uninterrupted reference run of the same config runs alongside;
3. the other run is killed with SIGKILL ``--kills`` times and restarted with
   ``--resume`` after each kill.  The kill points are drawn from ``--seed``: an
   iteration, and either a random delay (up to ``--max-delay`` seconds, but never
   more than ``STEP_KILL_SLACK`` further iterations, so that a fast machine cannot
   train to the end before the kill) after that iteration's log line, or the moment the next checkpoint's temporary file
   appears on disk (at least one kill in three is of this kind);
4. after every kill: every ``*.pth`` in the run directory loads with
   ``load_checkpoint`` and ``last_checkpoint`` names a readable file; the next
   attempt must start at the iteration after the one ``last_checkpoint`` named;
5. at the end: the final model and optimizer state must equal the reference run's
   bitwise (CPU, one thread: the computation is deterministic, so no tolerance is
   allowed), and ``metrics.json`` must hold every iteration once, with the
   reference's losses and evaluation results.

Hitting the checkpoint write.  A checkpoint of this model is 1.6 MB and is written
in milliseconds, too fast to hit by timing.  The attempts that are to be killed
during a write therefore run the real ``tools/train_net.py`` ``main()`` with one
change: every ``.pth`` write pauses ``--write-pause`` seconds (default 0.3) once
256 KiB have reached the temporary file (``.model_0000011.pth.XXXXXXXX.tmp``).
The kill is sent as soon as that file is non-empty, and counted as a kill during a
checkpoint write only if the partial temporary file is still there after the
process died.  Nothing else in the training code is changed, the pause changes no
result, and the other attempts (killed at random delays) run without it.

Processes.  By default each attempt is ``os.fork()``-ed from this process after
it has imported torch and the toolkit (an interpreter start costs about 6 s here;
a fork, nothing), with one compute thread.  ``--spawn`` starts a fresh interpreter
per attempt instead (``python tests/fault_inject.py --child ... -- <train_net args>``).

Prints the counts (kills, kills during a checkpoint write, resumes, checkpoints
verified, final weights equal) and exits with status 0 when every check passed,
1 otherwise (the work directory is then kept for inspection).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from detectron_res.outputs import (  # noqa: E402
    OutputError, add_overwrite_argument, atomic_write_text, check_output_dir, check_output_file,
)


# configs/tiny_shapes.yaml: the demo detector small enough for several CPU iterations per
# second (the training tests use it too), trained with batch 2.
TINY_CONFIG = "tiny_shapes.yaml"
TINY_OVERRIDES = ["solver.ims_per_batch=2", "solver.steps=[]"]  # runs of a few iterations: constant LR
# Per-iteration values that depend on the wall clock, not on the computation.
TIMING_KEYS = {"time", "data_time"}

_ITER_LINE = re.compile(r"iter: (\d+)/(\d+)")
_START_LINE = re.compile(r"Starting training from iteration (\d+) of")
_CKPT_TEMPORARY = re.compile(r"^\..+\.pth\.[a-z0-9_]{8}\.tmp$")


# ---------------------------------------------------------------------------
# the training process (child side)
# ---------------------------------------------------------------------------
def _load_train_net():
    # tests/ is on sys.path: this file's folder when run as a script, and under pytest.
    from helpers import load_tool

    return load_tool("train_net", "train_net")


PAUSE_AFTER_BYTES = 256 * 1024


class _PauseMidWrite:
    """A file wrapper that flushes and sleeps once, when ``PAUSE_AFTER_BYTES`` have been
    written: the checkpoint's temporary file then exists, partly written, for ``seconds``."""

    def __init__(self, f, seconds: float) -> None:
        self._f, self._seconds, self._written, self._paused = f, seconds, 0, False

    def write(self, data) -> int:
        n = self._f.write(data)
        self._written += len(data)
        if not self._paused and self._written >= PAUSE_AFTER_BYTES:
            self._paused = True
            self._f.flush()
            time.sleep(self._seconds)
        return n

    def __getattr__(self, name: str):
        return getattr(self._f, name)


def install_write_pause(seconds: float) -> None:
    """Make every ``.pth`` write of :mod:`detectron_res.engine.checkpoint` pause mid-write."""
    if seconds <= 0:
        return
    from detectron_res.engine import checkpoint

    original = checkpoint.atomic_write_bytes

    def paused(path, write_fn):
        if not str(path).endswith(".pth"):
            return original(path, write_fn)
        return original(path, lambda f: write_fn(_PauseMidWrite(f, seconds)))

    checkpoint.atomic_write_bytes = paused


def run_training(train_args: list[str], write_pause: float) -> int:
    """What an attempt runs: tools/train_net.py's main() on one thread."""
    import torch

    torch.set_num_threads(1)
    install_write_pause(write_pause)
    return _load_train_net().main(train_args)


# ---------------------------------------------------------------------------
# launching and watching attempts (parent side)
# ---------------------------------------------------------------------------
class Attempt:
    """One training process whose stdout + stderr go to ``log``."""

    def __init__(self, train_args: list[str], log: Path, *, write_pause: float, spawn: bool, env: dict) -> None:
        self.log = log
        self.returncode: int | None = None  # exit status, or -signal
        self._pos = 0
        self._partial = ""
        self.progress = -1  # highest "iter: k/M" seen (k = iterations done)
        self.start_iter: int | None = None
        if spawn:
            with open(log, "wb") as f:
                self._proc = subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "--child", "--write-pause", str(write_pause),
                     "--", *train_args], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            self.pid = self._proc.pid
            return
        self._proc = None
        log.write_bytes(b"")  # exists before the child runs: read() may come first
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # child: never returns
            code = 70
            try:
                fd = os.open(log, os.O_WRONLY | os.O_APPEND)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.close(fd)
                sys.stdout.reconfigure(line_buffering=True)
                sys.stderr.reconfigure(line_buffering=True)
                os.environ.clear()
                os.environ.update(env)
                code = run_training(train_args, write_pause)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code if isinstance(code, int) else 70)
        self.pid = pid

    def poll(self) -> int | None:
        if self.returncode is None:
            if self._proc is not None:
                code = self._proc.poll()
                if code is not None:
                    self.returncode = code
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float) -> int:
        deadline = time.time() + timeout
        while self.poll() is None:
            if time.time() > deadline:
                self.kill()
                raise TimeoutError(f"{self.log}: the training process did not end within {timeout:.0f} s")
            time.sleep(0.02)
        self.read()
        return self.returncode

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while self.poll() is None:
            time.sleep(0.002)

    def read(self) -> None:
        """Parse what the process logged since the last call."""
        with open(self.log, "rb") as f:
            f.seek(self._pos)
            chunk = f.read()
        self._pos += len(chunk)
        text = self._partial + chunk.decode(errors="replace")
        lines = text.split("\n")
        self._partial = lines.pop()
        for line in lines:
            m = _ITER_LINE.search(line)
            if m:
                self.progress = max(self.progress, int(m.group(1)))
            m = _START_LINE.search(line)
            if m:
                self.start_iter = int(m.group(1))

    def tail(self, n: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def checkpoint_temporaries(out: Path, *, non_empty: bool = False) -> set[str]:
    names = set()
    try:
        for name in os.listdir(out):
            if _CKPT_TEMPORARY.match(name):
                try:
                    if not non_empty or (out / name).stat().st_size > 0:
                        names.add(name)
                except FileNotFoundError:  # renamed into place meanwhile
                    pass
    except FileNotFoundError:
        pass
    return names


@dataclass
class KillPoint:
    after_iterations: int  # wait until the run logged this many iterations ...
    phase: str  # ... then "step": wait `delay` s; "checkpoint": wait for the next .pth temporary file
    delay: float = 0.0


# A step kill fires after its random delay or once the run has logged this many
# iterations past its planned point, whichever comes first; and never later than
# STEP_KILL_SLACK iterations before the end.  An iteration of the tiny model takes
# a few tens of milliseconds, so a delay alone could let the run finish.
STEP_KILL_SLACK = 2


def step_kill_due(point: KillPoint, progress: int, max_iter: int, waited: float) -> bool:
    """Whether a "step" kill point has come, ``waited`` seconds after its iteration was logged."""
    latest = min(point.after_iterations + STEP_KILL_SLACK, max_iter - STEP_KILL_SLACK)
    return waited >= point.delay or progress >= latest


def make_plan(rng: random.Random, kills: int, max_iter: int, max_delay: float) -> list[KillPoint]:
    """``kills`` kill points at increasing iterations; at least one in three (and at
    least one) during a checkpoint write."""
    if kills < 1:
        raise ValueError(f"--kills={kills}: expected at least 1")
    # Leave the last iterations alone: a kill point must come before the run can end.
    candidates = list(range(1, max_iter - 2))
    if kills > len(candidates):
        raise ValueError(f"--kills={kills} needs --max-iter >= {kills + 3} (got {max_iter})")
    targets = sorted(rng.sample(candidates, kills))
    num_ckpt = max(1, -(-kills // 3))
    ckpt = set(rng.sample(range(kills), num_ckpt))
    return [KillPoint(t, "checkpoint" if i in ckpt else "step", 0.0 if i in ckpt else rng.uniform(0, max_delay))
            for i, t in enumerate(targets)]


@dataclass
class Report:
    kills: int = 0
    kills_during_checkpoint_write: int = 0
    resumes: int = 0
    resumes_at_expected_iteration: int = 0
    checkpoints_verified: int = 0
    final_weights_equal: bool = False
    compared_tensors: int = 0
    metrics_equal: bool = False
    temporaries_left: int = -1
    failures: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.failures.append(message)
        print(f"  FAILED: {message}", flush=True)


def verify_run_dir(out: Path, report: Report) -> tuple[str, int] | None:
    """Load every checkpoint file and the one ``last_checkpoint`` names.

    Returns the pointed checkpoint's file name and iteration (None when there is no pointer).
    """
    from detectron_res.engine.checkpoint import LAST_CHECKPOINT_FILE, find_last_checkpoint, load_checkpoint

    for path in sorted(out.glob("*.pth")):
        try:
            load_checkpoint(path)
            report.checkpoints_verified += 1
        except Exception as e:  # any failure to load is what this tool looks for
            report.fail(f"unreadable checkpoint {path}: {e}")
    if not (out / LAST_CHECKPOINT_FILE).exists():
        if list(out.glob("model_*.pth")):
            # Legal only for the very first checkpoint: renamed into place, killed
            # before the pointer was written; the resume then starts over.
            report.events.append(f"  note: checkpoint files but no {LAST_CHECKPOINT_FILE} yet in {out}")
        return None
    try:
        target = find_last_checkpoint(out)
        return target.name, int(load_checkpoint(target)["iteration"])
    except Exception as e:
        report.fail(f"{out / LAST_CHECKPOINT_FILE} does not name a readable checkpoint: {e}")
        return None


def compare_final(out: Path, ref: Path, report: Report) -> None:
    import torch

    from detectron_res.engine.checkpoint import load_checkpoint

    try:
        a, b = load_checkpoint(out / "model_final.pth"), load_checkpoint(ref / "model_final.pth")
    except Exception as e:
        report.fail(f"final checkpoints not comparable: {e}")
        return
    differing = []
    if a["model"].keys() != b["model"].keys():
        differing.append("model keys")
    else:
        for k in a["model"]:
            report.compared_tensors += 1
            if not torch.equal(a["model"][k], b["model"][k]):
                differing.append(k)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    if sa.keys() != sb.keys():
        differing.append("optimizer state keys")
    else:
        for i in sa:
            for name, value in sa[i].items():
                if isinstance(value, torch.Tensor):
                    report.compared_tensors += 1
                    if not torch.equal(value, sb[i][name]):
                        differing.append(f"optimizer state {i}.{name}")
    report.final_weights_equal = not differing
    if differing:
        report.fail(f"final state differs from the uninterrupted run in {len(differing)} tensors, e.g. {differing[:3]}")


def compare_metrics(out: Path, ref: Path, max_iter: int, report: Report) -> None:
    """metrics.json of the killed run against the uninterrupted one: every iteration
    logged, with the same training values (losses, LR) and the same evaluation
    results.  An evaluation cut by a kill is redone when the run resumes
    (``EvalHook.before_train``), so a missing one is a failure too."""

    def records(path: Path) -> dict[int, dict]:
        by_iter: dict[int, dict] = {}
        for line in (path / "metrics.json").read_text().splitlines():
            r = json.loads(line)
            by_iter.setdefault(r.pop("iteration"), {}).update({k: v for k, v in r.items() if k not in TIMING_KEYS})
        return by_iter

    try:
        got, want = records(out), records(ref)
    except (OSError, ValueError, KeyError) as e:
        report.fail(f"metrics.json unreadable: {e}")
        return
    problems = []
    if sorted(got) != sorted(want):
        problems.append(f"iterations logged differ: {sorted(set(got) ^ set(want))}")
    for it in sorted(set(got) & set(want)):
        a, b = got[it], want[it]
        train_a = {k: v for k, v in a.items() if "/" not in k}
        train_b = {k: v for k, v in b.items() if "/" not in k}
        if train_a != train_b:
            problems.append(f"iteration {it}: {train_a} != reference {train_b}")
        evaluated_a = {k: v for k, v in a.items() if "/" in k}
        evaluated_b = {k: v for k, v in b.items() if "/" in k}
        if evaluated_a != evaluated_b:
            problems.append(f"iteration {it}: evaluation {evaluated_a or 'missing'} != reference {evaluated_b}")
    report.metrics_equal = not problems
    if problems:
        report.fail(f"metrics.json differs from the reference run: {problems[0]} ({len(problems)} problems)")


def run_faults(args: argparse.Namespace) -> Report:
    import torch

    from detectron_res.data.shapes import generate_shapes_dataset

    torch.set_num_threads(1)
    if not args.spawn:
        import cv2

        # Before OpenCV starts its thread pool: a child forked while the pool exists
        # can deadlock in its next OpenCV call (see detectron_res/data/loader.py).
        cv2.setNumThreads(0)
        # Import in the parent what every attempt needs, so that a forked attempt
        # starts in a second instead of an interpreter start-up.
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401
        import torch.utils.tensorboard  # noqa: F401

        import detectron_res.data.catalog  # noqa: F401
        import detectron_res.data.loader  # noqa: F401
        import detectron_res.detection.task  # noqa: F401
        import detectron_res.evaluation  # noqa: F401
        import detectron_res.modeling.build  # noqa: F401

    if args.work_dir:
        # The sub-folders of an earlier run are deleted below: only when the user says so.
        check_output_dir(args.work_dir, flag="--work-dir")
        earlier = [sub for sub in ("run", "reference", "logs") if (Path(args.work_dir) / sub).exists()]
        if earlier and not args.overwrite:
            raise OutputError(f"--work-dir {args.work_dir} holds {', '.join(s + '/' for s in earlier)} (an earlier run?); "
                              "pass --overwrite to replace them, or choose another --work-dir")
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="fault_inject_"))
    work.mkdir(parents=True, exist_ok=True)
    for sub in ("run", "reference", "logs"):
        shutil.rmtree(work / sub, ignore_errors=True)
    (work / "logs").mkdir()
    generate_shapes_dataset(str(work / "data" / "shapes"), num_train=16, num_val=4, image_size=(64, 96), seed=3)
    env = dict(os.environ, DETECTRON_RES_DATASETS=str(work / "data"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

    def train_args(out: Path) -> list[str]:
        evaluation = (["data.test=[shapes_val]", f"test.eval_period={args.eval_period}", "test.best_metric=voc/mAP50",
                       "test.evaluators=[voc]"] if args.eval_period > 0 else ["data.test=[]", "test.best_metric="])
        return ["--config", TINY_CONFIG, "--output-dir", str(out), "--device", "cpu", *TINY_OVERRIDES,
                "data.train=[shapes_train]", *evaluation, f"solver.max_iter={args.max_iter}",
                f"solver.checkpoint_period={args.checkpoint_period}"]

    report = Report()
    rng = random.Random(args.seed)
    plan = make_plan(rng, args.kills, args.max_iter, args.max_delay)
    out, ref = work / "run", work / "reference"
    print(f"fault injection: {args.kills} SIGKILLs of tools/train_net.py ({args.max_iter} iterations, checkpoint every "
          f"{args.checkpoint_period}, evaluation every {args.eval_period}), seed {args.seed}, "
          f"{'spawned' if args.spawn else 'forked'} processes; work directory {work}", flush=True)

    reference = Attempt(train_args(ref), work / "logs" / "reference.log", write_pause=0.0, spawn=args.spawn, env=env)
    expected_start = 0
    for k, point in enumerate(plan):
        stale = checkpoint_temporaries(out)
        attempt = Attempt(train_args(out) + (["--resume"] if k else []), work / "logs" / f"attempt_{k:02d}.log",
                          write_pause=args.write_pause if point.phase == "checkpoint" else 0.0, spawn=args.spawn,
                          env=env)
        deadline = time.time() + args.attempt_timeout
        fired_at = None
        while True:
            attempt.read()
            if attempt.poll() is not None:
                break
            if time.time() > deadline:
                attempt.kill()
                report.fail(f"attempt {k}: no kill point within {args.attempt_timeout:.0f} s\n{attempt.tail()}")
                break
            if attempt.progress >= point.after_iterations:
                if point.phase == "step":
                    fired_at = fired_at or time.time()
                    if step_kill_due(point, attempt.progress, args.max_iter, time.time() - fired_at):
                        attempt.kill()
                        break
                elif checkpoint_temporaries(out, non_empty=True) - stale:
                    attempt.kill()
                    break
            time.sleep(0.002)
        attempt.read()
        if attempt.returncode != -signal.SIGKILL:
            report.fail(f"attempt {k} ended with status {attempt.returncode} before its kill point\n{attempt.tail()}")
            continue
        report.kills += 1
        if k:
            report.resumes += 1
            if attempt.start_iter is None:
                report.events.append(f"  note: attempt {k} was killed before it logged its start iteration")
            elif attempt.start_iter == expected_start:
                report.resumes_at_expected_iteration += 1
            else:
                report.fail(f"attempt {k} started at iteration {attempt.start_iter}, expected {expected_start} "
                            "(the iteration after the checkpoint last_checkpoint named)")
        partial = sorted(checkpoint_temporaries(out) - stale)
        if partial:
            report.kills_during_checkpoint_write += 1
        before = report.checkpoints_verified
        pointed = verify_run_dir(out, report)
        expected_start = pointed[1] + 1 if pointed is not None else 0
        where = (f"during the write of {partial[0]} ({(out / partial[0]).stat().st_size} bytes on disk)" if partial
                 else f"{point.delay:.2f} s after that line")
        line = (f"  kill {k + 1:2d} ({point.phase}, planned after {point.after_iterations}): "
                f"{attempt.progress} iterations logged, killed {where}; "
                f"{report.checkpoints_verified - before} checkpoint files load; last_checkpoint -> "
                f"{f'{pointed[0]} (iteration {pointed[1]})' if pointed is not None else 'none yet'}")
        report.events.append(line)
        print(line, flush=True)

    final = Attempt(train_args(out) + ["--resume"], work / "logs" / "final.log", write_pause=0.0,
                    spawn=args.spawn, env=env)
    code = final.wait(args.attempt_timeout)
    report.resumes += 1
    if code != 0:
        report.fail(f"the final resumed run exited with status {code}\n{final.tail()}")
    elif final.start_iter == expected_start:
        report.resumes_at_expected_iteration += 1
    else:
        report.fail(f"the final run started at iteration {final.start_iter}, expected {expected_start}")
    verify_run_dir(out, report)
    report.temporaries_left = len([n for n in os.listdir(out) if n.endswith(".tmp")])
    if report.temporaries_left:
        report.fail(f"{report.temporaries_left} temporary files left in {out} after the final run")

    code = reference.wait(args.attempt_timeout)
    if code != 0:
        report.fail(f"the reference run exited with status {code}\n{reference.tail()}")
    else:
        compare_final(out, ref, report)
        compare_metrics(out, ref, args.max_iter, report)
    if report.kills_during_checkpoint_write == 0:
        report.fail("no kill landed during a checkpoint write")
    if report.kills != args.kills:
        report.fail(f"{report.kills} kills delivered, {args.kills} planned")
    report.work_dir = str(work)  # type: ignore[attr-defined]
    if not report.failures and not args.keep and not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return report


def print_summary(report: Report, args: argparse.Namespace) -> None:
    yes = {True: "yes", False: "no"}
    print(f"kills: {report.kills}")
    print(f"kills during checkpoint write: {report.kills_during_checkpoint_write} (partial temporary file left "
          "each time)")
    print(f"resumes: {report.resumes} ({report.resumes_at_expected_iteration} verified to start right after the "
          "checkpoint last_checkpoint named)")
    print(f"checkpoints verified: {report.checkpoints_verified} (every *.pth loaded after every kill; none unreadable: "
          f"{yes[not any('unreadable' in f or 'does not name' in f for f in report.failures)]})")
    print(f"final weights equal: {yes[report.final_weights_equal]} (bitwise, {report.compared_tensors} model and "
          "optimizer tensors vs the uninterrupted run)")
    print(f"metrics.json equal: {yes[report.metrics_equal]} (every iteration logged with the uninterrupted run's "
          "losses, LR and evaluation results; evaluations cut by a kill were redone on resume)")
    print(f"result: {'PASS' if not report.failures else 'FAIL (' + str(len(report.failures)) + ' checks failed)'}")
    if report.failures:
        print(f"work directory kept: {getattr(report, 'work_dir', '?')}")
    if args.json:
        atomic_write_text(args.json, json.dumps({k: v for k, v in vars(report).items() if k != "events"}, indent=1))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--kills", type=int, default=10, help="number of SIGKILLs (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points (default 0)")
    parser.add_argument("--max-iter", type=int, default=24, help="iterations of the run (default 24)")
    parser.add_argument("--checkpoint-period", type=int, default=2, help="solver.checkpoint_period (default 2)")
    parser.add_argument("--eval-period", type=int, default=8,
                        help="test.eval_period, with model_best.pth by voc/mAP50 (default 8; 0 = no evaluation)")
    parser.add_argument("--write-pause", type=float, default=0.3,
                        help="seconds a .pth write pauses after 256 KiB in the attempts killed during a write "
                             "(default 0.3; see above)")
    parser.add_argument("--max-delay", type=float, default=0.3,
                        help="largest random delay of a kill after an iteration's log line (default 0.3 s)")
    parser.add_argument("--attempt-timeout", type=float, default=300, help="seconds one attempt may take (default 300)")
    parser.add_argument("--spawn", action="store_true", help="a fresh interpreter per attempt instead of os.fork")
    parser.add_argument("--work-dir", default=None, help="where data and runs go (default: a temporary directory, "
                                                         "removed when every check passed)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    parser.add_argument("--json", default=None, help="also write the counts to this JSON file")
    add_overwrite_argument(parser, what="an existing --json file and the sub-folders of an earlier run in --work-dir")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--child" in argv:  # an attempt started by --spawn: "--child --write-pause S -- <train_net args>"
        split = argv.index("--")
        own = build_parser().parse_args(argv[:split])
        return run_training(argv[split + 1:], own.write_pause)
    args = build_parser().parse_args(argv)
    if not hasattr(os, "fork") and not args.spawn:
        args.spawn = True  # e.g. Windows
    try:
        if args.json:
            check_output_file(args.json, overwrite=args.overwrite, flag="--json")
        report = run_faults(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_summary(report, args)
    return 0 if not report.failures else 1


if __name__ == "__main__":
    sys.exit(main())
