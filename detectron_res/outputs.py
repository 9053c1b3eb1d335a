"""Writing outputs without losing anything the user already has.

Two rules every tool follows, implemented once here:

* **Atomic writes** (:func:`atomic_write`, :func:`atomic_write_bytes`,
  :func:`atomic_write_text`): the content goes to a temporary file in the
  destination folder, is flushed and fsync'ed, gets the permissions a plain
  ``open(path, "w")`` would give (``0666`` less the process umask, or the mode of
  the file it replaces) and is renamed over the final name. A crash at any moment
  leaves the old file or the new one, never a truncated file under the final name.
  (``tempfile.mkstemp`` alone would create every output with mode ``0600``.)

* **Output paths are checked before any work** (:func:`check_output_file`,
  :func:`check_output_dir`, :func:`check_run_dir`): an output that is one of the
  tool's inputs (directly, through a symbolic link or a hard link) is refused; an
  existing file is not replaced unless the user passed ``--overwrite``; a file
  where a folder is expected (or the reverse) is a one-line error naming the flag.
  Training into a folder that holds a previous run needs ``--resume`` or
  ``--overwrite``. Every violation raises :class:`OutputError`, a ``ValueError``
  whose message is one line (the tools print it as ``error: ...``, exit status 2).
"""

from __future__ import annotations

import io
import os
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

PathLike = Union[str, os.PathLike]

__all__ = [
    "OutputError",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_file",
    "check_output_dir",
    "check_run_dir",
    "previous_run_files",
    "remove_previous_run",
    "default_file_mode",
    "add_overwrite_argument",
]


class OutputError(ValueError):
    """An output path the tool refuses to write (one-line message)."""


# ---------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------
def _current_umask() -> int:
    # /proc/self/status reports it without changing it (os.umask can only be read by
    # setting it, which races with other threads creating files).
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """Permission bits of a new file created by ``open(path, "w")``: 0666 less the umask."""
    return 0o666 & ~_current_umask()


def _fsync_dir(directory: Path) -> None:
    # Make the rename itself durable: without this a power loss right after
    # os.replace can leave the directory entry pointing at the old file.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # directories cannot be opened on some filesystems
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _parent_is_a_folder(path: Path, name: Optional[str] = None) -> None:
    """One line instead of NotADirectoryError / FileExistsError when a parent of
    ``path`` is an existing file (``name``: how the message names ``path``)."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{name or path}: {parent} is a file, expected a folder to write into")
            return


def atomic_write(path: PathLike, write_fn: Callable[[io.BufferedWriter], object]) -> Path:
    """Write ``path`` atomically: ``write_fn(fileobj)`` fills a binary temporary file in
    the same folder (``.<name>.<8 characters>.tmp``), which is fsync'ed, given the
    umask's permissions (or those of the file it replaces) and renamed over ``path``.

    Returns ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    _parent_is_a_folder(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder, expected a file name to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)  # replacing a file keeps its permissions
    except OSError:
        mode = default_file_mode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: PathLike, write_fn: Callable[[io.BufferedWriter], object]) -> Path:
    """Alias of :func:`atomic_write` (the name the checkpoint code uses)."""
    return atomic_write(path, write_fn)


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, see :func:`atomic_write`."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))


