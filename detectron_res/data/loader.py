"""Batches for training and evaluation.

Shape shorthand: ``N`` images per batch, ``M`` boxes in an image, ``Hp x Wp`` the
padded batch size (a multiple of ``size_divisibility``).

Training (:func:`build_train_loader`) is iteration based, as in the paper's schedules
(e.g. 60k + 20k iterations on VOC): an *infinite* stream of batches that is a pure
function of ``(seed, rank, world_size)``:

* :class:`TrainingSampler` concatenates seeded random permutations of the dataset
  (one per epoch) into one global stream; rank ``r`` of ``W`` takes positions
  ``r, r + W, r + 2W, ...``, so the ranks see disjoint shares that together cover
  every epoch.
* :class:`GroupedBatchSampler` puts landscape and portrait images into separate
  batches (less padding), using the sizes known from the annotations, so that batch
  composition is decided before any image is loaded.
* Each sample carries its own augmentation seed (from its position in the stream), so
  flips and scales do not depend on ``num_workers`` or on which worker loads it, and
  resuming at ``start_iter`` replays exactly the batches an uninterrupted run would
  have produced from that point.

Evaluation (:func:`build_test_loader`): rank ``r`` gets a contiguous slice of the
dataset with no duplicates (sizes differ by at most one across ranks), so gathered
results never count an image twice.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .dataset import DetectionDataset, ImageRecord
from .image_io import DEFAULT_MAX_PIXELS, ImageReadError, read_image
from .transforms import apply_transforms, build_transforms

__all__ = [
    "Batch",
    "TrainingSampler",
    "GroupedBatchSampler",
    "InferenceSampler",
    "DetectionMapDataset",
    "collate_batch",
    "build_train_loader",
    "build_test_loader",
    "InfiniteLoader",
    "ForkSafeDataLoader",
    "seed_worker",
]


@dataclass
class Batch:
    """A padded batch.

    Attributes:
        images: ``float32 [N, 3, Hp, Wp]``, pixel values 0..255 in the channel order
            requested (``input_format``), *not* normalized; padding (right and bottom)
            is 0. A model that normalizes should zero the padded area again (or pad
            after normalizing), as torchvision and Detectron2 do.
        image_sizes: ``(h, w)`` of each image after resize, before padding.
        orig_sizes: ``(h, w)`` of each original image; predictions map back with the
            per-axis ratios ``orig / resized``.
        targets: per image ``{"boxes": float32 [M, 4] x1y1x2y2 in resized-image pixels,
            "labels": int64 [M] in 1..K}``. Training targets never contain crowd boxes
            and contain difficult boxes only with ``use_difficult``. Test targets hold
            all boxes plus ``"difficult"`` and ``"iscrowd"`` bool ``[M]``.
        image_ids: dataset image ids.
        file_names: image paths.
    """

    images: torch.Tensor
    image_sizes: List[Tuple[int, int]]
    orig_sizes: List[Tuple[int, int]]
    targets: List[Dict[str, torch.Tensor]]
    image_ids: List[Union[int, str]] = field(default_factory=list)
    file_names: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.image_sizes)

    def _map(self, fn) -> "Batch":
        return Batch(
            images=fn(self.images),
            image_sizes=list(self.image_sizes),
            orig_sizes=list(self.orig_sizes),
            targets=[{k: fn(v) for k, v in t.items()} for t in self.targets],
            image_ids=list(self.image_ids),
            file_names=list(self.file_names),
        )

    def to(self, device: Union[str, torch.device], non_blocking: bool = False) -> "Batch":
        """Move images and targets to ``device``."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        """Called by ``DataLoader(pin_memory=True)``."""
        return self._map(lambda t: t.pin_memory())


# -------------------------------------------------------------------------------------
# Samplers
# -------------------------------------------------------------------------------------
def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank}, world_size={world_size}: expected world_size >= 1 and 0 <= rank < world_size")


class TrainingSampler:
    """Infinite stream of ``(index, sample_seed)`` for one rank.

    The global stream is ``perm_0 + perm_1 + ...`` with ``perm_e`` a random permutation
    of ``range(size)`` from a generator seeded with ``seed``; rank ``r`` of ``W`` takes
    every ``W``-th element starting at ``r``. ``sample_seed`` is derived from
    ``(seed, global position)`` and drives that sample's augmentation.
    """

    def __init__(self, size: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1):
        if size <= 0:
            raise ValueError(f"TrainingSampler: dataset size is {size}, expected at least one image")
        _check_rank(rank, world_size)
        self.size, self.shuffle, self.seed = int(size), bool(shuffle), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)

    def _global_stream(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed)
        while True:
            if self.shuffle:
                yield from torch.randperm(self.size, generator=g).tolist()
            else:
                yield from range(self.size)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        # 64-bit mix of (seed, position): distinct seeds per sample, stable across runs.
        base = (self.seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        stream = itertools.islice(self._global_stream(), self.rank, None, self.world_size)
        for k, index in enumerate(stream):
            pos = self.rank + k * self.world_size
            yield index, _mix64(base ^ pos)


def _mix64(x: int) -> int:
    """splitmix64 finalizer, reduced to 32 bits (albumentations seeds are 32-bit)."""
    x &= 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 31)) & 0xFFFFFFFF


class GroupedBatchSampler:
    """Batches of ``batch_size`` samples from ``sampler``, each batch from one group.

    Args:
        sampler: yields ``(index, sample_seed)``.
        group_ids: group of each dataset index (e.g. 0 = landscape, 1 = portrait), or
            ``None`` for plain consecutive batches.
        batch_size: images per batch (per process).
    """

    def __init__(self, sampler: TrainingSampler, group_ids: Optional[Sequence[int]], batch_size: int):
        if batch_size < 1:
            raise ValueError(f"images_per_batch={batch_size}: expected >= 1")
        self.sampler = sampler
        self.group_ids = None if group_ids is None else np.asarray(group_ids, dtype=np.int64)
        self.batch_size = int(batch_size)

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        if self.group_ids is None:
            it = iter(self.sampler)
            while True:
                yield list(itertools.islice(it, self.batch_size))
        buckets: Dict[int, List[Tuple[int, int]]] = {}
        for item in self.sampler:
            bucket = buckets.setdefault(int(self.group_ids[item[0]]), [])
            bucket.append(item)
            if len(bucket) == self.batch_size:
                yield bucket[:]
                bucket.clear()


class InferenceSampler:
    """Rank ``r``'s contiguous share of ``range(size)``: no padding, no duplicates;
    shares differ in size by at most one."""

    def __init__(self, size: int, *, rank: int = 0, world_size: int = 1):
        _check_rank(rank, world_size)
        shard, extra = divmod(int(size), world_size)
        begin = rank * shard + min(rank, extra)
        end = begin + shard + (1 if rank < extra else 0)
        self.indices = range(begin, end)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class _InferenceBatchSampler:
    def __init__(self, sampler: InferenceSampler, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"images_per_batch={batch_size}: expected >= 1")
        self.sampler, self.batch_size = sampler, int(batch_size)

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        idx = list(self.sampler)
        for i in range(0, len(idx), self.batch_size):
            yield [(j, 0) for j in idx[i : i + self.batch_size]]

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)


# -------------------------------------------------------------------------------------
# Loading one image, collating a batch
# -------------------------------------------------------------------------------------
class DetectionMapDataset(Dataset):
    """Reads and augments one record; indexed by ``(index, sample_seed)``.

    Returns a dict with ``image`` (``uint8 [3, H, W]`` in ``input_format`` order),
    ``boxes`` (``float32 [M, 4]``), ``labels`` (``int64 [M]``), optionally
    ``difficult``/``iscrowd``, and ``image_size``, ``orig_size``, ``image_id``,
    ``file_name``.

    An image that cannot be read (the header check at start-up does not decode the
    pixels, so a truncated file is found here) raises :class:`ImageReadError` naming
    the file. Inside a ``DataLoader`` the error travels to the main process as a value
    (:meth:`__getitems__`) and is raised there unchanged, one line, by the loader's
    iterator.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform,
        *,
        is_train: bool,
        input_format: str = "BGR",
        use_difficult: bool = False,
        max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
    ):
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"input_format={input_format!r}: expected 'BGR' or 'RGB' (config key model.input_format)")
        self.records = records
        self.transform = transform
        self.is_train = is_train
        self.input_format = input_format
        self.use_difficult = use_difficult
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.records)

    def __getitems__(self, keys: Sequence[Tuple[int, int]]) -> Union[List[Dict[str, Any]], "_LoadFailure"]:
        """What a ``DataLoader`` calls for one batch: the samples, or the first failure."""
        samples = []
        for key in keys:
            try:
                samples.append(self[key])
            except (ImageReadError, _ImageChangedError) as e:
                return _LoadFailure(e)
        return samples

    def __getitem__(self, key: Tuple[int, int]) -> Dict[str, Any]:
        index, seed = key
        r = self.records[index]
        # Albumentations' colour transforms assume RGB; convert at the end.
        image = read_image(r.file_name, format="RGB", max_pixels=self.max_pixels)
        if image.shape[:2] != (r.height, r.width):
            # With check_images="header" (the default) the size was read from this file
            # when the dataset was loaded, so the file changed since; with "exists" or
            # "none" the annotation's size was trusted. Either way the boxes may not fit
            # the pixels: refuse rather than train on it.
            raise _ImageChangedError(
                f"{r.file_name}: image is {image.shape[0]}x{image.shape[1]} (HxW) but the dataset recorded "
                f"{r.height}x{r.width} (the file changed after the dataset was loaded, or the annotation's "
                "size is wrong and the dataset was loaded without check_images='header')"
            )
        if self.is_train:
            keep = r.training_mask(self.use_difficult)
        else:
            keep = np.ones(len(r.boxes), dtype=bool)
        boxes = r.boxes[keep]
        image, boxes, kept = apply_transforms(self.transform, image, boxes, seed=seed if self.is_train else None)
        if self.input_format == "BGR":
            image = image[:, :, ::-1]
        # uint8 CHW here, float32 in collate_batch while copying into the padded batch:
        # one pass over float memory instead of two (about 2x faster at 600 x 1000).
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        sel = np.nonzero(keep)[0][kept]
        out = {
            "image": tensor,
            "boxes": torch.from_numpy(boxes.astype(np.float32)),
            "labels": torch.from_numpy(r.labels[sel].astype(np.int64)),
            "image_size": (int(image.shape[0]), int(image.shape[1])),
            "orig_size": (int(r.height), int(r.width)),
            "image_id": r.image_id,
            "file_name": r.file_name,
        }
        if not self.is_train:
            out["difficult"] = torch.from_numpy(r.difficult[sel].astype(bool))
            out["iscrowd"] = torch.from_numpy(r.iscrowd[sel].astype(bool))
        return out


