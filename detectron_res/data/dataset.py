"""The in-memory form of a detection dataset, and the checks every reader shares.

All readers (:mod:`.coco`, :mod:`.voc`, :mod:`.yolo`) produce a
:class:`DetectionDataset`: a list of :class:`ImageRecord` plus the label space and a
:class:`DatasetReport` saying what was found, fixed and skipped.

Conventions (shared with the rest of the toolkit):

* ``boxes`` are ``float32 [N, 4]`` absolute ``x1, y1, x2, y2`` in continuous pixel
  coordinates, 0-based: pixel ``i`` spans ``[i, i + 1)``, so a box covering a whole
  ``W x H`` image is ``(0, 0, W, H)``. Each reader converts from its file format
  exactly once (COCO ``[x, y, w, h]`` in :mod:`.coco`, VOC 1-based inclusive in
  :mod:`.voc`, YOLO normalized centres in :mod:`.yolo`).
* ``labels`` are contiguous ``int64`` in ``1..K``; ``0`` is background;
  ``class_names[i]`` names label ``i + 1`` and ``category_ids[i]`` is its id in the
  source annotation (COCO category id; ``i + 1`` for VOC and YOLO).
* ``difficult`` (VOC) and ``iscrowd`` (COCO) boxes are kept in the records, because
  the evaluators need them; the training loader drops them from training targets.

Validation policy (what the issue asks for, applied identically by every reader):

* boxes partly outside the image are clipped to it, and counted;
* boxes with no area (zero width/height, or nothing left after clipping) are dropped,
  and counted;
* NaN / infinite coordinates, negative sizes, unknown category ids or class names,
  duplicate image ids, missing or unreadable image files are errors
  (:class:`DatasetError`) naming the file and the annotation;
* an annotation that gives an image size different from the file's is reported, and
  the file's size wins (boxes are then clipped to the real image).
"""

from __future__ import annotations

import collections
import copy
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .image_io import DEFAULT_MAX_PIXELS, ImageReadError, read_image_size

__all__ = [
    "DatasetError",
    "DatasetReport",
    "ImageRecord",
    "DetectionDataset",
    "ErrorCollector",
    "sanitize_boxes",
    "xywh_problem",
    "record_from_boxes",
    "check_image_files",
    "CHECK_IMAGES_MODES",
]

# How much of each image file is checked when a dataset is loaded:
#   "header": existence + header decode (size, format, EXIF orientation), no pixels;
#   "exists": only that the file exists (fast on network file systems);
#   "none":   nothing (the sizes in the annotation are trusted).
CHECK_IMAGES_MODES = ("header", "exists", "none")

# Boxes leaving the image by at most this many pixels are clipped without a report entry.
_CLIP_TOLERANCE = 0.01

# Number of examples kept per problem kind in the report (counts are always complete).
_MAX_EXAMPLES = 5


class DatasetError(ValueError):
    """A problem in a dataset's files that the user has to fix.

    ``str(err)`` is one line naming the file and the annotation; ``err.errors`` holds
    every problem found (a reader collects them all before raising, so that one run
    shows everything to fix).
    """

    def __init__(self, message: str, errors: Optional[Sequence[str]] = None):
        self.errors = list(errors) if errors else [message]
        super().__init__(message)

    def __reduce__(self):
        return (DatasetError, (self.args[0], self.errors))


class ErrorCollector:
    """Collects user-data errors so that a reader reports all of them at once."""

    def __init__(self, dataset_name: str):
        self.dataset_name = dataset_name
        self.errors: List[str] = []

    def add(self, message: str) -> None:
        self.errors.append(message)

    def raise_if_any(self) -> None:
        if not self.errors:
            return
        first = self.errors[0]
        more = len(self.errors) - 1
        # All of them are in DatasetError.errors; the tools print that list on stdout.
        suffix = f" [and {more} more error(s)]" if more else ""
        raise DatasetError(f"dataset '{self.dataset_name}': {first}{suffix}", self.errors)


