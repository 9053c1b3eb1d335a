"""Training checkpoints: atomic writes, retention, the ``last_checkpoint`` pointer,
RNG state capture, and weight loading for fine-tuning.

Checkpoint file format (``format_version`` 1), a plain dict that loads with
``torch.load(path, weights_only=True)``::

    {
      "format_version": 1,
      "model":      state_dict of the detector (unwrapped from DDP),
      "optimizer":  optimizer.state_dict(),
      "scheduler":  lr scheduler state_dict,
      "scaler":     GradScaler state_dict ({} when AMP fp16 is off),
      "iteration":  0-based index of the last COMPLETED iteration
                    (-1 before any); training resumes at iteration + 1,
      "rng":        {"python": [...], "numpy": {...}, "torch": ByteTensor, "cuda": [ByteTensor, ...]}
                    (rank 0's; "rng_ranks" holds every rank's in a multi-process run),
      "sampler":    {"batches_consumed": int (per process), "seed": int, "world_size": int},
      "hooks":      {hook class name: state} (e.g. the best metric so far),
      "metrics":    {"recent": {name: [float, ...]}}: the logged medians' windows
                    (optional; a resumed run then logs what an uninterrupted one would),
      "config":     resolved config as a plain dict,
      "class_names":  [str, ...]     (class_names[i] is label i + 1),
      "category_ids": [int|str, ...] (dataset's original ids, same order),
      "input":      {"format": "BGR"|"RGB", "pixel_mean": [...], "pixel_std": [...]},
    }

Only tensors, numbers, strings, lists and dicts are stored, so the restricted
``weights_only`` unpickler can read every file (no arbitrary code runs on load).

Files are named by the number of iterations done, as the log counts them:
``model_{iteration + 1:07d}.pth`` (``model_0001000.pth`` after 1000 iterations,
next to ``iter: 1000/...``; runs written before this naming have
``model_0000999.pth`` and resume the same way, from the stored ``iteration``),
``model_final.pth`` at the end of training and ``model_best.pth``
for the best evaluation; ``last_checkpoint`` is a text file holding the file name
of the newest one.

Failures while saving (disk full, quota, read-only or unwritable directory) raise
:class:`CheckpointWriteError`, a one-line message naming the file and the OS reason;
nothing already on disk is replaced, so the previous checkpoint and the
``last_checkpoint`` pointer stay valid.  A process killed in the middle of a write
leaves only a hidden ``.<name>.XXXXXXXX.tmp`` file, which the next run removes
(:meth:`Checkpointer.remove_stale_temporaries`).
"""

from __future__ import annotations

import errno
import logging
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from ..outputs import atomic_write_bytes

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT_VERSION = 1
LAST_CHECKPOINT_FILE = "last_checkpoint"
_REQUIRED_KEYS = ("format_version", "model")


class CheckpointError(ValueError):
    """A file that is not a readable detectron_res checkpoint (one-line message)."""


class CheckpointVersionError(CheckpointError):
    """A detectron_res checkpoint of a ``format_version`` this version cannot read."""


class CheckpointWriteError(OSError):
    """A checkpoint (or the ``last_checkpoint`` pointer) could not be written: disk full,
    quota exceeded, read-only or unwritable directory.  The message is one line
    naming the file, the OS reason and what is still intact; the underlying
    :class:`OSError` is the ``__cause__``."""


def describe_os_error(error: OSError) -> str:
    """``'No space left on device [ENOSPC]'``: the OS reason and its errno name."""
    reason = error.strerror or str(error) or type(error).__name__
    name = errno.errorcode.get(error.errno) if error.errno is not None else None
    return f"{reason} [{name}]" if name else reason


class _WriteErrorKeeper:
    """File wrapper that remembers the first OSError raised by ``write``.

    torch.save writes through a C++ zip writer that swallows the Python exception
    of a failed ``write`` and raises ``RuntimeError: unexpected pos ...`` instead,
    so a full disk would surface without its errno; :func:`save_checkpoint` re-raises
    the remembered OSError.
    """

    def __init__(self, f) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            if self.error is None:
                self.error = e
            raise

    def __getattr__(self, name: str):
        return getattr(self._f, name)