class _ImageChangedError(ValueError):
    """An image whose size differs from the one recorded when the dataset was loaded."""


class _LoadFailure:
    """A sample that could not be loaded, carried out of a worker as a value.

    An exception raised in a ``DataLoader`` worker reaches the main process rebuilt
    by torch from text that embeds the worker's traceback (or as a ``RuntimeError``
    when its type cannot be rebuilt from one string, as :class:`ImageReadError`
    cannot), so the user would see a traceback instead of the one-line message.
    """

    def __init__(self, error: Exception):
        self.error = error


def _raise_load_failures(batches: Iterator[Any]) -> Iterator[Any]:
    for batch in batches:
        if isinstance(batch, _LoadFailure):
            raise batch.error
        yield batch


def collate_batch(samples: Sequence[Dict[str, Any]], size_divisibility: int = 32) -> Batch:
    """Pad images (right/bottom, value 0) to a common size divisible by
    ``size_divisibility`` (the backbone's stride, so feature maps align) and stack."""
    if size_divisibility < 0:
        raise ValueError(f"input.size_divisibility={size_divisibility}: expected >= 0")
    max_h = max(s["image"].shape[1] for s in samples)
    max_w = max(s["image"].shape[2] for s in samples)
    if size_divisibility > 1:
        max_h = int(math.ceil(max_h / size_divisibility) * size_divisibility)
        max_w = int(math.ceil(max_w / size_divisibility) * size_divisibility)
    # empty + zeroing only the padding: the image area is written once, not twice
    images = torch.empty((len(samples), 3, max_h, max_w), dtype=torch.float32)
    for i, s in enumerate(samples):
        _, h, w = s["image"].shape
        images[i, :, :h, :w].copy_(s["image"])  # uint8 -> float32
        images[i, :, h:, :].zero_()
        images[i, :, :h, w:].zero_()
    target_keys = [k for k in ("boxes", "labels", "difficult", "iscrowd") if k in samples[0]]
    return Batch(
        images=images,
        image_sizes=[s["image_size"] for s in samples],
        orig_sizes=[s["orig_size"] for s in samples],
        targets=[{k: s[k] for k in target_keys} for s in samples],
        image_ids=[s["image_id"] for s in samples],
        file_names=[s["file_name"] for s in samples],
    )