@dataclass
class DatasetReport:
    """What a reader found, fixed and skipped; printed at start-up.

    Attributes:
        name: dataset name.
        num_images: images in the dataset (after any filtering).
        boxes_per_class: class name -> number of boxes (all boxes, crowd and difficult
            included; those are also counted separately).
        num_crowd: boxes with ``iscrowd`` (kept for evaluation, never trained on).
        num_difficult: boxes flagged ``difficult`` (kept for evaluation).
        num_images_without_boxes: images with no box at all.
        fixed: reason -> count of boxes changed but kept (e.g. clipped).
        skipped: reason -> count of boxes / images / files left out.
        examples: reason -> a few locations ("file: annotation") for each reason.
        size_mismatches: "file: annotation says HxW, file is H'xW'" lines (all of them).
        notes: free-form lines (e.g. "labels of this split are not public").
    """

    name: str
    num_images: int = 0
    boxes_per_class: Dict[str, int] = field(default_factory=dict)
    num_crowd: int = 0
    num_difficult: int = 0
    num_images_without_boxes: int = 0
    fixed: Dict[str, int] = field(default_factory=dict)
    skipped: Dict[str, int] = field(default_factory=dict)
    examples: Dict[str, List[str]] = field(default_factory=dict)
    size_mismatches: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def _example(self, reason: str, where: str) -> None:
        lst = self.examples.setdefault(reason, [])
        if len(lst) < _MAX_EXAMPLES:
            lst.append(where)

    def add_fixed(self, reason: str, where: str, count: int = 1) -> None:
        self.fixed[reason] = self.fixed.get(reason, 0) + count
        self._example(reason, where)

    def add_skipped(self, reason: str, where: str, count: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + count
        self._example(reason, where)

    @property
    def num_boxes(self) -> int:
        return int(sum(self.boxes_per_class.values()))

    def update_counts(self, records: Sequence["ImageRecord"], class_names: Sequence[str]) -> None:
        """Recompute image and box counts from ``records``."""
        counts = np.zeros(len(class_names), dtype=np.int64)
        num_crowd = num_difficult = num_empty = 0
        for r in records:
            if len(r.labels):
                counts += np.bincount(r.labels - 1, minlength=len(class_names))[: len(class_names)]
            else:
                num_empty += 1
            num_crowd += int(r.iscrowd.sum())
            num_difficult += int(r.difficult.sum())
        self.num_images = len(records)
        self.boxes_per_class = {n: int(c) for n, c in zip(class_names, counts)}
        self.num_crowd = num_crowd
        self.num_difficult = num_difficult
        self.num_images_without_boxes = num_empty

    def merge(self, other: "DatasetReport") -> None:
        """Add ``other``'s problem counts to this report (used by concatenation)."""
        for reason, n in other.fixed.items():
            self.fixed[reason] = self.fixed.get(reason, 0) + n
        for reason, n in other.skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + n
        for reason, ex in other.examples.items():
            for where in ex:
                self._example(reason, where)
        self.size_mismatches.extend(other.size_mismatches)
        self.notes.extend(f"{other.name}: {n}" for n in other.notes)

    def summary(self) -> str:
        """Multi-line human-readable summary (printed when a dataset is loaded)."""
        lines = [
            f"dataset '{self.name}': {self.num_images} images, {self.num_boxes} boxes "
            f"({self.num_crowd} crowd, {self.num_difficult} difficult), "
            f"{self.num_images_without_boxes} images without boxes"
        ]
        if self.boxes_per_class:
            width = max(len(n) for n in self.boxes_per_class)
            lines.append("  boxes per class:")
            for name, n in self.boxes_per_class.items():
                lines.append(f"    {name:<{width}} {n:>8}")
        for title, table in (("fixed", self.fixed), ("skipped", self.skipped)):
            for reason, n in sorted(table.items()):
                ex = "; ".join(self.examples.get(reason, []))
                lines.append(f"  {title}: {n} x {reason}" + (f" (e.g. {ex})" if ex else ""))
        if self.size_mismatches:
            lines.append(
                f"  {len(self.size_mismatches)} image(s) whose annotated size differs from the "
                "file (the file's size is used):"
            )
            for line in self.size_mismatches[:_MAX_EXAMPLES]:
                lines.append(f"    {line}")
            if len(self.size_mismatches) > _MAX_EXAMPLES:
                lines.append(f"    ... and {len(self.size_mismatches) - _MAX_EXAMPLES} more")
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines)


