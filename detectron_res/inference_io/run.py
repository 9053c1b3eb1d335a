"""Running a :class:`~detectron_res.predictor.Predictor` over image files and videos.

:func:`predict_files` takes the inputs found by
:func:`~detectron_res.inference_io.inputs.discover_inputs` and the names chosen by
:func:`~detectron_res.inference_io.naming.plan_outputs`, and for each input writes
an annotated copy and a JSON file of its detections, then ``predictions.json``
gathering them. Every file is written atomically (:mod:`detectron_res.outputs`).

A broken input (undecodable file, a video whose frames cannot be read, a forward
pass that fails) is recorded as a :class:`~detectron_res.inference_io.inputs.Failure`
and the others are still processed; a run that processed nothing keeps the
earlier ``predictions.json``.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..exit_status import one_line
from ..outputs import atomic_write, atomic_write_text
from ..predictor import Detections, Predictor
from ..visualize import MIN_DRAWN_SIDE, draw_detections
from .inputs import Failure, InputFile
from .naming import OutputPlan, earlier_run_outputs, writable_target

__all__ = ["BOX_FORMAT", "RunStats", "FilesResult", "predict_files", "count_frames", "num_items", "write_json"]

#: How every JSON file states its boxes' coordinates.
BOX_FORMAT = "x1, y1, x2, y2 in pixels of the original image, 0-based, continuous (pixel i spans [i, i+1))"
# A video without a usable frame rate in its header is written (and timed) at this one.
DEFAULT_FPS = 25.0

_NUMBER_LIST = re.compile(r"\[\s*(-?[\d.eE+-]+(?:,\s*-?[\d.eE+-]+)*)\s*\]")


@dataclass
class RunStats:
    """Counts of a run; ``failures`` are the inputs that gave no result (and why)."""

    images: int = 0
    videos: int = 0
    frames: int = 0
    detections: int = 0
    failures: List[Failure] = field(default_factory=list)


@dataclass
class FilesResult:
    """What :func:`predict_files` did.

    Attributes:
        images: one record per image processed (the content of its JSON file).
        videos: one record per video processed, ``frames`` left out.
        stats: the counts and failures (those given to :func:`predict_files` first).
        elapsed: seconds spent reading, running and writing the inputs.
        summary: the content of ``predictions.json``.
        summary_written: False when nothing was processed and an earlier run's
            ``predictions.json`` was kept.
        deleted: with ``overwrite``, the earlier run's outputs that were deleted.
    """

    images: List[dict]
    videos: List[dict]
    stats: RunStats
    elapsed: float
    summary: dict
    summary_written: bool
    deleted: List[Path]


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as indented JSON, each number list (a box) on one line, atomically:
    a link planted there is replaced, not followed; a kill never leaves half a file."""
    text = json.dumps(data, indent=1)
    # Keep each box on one line: [x1, y1, x2, y2] instead of five lines.
    text = _NUMBER_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text)
    atomic_write_text(path, text + "\n")


def count_frames(path: Path) -> int:
    """The frame count a video's header states (0 if it cannot be opened); for progress bars."""
    capture = cv2.VideoCapture(str(path))
    try:
        n = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
    finally:
        capture.release()
    return max(n, 0)


def num_items(inputs: Sequence[InputFile]) -> int:
    """How many images and video frames ``inputs`` hold (for a progress bar's total)."""
    return sum(1 if i.kind == "image" else count_frames(i.path) for i in inputs)


def _open_video_writer(
    paths: Sequence[Path], fps: float, size: Tuple[int, int]
) -> Tuple[Optional[cv2.VideoWriter], Optional[Path], Optional[Path]]:
    """``(writer, final path, partial path)``: frames go to a hidden partial file,
    renamed to the final name once the writer is closed. ``paths``: the names for
    the mp4v and the MJPG codec (:meth:`OutputNamer.video_paths`)."""
    # mp4v is in every OpenCV FFmpeg build (H.264 often is not); MJPG/AVI is the fallback.
    for path, codec in zip(paths, ("mp4v", "MJPG")):
        partial = writable_target(path.with_name(f".{path.stem}.partial{path.suffix}"))
        writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*codec), fps, (int(size[1]), int(size[0])))
        if writer.isOpened():
            return writer, path, partial
        writer.release()
        partial.unlink(missing_ok=True)
    return None, None, None