class _Collate:
    """Picklable collate function (workers may be spawned)."""

    def __init__(self, size_divisibility: int):
        self.size_divisibility = size_divisibility

    def __call__(self, samples):
        if isinstance(samples, _LoadFailure):  # see DetectionMapDataset.__getitems__
            return samples
        return collate_batch(samples, self.size_divisibility)


def seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive the other libraries'
    # global RNGs from it so that nothing in a worker is left unseeded.
    seed = torch.initial_seed() % (2**32)
    random.seed(seed)
    np.random.seed(seed)
    # OpenCV needs no setting here: the worker inherited setNumThreads(0) from the
    # fork (see ForkSafeDataLoader), so it runs single-threaded; the workers are the
    # parallelism. Calling cv2.setNumThreads in a forked child can deadlock.


class ForkSafeDataLoader(DataLoader):
    """A DataLoader whose worker processes never inherit OpenCV's thread pool.

    OpenCV runs ``cv2.resize`` on a thread pool once images are large enough (the
    paper's 600 x 1000 inputs are). A process forked while that pool exists has a
    pool whose threads are gone, and its next OpenCV call that touches the pool
    (including ``cv2.setNumThreads``) can deadlock. The workers are therefore forked
    with OpenCV set to run sequentially (``setNumThreads(0)``, which they inherit),
    and the parent's setting is restored right after the fork.
    """

    def __iter__(self):
        if self.num_workers == 0:
            return _raise_load_failures(super().__iter__())
        previous = cv2.getNumThreads()
        cv2.setNumThreads(0)
        try:
            return _raise_load_failures(super().__iter__())
        finally:
            cv2.setNumThreads(previous)