# ---------------------------------------------------------------------------
# Output path checks
# ---------------------------------------------------------------------------
def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same file: same resolved path (symbolic links),
    or same device and inode (hard links, case-insensitive file systems)."""
    try:
        if a.resolve() == b.resolve():
            return True
    except (OSError, RuntimeError):  # a link loop
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def _label(flag: Optional[str], path: Path) -> str:
    return f"{flag} {path}" if flag else str(path)


def check_output_file(
    path: PathLike,
    *,
    inputs: Iterable[Optional[PathLike]] = (),
    overwrite: bool = False,
    flag: Optional[str] = None,
) -> Path:
    """Check that the tool may write the file ``path``; raise :class:`OutputError` if not.

    Args:
        path: the output file.
        inputs: the files (or folders) the tool reads; ``None`` entries and names
            that are not local files (``torchvision://...``) are ignored. An existing
            file inside an input folder counts as an input.
        overwrite: the user passed ``--overwrite``: an existing file may be replaced
            (but never an input, and never a folder).
        flag: the command-line option that named ``path`` (for the message).
    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    name = _label(flag, path)
    for source in inputs:
        if source is None or "://" in str(source):
            continue
        source = Path(source)
        if _same_file(path, source):
            same = "" if str(source) == str(path) else f" ({source})"
            raise OutputError(f"{name} is also an input{same}; writing it would destroy the input: "
                              "choose another output path")
        if source.is_dir():
            if path.resolve() == source.resolve():
                raise OutputError(f"{name} is an input folder, expected an output file name")
            # An existing file inside an input folder is one of the inputs the tool reads.
            if (path.exists() or path.is_symlink()) and path.resolve().is_relative_to(source.resolve()):
                raise OutputError(f"{name} is inside the input folder {source}; writing it would replace an input: "
                                  "choose another output path")
    _parent_is_a_folder(path, name)
    if path.is_dir():
        raise OutputError(f"{name} is a folder, expected a file name to write")
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise OutputError(f"{name} already exists; pass --overwrite to replace it, or choose another path")
    return path


def check_output_dir(
    path: PathLike,
    *,
    files: Iterable[PathLike] = (),
    inputs: Iterable[Optional[PathLike]] = (),
    overwrite: bool = False,
    flag: Optional[str] = None,
) -> Path:
    """Check that the tool may write into the folder ``path``; raise :class:`OutputError` if not.

    The folder may exist already (it is created when missing); ``files`` are the
    names (relative to ``path``) the tool is about to write there, each checked
    with :func:`check_output_file`, so that the message names the first file that
    exists (without ``--overwrite``) or that is an input.
    """
    path = Path(path)
    name = _label(flag, path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{name} is a file, expected a folder (it is created if missing)")
    _parent_is_a_folder(path, name)
    existing = []
    for f in files:
        # Inputs and folders are refused even with --overwrite (raised here); existing files are counted.
        check_output_file(path / f, inputs=inputs, overwrite=True)
        if not overwrite and ((path / f).exists() or (path / f).is_symlink()):
            existing.append(path / f)
    if existing:
        more = f" (and {len(existing) - 1} more of the files this run writes)" if len(existing) > 1 else ""
        raise OutputError(f"{existing[0]} already exists{more}; pass --overwrite to replace, or choose another "
                          f"{flag or 'output folder'}")
    return path


#: Files whose presence in a training output folder means a run was there before.
_RUN_MARKERS = ("last_checkpoint", "model_final.pth")


def previous_run_files(output_dir: PathLike) -> list:
    """What a training run leaves that a new run would destroy: ``last_checkpoint``,
    ``model_final.pth``, ``model_*.pth`` checkpoints and a non-empty ``metrics.json``
    (a run stopped before its first checkpoint). Sorted names; empty if none."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [n for n in _RUN_MARKERS if (output_dir / n).exists()]
    found += sorted(p.name for p in output_dir.glob("model_*.pth") if p.name not in found)
    metrics = output_dir / "metrics.json"
    if metrics.is_file() and metrics.stat().st_size > 0:
        found.append(metrics.name)
    return found


def check_run_dir(output_dir: PathLike, *, resume: bool, overwrite: bool, flag: str = "--output-dir",
                  inputs: Iterable[tuple] = ()) -> Path:
    """Refuse to start a new training run over a previous one.

    A folder holding a previous run (:func:`previous_run_files`) is continued with
    ``resume=True`` or replaced with ``overwrite=True``; anything else raises
    :class:`OutputError` naming both ways out. ``inputs`` are ``(option, path)``
    pairs the run reads (``("--weights", W)``): ``overwrite`` is refused when it
    would delete one of them (:func:`remove_previous_run`).
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError(f"{flag} {output_dir} is a file, expected a run folder (it is created if missing)")
    # A parent that is a file is left to the training's own output error (exit status 6,
    # detectron_res/exit_status.py), like any other folder that cannot be created.
    found = previous_run_files(output_dir)
    if overwrite and not resume:
        doomed = [output_dir / name for name in found if name != "metrics.json"]
        for option, source in inputs:
            if source and "://" not in str(source) and any(_same_file(Path(source), p) for p in doomed):
                raise OutputError(f"{option} {source} is a checkpoint of the previous run in {output_dir}, which "
                                  f"--overwrite deletes; copy it elsewhere first, or choose another {flag}")
    if resume or overwrite:
        return output_dir
    if found:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise OutputError(
            f"{output_dir} holds a previous run ({shown}); continue it with --resume, or start over with "
            f"--overwrite (replaces it) or another {flag}"
        )
    return output_dir


def add_overwrite_argument(parser, *, what: str = "existing output files") -> None:
    """The ``--overwrite`` option, worded the same in every tool."""
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace {what} (never an input); without it an existing output is an error")


def remove_previous_run(output_dir: PathLike) -> Sequence[Path]:
    """For ``--overwrite``: delete the checkpoints and pointer of the previous run in
    ``output_dir`` (so that no model of the old run is ever taken for the new one's),
    and return them. Other files (logs, evaluations) are replaced as the run writes."""
    output_dir = Path(output_dir)
    removed = []
    for name in previous_run_files(output_dir):
        p = output_dir / name
        if name != "metrics.json" and p.is_file():
            p.unlink()
            removed.append(p)
    return removed
