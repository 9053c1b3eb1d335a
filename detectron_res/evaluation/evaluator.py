"""The evaluator interface, and how per-image predictions are collected across ranks.

An evaluator follows ``reset() / process(image_ids, outputs) / evaluate()``:
:func:`~detectron_res.evaluation.inference.inference_on_dataset` calls ``process``
after every batch and ``evaluate`` once at the end.

Predictions are kept per image, keyed by the dataset's ``image_id``, as plain numpy:

* ``boxes``:  ``float32 [M, 4]`` ``x1, y1, x2, y2`` in ORIGINAL-image pixels,
  continuous 0-based coordinates (pixel ``i`` spans ``[i, i + 1)``);
* ``scores``: ``float32 [M]``;
* ``labels``: ``int64 [M]`` contiguous labels in ``1..K`` (0 is background and
  never a prediction).

Distributed evaluation: each rank runs inference on its share of the images.
``torch.utils.data.DistributedSampler`` pads the index list so that every rank gets
the same number of images, which means a few images are processed twice. At
``evaluate()`` every rank's predictions reach rank 0 (``all_gather_object``);
:func:`merge_predictions` keeps the first copy of each image and checks that every
image of the dataset is present exactly once, so no image is lost or counted twice.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

__all__ = [
    "DatasetEvaluator",
    "Prediction",
    "to_numpy_prediction",
    "merge_predictions",
    "gather_predictions",
]

# One image's detections: {"boxes": float32 [M,4], "scores": float32 [M], "labels": int64 [M]}.
Prediction = Dict[str, np.ndarray]

_MAX_LISTED = 5  # ids named in an error message


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        # bf16/fp16 (AMP) has no numpy dtype: go through float32.
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def to_numpy_prediction(output: Mapping[str, Any], *, image_id: Hashable, num_classes: int) -> Prediction:
    """Check one image's model output and convert it to numpy.

    Args:
        output: ``{"boxes": [M, 4], "scores": [M], "labels": [M]}`` tensors or arrays,
            boxes ``x1, y1, x2, y2`` in original-image pixels, labels in ``1..K``.
        image_id: the image's id, named in error messages.
        num_classes: ``K``, the number of foreground classes.

    Returns:
        ``{"boxes": float32 [M, 4], "scores": float32 [M], "labels": int64 [M]}``.
    """
    if not isinstance(output, Mapping):
        raise TypeError(
            f"prediction for image {image_id!r} is a {type(output).__name__}, expected a dict "
            "with keys 'boxes', 'scores', 'labels'"
        )
    missing = [k for k in ("boxes", "scores", "labels") if k not in output]
    if missing:
        raise ValueError(
            f"prediction for image {image_id!r} lacks key(s) {missing}; expected 'boxes', 'scores', 'labels'"
        )
    boxes = _as_numpy(output["boxes"]).astype(np.float32, copy=False)
    scores = _as_numpy(output["scores"]).astype(np.float32, copy=False).reshape(-1)
    labels = _as_numpy(output["labels"])
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"prediction for image {image_id!r}: boxes have shape {tuple(boxes.shape)}, expected [M, 4]")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(
            f"prediction for image {image_id!r}: labels have dtype {labels.dtype}, expected integers in 1..{num_classes}"
        )
    labels = labels.astype(np.int64, copy=False).reshape(-1)
    if not (len(boxes) == len(scores) == len(labels)):
        raise ValueError(
            f"prediction for image {image_id!r}: {len(boxes)} boxes, {len(scores)} scores and {len(labels)} "
            "labels, expected the same number of each"
        )
    if len(labels) and (labels.min() < 1 or labels.max() > num_classes):
        bad = labels[(labels < 1) | (labels > num_classes)][0]
        raise ValueError(
            f"prediction for image {image_id!r}: label {int(bad)} is outside 1..{num_classes} "
            "(0 is background and is never a detection)"
        )
    return {"boxes": boxes, "scores": scores, "labels": labels}


def _describe(ids: Sequence[Hashable]) -> str:
    shown = ", ".join(repr(i) for i in list(ids)[:_MAX_LISTED])
    return shown + (", ..." if len(ids) > _MAX_LISTED else "")


def merge_predictions(
    per_rank: Sequence[Mapping[Hashable, Prediction]],
    expected_image_ids: Sequence[Hashable],
    *,
    dataset_name: str = "",
) -> Dict[Hashable, Prediction]:
    """Merge the predictions of all ranks into one per-image dict (pure function).

    Args:
        per_rank: one ``{image_id: prediction}`` dict per rank, in rank order.
        expected_image_ids: every image of the dataset, each once.
        dataset_name: named in error messages.

    Returns:
        ``{image_id: prediction}`` with the dataset's images in ``expected_image_ids``
        order. An image present on several ranks (the padding of a distributed
        sampler) is taken from the first rank that has it; the copies are identical
        up to nondeterminism of the kernels.

    Raises:
        ValueError: an image of the dataset has no prediction (lost), or a prediction
            names an image that is not in the dataset.
    """
    merged: Dict[Hashable, Prediction] = {}
    for preds in per_rank:
        for image_id, pred in preds.items():
            merged.setdefault(image_id, pred)  # keep the first copy
    where = f"dataset '{dataset_name}'" if dataset_name else "the dataset"
    expected = list(expected_image_ids)
    missing = [i for i in expected if i not in merged]
    if missing:
        raise ValueError(
            f"evaluation of {where}: {len(missing)} of {len(expected)} images have no prediction "
            f"(e.g. {_describe(missing)}); every image must be run through the model once "
            "(check the sampler and that no batch was skipped)"
        )
    if len(merged) != len(expected):
        expected_set = set(expected)
        unknown = [i for i in merged if i not in expected_set]
        raise ValueError(
            f"evaluation of {where}: predictions for {len(unknown)} image id(s) that are not in the "
            f"dataset (e.g. {_describe(unknown)}); expected only the dataset's image ids"
        )
    return {i: merged[i] for i in expected}


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_predictions(
    local: Mapping[Hashable, Prediction],
    expected_image_ids: Sequence[Hashable],
    *,
    dataset_name: str = "",
) -> Optional[Dict[Hashable, Prediction]]:
    """Collect every rank's predictions on rank 0.

    Without an initialized process group (or with world size 1) this is
    :func:`merge_predictions` of ``[local]``. Otherwise every rank must call it (it is
    a collective); rank 0 returns the merged dict and the other ranks return None.

    ``all_gather_object`` is used rather than ``gather_object`` because it works with
    both the gloo and the NCCL backend (NCCL has no gather of Python objects).
    """
    if not _distributed():
        return merge_predictions([local], expected_image_ids, dataset_name=dataset_name)
    per_rank: List[Optional[Mapping[Hashable, Prediction]]] = [None] * dist.get_world_size()
    dist.all_gather_object(per_rank, dict(local))
    if dist.get_rank() != 0:
        return None
    return merge_predictions(per_rank, expected_image_ids, dataset_name=dataset_name)  # type: ignore[arg-type]


class DatasetEvaluator:
    """Base class: collects per-image predictions for one dataset.

    Subclasses set :attr:`name` (the key of their results in
    :func:`inference_on_dataset`'s return value and in ``metrics.json``) and implement
    :meth:`evaluate_predictions`.

    Args:
        dataset: a ``DetectionDataset`` (any object with ``name``, ``records`` (each
            with ``image_id``) and ``class_names``).
    """

    name: str = ""

    def __init__(self, dataset: Any) -> None:
        for attr in ("name", "records", "class_names"):
            if not hasattr(dataset, attr):
                raise TypeError(
                    f"{type(self).__name__}: dataset of type {type(dataset).__name__} has no attribute "
                    f"'{attr}'; expected a DetectionDataset"
                )
        self.dataset = dataset
        self.num_classes = len(dataset.class_names)
        self._image_ids: List[Hashable] = [r.image_id for r in dataset.records]
        if len(set(self._image_ids)) != len(self._image_ids):
            seen: set = set()
            dups = [i for i in self._image_ids if i in seen or seen.add(i)]
            raise ValueError(
                f"{type(self).__name__}: dataset '{dataset.name}' has duplicate image ids "
                f"(e.g. {_describe(dups)}); expected unique ids"
            )
        self._predictions: Dict[Hashable, Prediction] = {}

    def reset(self) -> None:
        """Forget the predictions collected so far."""
        self._predictions = {}

    def process(self, image_ids: Sequence[Hashable], outputs: Sequence[Mapping[str, Any]]) -> None:
        """Record the model's outputs for one batch.

        Args:
            image_ids: ``B`` dataset image ids.
            outputs: ``B`` dicts ``{"boxes" [M, 4], "scores" [M], "labels" [M]}``
                (tensors or arrays), boxes in original-image pixels ``x1, y1, x2, y2``.
        """
        if len(image_ids) != len(outputs):
            raise ValueError(
                f"{type(self).__name__}.process: {len(image_ids)} image ids but {len(outputs)} outputs, "
                "expected one output per image"
            )
        for image_id, output in zip(image_ids, outputs):
            if image_id in self._predictions:  # a padded sampler may repeat an image: keep the first
                continue
            self._predictions[image_id] = to_numpy_prediction(output, image_id=image_id, num_classes=self.num_classes)

    def evaluate(self) -> Optional[Dict[str, Any]]:
        """Gather all ranks' predictions and compute the metrics.

        Returns:
            the metrics on rank 0, None on the other ranks.
        """
        merged = gather_predictions(self._predictions, self._image_ids, dataset_name=self.dataset.name)
        if merged is None:
            return None
        return self.evaluate_predictions(merged)

    def evaluate_predictions(self, predictions: Mapping[Hashable, Prediction]) -> Dict[str, Any]:
        """Metrics for a complete ``{image_id: prediction}`` dict (single process)."""
        raise NotImplementedError(f"{type(self).__name__} must implement evaluate_predictions")
