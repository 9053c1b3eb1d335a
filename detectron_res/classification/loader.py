"""Batches of classification images for training and evaluation.

Shape shorthand: ``N`` images per batch (per process), ``V`` views per image (1, or
10 for 10-crop testing), ``S`` the crop side.

Training uses the detection loader's sampler (:class:`detectron_res.data.loader.
TrainingSampler`): an infinite stream of seeded permutations, rank ``r`` of ``W``
taking every ``W``-th position, each sample carrying its own augmentation seed. The
stream is a pure function of ``(seed, rank, world_size)``, so resuming at
``start_iter`` replays exactly the batches an uninterrupted run would have seen.

Evaluation gives rank ``r`` a contiguous share of the test set
(:class:`detectron_res.data.loader.InferenceSampler`), no image twice.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

# The cv2-fork-safe DataLoader and worker seeding of the detection loader are
# reused as they are (both matter here too: cv2.resize runs in the workers).
from ..data.loader import InferenceSampler, InfiniteLoader, TrainingSampler, ForkSafeDataLoader, seed_worker
from .datasets import ClassificationDataset
from .transforms import EvalTransform, TrainTransform

__all__ = [
    "ClassificationBatch",
    "ClassificationMapDataset",
    "collate_classification",
    "build_classification_train_loader",
    "build_classification_test_loader",
]


@dataclass
class ClassificationBatch:
    """A batch of crops.

    Attributes:
        images: ``uint8 (N, 3, S, S)`` in training and for single-view testing, or
            ``uint8 (N, V, 3, S, S)`` for multi-view testing; pixel values 0..255 in
            the model's ``input_format`` channel order, not normalized (the model
            converts to float and normalizes on its device).
        labels: ``int64 (N,)`` class indices ``0..K-1``.
        indices: ``int64 (N,)`` dataset index of each image.
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: Union[str, torch.device], non_blocking: bool = False) -> "ClassificationBatch":
        return ClassificationBatch(
            images=self.images.to(device, non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
            indices=self.indices,
        )

    def pin_memory(self) -> "ClassificationBatch":
        """Called by ``DataLoader(pin_memory=True)``."""
        return ClassificationBatch(self.images.pin_memory(), self.labels.pin_memory(), self.indices)


class ClassificationMapDataset(Dataset):
    """Reads and transforms one image.

    Training items are keyed by ``(index, sample_seed)`` (from ``TrainingSampler``)
    and return ``(uint8 (3, S, S), label, index)``; test items are keyed by
    ``(index, 0)`` and return ``(uint8 (V, 3, S, S), label, index)``.

    Args:
        dataset: a :class:`ClassificationDataset` (RGB images).
        transform: :class:`TrainTransform` (training) or :class:`EvalTransform`.
        input_format: ``"BGR"`` or ``"RGB"``, the channel order of the output.
    """

    def __init__(
        self,
        dataset: ClassificationDataset,
        transform: Union[TrainTransform, EvalTransform],
        *,
        input_format: str,
    ) -> None:
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"input_format={input_format!r}: expected 'BGR' or 'RGB' (config key model.input_format)")
        self.dataset = dataset
        self.transform = transform
        self.input_format = input_format
        self.is_train = isinstance(transform, TrainTransform)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]) -> Tuple[torch.Tensor, int, int]:
        index, seed = key
        image = self.dataset.image(index)
        if self.is_train:
            out = self.transform(image, np.random.default_rng(seed))  # (S, S, 3)
        else:
            out = self.transform(image)  # (V, S, S, 3)
        if self.input_format == "BGR":
            out = out[..., ::-1]
        # (..., S, S, 3) -> (..., 3, S, S)
        out = np.ascontiguousarray(np.moveaxis(out, -1, -3))
        return torch.from_numpy(out), int(self.dataset.labels[index]), int(index)


def collate_classification(samples: Sequence[Tuple[torch.Tensor, int, int]]) -> ClassificationBatch:
    """Stack same-sized crops into a :class:`ClassificationBatch`."""
    return ClassificationBatch(
        images=torch.stack([s[0] for s in samples]),
        labels=torch.tensor([s[1] for s in samples], dtype=torch.int64),
        indices=torch.tensor([s[2] for s in samples], dtype=torch.int64),
    )