class _Runner:
    """Feeds images and video frames to the predictor in batches and writes their outputs."""

    def __init__(self, predictor: Predictor, plan: OutputPlan, on_progress: Callable[[int], None],
                 on_skip: Callable[[Failure], None]) -> None:
        self.predictor = predictor
        self.plan = plan
        self.on_progress = on_progress
        self.on_skip = on_skip
        self.stats = RunStats()
        self.records: List[dict] = []
        self.video_records: List[dict] = []

    def report(self, name: str, reason: str) -> None:
        failure = Failure(name, reason)
        self.stats.failures.append(failure)
        self.on_skip(failure)

    def _predict(self, images_bgr: List[np.ndarray]) -> List[Detections]:
        return self.predictor.predict_batch(images_bgr, format="BGR")

    # -- images -------------------------------------------------------------
    def run_images(self, images: Sequence[InputFile]) -> None:
        batch: List[Tuple[InputFile, np.ndarray]] = []
        for item in images:
            try:
                # BGR: the annotated copy is drawn and written with OpenCV.
                image = self.predictor.read_image(item.path, format="BGR")
            except Exception as e:  # ImageReadError, OSError, or anything a broken file provokes
                # ImageReadError's message starts with the path, which report() prints already.
                self.report(str(item.path), getattr(e, "reason", None) or one_line(e))
                self.on_progress(1)
                continue
            batch.append((item, image))
            if len(batch) == self.predictor.batch_size:
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
                self.report(str(batch[0][0].path), f"inference failed: {one_line(e)}")
                self.on_progress(1)
            return
        for (item, image), detections in zip(batch, results):
            try:
                self._write_image_outputs(item, image, detections)
            except Exception as e:
                self.report(str(item.path), f"cannot write outputs: {one_line(e)}")
            self.on_progress(1)

    def _write_image_outputs(self, item: InputFile, image: np.ndarray, detections: Detections) -> None:
        stem = self.plan.stems[item.path]
        # Thumbnails are drawn enlarged so that their labels stay readable (the JSON
        # keeps the original image's pixels).
        annotated = draw_detections(
            image, detections.boxes, detections.labels, detections.scores, self.predictor.class_names,
            min_side=MIN_DRAWN_SIDE,
        )
        image_path = self.plan.namer.image_path(stem, item.path)
        ok, encoded = cv2.imencode(image_path.suffix, annotated)
        if not ok:
            raise OSError(f"OpenCV could not encode {image_path}")
        atomic_write(image_path, lambda f: f.write(encoded.tobytes()))
        record = {
            "file_name": str(item.path),
            "image_size": {"height": int(image.shape[0]), "width": int(image.shape[1])},
            "box_format": BOX_FORMAT,
            "num_detections": len(detections),
            "detections": detections.to_list(),
            "annotated_image": str(image_path),
            "json": f"{stem}.json",
        }
        write_json(self.plan.json_path(item), record)
        self.records.append(record)
        self.stats.images += 1
        self.stats.detections += len(detections)

    # -- videos -------------------------------------------------------------
    def run_video(self, item: InputFile) -> None:
        name = str(item.path)
        capture = cv2.VideoCapture(name)
        if not capture.isOpened():
            self.report(name, "cannot open as a video (unsupported codec, corrupt or not a video)")
            return
        fps = capture.get(cv2.CAP_PROP_FPS)
        fps = fps if fps and np.isfinite(fps) and fps > 0 else DEFAULT_FPS
        stem = self.plan.stems[item.path]
        writer: Optional[cv2.VideoWriter] = None
        video_path: Optional[Path] = None
        frames: List[dict] = []
        size: Optional[Tuple[int, int]] = None
        index = 0
        failed = None
        try:
            while failed is None:
                batch = []
                for _ in range(self.predictor.batch_size):
                    ok, frame = capture.read()
                    if not ok or frame is None:
                        break
                    batch.append(frame)
                if not batch:
                    break
                if size is None:
                    size = batch[0].shape[:2]
                    writer, video_path, partial = _open_video_writer(self.plan.namer.video_paths(stem), fps, size)
                    if writer is None:
                        failed = "cannot create an output video with OpenCV (mp4v and MJPG both failed)"
                        break
                try:
                    results = self._predict(batch)
                except Exception as e:
                    failed = f"inference failed on frame {index}: {one_line(e)}"
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
                self.on_progress(len(batch))
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
        write_json(self.plan.json_path(item), record)
        self.video_records.append(record)
        self.stats.videos += 1


def predict_files(
    predictor: Predictor,
    plan: OutputPlan,
    *,
    overwrite: bool = False,
    failures: Sequence[Failure] = (),
    on_progress: Optional[Callable[[int], None]] = None,
    on_skip: Optional[Callable[[Failure], None]] = None,
) -> FilesResult:
    """Run ``predictor`` on every input of ``plan`` and write the outputs it names.

    Images are run ``predictor.batch_size`` at a time (a batch that fails is re-run
    one image at a time to name the culprit), then each video frame by frame in
    batches of the same size.

    Args:
        predictor: the model (its ``score_thresh``, ``batch_size`` and ``cfg.data.max_pixels`` apply).
        plan: from :func:`~detectron_res.inference_io.naming.plan_outputs`, already
            checked (:meth:`OutputPlan.check`); its folder is created if missing.
        overwrite: the earlier run's other outputs listed in its ``predictions.json``
            are deleted (only if this run processed something), so that the folder
            holds one run's results.
        failures: failures found before running (arguments that matched nothing),
            recorded first in ``predictions.json``.
        on_progress: called with the number of images or frames just done.
        on_skip: called with each input that failed, as it fails.
    Returns:
        a :class:`FilesResult`.
    """
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    runner = _Runner(predictor, plan, on_progress or (lambda n: None), on_skip or (lambda f: None))
    runner.stats.failures.extend(failures)
    start = time.perf_counter()
    runner.run_images([i for i in plan.inputs if i.kind == "image"])
    for video in (i for i in plan.inputs if i.kind == "video"):
        runner.run_video(video)
    elapsed = time.perf_counter() - start

    videos = [{k: v for k, v in r.items() if k != "frames"} for r in runner.video_records]
    summary = {
        "model": str(predictor.checkpoint_path),
        "score_thresh": predictor.score_thresh,
        "precision": predictor.precision.name,
        "class_names": predictor.class_names,
        "box_format": BOX_FORMAT,
        "images": runner.records,
        "videos": videos,
        "failed": [{"file_name": f.name, "reason": f.reason} for f in runner.stats.failures],
    }
    processed_any = bool(runner.records or runner.video_records)
    deleted: List[Path] = []
    if overwrite and processed_any:
        # The folder now holds this run's results only: the earlier run's other outputs go.
        deleted = earlier_run_outputs(plan.output_dir, keep=[*plan.files, *(i.path for i in plan.inputs)])
        for path in deleted:
            path.unlink(missing_ok=True)
    written = processed_any or not plan.summary_path.exists()
    if written:  # a failed run never replaces the record of a run that worked
        write_json(plan.summary_path, summary)
    return FilesResult(runner.records, videos, runner.stats, elapsed, summary, written, deleted)
