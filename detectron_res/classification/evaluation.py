"""Top-1 / top-5 error of a classifier: single centre crop and 10-crop (Sec 3.4, Table 3).

For 10-crop testing the softmax probabilities of the ten views (4 corners + centre
of the image and of its horizontal flip, shorter side 256, 224x224 crops) are
averaged per image, then ranked. An image counts as a top-k error when its label is
not among the k classes of highest score. Errors are reported in percent, as in the
paper's tables.

Distributed: every process evaluates its contiguous share of the test set; the
counts are summed over processes, so the result equals a single-process run.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Optional, Sequence

import torch

from ..engine import distributed as comm
from .datasets import ClassificationDataset
from .loader import build_classification_test_loader
from .model import ImageClassifier
from .transforms import EvalTransform

__all__ = ["topk_errors", "evaluate_classifier", "VIEW_SUFFIX"]

# Metric name suffix of each view: "val/top1_err" (centre crop), "val/top1_err_10crop".
VIEW_SUFFIX = {"center": "", "ten_crop": "_10crop"}


def topk_errors(probs: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> Dict[int, int]:
    """Number of images whose label is not among the ``k`` highest scores, per ``k``.

    Args:
        probs: ``(N, K)`` scores.
        labels: ``(N,)`` int64 class indices.
    Returns:
        ``{k: number of top-k errors}``; ``k`` larger than ``K`` is clipped to ``K``.
    """
    num_classes = probs.shape[1]
    top = probs.topk(min(max(ks), num_classes), dim=1).indices  # (N, kmax)
    hit = top == labels.view(-1, 1)
    return {k: int((~hit[:, : min(k, num_classes)].any(dim=1)).sum()) for k in ks}


@torch.no_grad()
def evaluate_classifier(
    model: ImageClassifier,
    dataset: ClassificationDataset,
    *,
    views: Sequence[str],
    short_side: int,
    crop_size: int,
    images_per_batch: int,
    device: torch.device,
    num_workers: int = 2,
    amp_dtype: Optional[torch.dtype] = None,
    limit: Optional[int] = None,
) -> Dict[str, float]:
    """Top-1 / top-5 error (%) of ``model`` on ``dataset`` for each of ``views``.

    Args:
        model: the (unwrapped) classifier; put in eval mode by the caller.
        dataset: the test set.
        views: ``"center"`` and/or ``"ten_crop"``.
        short_side: shorter side before cropping (256; 0 = keep, CIFAR).
        crop_size: crop side (224; CIFAR 32).
        images_per_batch: images per batch in this process (x10 views for 10-crop).
        device: where the model is.
        amp_dtype: run under CUDA autocast with this dtype, or None.
        limit: evaluate only the first ``limit`` images.

    Returns:
        On every rank: ``{"top1_err": .., "top5_err": .., "top1_err_10crop": .., ...,
        "num_images": N}`` (percent).
    """
    rank, world = comm.get_rank(), comm.get_world_size()
    out: Dict[str, float] = {}
    for view in views:
        transform = EvalTransform(short_side=short_side, crop_size=crop_size, view=view)
        loader = build_classification_test_loader(
            dataset, transform=transform, images_per_batch=images_per_batch, input_format=model.input_format,
            rank=rank, world_size=world, num_workers=num_workers, limit=limit, pin_memory=device.type == "cuda",
        )
        counts = torch.zeros(3, dtype=torch.float64)  # images, top-1 errors, top-5 errors
        autocast = (torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None
                    else contextlib.nullcontext())
        for batch in loader:
            batch = batch.to(device, non_blocking=True)
            with autocast:
                probs = model.predict_probs(batch.images)
            errors = topk_errors(probs.float(), batch.labels, ks=(1, 5))
            counts += torch.tensor([len(batch), errors[1], errors[5]], dtype=torch.float64)
        total = torch.tensor(comm.all_gather_object(counts.tolist()), dtype=torch.float64).sum(dim=0)
        n = float(total[0])
        suffix = VIEW_SUFFIX[view]
        out[f"top1_err{suffix}"] = 100.0 * float(total[1]) / max(n, 1.0)
        out[f"top5_err{suffix}"] = 100.0 * float(total[2]) / max(n, 1.0)
        out["num_images"] = n
    return out
