#!/usr/bin/env python
"""Detect objects in images, folders, glob patterns and videos with a trained model.

    python tools/infer.py photo.jpg                        # the most recently trained model
    python tools/infer.py images/ "more/*.png" clip.mp4 --weights output/voc_r101/model_final.pth
    python tools/infer.py photo.jpg --score-thresh 0.3 --device cpu --output results/
    python tools/infer.py photo.jpg --config configs/voc_r101.yaml --weights W.pth input.min_size_test=800
    python tools/infer.py photo.jpg --precision fp32       # default auto: bf16 where the CPU (or a GPU) has it

For every input ``<name>.<ext>`` it writes, under ``--output`` (default ``output/infer``),
two files named ``<name>_<ext>`` (the extension is kept, so ``coffee.png`` and
``coffee.tiff`` never share outputs):

* ``<name>_<ext>.<ext>``: the image with boxes, class names and scores drawn on it
  (``.png`` for formats OpenCV does not write; videos: ``<name>_<ext>.mp4`` with
  every frame annotated);
* ``<name>_<ext>.json``: the detections (file name, image size, boxes as ``x1, y1, x2, y2``
  in the original image's pixels, class ids and names, scores; per frame for videos);

and ``predictions.json`` gathering all of them. Nothing is overwritten silently:
if any of these files exists already (an earlier run into the same folder), the
tool stops before running the model and names it; ``--overwrite`` replaces them
and deletes the other outputs of the earlier run listed in its ``predictions.json``,
so the folder holds one run's results. JSON files are written atomically, and a
run that processed nothing keeps the earlier ``predictions.json``. Files that cannot be read (corrupt,
empty, not an image) are reported by name and skipped; the others are still
processed, and the exit status is 1 when anything failed (2 for a usage error such
as a missing model, 0 when all went well).

Trailing ``section.key=value`` arguments override config keys (told apart from
input files by the ``=`` after a dotted key; an existing file with such a name
is still read as an input).
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

# Runnable as `python tools/infer.py` from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pbm", ".gif"}
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"}
# Annotated images keep the input's format when OpenCV writes it losslessly or
# as the user would expect; anything else is written as PNG.
_WRITABLE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
_OVERRIDE_PATTERN = re.compile(r"^[A-Za-z_]\w*(\.\w+)+=")
_GLOB_CHARS = re.compile(r"[*?\[]")
BOX_FORMAT = "x1, y1, x2, y2 in pixels of the original image, 0-based, continuous (pixel i spans [i, i+1))"

# Exit statuses.
EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


@dataclass
class InputFile:
    path: Path
    kind: str  # "image" | "video"
    given_as: str  # the command-line argument it came from


@dataclass
class Failure:
    name: str
    reason: str


@dataclass
class RunStats:
    images: int = 0
    videos: int = 0
    frames: int = 0
    detections: int = 0
    failures: List[Failure] = field(default_factory=list)


# ----------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------
def split_overrides(arguments: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Separate input paths from trailing ``section.key=value`` config overrides."""
    inputs, overrides = [], []
    for arg in arguments:
        if _OVERRIDE_PATTERN.match(arg) and not os.path.exists(arg):
            overrides.append(arg)
        else:
            inputs.append(arg)
    return inputs, overrides


def _kind_of(path: Path) -> str:
    return "video" if path.suffix.lower() in VIDEO_EXTENSIONS else "image"