def _batches(stream: Iterator[Tuple[int, int]], batch_size: int) -> Iterator[List[Tuple[int, int]]]:
    while True:
        yield list(itertools.islice(stream, batch_size))


class _TrainBatchSampler:
    """Consecutive ``batch_size`` chunks of the sampler's stream, the first ``start`` skipped."""

    def __init__(self, sampler: TrainingSampler, batch_size: int, start: int) -> None:
        self.sampler, self.batch_size, self.start = sampler, int(batch_size), int(start)

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        return itertools.islice(_batches(iter(self.sampler), self.batch_size), self.start, None)


class _TestBatchSampler:
    def __init__(self, indices: Sequence[int], batch_size: int) -> None:
        self.indices, self.batch_size = list(indices), int(batch_size)

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        for i in range(0, len(self.indices), self.batch_size):
            yield [(j, 0) for j in self.indices[i : i + self.batch_size]]

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)


def build_classification_train_loader(
    dataset: ClassificationDataset,
    *,
    transform: TrainTransform,
    images_per_batch: int,
    input_format: str,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    start_iter: int = 0,
    num_workers: int = 2,
    pin_memory: bool = False,
) -> InfiniteLoader:
    """Infinite, seeded, sharded iterator of training :class:`ClassificationBatch` es.

    Args:
        dataset: the training set.
        transform: the training augmentation.
        images_per_batch: images per batch in THIS process (global batch / world size).
        input_format: channel order of the output (``model.input_format``).
        seed: the order and every augmentation are functions of it.
        rank, world_size: this process's disjoint share of the stream.
        start_iter: batches already consumed (resume): the first batch returned is
            the one an uninterrupted run would return at that point.
        num_workers: loader processes (0 loads in this process).
        pin_memory: pin batches for faster host-to-GPU copies.
    """
    if images_per_batch < 1:
        raise ValueError(f"images per batch = {images_per_batch}: expected >= 1 (solver.ims_per_batch / processes)")
    if start_iter < 0 or num_workers < 0:
        raise ValueError(f"start_iter={start_iter}, data.num_workers={num_workers}: expected >= 0")
    map_ds = ClassificationMapDataset(dataset, transform, input_format=input_format)
    sampler = TrainingSampler(len(dataset), shuffle=True, seed=seed, rank=rank, world_size=world_size)
    batch_sampler = _TrainBatchSampler(sampler, images_per_batch, start_iter)

    def make_loader():
        g = torch.Generator()
        g.manual_seed(seed * 1000 + rank)
        return ForkSafeDataLoader(
            map_ds,
            batch_sampler=batch_sampler,
            num_workers=num_workers,
            collate_fn=collate_classification,
            worker_init_fn=seed_worker if num_workers > 0 else None,
            generator=g,
            pin_memory=pin_memory,
            persistent_workers=False,
        )

    return InfiniteLoader(dataset, make_loader)


def build_classification_test_loader(
    dataset: ClassificationDataset,
    *,
    transform: EvalTransform,
    images_per_batch: int,
    input_format: str,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 2,
    limit: Optional[int] = None,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """Finite loader over this rank's contiguous share of ``dataset`` (or of its first
    ``limit`` images), in order; batches hold ``uint8 (N, V, 3, S, S)`` images."""
    if images_per_batch < 1:
        raise ValueError(f"test.images_per_batch={images_per_batch}: expected >= 1")
    size = len(dataset) if limit is None else min(int(limit), len(dataset))
    indices = InferenceSampler(size, rank=rank, world_size=world_size)
    map_ds = ClassificationMapDataset(dataset, transform, input_format=input_format)
    return ForkSafeDataLoader(
        map_ds,
        batch_sampler=_TestBatchSampler(list(indices), images_per_batch),
        num_workers=num_workers,
        collate_fn=collate_classification,
        worker_init_fn=seed_worker if num_workers > 0 else None,
        pin_memory=pin_memory,
    )
