"""Where the results of a run over files go: one folder, names derived from the inputs.

For every input ``<name>.<ext>`` the run writes, directly in the output folder,
``<name>_<ext>.json`` (its detections) and the annotated copy
``<name>_<ext>.<ext>`` (``.png`` for formats OpenCV does not write; videos
``.mp4``, or ``.avi`` where the mp4v codec is missing), plus ``predictions.json``
gathering all of them. :func:`plan_outputs` names every file before the model is
loaded, so that an earlier run's files are found first (:meth:`OutputPlan.check`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence

from ..outputs import check_output_dir
from ..predictor import output_roots
from .inputs import InputFile, kind_of

__all__ = [
    "SUMMARY_FILE",
    "WRITABLE_IMAGE_EXTENSIONS",
    "default_output_dir",
    "safe_stem",
    "output_stem",
    "writable_target",
    "OutputNamer",
    "OutputPlan",
    "plan_outputs",
    "earlier_run_outputs",
]

#: The file gathering every input's record (and the earlier run's, for --overwrite).
SUMMARY_FILE = "predictions.json"
#: Annotated images keep the input's format when OpenCV writes it losslessly or as
#: the user would expect; anything else is written as PNG.
WRITABLE_IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
# The annotated video's extensions, in the order of the codecs tried (mp4v, then MJPG).
VIDEO_OUTPUT_EXTENSIONS = (".mp4", ".avi")

# Characters an output stem never contains: path separators (a name from another OS
# may hold "\\"), and control characters, which make file names unreadable.
_UNSAFE_STEM_CHARS = re.compile(r"[/\\\x00-\x1f\x7f]+")
# The summary file's stem: no input may take it (its JSON would be overwritten).
_RESERVED_STEMS = {Path(SUMMARY_FILE).stem}


def default_output_dir() -> Path:
    """``$DETECTRON_RES_OUTPUT/infer`` if that variable is set, else ``output/infer``:
    beside the training runs (:func:`detectron_res.predictor.output_roots`)."""
    return output_roots()[0] / "infer"


def safe_stem(path: Path) -> str:
    """The base name of ``path``'s outputs: its file name without extension (never a
    folder), separators and control characters replaced by ``_``, leading dots
    removed (so no hidden file, ``.`` or ``..``); ``image`` if nothing is left."""
    stem = _UNSAFE_STEM_CHARS.sub("_", path.stem).lstrip(".")
    return stem or "image"


def output_stem(path: Path) -> str:
    """The base name of ``path``'s outputs: :func:`safe_stem` plus the input's
    extension (``coffee.png`` -> ``coffee_png``), so that inputs differing only by
    extension (``coffee.png``, ``coffee.tiff``; ``clip.mp4``, ``clip.avi``) never write
    the same files."""
    ext = _UNSAFE_STEM_CHARS.sub("_", path.suffix.lstrip(".")).lower()
    return f"{safe_stem(path)}_{ext}" if ext else safe_stem(path)


def writable_target(path: Path) -> Path:
    """``path``, made safe to write: a symbolic link there (planted in a shared output
    folder) is removed rather than followed, so outputs never land outside the folder."""
    if path.is_symlink():
        path.unlink()
    return path


def _image_extension(source: Path) -> str:
    ext = source.suffix.lower()
    return ext if ext in WRITABLE_IMAGE_EXTENSIONS else ".png"


class OutputNamer:
    """Unique output names in one folder: ``a.jpg`` and ``sub/a.jpg`` -> ``a_jpg``, ``a_jpg_2``.

    Every output is a plain file directly in ``folder``, named from the input's file
    name only (:func:`output_stem`), so no input name (``..``, absolute paths, links)
    can place it elsewhere. Two inputs never share a stem (compared case-insensitively,
    as on macOS and Windows file systems, and after sanitizing), no input takes
    ``predictions`` (the summary), and no output overwrites an input.
    """

    def __init__(self, folder: Path, inputs: Sequence[InputFile]) -> None:
        self.folder = folder
        self.taken = {p.path.resolve() for p in inputs}
        self.stems: set = set()  # casefolded

    def _free(self, stem: str) -> bool:
        key = stem.casefold()
        return (
            key not in self.stems
            and key not in _RESERVED_STEMS
            and (self.folder / f"{stem}.json").resolve() not in self.taken
        )

    def _names(self, stem: str, source: Path) -> List[str]:
        """Stems of the files ``source`` writes: ``stem``, and ``stem_annotated`` when its
        annotated copy would have an input's name (see :meth:`image_path`)."""
        exts = VIDEO_OUTPUT_EXTENSIONS if kind_of(source) == "video" else [_image_extension(source)]
        if any((self.folder / f"{stem}{ext}").resolve() in self.taken for ext in exts):
            return [stem, f"{stem}_annotated"]
        return [stem]

    def stem_for(self, path: Path) -> str:
        """A stem no other input of this folder has: :func:`output_stem`, else with ``_2``, ``_3``..."""
        stem, n = output_stem(path), 1
        candidate = stem
        while not all(self._free(name) for name in self._names(candidate, path)):
            n += 1
            candidate = f"{stem}_{n}"
        self.stems.update(name.casefold() for name in self._names(candidate, path))
        return candidate

    def image_path(self, stem: str, source: Path) -> Path:
        """The annotated image of ``source``."""
        ext = _image_extension(source)
        target = self.folder / f"{stem}{ext}"
        if target.resolve() in self.taken:  # never overwrite an input (--output pointing at the inputs)
            target = self.folder / f"{stem}_annotated{ext}"
        return target

    def video_paths(self, stem: str) -> List[Path]:
        """The annotated video's possible names, by codec (mp4v: ``.mp4``, MJPG: ``.avi``)."""
        paths = []
        for ext in VIDEO_OUTPUT_EXTENSIONS:
            path = self.folder / f"{stem}{ext}"
            paths.append(self.folder / f"{stem}_annotated{ext}" if path.resolve() in self.taken else path)
        return paths