def _torch_save(state: Mapping[str, Any], f) -> None:
    keeper = _WriteErrorKeeper(f)
    try:
        torch.save(state, keeper)
    except RuntimeError:
        if keeper.error is not None:
            raise keeper.error from None
        raise


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Atomically write ``state`` (a checkpoint dict, see module docstring) to ``path``.

    Raises:
        OSError: the file could not be written (its errno kept, e.g. ENOSPC); the
            previous content of ``path``, if any, is unchanged.
    """
    state = dict(state)
    state.setdefault("format_version", CHECKPOINT_FORMAT_VERSION)
    atomic_write_bytes(path, lambda f: _torch_save(state, f))



def read_checkpoint_file(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with one-line :class:`CheckpointError` s.

    Shared by the detector's and the classifier's checkpoints. A file that names a
    global outside torch's allow-list is refused as such (unpickling it could run
    code), not reported as "corrupt"; one whose tensors hold NaN or infinity is
    refused naming the first such tensor (``weights.refuse_non_finite``).
    """
    from ..weights import refuse_non_finite

    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated / foreign pickles
        from ..weights import refused_pickle_reason, torch_error_line

        refused = refused_pickle_reason(e)
        if refused is not None:
            raise CheckpointError(
                f"{path}: refusing to load checkpoint: the file names {refused}, which checkpoints never hold "
                "(only tensors, numbers, strings, lists and dicts); unpickling it would build other objects or run code"
            ) from None
        raise CheckpointError(
            f"{path}: cannot read checkpoint ({torch_error_line(e)}); the file is corrupt or not a torch file"
        ) from None
    refuse_non_finite(state, path, CheckpointError)
    return state

def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load and validate a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: a ``.pth`` file, or a directory holding a ``last_checkpoint`` pointer.
        map_location: where tensors are placed (default CPU).

    Returns:
        The checkpoint dict (see module docstring).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: corrupt file, not a detectron_res checkpoint, or an
            unsupported ``format_version``.
    """
    path = Path(path)
    if path.is_dir():
        resolved = find_last_checkpoint(path)
        if resolved is None:
            raise FileNotFoundError(f"{path}: directory has no '{LAST_CHECKPOINT_FILE}' pointer; pass a .pth file")
        path = resolved
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    state = read_checkpoint_file(path, map_location)
    if not isinstance(state, dict) or any(k not in state for k in _REQUIRED_KEYS):
        keys = sorted(state.keys())[:8] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path}: not a detectron_res checkpoint (expected a dict with keys {list(_REQUIRED_KEYS)}, got {keys}); "
            "ImageNet classifier weights go to model.weights / --weights instead"
        )
    version = state["format_version"]
    if version != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointVersionError(
            f"{path}: checkpoint format_version={version!r} is not supported "
            f"(this version of detectron_res reads format_version={CHECKPOINT_FORMAT_VERSION})"
        )
    return state


def is_detector_checkpoint(path: str | os.PathLike) -> bool:
    """True when ``path`` is a file that :func:`load_checkpoint` accepts.

    Raises:
        CheckpointVersionError: a detectron_res checkpoint of another format version;
            it is not something else (ImageNet weights), so callers must not try
            other readers on it and hide the real reason.
    """
    try:
        load_checkpoint(path)
    except CheckpointVersionError:
        raise
    except (CheckpointError, FileNotFoundError, IsADirectoryError):
        return False
    return True


def find_last_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The checkpoint named by ``directory/last_checkpoint``, or None when there is none.

    Raises:
        CheckpointError: the pointer names a file that does not exist.
    """
    directory = Path(directory)
    pointer = directory / LAST_CHECKPOINT_FILE
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    target = directory / name
    if not name or not target.is_file():
        raise CheckpointError(f"{pointer}: points to {name!r}, which does not exist in {directory}")
    return target


# ---------------------------------------------------------------------------
# RNG state
# ---------------------------------------------------------------------------
def capture_rng_state() -> dict:
    """Python, NumPy, torch CPU and CUDA generator states, as weights_only-loadable values."""
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state(legacy=True)
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            # A different GPU count on resume: the per-device streams cannot map
            # one-to-one, so only the current device is restored.
            torch.cuda.set_rng_state(cuda_states[0])


