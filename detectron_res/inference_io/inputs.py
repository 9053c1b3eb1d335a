"""Which files a command line names: files, folders, glob patterns, videos.

``tools/infer.py photos/ "shots/*.png" clip.mp4`` and ``tools/export.py
--check-images photos/`` both turn their arguments into a list of files here
(:func:`discover_inputs`); a file is an image or a video by its extension.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import FrozenSet, List, NamedTuple, Optional, Sequence, Tuple

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "InputFile",
    "Failure",
    "Discovered",
    "kind_of",
    "split_overrides",
    "discover_inputs",
]

#: Extensions a folder's files need to be taken as images (any file named directly is
#: tried, whatever its extension: decoding decides).
IMAGE_EXTENSIONS: FrozenSet[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pbm", ".gif"}
)
#: Extensions that make a file a video (read frame by frame with OpenCV).
VIDEO_EXTENSIONS: FrozenSet[str] = frozenset(
    {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"}
)

# `section.key=value` (a dotted key, then "="): a config override, not a file name.
_OVERRIDE_PATTERN = re.compile(r"^[A-Za-z_]\w*(\.\w+)+=")
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass
class InputFile:
    """One file to run on: ``kind`` is ``"image"`` or ``"video"``; ``given_as`` is the
    command-line argument (file, folder or pattern) it came from."""

    path: Path
    kind: str
    given_as: str


@dataclass
class Failure:
    """An input (or argument) that produced no result, and why (one line)."""

    name: str
    reason: str


class Discovered(NamedTuple):
    """What :func:`discover_inputs` found: unpacks as ``inputs, failures, ignored, skipped_folders``."""

    inputs: List[InputFile]
    failures: List[Failure]  # arguments that matched nothing
    ignored: int  # folder entries without a known extension
    skipped_folders: int  # sub-folders not searched (0 with recursive)


def kind_of(path: Path) -> str:
    """``"video"`` for a video extension (:data:`VIDEO_EXTENSIONS`), else ``"image"``."""
    return "video" if path.suffix.lower() in VIDEO_EXTENSIONS else "image"


def split_overrides(arguments: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Separate input paths from ``section.key=value`` config overrides.

    An argument is an override when it starts with a dotted key and ``=``, unless a
    file of that name exists (which is then read as an input).
    Returns ``(inputs, overrides)``, each in the given order.
    """
    inputs, overrides = [], []
    for arg in arguments:
        if _OVERRIDE_PATTERN.match(arg) and not os.path.exists(arg):
            overrides.append(arg)
        else:
            inputs.append(arg)
    return inputs, overrides


def _folder_entries(path: Path, recursive: bool) -> Tuple[List[Path], int]:
    """The files of folder ``path`` (sorted), and how many sub-folders were not searched."""
    if recursive:
        # Sorted walk (deterministic order); links to folders are not followed
        # (a link loop would never end).
        entries = []
        for folder, subfolders, files in os.walk(path):
            subfolders.sort()
            entries += [Path(folder) / f for f in sorted(files)]
        return [p for p in entries if p.is_file()], 0
    entries = sorted(p for p in path.iterdir() if p.is_file())
    return entries, sum(1 for p in path.iterdir() if p.is_dir())


def discover_inputs(
    arguments: Sequence[str],
    *,
    recursive: bool = False,
    videos: bool = True,
    recursive_option: Optional[str] = "--recursive",
) -> Discovered:
    """Expand files, folders and glob patterns into a de-duplicated list of inputs.

    * a file is taken whatever its extension (decoding decides whether it is an
      image; a video extension makes it a video);
    * a folder contributes its files with an image (or, with ``videos``, video)
      extension, sorted; with ``recursive`` also those of every sub-folder
      (``--recursive``), else its sub-folders are counted as skipped;
    * a pattern with ``* ? [`` is expanded like the shell does (``**`` recursive).

    Args:
        arguments: the paths and patterns, in the order given.
        recursive: search the folders' sub-folders too.
        videos: take video files from folders (``tools/export.py`` checks on images only).
        recursive_option: the caller's option that sets ``recursive``, named in the
            message about a folder that has only sub-folders (None: the caller has none).
    Returns:
        a :class:`Discovered`: the inputs in argument order (a file named twice is
        taken once), the arguments that matched nothing (with the reason), the
        folder entries ignored for their extension, the sub-folders skipped.
    """
    extensions = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS if videos else IMAGE_EXTENSIONS
    what = "image or video files" if videos else "image files"
    found: List[InputFile] = []
    failures: List[Failure] = []
    ignored = skipped_folders = 0
    seen = set()

    def add(path: Path, given_as: str) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            found.append(InputFile(path=path, kind=kind_of(path), given_as=given_as))

    for arg in arguments:
        path = Path(arg)
        if path.is_dir():
            entries, skipped = _folder_entries(path, recursive)
            skipped_folders += skipped
            known = [p for p in entries if p.suffix.lower() in extensions]
            ignored += len(entries) - len(known)
            if not known:
                has_subfolders = any(p.is_dir() for p in path.iterdir())
                hint = f" (it has sub-folders: pass {recursive_option} to search them)" \
                    if has_subfolders and not recursive and recursive_option else ""
                failures.append(Failure(arg, f"folder contains no {what}{hint}"))
            for p in known:
                add(p, arg)
        elif path.exists():
            add(path, arg)
        elif _GLOB_CHARS.search(arg):
            matches = [m for m in sorted(Path(m) for m in glob.glob(arg, recursive=True)) if m.is_file()]
            if not matches:
                failures.append(Failure(arg, "pattern matches no files"))
            for m in matches:
                add(m, arg)
        else:
            failures.append(Failure(arg, "no such file or folder"))
    return Discovered(found, failures, ignored, skipped_folders)