def discover_inputs(
    arguments: Sequence[str], *, recursive: bool = False
) -> Tuple[List[InputFile], List[Failure], int, int]:
    """Expand files, folders and glob patterns into a de-duplicated list of inputs.

    * a file is taken whatever its extension (decoding decides whether it is an
      image; a video extension makes it a video);
    * a folder contributes its files with an image or video extension, sorted; with
      ``recursive`` also those of every sub-folder (``--recursive``), else its
      sub-folders are counted as skipped (and reported by the caller);
    * a pattern with ``* ? [`` is expanded like the shell does (``**`` recursive).

    Returns:
        ``(inputs, failures, ignored, skipped_folders)``: failures name arguments that
        matched nothing; ``ignored`` counts folder entries without a known extension;
        ``skipped_folders`` the sub-folders not searched (0 with ``recursive``).
    """
    found: List[InputFile] = []
    failures: List[Failure] = []
    ignored = skipped_folders = 0
    seen = set()

    def add(path: Path, given_as: str) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            found.append(InputFile(path=path, kind=_kind_of(path), given_as=given_as))

    for arg in arguments:
        path = Path(arg)
        if path.is_dir():
            if recursive:
                # Sorted walk (deterministic order); links to folders are not followed
                # (a link loop would never end).
                entries = []
                for folder, subfolders, files in os.walk(path):
                    subfolders.sort()
                    entries += [Path(folder) / f for f in sorted(files)]
                entries = [p for p in entries if p.is_file()]
            else:
                entries = sorted(p for p in path.iterdir() if p.is_file())
                skipped_folders += sum(1 for p in path.iterdir() if p.is_dir())
            known = [p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS]
            ignored += len(entries) - len(known)
            if not known:
                hint = "" if recursive or not any(p.is_dir() for p in path.iterdir()) else \
                    " (it has sub-folders: pass --recursive to search them)"
                failures.append(Failure(arg, f"folder contains no image or video files{hint}"))
            for p in known:
                add(p, arg)
        elif path.exists():
            add(path, arg)
        elif _GLOB_CHARS.search(arg):
            matches = sorted(Path(m) for m in glob.glob(arg, recursive=True))
            matches = [m for m in matches if m.is_file()]
            if not matches:
                failures.append(Failure(arg, "pattern matches no files"))
            for m in matches:
                add(m, arg)
        else:
            failures.append(Failure(arg, "no such file or folder"))
    return found, failures, ignored, skipped_folders


# ----------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------
# Characters an output stem never contains: path separators (a name from another OS
# may hold "\\"), and control characters, which make file names unreadable.
_UNSAFE_STEM_CHARS = re.compile(r"[/\\\x00-\x1f\x7f]+")
# The summary file's stem: no input may take it (its JSON would be overwritten).
_RESERVED_STEMS = {"predictions"}


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
        if _kind_of(source) == "video":
            exts = [".mp4", ".avi"]
        else:
            exts = [source.suffix.lower() if source.suffix.lower() in _WRITABLE_EXTENSIONS else ".png"]
        if any((self.folder / f"{stem}{ext}").resolve() in self.taken for ext in exts):
            return [stem, f"{stem}_annotated"]
        return [stem]

    def stem_for(self, path: Path) -> str:
        stem, n = output_stem(path), 1
        candidate = stem
        while not all(self._free(name) for name in self._names(candidate, path)):
            n += 1
            candidate = f"{stem}_{n}"
        self.stems.update(name.casefold() for name in self._names(candidate, path))
        return candidate

    def image_path(self, stem: str, source: Path) -> Path:
        ext = source.suffix.lower() if source.suffix.lower() in _WRITABLE_EXTENSIONS else ".png"
        target = self.folder / f"{stem}{ext}"
        if target.resolve() in self.taken:  # never overwrite an input (--output pointing at the inputs)
            target = self.folder / f"{stem}_annotated{ext}"
        return target

    def video_paths(self, stem: str) -> List[Path]:
        """The annotated video's possible names, by codec (see :func:`_open_video_writer`)."""
        paths = []
        for ext in (".mp4", ".avi"):
            path = self.folder / f"{stem}{ext}"
            paths.append(self.folder / f"{stem}_annotated{ext}" if path.resolve() in self.taken else path)
        return paths


def plan_outputs(namer: OutputNamer, inputs: Sequence[InputFile]) -> Tuple[dict, List[Path]]:
    """Name every input's outputs before anything runs: ``({input path: stem}, files)``,
    ``files`` being all the paths the run may write (``predictions.json`` included),
    so that existing ones are found before the model is even loaded."""
    stems, files = {}, [namer.folder / "predictions.json"]
    # Images first, then videos: the order in which they are processed.
    for item in sorted(inputs, key=lambda i: i.kind != "image"):
        stem = stems[item.path] = namer.stem_for(item.path)
        files.append(namer.folder / f"{stem}.json")
        if item.kind == "video":
            files.extend(namer.video_paths(stem))
        else:
            files.append(namer.image_path(stem, item.path))
    return stems, files


