"""Run a detector over a test set and feed its outputs to evaluators."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Dict, Iterable, Optional, Sequence, Union

import torch
import torch.distributed as dist
from torch import nn

from .evaluator import DatasetEvaluator, gather_predictions, merge_predictions

logger = logging.getLogger(__name__)

__all__ = ["inference_on_dataset", "gather_predictions", "merge_predictions"]


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _num_images(loader: Any) -> Optional[int]:
    """Images THIS rank will see, for the progress bar (None if unknown)."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    for sampler in (getattr(batch_sampler, "sampler", None), getattr(loader, "sampler", None)):
        if sampler is not None:
            try:
                return len(sampler)
            except TypeError:
                pass
    dataset = getattr(loader, "dataset", None)
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:
        return None


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """Put the model in eval mode and restore its training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def inference_on_dataset(
    model: nn.Module,
    loader: Iterable[Any],
    evaluators: Union[DatasetEvaluator, Sequence[DatasetEvaluator]],
    *,
    device: Union[str, torch.device],
    amp_dtype: Optional[torch.dtype] = None,
    progress: bool = True,
) -> Dict[str, Any]:
    """Run ``model`` on every batch of ``loader`` and evaluate.

    Args:
        model: called as ``model(batch)`` in eval mode; returns one dict per image
            ``{"boxes" [M, 4], "scores" [M], "labels" [M]}``, boxes ``x1, y1, x2, y2``
            in original-image pixels, labels in ``1..K``.
        loader: yields batches with ``.to(device)`` and ``.image_ids`` (the data
            package's ``Batch``). In a distributed run each rank iterates its share
            (a ``DistributedSampler``; padding duplicates are removed at gathering).
        evaluators: one evaluator or several (e.g. VOC and COCO metrics of the same
            predictions); each is reset first.
        device: where the model runs.
        amp_dtype: ``torch.bfloat16`` / ``torch.float16`` to run under autocast;
            None for full precision.
        progress: show a tqdm bar (images, images/s, ETA) on rank 0.

    Returns:
        ``{evaluator.name: metrics}`` on rank 0; ``{}`` on the other ranks.
    """
    from tqdm import tqdm

    if isinstance(evaluators, DatasetEvaluator):
        evaluators = [evaluators]
    evaluators = list(evaluators)
    names = [e.name for e in evaluators]
    if len(set(names)) != len(names):
        raise ValueError(f"inference_on_dataset: evaluator names {names} repeat; expected one evaluator per name")
    for e in evaluators:
        e.reset()
    device = torch.device(device)
    autocast = (
        torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    )
    total = _num_images(loader)
    bar = tqdm(total=total, unit="img", desc="inference", disable=not progress or _rank() != 0, dynamic_ncols=True)
    num_images = 0
    start = time.perf_counter()
    with _eval_mode(model), torch.inference_mode(), bar:
        for batch in loader:
            image_ids = list(batch.image_ids)
            with autocast:
                outputs = model(batch.to(device))
            if len(outputs) != len(image_ids):
                raise ValueError(
                    f"inference_on_dataset: the model returned {len(outputs)} outputs for a batch of "
                    f"{len(image_ids)} images, expected one dict per image"
                )
            for e in evaluators:
                e.process(image_ids, outputs)
            num_images += len(image_ids)
            bar.update(len(image_ids))
    elapsed = time.perf_counter() - start
    logger.info(
        "Inference on %d images (rank %d): %.1f s, %.4f s/image (%.2f images/s)",
        num_images, _rank(), elapsed, elapsed / max(num_images, 1), num_images / max(elapsed, 1e-9),
    )  # fmt: skip
    results: Dict[str, Any] = {}
    for e in evaluators:
        r = e.evaluate()  # a collective in a distributed run: every rank calls it
        if r is not None:
            results[e.name] = r
    return results