@dataclass
class OutputPlan:
    """Every output of a run, named before anything runs (:func:`plan_outputs`).

    Attributes:
        output_dir: the folder everything is written into.
        inputs: the inputs, images first, then videos (the order they are processed in).
        stems: ``{input path: stem}``; input ``p`` writes ``output_dir/<stems[p]>.json``.
        files: every path the run may write, ``predictions.json`` included.
        namer: the :class:`OutputNamer` that chose the names (annotated image and video paths).
    """

    output_dir: Path
    inputs: List[InputFile]
    namer: OutputNamer
    stems: Dict[Path, str] = field(default_factory=dict)
    files: List[Path] = field(default_factory=list)

    @property
    def summary_path(self) -> Path:
        return self.output_dir / SUMMARY_FILE

    def json_path(self, item: InputFile) -> Path:
        return self.output_dir / f"{self.stems[item.path]}.json"

    def check(self, *, overwrite: bool, flag: str = "--output") -> None:
        """Raise :class:`~detectron_res.outputs.OutputError` (one line) if any planned file
        exists (without ``overwrite``), is an input, or if ``output_dir`` is a file."""
        check_output_dir(self.output_dir, flag=flag, files=[p.name for p in self.files],
                         inputs=[i.path for i in self.inputs], overwrite=overwrite)


def plan_outputs(output_dir: Path, inputs: Sequence[InputFile]) -> OutputPlan:
    """Name every input's outputs in ``output_dir``, so that existing ones are found
    before the model is even loaded (:meth:`OutputPlan.check`)."""
    output_dir = Path(output_dir)
    # Images first, then videos: the order in which they are processed.
    ordered = sorted(inputs, key=lambda i: i.kind != "image")
    plan = OutputPlan(output_dir, ordered, OutputNamer(output_dir, inputs), files=[output_dir / SUMMARY_FILE])
    for item in ordered:
        stem = plan.stems[item.path] = plan.namer.stem_for(item.path)
        plan.files.append(output_dir / f"{stem}.json")
        if item.kind == "video":
            plan.files.extend(plan.namer.video_paths(stem))
        else:
            plan.files.append(plan.namer.image_path(stem, item.path))
    return plan


def earlier_run_outputs(output_dir: Path, keep: Sequence[Path]) -> List[Path]:
    """The files an earlier run recorded in ``output_dir/predictions.json`` (annotated
    images and videos, per-input JSON) that this run does not write itself, for
    ``--overwrite`` to delete: only plain files directly in ``output_dir``, never an
    input (``keep``)."""
    try:
        summary = json.loads((output_dir / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(summary, dict):
        return []
    names = set()
    for record in list(summary.get("images") or []) + list(summary.get("videos") or []):
        if not isinstance(record, dict):
            continue
        for key in ("annotated_image", "annotated_video", "json"):
            if isinstance(record.get(key), str):
                names.add(Path(record[key]).name)
        media = record.get("annotated_image") or record.get("annotated_video")
        if isinstance(media, str) and "json" not in record:  # written before "json" was recorded
            names.add(Path(media).stem + ".json")
    kept = {p.resolve() for p in keep}
    found = []
    for name in sorted(names):
        path = output_dir / name
        if path.name == SUMMARY_FILE or not path.is_file() or path.is_symlink():
            continue
        if path.resolve() in kept or path.resolve().parent != output_dir.resolve():
            continue
        found.append(path)
    return found
