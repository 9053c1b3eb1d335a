"""Training engine: how a run starts, the iteration loop, its hooks, checkpoints, solver
and process groups. Generic: a task (``detectron_res.detection``,
``detectron_res.classification``) hands :mod:`.run` its pieces; nothing here imports
task code.

* :mod:`.run`: :func:`~.run.run_training` / :func:`~.run.run_evaluation`, the one run
  skeleton, and :class:`~.run.Task`, the pieces a task gives it;
* :mod:`.trainer`: :class:`~.trainer.Trainer` (``run_step``) and :class:`~.trainer.HookBase`;
* :mod:`.hooks`: LR schedule, timing, periodic / best / preemption checkpoints,
  evaluation, console + JSON + TensorBoard logging (:func:`~.hooks.default_hooks`);
* :mod:`.checkpoint`: the checkpoint format, atomic writes, ``load_checkpoint``;
* :mod:`.signals`: SIGTERM / SIGUSR1 stop requests (training and evaluation);
* :mod:`.solver`: SGD parameter groups and the warmup + multi-step LR schedule;
* :mod:`.distributed`: torchrun / DDP process groups (NCCL or gloo);
* :mod:`.threads`: CPU compute threads by the load of the other processes (``cpu_threads``).
"""

from .checkpoint import CHECKPOINT_FORMAT_VERSION, Checkpointer, CheckpointError, CheckpointWriteError, load_checkpoint
from .signals import EvaluationInterrupted
from .trainer import HookBase, NonFiniteLossError, Trainer

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "Checkpointer",
    "CheckpointError",
    "CheckpointWriteError",
    "EvaluationInterrupted",
    "HookBase",
    "NonFiniteLossError",
    "Trainer",
    "load_checkpoint",
]