def _group_ids(records: Sequence[ImageRecord]) -> List[int]:
    return [0 if r.width >= r.height else 1 for r in records]


class InfiniteLoader:
    """Iterator over :class:`Batch` backed by a ``DataLoader``; workers start on the
    first ``next()``. ``loader.dataset`` is the :class:`DetectionDataset`."""

    def __init__(self, dataset: DetectionDataset, make_loader):
        self.dataset = dataset
        self._make_loader = make_loader
        self._it: Optional[Iterator[Batch]] = None

    def __iter__(self) -> "InfiniteLoader":
        return self

    def __next__(self) -> Batch:
        if self._it is None:
            self._it = iter(self._make_loader())
        return next(self._it)


class _SkipBatches:
    def __init__(self, batch_sampler: GroupedBatchSampler, start: int):
        self.batch_sampler, self.start = batch_sampler, int(start)

    def __iter__(self):
        return itertools.islice(iter(self.batch_sampler), self.start, None)


def _check_dataset(dataset: DetectionDataset, what: str) -> None:
    if not isinstance(dataset, DetectionDataset):
        raise TypeError(f"{what}: expected a DetectionDataset, got {type(dataset).__name__}")
    if len(dataset) == 0:
        raise ValueError(f"{what}: dataset '{dataset.name}' has no images")