@dataclass(eq=False)  # fields are arrays: compare records field by field, not with ==
class ImageRecord:
    """One image and its ground truth.

    Attributes:
        image_id: the id used by the source annotation and by the evaluators
            (COCO: int image id; VOC: the file stem such as ``"000005"``;
            YOLO: the image path relative to the images folder, without extension).
        file_name: absolute path of the image file.
        height, width: size of the image as :func:`read_image` returns it (EXIF applied).
        boxes: ``float32 [N, 4]`` ``x1, y1, x2, y2``, continuous 0-based pixel coordinates.
        labels: ``int64 [N]`` contiguous labels in ``1..K``.
        difficult: ``bool [N]`` VOC "difficult" flag (COCO: optional ``difficult`` key).
        iscrowd: ``bool [N]`` COCO crowd flag.
    """

    image_id: Union[int, str]
    file_name: str
    height: int
    width: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))
    difficult: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=bool))
    iscrowd: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=bool))

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        n = len(self.boxes)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.difficult = np.asarray(self.difficult, dtype=bool).reshape(-1)
        self.iscrowd = np.asarray(self.iscrowd, dtype=bool).reshape(-1)
        if len(self.difficult) == 0 and n:
            self.difficult = np.zeros(n, dtype=bool)
        if len(self.iscrowd) == 0 and n:
            self.iscrowd = np.zeros(n, dtype=bool)
        assert len(self.labels) == n and len(self.difficult) == n and len(self.iscrowd) == n, (
            f"ImageRecord {self.image_id}: boxes/labels/difficult/iscrowd lengths differ"
        )

    def training_mask(self, use_difficult: bool = False) -> np.ndarray:
        """``bool [N]``: boxes used as training targets (never crowd; difficult if asked)."""
        keep = ~self.iscrowd
        if not use_difficult:
            keep &= ~self.difficult
        return keep


@dataclass(eq=False)
class DetectionDataset:
    """A list of image records with their label space.

    Attributes:
        name: dataset name (e.g. ``"voc_2007_trainval"``).
        records: the images.
        class_names: ``class_names[i]`` is the name of label ``i + 1``.
        category_ids: ``category_ids[i]`` is the source id of label ``i + 1`` (COCO
            category id; ``1..K`` for VOC/YOLO). Saved with every checkpoint so that
            predictions map back to the annotation's ids.
        format: ``"coco"``, ``"voc"``, ``"yolo"`` (or ``"mixed"`` after concatenating
            different formats).
        report: what was loaded, fixed and skipped.
        extra: reader-specific information (``json_file``, ``voc_root``, ``year``,
            ``split``, ``yolo_root``, ``parts`` ...), used by the evaluators.
        max_pixels: the decompression-bomb limit the images were checked against
            (config key ``data.max_pixels``); the loaders decode with the same limit,
            so an image accepted at start-up is never refused mid-training.
    """

    name: str
    records: List[ImageRecord]
    class_names: List[str]
    category_ids: List[int]
    format: str
    report: DatasetReport
    extra: Dict[str, Any] = field(default_factory=dict)
    max_pixels: Optional[int] = DEFAULT_MAX_PIXELS

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> ImageRecord:
        return self.records[index]

    def __iter__(self):
        return iter(self.records)

    @property
    def num_classes(self) -> int:
        """Number of foreground classes K."""
        return len(self.class_names)

    def label_space(self) -> Dict[str, Any]:
        """The mapping to keep with checkpoints: ``{"class_names", "category_ids"}``."""
        return {"class_names": list(self.class_names), "category_ids": [int(c) for c in self.category_ids]}

    def label_to_category_id(self) -> Dict[int, int]:
        """Contiguous label (``1..K``) -> source category id."""
        return {i + 1: int(c) for i, c in enumerate(self.category_ids)}

    def category_id_to_label(self) -> Dict[int, int]:
        """Source category id -> contiguous label (``1..K``)."""
        return {int(c): i + 1 for i, c in enumerate(self.category_ids)}

    def summary(self) -> str:
        return self.report.summary()

    def filter_empty(self, use_difficult: bool = False) -> "DetectionDataset":
        """A copy without images that have no training box (crowd never counts;
        difficult counts only if ``use_difficult``). The removal is counted in the report.
        """
        keep = [r for r in self.records if r.training_mask(use_difficult).any()]
        removed = len(self.records) - len(keep)
        report = copy.deepcopy(self.report)
        if removed:
            examples = [str(r.image_id) for r in self.records if not r.training_mask(use_difficult).any()]
            report.add_skipped(
                "image without training boxes (filter_empty=True)", ", ".join(examples[:3]), count=removed
            )
        report.update_counts(keep, self.class_names)
        return DetectionDataset(
            name=self.name,
            records=keep,
            class_names=list(self.class_names),
            category_ids=list(self.category_ids),
            format=self.format,
            report=report,
            extra=dict(self.extra),
            max_pixels=self.max_pixels,
        )


