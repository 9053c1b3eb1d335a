"""Box-aware augmentation built on albumentations.

Training (ResNet paper, Appendix A; Faster R-CNN): resize so that the shorter side is
``s`` (one value drawn from ``min_sizes``; the paper uses the single scale 600) unless
the longer side would exceed ``max_size`` (1000), then horizontal flip with
probability 0.5. Photometric augmentation is optional and off by default (the paper's
detectors used none). Test: the same resize, deterministic, no flip.

Resize rule::

    scale = min(s / min(h, w), max_size / max(h, w))
    new_h, new_w = int(h * scale + 0.5), int(w * scale + 0.5)

Because the output size is rounded to whole pixels, the effective scale differs a
little per axis; boxes are scaled by exactly the image's scale on each axis
(``new_w / w`` for x, ``new_h / h`` for y), and a model maps its predictions back to
the original image the same way: ``x * orig_w / new_w``, ``y * orig_h / new_h``
(``Batch.image_sizes`` and ``Batch.orig_sizes`` carry both sizes).

Boxes are ``x1, y1, x2, y2`` in continuous 0-based pixel coordinates (albumentations'
``pascal_voc`` format has the same meaning: a horizontal flip maps ``x`` to ``W - x``).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

# albumentations asks PyPI for a newer version on every import (a network call with a
# 2 s timeout, then a warning when offline), including in every loader worker.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

if int(A.__version__.split(".")[0]) < 2:
    # Per-call seeding (Compose.set_random_seed) and the transform API used below
    # arrived in albumentations 2.0.
    raise ImportError(
        f"detectron_res needs albumentations>=2.0, found {A.__version__}: pip install -U 'albumentations>=2.0'"
    )

logger = logging.getLogger(__name__)

# albumentations' filter_bboxes drops, whatever min_area says, every box whose area
# is below 1e-7 square pixels (its "epsilon"), before and after each transform.
ALBUMENTATIONS_MIN_AREA = 1e-7

__all__ = [
    "ALBUMENTATIONS_MIN_AREA",
    "get_resize_shape",
    "ResizeShortestEdge",
    "build_transforms",
    "apply_transforms",
    "scale_boxes",
]


def get_resize_shape(height: int, width: int, short: int, max_size: int) -> Tuple[int, int]:
    """Output ``(new_h, new_w)`` of the shorter-side resize capped at ``max_size``.

    ``max_size <= 0`` disables the cap.
    """
    scale = short / min(height, width)
    if max_size > 0 and max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


class ResizeShortestEdge(A.DualTransform):
    """Resize so that the shorter side is one of ``min_sizes`` (drawn at random) and
    the longer side at most ``max_size``; one resize, one interpolation.

    Args:
        min_sizes: candidate shorter-side lengths (one is drawn per image).
        max_size: cap on the longer side (``<= 0``: no cap).
        interpolation: OpenCV interpolation flag for the image.
        p: probability (always 1 for this toolkit's pipelines).
    """

    # albumentations keeps boxes normalized to [0, 1] internally, so a resize leaves
    # them unchanged and the conversion back to pixels multiplies by the new size:
    # exactly the per-axis image scale.

    def __init__(
        self,
        min_sizes: Sequence[int] = (600,),
        max_size: int = 1000,
        interpolation: int = cv2.INTER_LINEAR,
        p: float = 1.0,
    ):
        super().__init__(p=p)
        self.min_sizes = [int(s) for s in min_sizes]
        self.max_size = int(max_size)
        self.interpolation = interpolation

    def get_params_dependent_on_data(self, params: Dict[str, Any], data: Dict[str, Any]) -> Dict[str, Any]:
        h, w = params["shape"][:2]
        short = self.min_sizes[0] if len(self.min_sizes) == 1 else self.py_random.choice(self.min_sizes)
        new_h, new_w = get_resize_shape(h, w, short, self.max_size)
        return {"new_shape": (new_h, new_w), "orig_shape": (h, w)}

    def apply(self, img: np.ndarray, new_shape: Tuple[int, int], **params: Any) -> np.ndarray:
        if tuple(img.shape[:2]) == tuple(new_shape):
            return img
        return cv2.resize(img, (new_shape[1], new_shape[0]), interpolation=self.interpolation)

    def apply_to_mask(self, mask: np.ndarray, new_shape: Tuple[int, int], **params: Any) -> np.ndarray:
        return cv2.resize(mask, (new_shape[1], new_shape[0]), interpolation=cv2.INTER_NEAREST)

    def apply_to_bboxes(self, bboxes: np.ndarray, **params: Any) -> np.ndarray:
        return bboxes  # normalized coordinates are scale invariant

    def apply_to_keypoints(
        self, keypoints: np.ndarray, new_shape: Tuple[int, int], orig_shape: Tuple[int, int], **params: Any
    ) -> np.ndarray:
        out = keypoints.copy()
        out[:, 0] *= new_shape[1] / orig_shape[1]
        out[:, 1] *= new_shape[0] / orig_shape[0]
        return out

    def get_transform_init_args_names(self) -> Tuple[str, ...]:
        return ("min_sizes", "max_size", "interpolation")


def _check_sizes(min_sizes: Sequence[int], max_size: int, is_train: bool) -> List[int]:
    if isinstance(min_sizes, (int, np.integer)):
        min_sizes = [int(min_sizes)]
    sizes = [int(s) for s in min_sizes]
    if not sizes or any(s <= 0 for s in sizes):
        raise ValueError(
            f"{'input.min_size_train' if is_train else 'input.min_size_test'}={list(min_sizes)}: "
            "expected positive shorter-side lengths"
        )
    if not is_train and len(sizes) != 1:
        raise ValueError(
            f"input.min_size_test={sizes}: test-time resize is deterministic, expected one size "
            "(run multi-scale testing as several passes)"
        )
    if max_size > 0 and max_size < max(sizes):
        raise ValueError(
            f"{'input.max_size_train' if is_train else 'input.max_size_test'}={max_size} is smaller than "
            f"the shorter side {max(sizes)}; expected max_size >= min size (or 0 for no cap)"
        )
    return sizes


def build_transforms(
    *,
    is_train: bool,
    min_sizes: Sequence[int],
    max_size: int,
    hflip_prob: float = 0.5,
    photometric: bool = False,
) -> A.Compose:
    """Build the augmentation pipeline.

    Args:
        is_train: training (random scale from ``min_sizes``, flip, photometric) or
            test (deterministic resize to ``min_sizes[0]``; must be one size).
        min_sizes: shorter-side lengths, e.g. ``[600]`` (paper) or ``[480, ..., 800]``.
        max_size: cap on the longer side, e.g. 1000 (paper); 0 = no cap.
        hflip_prob: probability of a horizontal flip in training.
        photometric: add brightness/contrast and hue/saturation jitter (training only).

    Returns:
        ``albumentations.Compose``; call it as
        ``t(image=rgb_uint8_hwc, bboxes=float[N, 4], box_indices=int[N])`` or use
        :func:`apply_transforms`. Images must be RGB (hue jitter assumes RGB).
    """
    sizes = _check_sizes(min_sizes, max_size, is_train)
    if not 0.0 <= hflip_prob <= 1.0:
        raise ValueError(f"input.hflip_prob={hflip_prob}: expected a probability in [0, 1]")
    ops: List[A.BasicTransform] = []
    if is_train and photometric:
        # Mild jitter; boxes are unaffected. (The ResNet paper's "standard color
        # augmentation" is for ImageNet classification; its detectors used flips only.)
        ops += [
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
            A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=0, p=0.5),
        ]
    ops.append(ResizeShortestEdge(min_sizes=sizes, max_size=max_size))
    if is_train and hflip_prob > 0:
        ops.append(A.HorizontalFlip(p=hflip_prob))
    return A.Compose(
        ops,
        bbox_params=A.BboxParams(
            format="pascal_voc",
            label_fields=["box_indices"],
            min_area=0.0,
            min_visibility=0.0,
            # The readers already clipped the boxes; clip again only to absorb float
            # rounding at the border.
            clip=True,
        ),
    )


def apply_transforms(
    transform: A.Compose,
    image: np.ndarray,
    boxes: np.ndarray,
    seed: Optional[int] = None,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run ``transform`` on one image and its boxes.

    Args:
        transform: from :func:`build_transforms`.
        image: ``uint8 (H, W, 3)`` RGB.
        boxes: ``float [N, 4]`` x1y1x2y2 in ``image``'s pixel coordinates.
        seed: if given, the random choices are a function of it alone (loaders pass a
            per-sample seed so that results do not depend on worker scheduling).

    Returns:
        ``(image uint8 (H', W', 3), boxes float32 [M, 4], kept int64 [M])`` where
        ``kept`` indexes the input boxes that survived: all of them for the toolkit's
        transforms (which neither crop nor drop), except boxes of less than
        :data:`ALBUMENTATIONS_MIN_AREA` square pixels in the input or the resized
        image, which albumentations always removes; a warning counts those.

    Raises:
        ValueError: a box is not finite or has no area (``x2 <= x1`` or ``y2 <= y1``);
            the dataset readers drop such boxes, so this is a caller's error.
    """
    if seed is not None:
        transform.set_random_seed(int(seed) % (2**32))
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    bad = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"apply_transforms: box {i} {boxes[i].tolist()} has no area or is not finite ({int(bad.sum())} such "
            "boxes); expected x1 < x2 and y1 < y2 (the dataset readers drop such boxes)"
        )
    out = transform(image=image, bboxes=boxes, box_indices=np.arange(len(boxes)))
    out_boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
    kept = np.asarray(out["box_indices"], dtype=np.int64).reshape(-1)
    if len(kept) != len(boxes):
        # Not silent: the caller's labels stay aligned through ``kept``, but a box
        # smaller than a pixel's ten-millionth is gone from the training targets.
        lost = np.setdiff1d(np.arange(len(boxes)), kept)
        logger.warning(
            "apply_transforms: %d box(es) with less than %g square pixels left out by albumentations (e.g. %s)",
            len(lost), ALBUMENTATIONS_MIN_AREA, boxes[lost[0]].tolist(),
        )
    return out["image"], out_boxes, kept


def scale_boxes(boxes: np.ndarray, from_size: Tuple[int, int], to_size: Tuple[int, int]) -> np.ndarray:
    """Map x1y1x2y2 boxes from an image of size ``from_size = (h, w)`` to ``to_size``
    (per-axis scale; e.g. predictions on the resized image back to the original)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    boxes[:, 0::2] *= to_size[1] / from_size[1]
    boxes[:, 1::2] *= to_size[0] / from_size[0]
    return boxes.astype(np.float32)