def build_train_loader(
    dataset: DetectionDataset,
    *,
    images_per_batch: int,
    min_sizes: Sequence[int] = (600,),
    max_size: int = 1000,
    hflip_prob: float = 0.5,
    photometric: bool = False,
    size_divisibility: int = 32,
    aspect_ratio_grouping: bool = True,
    num_workers: int = 2,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    start_iter: int = 0,
    input_format: str = "BGR",
    use_difficult: bool = False,
    pin_memory: bool = False,
) -> InfiniteLoader:
    """Infinite, seeded, sharded iterator of training :class:`Batch` es.

    Args:
        dataset: the training set (e.g. from ``get_datasets(cfg.data.train)``).
        images_per_batch: images per batch *in this process* (global batch / world size).
        min_sizes, max_size: shorter-side choices and longer-side cap (paper: [600], 1000).
        hflip_prob: horizontal flip probability.
        photometric: colour jitter.
        size_divisibility: pad height and width to a multiple of this (0/1: no rounding).
        aspect_ratio_grouping: landscape and portrait images in separate batches.
        num_workers: loader processes (0 loads in this process).
        seed: everything random (order, augmentation) is a function of it.
        rank, world_size: this process's share of the stream (disjoint across ranks).
        start_iter: number of batches already consumed (from a checkpoint): the first
            batch returned is the one an uninterrupted run would return at that point.
        input_format: ``"BGR"`` or ``"RGB"``, the channel order of the weights.
        use_difficult: train on VOC difficult boxes (py-faster-rcnn did not).
        pin_memory: pin batches for faster host-to-GPU copies.
    """
    _check_dataset(dataset, "build_train_loader")
    if start_iter < 0:
        raise ValueError(f"start_iter={start_iter}: expected >= 0")
    if num_workers < 0:
        raise ValueError(f"data.num_workers={num_workers}: expected >= 0")
    transform = build_transforms(
        is_train=True, min_sizes=min_sizes, max_size=max_size, hflip_prob=hflip_prob, photometric=photometric
    )
    map_ds = DetectionMapDataset(
        dataset.records, transform, is_train=True, input_format=input_format, use_difficult=use_difficult,
        max_pixels=dataset.max_pixels,
    )
    sampler = TrainingSampler(len(dataset), shuffle=True, seed=seed, rank=rank, world_size=world_size)
    groups = _group_ids(dataset.records) if aspect_ratio_grouping else None
    batch_sampler = GroupedBatchSampler(sampler, groups, images_per_batch)
    collate = _Collate(size_divisibility)

    def make_loader():
        g = torch.Generator()
        g.manual_seed(seed * 1000 + rank)
        return ForkSafeDataLoader(
            map_ds,
            batch_sampler=_SkipBatches(batch_sampler, start_iter),
            num_workers=num_workers,
            collate_fn=collate,
            worker_init_fn=seed_worker if num_workers > 0 else None,
            generator=g,
            pin_memory=pin_memory,
        )

    return InfiniteLoader(dataset, make_loader)


def build_test_loader(
    dataset: DetectionDataset,
    *,
    images_per_batch: int = 1,
    min_size: int = 600,
    max_size: int = 1000,
    size_divisibility: int = 32,
    num_workers: int = 2,
    rank: int = 0,
    world_size: int = 1,
    input_format: str = "BGR",
    pin_memory: bool = False,
) -> DataLoader:
    """Finite loader over this rank's contiguous share of ``dataset`` (no duplicates).

    Deterministic resize to ``min_size`` (capped at ``max_size``), no flip. Targets hold
    every box with ``difficult`` / ``iscrowd`` flags (evaluators use the records).
    ``len(loader)`` is the number of batches of this rank.
    """
    _check_dataset(dataset, "build_test_loader")
    if num_workers < 0:
        raise ValueError(f"data.num_workers={num_workers}: expected >= 0")
    transform = build_transforms(is_train=False, min_sizes=[min_size], max_size=max_size)
    map_ds = DetectionMapDataset(
        dataset.records, transform, is_train=False, input_format=input_format, max_pixels=dataset.max_pixels
    )
    sampler = InferenceSampler(len(dataset), rank=rank, world_size=world_size)
    return ForkSafeDataLoader(
        map_ds,
        batch_sampler=_InferenceBatchSampler(sampler, images_per_batch),
        num_workers=num_workers,
        collate_fn=_Collate(size_divisibility),
        worker_init_fn=seed_worker if num_workers > 0 else None,
        pin_memory=pin_memory,
    )