def sanitize_boxes(
    boxes: np.ndarray,
    height: int,
    width: int,
    wheres: Sequence[str],
    report: DatasetReport,
) -> Tuple[np.ndarray, np.ndarray]:
    """Clip boxes to the image and drop those without area, counting both.

    The caller has already rejected NaN/infinite values and negative sizes (those are
    errors whose message depends on the file format).

    Args:
        boxes: ``float [N, 4]`` x1y1x2y2, continuous 0-based pixel coordinates.
        height, width: image size the boxes must lie in.
        wheres: ``N`` location strings ("file: annotation") for the report.
        report: receives the counts.

    Returns:
        ``(clipped_boxes float32 [N, 4], keep bool [N])``.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return boxes.astype(np.float32), np.zeros(0, dtype=bool)
    zero_area = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    clipped = boxes.copy()
    clipped[:, 0::2] = np.clip(clipped[:, 0::2], 0.0, float(width))
    clipped[:, 1::2] = np.clip(clipped[:, 1::2], 0.0, float(height))
    # Overshoot below _CLIP_TOLERANCE px is rounding in the source format (e.g. YOLO's
    # 6-decimal normalized values for a box touching the border), not a data problem:
    # clipped, but not reported.
    was_clipped = np.any(np.abs(clipped - boxes) > _CLIP_TOLERANCE, axis=1) & ~zero_area
    empty_after_clip = ((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])) & ~zero_area
    for i in np.nonzero(zero_area)[0]:
        report.add_skipped("box with zero width or height, dropped", wheres[i])
    for i in np.nonzero(empty_after_clip)[0]:
        report.add_skipped(f"box entirely outside the {width}x{height} image, dropped", wheres[i])
    for i in np.nonzero(was_clipped & ~empty_after_clip)[0]:
        report.add_fixed("box partly outside the image, clipped to it", wheres[i])
    keep = ~zero_area & ~empty_after_clip
    return clipped.astype(np.float32), keep


def xywh_problem(x: float, y: float, w: float, h: float) -> Optional[str]:
    """What makes a box given as a position and a size ``(x, y, w, h)`` (COCO's
    corner, YOLO's centre) an error rather than a box to clip: ``"contains NaN or
    infinity"`` or ``"has a negative width or height"``; None when it has neither.
    The reader prefixes where the box is and how the file wrote it."""
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return "contains NaN or infinity"
    if w < 0 or h < 0:
        return "has a negative width or height"
    return None


def record_from_boxes(
    *,
    image_id: Union[int, str],
    file_name: str,
    height: int,
    width: int,
    boxes: np.ndarray,
    labels: Sequence[int],
    wheres: Sequence[str],
    report: DatasetReport,
    difficult: Optional[Sequence[bool]] = None,
    iscrowd: Optional[Sequence[bool]] = None,
) -> ImageRecord:
    """One image's :class:`ImageRecord` from the boxes its annotation file gives.

    The one step every reader ends an image with: :func:`sanitize_boxes` clips the
    boxes to the image and drops those without area (counted in ``report``), and the
    labels and flags of the surviving boxes are kept with them.

    Args:
        boxes: ``float [N, 4]`` x1y1x2y2, continuous 0-based pixel coordinates.
        labels: ``N`` contiguous labels in ``1..K``.
        wheres: ``N`` location strings ("file: annotation") for the report.
        difficult, iscrowd: ``N`` flags; ``None`` = all False (the format has none).
    """
    clipped, keep = sanitize_boxes(boxes, height, width, wheres, report)

    def kept_flags(flags: Optional[Sequence[bool]]) -> np.ndarray:
        if flags is None:
            return np.zeros(int(keep.sum()), dtype=bool)
        return np.asarray(flags, dtype=bool).reshape(-1)[keep]

    return ImageRecord(
        image_id=image_id,
        file_name=file_name,
        height=int(height),
        width=int(width),
        boxes=clipped[keep],
        labels=np.asarray(labels, dtype=np.int64).reshape(-1)[keep],
        difficult=kept_flags(difficult),
        iscrowd=kept_flags(iscrowd),
    )


def check_image_files(
    items: Sequence[Tuple[str, Optional[Tuple[int, int]], str]],
    *,
    mode: str,
    report: DatasetReport,
    errors: ErrorCollector,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    num_threads: int = 8,
) -> List[Optional[Tuple[int, int]]]:
    """Check image files up front (not mid-training) and return their real sizes.

    Args:
        items: ``(file_name, annotated (height, width) or None, where)`` per image;
            ``where`` names the annotation that references the file.
        mode: one of :data:`CHECK_IMAGES_MODES`.
        report: receives size mismatches.
        errors: receives missing / unreadable files.
        max_pixels: decompression-bomb guard passed to :func:`read_image_size`.
        num_threads: header reads run in a thread pool (I/O bound).

    Returns:
        per item, ``(height, width)``: the file's size in mode ``"header"``, the
        annotated size otherwise (``None`` where unknown or the file is bad).
    """
    if mode not in CHECK_IMAGES_MODES:
        raise ValueError(f"check_images={mode!r} is not valid, expected one of {list(CHECK_IMAGES_MODES)}")
    if mode == "none":
        return [size for _, size, _ in items]
    if mode == "exists":
        sizes = []
        for file_name, size, where in items:
            if not os.path.isfile(file_name):
                errors.add(f"image file {file_name} does not exist (referenced by {where})")
            sizes.append(size)
        return sizes

    def probe(item):
        file_name, _, where = item
        try:
            return read_image_size(file_name, max_pixels=max_pixels), None
        except ImageReadError as e:
            if not os.path.exists(file_name):
                return None, f"image file {file_name} does not exist (referenced by {where})"
            return None, f"{e} (referenced by {where})"

    if len(items) > 64 and num_threads > 1:
        with ThreadPoolExecutor(max_workers=num_threads) as pool:
            results = list(pool.map(probe, items, chunksize=64))
    else:
        results = [probe(it) for it in items]
    sizes: List[Optional[Tuple[int, int]]] = []
    for (file_name, annotated, where), (real, err) in zip(items, results):
        if err is not None:
            errors.add(err)
            sizes.append(None)
            continue
        if annotated is not None and tuple(annotated) != tuple(real):
            report.size_mismatches.append(
                f"{where}: annotation says {annotated[0]}x{annotated[1]} (HxW), "
                f"file {os.path.basename(file_name)} is {real[0]}x{real[1]}"
            )
        sizes.append(real)
    return sizes


def check_unique_ids(ids: Iterable[Any], source: str, errors: ErrorCollector, what: str = "image id") -> None:
    """Duplicate ids are errors (evaluation would merge two images / annotations)."""
    counts = collections.Counter(ids)
    dups = [i for i, c in counts.items() if c > 1]
    for i in dups[:_MAX_EXAMPLES]:
        errors.add(f"{source}: {what} {i!r} appears {counts[i]} times, expected unique {what}s")
    if len(dups) > _MAX_EXAMPLES:
        errors.add(f"{source}: {len(dups) - _MAX_EXAMPLES} more duplicate {what}s")