def earlier_run_outputs(output_dir: Path, keep: Sequence[Path]) -> List[Path]:
    """The files an earlier run recorded in ``output_dir/predictions.json`` (annotated
    images and videos, per-input JSON) that this run does not write itself, for
    ``--overwrite`` to delete: only plain files directly in ``output_dir``, never an
    input (``keep``)."""
    try:
        summary = json.loads((output_dir / "predictions.json").read_text())
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
        if path.name == "predictions.json" or not path.is_file() or path.is_symlink():
            continue
        if path.resolve() in kept or path.resolve().parent != output_dir.resolve():
            continue
        found.append(path)
    return found


_NUMBER_LIST = re.compile(r"\[\s*(-?[\d.eE+-]+(?:,\s*-?[\d.eE+-]+)*)\s*\]")


def _write_json(path: Path, data: dict) -> None:
    from detectron_res.outputs import atomic_write_text

    text = json.dumps(data, indent=1)
    # Keep each box on one line: [x1, y1, x2, y2] instead of five lines.
    text = _NUMBER_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text)
    # Atomic: a planted link there is replaced, not followed; a kill never leaves half a file.
    atomic_write_text(path, text + "\n")


def _image_record(name: str, size: Tuple[int, int], detections) -> dict:
    return {
        "file_name": name,
        "image_size": {"height": int(size[0]), "width": int(size[1])},
        "box_format": BOX_FORMAT,
        "num_detections": len(detections),
        "detections": detections.to_list(),
    }