# ---------------------------------------------------------------------------
# retention + pointer
# ---------------------------------------------------------------------------
class Checkpointer:
    """Writes checkpoints into ``output_dir``, keeps the last ``keep_last`` periodic ones
    and maintains the ``last_checkpoint`` pointer.

    Only the main process writes (``save_to_disk=False`` elsewhere); every process
    may read.

    Args:
        output_dir: directory receiving ``model_*.pth`` and ``last_checkpoint``.
        keep_last: number of periodic ``model_NNNNNNN.pth`` files kept (<= 0 keeps all);
            ``model_final.pth`` and ``model_best.pth`` are never deleted.
        save_to_disk: False on non-main ranks.
    """

    def __init__(self, output_dir: str | os.PathLike, *, keep_last: int = 3, save_to_disk: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.keep_last = int(keep_last)
        self.save_to_disk = save_to_disk

    def save(self, name: str, state: Mapping[str, Any], *, update_pointer: bool = True) -> Path | None:
        """Write ``output_dir/<name>.pth`` atomically; then update the pointer and prune.

        The pointer is updated only after the file is complete, so it never names a
        partial file, and pruning happens last, so the previous checkpoint survives
        until the new one is on disk.

        Raises:
            CheckpointWriteError: the checkpoint or the pointer could not be written
                (disk full, read-only directory, ...); what was on disk before is intact.
        """
        if not self.save_to_disk:
            return None
        path = self.output_dir / f"{name}.pth"
        pointer = self.output_dir / LAST_CHECKPOINT_FILE
        previous = self._pointer_target()
        try:
            save_checkpoint(state, path)
        except OSError as e:
            kept = (f"the previous checkpoint {previous} is intact and {pointer.name} still names it" if previous
                    else "no earlier checkpoint exists")
            raise CheckpointWriteError(
                f"cannot write checkpoint {path}: {describe_os_error(e)}; {kept}; free disk space or make "
                f"{self.output_dir} writable, then continue with --resume"
            ) from e
        if update_pointer:
            try:
                atomic_write_bytes(pointer, lambda f: f.write(path.name.encode()))
            except OSError as e:
                still = f"it still names {previous.name}" if previous else "it was not created"
                raise CheckpointWriteError(
                    f"cannot update {pointer}: {describe_os_error(e)}; {path} was written but {still}; free disk "
                    f"space or make {self.output_dir} writable, then continue with --resume"
                ) from e
        try:
            self._prune()
        except OSError as e:  # an old file that cannot be deleted costs disk space, not correctness
            logger.warning("Could not delete old checkpoints in %s: %s", self.output_dir, describe_os_error(e))
        logger.info("Saved checkpoint %s", path)
        return path

    def _pointer_target(self) -> Path | None:
        try:
            return find_last_checkpoint(self.output_dir)
        except (CheckpointError, OSError):
            return None

    # mkstemp names of atomic_write_bytes: "." + final name + "." + 8 random characters + ".tmp"
    _TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the temporary files of writes that a killed process left unfinished.

        Call it before training starts (no write of this run is in flight then);
        returns the removed paths.  Only the main process removes anything.
        """
        if not self.save_to_disk or not self.output_dir.is_dir():
            return []
        removed = []
        for p in self.output_dir.iterdir():
            if p.is_file() and self._TEMPORARY.match(p.name):
                p.unlink(missing_ok=True)
                removed.append(p)
        if removed:
            logger.info("Removed %d incomplete temporary file(s) of an interrupted write: %s", len(removed),
                        ", ".join(p.name for p in sorted(removed)))
        return removed

    def periodic_checkpoints(self) -> list[Path]:
        """Periodic checkpoint files, oldest first."""
        files = [p for p in self.output_dir.glob("model_*.pth") if p.stem[len("model_"):].isdigit()]
        return sorted(files, key=lambda p: int(p.stem[len("model_"):]))

    def _prune(self) -> None:
        if self.keep_last <= 0:
            return
        files = self.periodic_checkpoints()
        pointed = None
        pointer = self.output_dir / LAST_CHECKPOINT_FILE
        if pointer.is_file():
            pointed = pointer.read_text().strip()
        for p in files[: max(0, len(files) - self.keep_last)]:
            if p.name == pointed:  # never delete what the pointer names
                continue
            p.unlink(missing_ok=True)

    def last_checkpoint(self) -> Path | None:
        return find_last_checkpoint(self.output_dir)


# ---------------------------------------------------------------------------
# weight loading for fine-tuning
# ---------------------------------------------------------------------------
@dataclass
class LoadReport:
    """What a weight loader did with every key: :func:`load_model_weights` (a
    checkpoint's own names) and ``detectron_res.weights.load_into`` (ImageNet
    weights, renamed by a prefix map) both return one.

    Attributes:
        loaded: model keys that received a tensor.
        missing: model keys the checkpoint did not fill (they keep their initialization).
        unexpected: checkpoint keys that were not loaded (no such key in the model,
            or no prefix of ``load_into``'s map matched).
        shape_mismatch: ``(checkpoint key, model key, checkpoint shape, model shape)``
            for tensors present on both sides with different shapes (the
            class-specific layers when the number of classes differs); the model's
            keep their initialization.
        ignored: model BN ``num_batches_tracked`` counters, which ImageNet weights never fill.
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def skipped_shape(self) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
        """``(model key, checkpoint shape, model shape)`` of each :attr:`shape_mismatch`."""
        return [(model_key, a, b) for _, model_key, a, b in self.shape_mismatch]

    @property
    def complete(self) -> bool:
        """True when nothing is missing, unexpected or mismatched."""
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        if self.shape_mismatch:
            lines.append(f"skipped {len(self.shape_mismatch)} with a different shape (re-initialized):")
            lines += [f"  {k}: checkpoint {list(a)} vs model {list(b)}" + (f" (model key {m})" if m != k else "")
                      for k, m, a, b in self.shape_mismatch]
        if self.missing:
            lines.append(f"{len(self.missing)} model keys not in the checkpoint (initialized): " + ", ".join(self.missing))
        if self.unexpected:
            lines.append(f"{len(self.unexpected)} checkpoint keys not loaded (ignored): " + ", ".join(self.unexpected))
        return "\n".join(lines)


def _strip_ddp_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def load_model_weights(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    strict_shapes: bool = False,
    ignore_missing: Iterable[str] = (),
) -> LoadReport:
    """Copy matching tensors from ``state_dict`` into ``model``, skipping shape mismatches.

    Used to fine-tune a detector checkpoint on a dataset with another number of
    classes: the classification and class-specific box-regression layers have a
    different shape and keep their fresh initialization; everything else is copied.
    Keys must match exactly (no heuristic renaming).

    Args:
        model: the detector (unwrapped, not DDP).
        state_dict: a checkpoint's ``"model"`` entry (a ``module.`` prefix is removed).
        strict_shapes: raise instead of skipping on a shape mismatch.
        ignore_missing: key prefixes that may be missing without being reported.
    """
    state_dict = _strip_ddp_prefix(state_dict)
    own = model.state_dict()
    report = LoadReport()
    to_load: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key not in own:
            report.unexpected.append(key)
            continue
        if tuple(own[key].shape) != tuple(value.shape):
            if strict_shapes:
                raise ValueError(
                    f"weight {key!r}: checkpoint shape {list(value.shape)} does not match model shape {list(own[key].shape)}"
                )
            report.shape_mismatch.append((key, key, tuple(value.shape), tuple(own[key].shape)))
            continue
        to_load[key] = value
        report.loaded.append(key)
    ignore = tuple(ignore_missing)
    report.missing = [k for k in own if k not in state_dict and not (ignore and k.startswith(ignore))]
    model.load_state_dict(to_load, strict=False)
    return report


def load_all_weights(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str,
    hint: str,
    allow_unexpected: bool = True,
    error: type[ValueError] = ValueError,
) -> LoadReport:
    """Load a checkpoint's weights into a model built to take them all (inference,
    evaluation, conversion): no shape may differ and no weight of the model may be missing.

    Args:
        model: the model the config builds (unwrapped, not DDP).
        state_dict: the checkpoint's weights.
        source: the file they come from, first in every message.
        hint: what a mismatch most likely means, last in every message
            (e.g. "the config does not match the checkpoint").
        allow_unexpected: False = checkpoint weights the model does not use are an error
            too; True = they are only in the returned report (the caller may warn).
        error: the exception class raised (a ValueError).

    Raises:
        ``error``: ``"<source>: <what differs>; <hint>"``.
    """
    try:
        report = load_model_weights(model, state_dict, strict_shapes=True)
    except ValueError as e:  # a shape mismatch: the config builds another architecture
        raise error(f"{source}: {e}; {hint}") from None
    if report.missing:
        raise error(
            f"{source}: the checkpoint lacks {len(report.missing)} weights of the model built from the config "
            f"(first: {report.missing[0]!r}); {hint}"
        )
    if report.unexpected and not allow_unexpected:
        raise error(
            f"{source}: {len(report.unexpected)} checkpoint weights are not used by the model built from the "
            f"config (first: {report.unexpected[0]!r}); {hint}"
        )
    return report
