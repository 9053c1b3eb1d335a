"""Process-group setup and the few collectives the trainer needs.

Launch with torchrun, on one machine::

    torchrun --nproc_per_node 8 tools/train_net.py --config coco_r101.yaml

or across machines (same command on every node)::

    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d \\
        --rdzv_endpoint HOST:29500 --rdzv_id JOB tools/train_net.py --config coco_r101.yaml

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`init_distributed` reads them.  Without them the process
runs alone (world size 1) and no process group is created.

Failure handling: every collective has a deadline of ``dist.timeout_s``.  When a
rank dies, torchrun's agent normally stops the other local workers at once; on
another node, or when the dead process's peer sockets stay open, the survivors'
next collective fails at the deadline (gloo raises, NCCL aborts the communicator
because ``TORCH_NCCL_ASYNC_ERROR_HANDLING`` is set) and the trainer turns the error
into :class:`DistributedTimeoutError`, naming the rank and the timeout, instead of
hanging forever.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

from typing import Optional, Union

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

# Deadline of the current process group, for error messages.
_TIMEOUT_S: float = 600.0


class DistributedTimeoutError(RuntimeError):
    """Another rank stopped answering (died, hung, or was preempted)."""


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r}: expected an integer (set by torchrun)") from None


def init_distributed(*, device_type: str, backend: str = "", timeout_s: float = 600) -> DistInfo:
    """Join the process group described by torchrun's environment variables.

    Args:
        device_type: ``"cuda"`` or ``"cpu"``: picks the default backend and, on CUDA,
            binds this process to GPU ``LOCAL_RANK``.
        backend: ``"nccl"``, ``"gloo"`` or ``""`` (nccl on CUDA, gloo on CPU).
        timeout_s: deadline of every collective (config ``dist.timeout_s``).

    Returns:
        The process's :class:`DistInfo` (world size 1 without torchrun).
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size <= 1:
        return DistInfo()
    if dist.is_initialized():
        return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                        backend=dist.get_backend())
    backend = backend or ("nccl" if device_type == "cuda" else "gloo")
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"dist.backend={backend!r}: expected 'nccl', 'gloo' or '' (auto)")
    if backend == "nccl":
        if device_type != "cuda":
            raise ValueError("dist.backend='nccl' needs CUDA devices; use dist.backend=gloo (or '') with device=cpu")
        # Make a dead peer surface as an error after the timeout instead of a hang.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices are visible; "
                "lower --nproc_per_node"
            )
        torch.cuda.set_device(local_rank)
    global _TIMEOUT_S
    _TIMEOUT_S = float(timeout_s)
    dist.init_process_group(
        backend=backend,
        timeout=datetime.timedelta(seconds=float(timeout_s)),
        rank=rank,
        world_size=world_size,
    )
    logger.info("Joined process group: rank %d / %d (local rank %d, %s)", rank, world_size, local_rank, backend)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def _collective_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo only CPU tensors.
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


_FAILURE_MARKERS = ("gloo", "nccl", "connection closed", "connection reset", "timed out", "timeout", "broken pipe")


def is_collective_failure(error: BaseException) -> bool:
    """True for errors of a collective (a peer died, hung or was unreachable)."""
    if isinstance(error, DistributedTimeoutError):
        return False
    if isinstance(error, dist.DistError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(m in text for m in _FAILURE_MARKERS)


def raise_collective_failure(what: str, error: Exception) -> None:
    """Re-raise a failed collective as :class:`DistributedTimeoutError` with a one-line message."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    raise DistributedTimeoutError(
        f"rank {get_rank()}/{get_world_size()}: {what} failed ({type(error).__name__}: {first_line[:200]}); "
        f"another rank probably died or hung (deadline {_TIMEOUT_S:g} s, config key dist.timeout_s): "
        "check the other ranks' logs"
    ) from error




def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of a float tensor over all ranks (identity in a single process)."""
    world = get_world_size()
    if world == 1:
        return values
    device = values.device
    buf = values.detach().to(_collective_device(), dtype=torch.float64)
    try:
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    except (RuntimeError, dist.DistBackendError) as e:  # DistBackendError subclasses RuntimeError
        raise_collective_failure("all_reduce", e)
    return (buf / world).to(device=device, dtype=values.dtype)


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on at least one rank."""
    if get_world_size() == 1:
        return flag
    buf = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    try:
        dist.all_reduce(buf, op=dist.ReduceOp.MAX)
    except (RuntimeError, dist.DistBackendError) as e:
        raise_collective_failure("all_reduce", e)
    return bool(buf.item() > 0)


def synchronize() -> None:
    """Barrier across ranks (no-op in a single process)."""
    if get_world_size() == 1:
        return
    try:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()
    except (RuntimeError, dist.DistBackendError) as e:
        raise_collective_failure("barrier", e)


def broadcast_object(obj, src: int = 0):
    """Send a picklable object from rank ``src`` to all ranks."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    try:
        dist.broadcast_object_list(box, src=src, device=_collective_device())
    except (RuntimeError, dist.DistBackendError) as e:
        raise_collective_failure("broadcast", e)
    return box[0]


def all_gather_object(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    world = get_world_size()
    if world == 1:
        return [obj]
    out = [None] * world
    try:
        dist.all_gather_object(out, obj)
    except (RuntimeError, dist.DistBackendError) as e:
        raise_collective_failure("all_gather", e)
    return out


def destroy_distributed(*, wait_for_all: bool = False) -> None:
    """Tear the process group down.

    ``wait_for_all``: first wait until every rank gets here (after a run that ended
    normally). A rank that destroys its gloo group while another is still inside the
    last collective or writing its files sometimes aborts at exit ("terminate called
    without an active exception", SIGABRT, seen in about 1 of 8 two-rank runs on a
    2-core CPU). After a failure no rank waits: the others may be dead or hung.
    """
    if dist.is_available() and dist.is_initialized():
        if wait_for_all:
            synchronize()
        dist.destroy_process_group()


def resolve_device(device: Union[str, torch.device] = "auto", local_rank: Optional[int] = None) -> torch.device:
    """``"auto"`` -> the first CUDA GPU if there is one, else the CPU; ``"cuda"`` with a
    ``local_rank`` (a process of a distributed run) -> ``cuda:<local rank>``.

    The one device parser of training, evaluation and ``Predictor``.

    Raises:
        ValueError: an unknown device name, or CUDA requested where there is none.
    """
    text = str(device).strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(text)
    except RuntimeError:
        raise ValueError(f"device {device!r} is not valid; expected auto, cpu, cuda or cuda:N") from None
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported; expected auto, cpu, cuda or cuda:N")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} requested but no CUDA GPU is available (torch.cuda.is_available() is False); "
                "use --device cpu or auto"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA GPU(s) are visible"
            )
    if resolved.type == "cuda" and resolved.index is None and local_rank is not None:
        resolved = torch.device("cuda", local_rank)
    return resolved