# ----------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------
class Runner:
    """Feeds images and video frames to the predictor in batches and writes outputs."""

    def __init__(self, predictor, output_dir: Path, namer: OutputNamer, stems: dict, batch_size: int,
                 progress) -> None:
        self.predictor = predictor
        self.output_dir = output_dir
        self.namer = namer
        self.stems = stems  # from plan_outputs
        self.batch_size = batch_size
        self.progress = progress
        self.stats = RunStats()
        self.records: List[dict] = []
        self.video_records: List[dict] = []

    def report(self, name: str, reason: str) -> None:
        self.stats.failures.append(Failure(name, reason))
        self.progress.write(f"skipped {name}: {reason}", file=sys.stderr)

    def _predict(self, arrays_bgr: List[np.ndarray]):
        prepared = [self._to_model(a) for a in arrays_bgr]
        return self.predictor.predict_arrays(prepared)

    def _to_model(self, image_bgr: np.ndarray) -> np.ndarray:
        from detectron_res.predictor import prepare_image

        return prepare_image(image_bgr, format="BGR", model_format=self.predictor.input_format)

    # -- images -------------------------------------------------------------
    def run_images(self, images: Sequence[InputFile]) -> None:
        from detectron_res.data.image_io import read_image

        # The decompression-bomb limit of the config (data.max_pixels=... on the command line).
        max_pixels = int(self.predictor.cfg.data.max_pixels)
        batch: List[Tuple[InputFile, np.ndarray]] = []
        for item in images:
            try:
                image = read_image(item.path, format="BGR", max_pixels=max_pixels)
            except Exception as e:  # ImageReadError, OSError, or anything a broken file provokes
                # ImageReadError's message starts with the path, which report() prints already.
                self.report(str(item.path), getattr(e, "reason", None) or _one_line(e))
                self.progress.update(1)
                continue
            batch.append((item, image))
            if len(batch) == self.batch_size:
                self._flush_images(batch)
                batch = []
        if batch:
            self._flush_images(batch)

    def _flush_images(self, batch: List[Tuple[InputFile, np.ndarray]]) -> None:
        try:
            results = self._predict([image for _, image in batch])
        except Exception as e:
            if len(batch) > 1:  # find the culprit: run the batch's images one at a time
                for pair in batch:
                    self._flush_images([pair])
            else:
                self.report(str(batch[0][0].path), f"inference failed: {_one_line(e)}")
                self.progress.update(1)
            return
        for (item, image), detections in zip(batch, results):
            try:
                self._write_image_outputs(item, image, detections)
            except Exception as e:
                self.report(str(item.path), f"cannot write outputs: {_one_line(e)}")
            self.progress.update(1)

    def _write_image_outputs(self, item: InputFile, image: np.ndarray, detections) -> None:
        from detectron_res.outputs import atomic_write
        from detectron_res.visualize import MIN_DRAWN_SIDE, draw_detections

        stem = self.stems[item.path]
        # Thumbnails are drawn enlarged so that their labels stay readable (the JSON
        # keeps the original image's pixels).
        annotated = draw_detections(
            image, detections.boxes, detections.labels, detections.scores, self.predictor.class_names,
            min_side=MIN_DRAWN_SIDE,
        )
        image_path = self.namer.image_path(stem, item.path)
        ok, encoded = cv2.imencode(image_path.suffix, annotated)
        if not ok:
            raise OSError(f"OpenCV could not encode {image_path}")
        atomic_write(image_path, lambda f: f.write(encoded.tobytes()))
        record = _image_record(str(item.path), image.shape[:2], detections)
        record["annotated_image"] = str(image_path)
        record["json"] = f"{stem}.json"
        _write_json(self.output_dir / f"{stem}.json", record)
        self.records.append(record)
        self.stats.images += 1
        self.stats.detections += len(detections)

    # -- videos -------------------------------------------------------------
    def run_video(self, item: InputFile) -> None:
        from detectron_res.visualize import draw_detections

        name = str(item.path)
        capture = cv2.VideoCapture(name)
        if not capture.isOpened():
            self.report(name, "cannot open as a video (unsupported codec, corrupt or not a video)")
            return
        fps = capture.get(cv2.CAP_PROP_FPS)
        fps = fps if fps and np.isfinite(fps) and fps > 0 else 25.0
        stem = self.stems[item.path]
        writer: Optional[cv2.VideoWriter] = None
        video_path: Optional[Path] = None
        frames: List[dict] = []
        size: Optional[Tuple[int, int]] = None
        index = 0
        failed = None
        try:
            while failed is None:
                batch = []
                for _ in range(self.batch_size):
                    ok, frame = capture.read()
                    if not ok or frame is None:
                        break
                    batch.append(frame)
                if not batch:
                    break
                if size is None:
                    size = batch[0].shape[:2]
                    writer, video_path, partial = _open_video_writer(self.namer, stem, fps, size)
                    if writer is None:
                        failed = "cannot create an output video with OpenCV (mp4v and MJPG both failed)"
                        break
                try:
                    results = self._predict(batch)
                except Exception as e:
                    failed = f"inference failed on frame {index}: {_one_line(e)}"
                    break
                for frame, detections in zip(batch, results):
                    annotated = draw_detections(
                        frame, detections.boxes, detections.labels, detections.scores, self.predictor.class_names
                    )
                    if annotated.shape[:2] != size:  # a stream can change size; the writer cannot
                        annotated = cv2.resize(annotated, (size[1], size[0]))
                    writer.write(annotated)
                    frames.append({"frame": index, "time_s": round(index / fps, 4), "detections": detections.to_list()})
                    self.stats.detections += len(detections)
                    index += 1
                self.stats.frames += len(batch)
                self.progress.update(len(batch))
        finally:
            capture.release()
            if writer is not None:
                writer.release()
                if index > 0:  # complete (or as far as it went): under its name in one step
                    os.replace(partial, video_path)
                else:
                    partial.unlink(missing_ok=True)
        if failed is None and index == 0:
            failed = "no frames could be decoded (empty, corrupt or not a video)"
        if failed is not None:
            self.report(name, failed)
            if index == 0:
                return
        record = {
            "file_name": name,
            "image_size": {"height": int(size[0]), "width": int(size[1])},
            "fps": fps,
            "num_frames": index,
            "box_format": BOX_FORMAT,
            "annotated_video": str(video_path),
            "json": f"{stem}.json",
            "frames": frames,
        }
        _write_json(self.output_dir / f"{stem}.json", record)
        self.video_records.append(record)
        self.stats.videos += 1


def _open_video_writer(
    namer: OutputNamer, stem: str, fps: float, size: Tuple[int, int]
) -> Tuple[Optional[cv2.VideoWriter], Optional[Path], Optional[Path]]:
    """``(writer, final path, partial path)``: frames go to a hidden partial file,
    renamed to the final name once the writer is closed."""
    # mp4v is in every OpenCV FFmpeg build (H.264 often is not); MJPG/AVI is the fallback.
    for path, codec in zip(namer.video_paths(stem), ("mp4v", "MJPG")):
        partial = writable_target(path.with_name(f".{path.stem}.partial{path.suffix}"))
        writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*codec), fps, (int(size[1]), int(size[0])))
        if writer.isOpened():
            return writer, path, partial
        writer.release()
        partial.unlink(missing_ok=True)
    return None, None, None


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


class _NoProgress:
    """Stand-in for tqdm when the bar is off: same ``update``/``write``/``close``."""

    def update(self, n: int = 1) -> None:
        pass

    def write(self, text: str, file=None) -> None:
        print(text, file=file or sys.stdout)

    def close(self) -> None:
        pass


def _count_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    try:
        n = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
    finally:
        capture.release()
    return max(n, 0)


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------
_EXAMPLES = """examples:
  python tools/infer.py photo.jpg                       # the most recently trained model
  python tools/infer.py photos/ --recursive             # a folder and all its sub-folders
  python tools/infer.py "shots/*.png" clip.mp4 --weights output/voc07_r101/model_final.pth
  python tools/infer.py photo.jpg --score-thresh 0.3 --device cpu --output results/
  python tools/infer.py photo.jpg --config voc07_r101.yaml --weights W.pth input.min_size_test=800
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/infer.py",
        description="Detect objects in images, folders, glob patterns and videos; write annotated copies and JSON.",
        epilog=_EXAMPLES + "\nExit status: 0 all inputs processed, 1 some inputs failed (named on stderr), 2 usage error.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders, glob patterns (quote them) or video files; "
        "trailing section.key=value arguments override config keys",
    )
    parser.add_argument(
        "--weights",
        help="a checkpoint written by training (or its run folder); default: the most recent "
        "output/*/last_checkpoint (and $DETECTRON_RES_OUTPUT/*/last_checkpoint)",
    )
    parser.add_argument("--config", help="config file replacing the one stored in the checkpoint")
    parser.add_argument("--score-thresh", type=float, default=0.5, help="drop detections scoring lower (default 0.5)")
    parser.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda or cuda:N (default auto)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="images or frames per forward pass (default 1). Images of different sizes are padded to a "
        "common size in a batch, which can change their detections slightly; 1 gives exactly the "
        "single-image results",
    )
    parser.add_argument("-r", "--recursive", action="store_true",
                        help="search the given folders' sub-folders too (default: only the folder itself; "
                        "skipped sub-folders are counted in the output)")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="network precision: bf16 autocast, fp32, or auto (default) = bf16 on CUDA GPUs with native bf16 "
        "(Ampere or later) and on CPUs with native bf16 (AVX512-BF16, AMX), fp32 elsewhere; box decoding and NMS "
        "run in fp32 either way",
    )
    parser.add_argument("--output", default=None, help="output folder (default output/infer)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the outputs of an earlier run in --output (its other outputs listed in its "
                             "predictions.json are deleted; inputs never are); without it existing outputs are an error")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    # Intermixed: inputs and key=value overrides may come before or after options.
    args = parser.parse_intermixed_args(argv)
    # Warnings only: the tool prints which model it uses and a summary itself.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0.0 <= args.score_thresh <= 1.0:
        parser.error(f"--score-thresh must be in [0, 1], got {args.score_thresh}")
    input_args, overrides = split_overrides(args.inputs)
    if not input_args and not args.print_config:
        parser.error("no input given (only config overrides)")

    from detectron_res.config import ConfigError
    from detectron_res.engine.checkpoint import CheckpointError
    from detectron_res.predictor import NoCheckpointError, Predictor
    from omegaconf import OmegaConf

    inputs, failures, ignored, skipped_folders = discover_inputs(input_args, recursive=args.recursive)
    for failure in failures:
        print(f"skipped {failure.name}: {failure.reason}", file=sys.stderr)
    if ignored:
        print(f"ignored {ignored} file(s) in the given folders without an image or video extension")
    if skipped_folders:
        print(f"skipped {skipped_folders} sub-folder(s) of the given folders (pass --recursive to search them)")
    if not inputs and not args.print_config:
        print("error: none of the inputs could be found; nothing to do", file=sys.stderr)
        return EXIT_SOME_FAILED

    from detectron_res.outputs import OutputError, check_output_dir

    # Every output is named and checked before the model is loaded: an earlier run's
    # files (or a file where the folder should be) stop the run with one line.
    output_dir = Path(args.output) if args.output else _default_output_dir()
    namer = OutputNamer(output_dir, inputs)
    stems, planned = plan_outputs(namer, inputs)
    if not args.print_config:
        try:
            check_output_dir(output_dir, flag="--output", files=[p.name for p in planned],
                             inputs=[i.path for i in inputs], overwrite=args.overwrite)
        except OutputError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE

    try:
        predictor = Predictor(
            args.weights,
            config=args.config,
            overrides=overrides,
            device=args.device,
            score_thresh=args.score_thresh,
            batch_size=args.batch_size,
            precision=args.precision,
        )
    except NoCheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError, TypeError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    if args.print_config:
        print(OmegaConf.to_yaml(predictor.cfg), end="")
        return EXIT_OK

    source = "the most recent trained model" if args.weights is None else "--weights"
    config_source = args.config or "stored in the checkpoint"
    print(
        f"model: {predictor.checkpoint_path} ({source}); config: {config_source}; "
        f"{len(predictor.class_names)} classes; device: {predictor.device}; precision: {predictor.precision}; score threshold: {predictor.score_thresh}"
    )

    output_dir.mkdir(parents=True, exist_ok=True)
    images = [i for i in inputs if i.kind == "image"]
    videos = [i for i in inputs if i.kind == "video"]
    total = len(images) + sum(_count_frames(v.path) for v in videos)
    many = len(inputs) > 1 or bool(videos)
    if many and not args.quiet:
        from tqdm import tqdm

        progress = tqdm(total=total, unit="img", dynamic_ncols=True, file=sys.stderr)
    else:
        progress = _NoProgress()

    runner = Runner(predictor, output_dir, namer, stems, args.batch_size, progress)
    for failure in failures:
        runner.stats.failures.append(failure)
    start = time.perf_counter()
    try:
        runner.run_images(images)
        for video in videos:
            runner.run_video(video)
    finally:
        progress.close()
    elapsed = time.perf_counter() - start

    stats = runner.stats
    summary = {
        "model": str(predictor.checkpoint_path),
        "score_thresh": predictor.score_thresh,
        "precision": predictor.precision.name,
        "class_names": predictor.class_names,
        "box_format": BOX_FORMAT,
        "images": runner.records,
        "videos": [
            {k: v for k, v in r.items() if k != "frames"} | {"json": f"{Path(r['annotated_video']).stem}.json"}
            for r in runner.video_records
        ],
        "failed": [{"file_name": f.name, "reason": f.reason} for f in stats.failures],
    }
    processed_any = bool(runner.records or runner.video_records)
    if args.overwrite and processed_any:
        # The folder now holds this run's results only: the earlier run's other outputs go.
        stale = earlier_run_outputs(output_dir, keep=[*planned, *(i.path for i in inputs)])
        for path in stale:
            path.unlink(missing_ok=True)
        if stale:
            print(f"--overwrite: deleted {len(stale)} output file(s) of the earlier run in {output_dir}/")
    if processed_any or not (output_dir / "predictions.json").exists():
        _write_json(output_dir / "predictions.json", summary)
    else:  # a failed run never replaces the record of a run that worked
        print(f"no input was processed: {output_dir / 'predictions.json'} of the earlier run is kept", file=sys.stderr)

    processed = stats.images + stats.frames
    rate = processed / elapsed if elapsed > 0 else float("inf")
    parts = [f"{stats.images} image(s)"]
    if stats.videos or videos:
        parts.append(f"{stats.videos} video(s) ({stats.frames} frames)")
    print(
        f"done: {', '.join(parts)}, {stats.detections} detection(s) in {elapsed:.1f} s "
        f"({rate:.2f} images/s); outputs in {output_dir}/"
    )
    if stats.failures:
        print(f"{len(stats.failures)} input(s) failed:", file=sys.stderr)
        for f in stats.failures:
            print(f"  {f.name}: {f.reason}", file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK


def _default_output_dir() -> Path:
    env = os.environ.get("DETECTRON_RES_OUTPUT", "").strip()
    return Path(env or "output") / "infer"


if __name__ == "__main__":
    sys.exit(main())
