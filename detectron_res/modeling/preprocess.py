"""Turning user inputs into the detector's padded, normalized batch, and back.

Two input forms are accepted by :class:`~.faster_rcnn.FasterRCNN`:

1. The data loader's ``Batch`` (``detectron_res.data.loader``): images already
   resized and padded, ``[N, 3, Hp, Wp]`` float32 in 0..255, ``image_sizes`` after
   resizing, ``orig_sizes`` before, and targets in resized coordinates.
2. The torchvision convention: a list of ``[3, H, W]`` images (float in 0..255, or
   uint8) and optionally a list of target dicts with ``boxes`` ``[G, 4]`` float32
   absolute ``(x1, y1, x2, y2)`` and ``labels`` ``[G]`` int64 in 1..K, in the
   images' own coordinates. Here this module resizes (shorter side to
   ``min_size_test``, or the first ``min_size_train`` in training, longer side at
   most ``max_size_*``) and pads.

Either way the channel order must be the one the weights expect (the model's
``input_format``: BGR for MSRA weights, RGB for torchvision weights); the model
subtracts the pixel mean and divides by the std itself, and detections come back
in each image's original coordinates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import clip_boxes_to_image

from ..structures import ImageList, host_tensor, scale_boxes

__all__ = ["Preprocessor", "PreparedInputs", "validate_targets", "resized_size"]


def _to_device(tensor: Tensor, device: torch.device, dtype: Optional[torch.dtype] = None) -> Tensor:
    # Host-to-GPU copies need not wait for queued GPU work; copies to the host must.
    return tensor.to(device=device, dtype=dtype, non_blocking=device.type != "cpu" and tensor.device.type == "cpu")


@dataclass
class PreparedInputs:
    """What the detector's stages consume.

    Attributes:
        images: normalized, padded ``[N, 3, Hp, Wp]`` batch with the size of each image.
        orig_sizes: ``N`` pairs ``(h, w)`` of the images as the user gave them;
            detections are mapped back to these.
        gt_boxes, gt_labels: in training, ``N`` tensors ``[G, 4]`` in input (resized)
            pixels and ``[G]`` int64; ``None`` otherwise.
    """

    images: ImageList
    orig_sizes: List[Tuple[int, int]]
    gt_boxes: Optional[List[Tensor]] = None
    gt_labels: Optional[List[Tensor]] = None

    @property
    def image_scales(self) -> List[float]:
        """Resize factor of each image (input pixels per original pixel)."""
        return [
            math.sqrt((h / oh) * (w / ow)) for (h, w), (oh, ow) in zip(self.images.image_sizes, self.orig_sizes)
        ]


def resized_size(height: int, width: int, min_size: int, max_size: int) -> Tuple[int, int]:
    """Size after scaling the shorter side to ``min_size`` unless the longer side
    would exceed ``max_size`` (Appendix A: 600 / 1000), aspect ratio kept."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def validate_targets(
    gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor], num_classes: int, source: str = "targets"
) -> None:
    """Check ground-truth values; raise ``ValueError`` naming the image and the bad value.

    Boxes must be finite with positive width and height, labels in ``1..num_classes``.
    All images are checked with one device-to-host transfer; details are only
    looked up when something is wrong.
    """
    bad = []
    for boxes, labels in zip(gt_boxes, gt_labels):
        if boxes.shape[0] == 0:
            bad.append(torch.zeros((), dtype=torch.bool, device=boxes.device))
            continue
        box_bad = ~torch.isfinite(boxes).all(dim=1) | (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        label_bad = (labels < 1) | (labels > num_classes)
        bad.append((box_bad | label_bad).any())
    if not bad or not bool(torch.stack([b.to(bad[0].device) for b in bad]).any()):
        return
    for i, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels)):
        for j in range(boxes.shape[0]):
            box = [round(float(v), 3) for v in boxes[j].tolist()]
            if not all(math.isfinite(v) for v in box) or box[2] <= box[0] or box[3] <= box[1]:
                raise ValueError(
                    f"{source}[{i}]['boxes'][{j}] = {box}: expected finite (x1, y1, x2, y2) with x2 > x1 and y2 > y1 "
                    "(positive width and height)"
                )
            label = int(labels[j])
            if not 1 <= label <= num_classes:
                raise ValueError(
                    f"{source}[{i}]['labels'][{j}] = {label}: expected a class label in 1..{num_classes} "
                    "(0 is background; model.roi_heads.num_classes sets the range)"
                )


def _check_target_structure(target: Any, index: int, source: str) -> Tuple[Tensor, Tensor]:
    """Types and shapes of one target dict; returns (boxes float32, labels int64)."""
    if not isinstance(target, dict) or "boxes" not in target or "labels" not in target:
        keys = sorted(target) if isinstance(target, dict) else type(target).__name__
        raise TypeError(f"{source}[{index}]: expected a dict with 'boxes' and 'labels', got {keys}")
    boxes, labels = target["boxes"], target["labels"]
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4 or not boxes.is_floating_point():
        what = f"{boxes.dtype} tensor of shape {list(boxes.shape)}" if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"{source}[{index}]['boxes']: expected a float tensor of shape [G, 4], got {what}")
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.dtype != torch.int64:
        what = f"{labels.dtype} tensor of shape {list(labels.shape)}" if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"{source}[{index}]['labels']: expected an int64 tensor of shape [G], got {what}")
    if labels.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"{source}[{index}]: {boxes.shape[0]} boxes but {labels.shape[0]} labels; expected one label per box"
        )
    return boxes.to(torch.float32), labels


class Preprocessor(nn.Module):
    """Resizing (list inputs), normalization, padding, target checks and the way back."""

    def __init__(
        self,
        *,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        min_size_train: int,
        max_size_train: int,
        min_size_test: int,
        max_size_test: int,
        size_divisibility: int,
        num_classes: int,
    ):
        """
        Args:
            pixel_mean, pixel_std: 3 values each, 0..255 scale, in the channel order
                of the inputs (the weights' ``input_format``).
            min_size_train, max_size_train, min_size_test, max_size_test: resize of
                list inputs (Appendix A: 600 / 1000 for both).
            size_divisibility: list inputs are padded to a multiple of this.
            num_classes: ``K``, for checking target labels.
        """
        super().__init__()
        if len(pixel_mean) != 3 or len(pixel_std) != 3:
            raise ValueError(
                f"model.pixel_mean and model.pixel_std need 3 values each, got {list(pixel_mean)} and {list(pixel_std)}"
            )
        if any(float(s) <= 0 for s in pixel_std):
            raise ValueError(f"model.pixel_std values must be positive, got {list(pixel_std)}")
        for key, value in (
            ("input.min_size_train", min_size_train),
            ("input.max_size_train", max_size_train),
            ("input.min_size_test", min_size_test),
            ("input.max_size_test", max_size_test),
            ("input.size_divisibility", size_divisibility),
        ):
            if value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        # Buffers move with the model (.to(device)); not saved in checkpoints,
        # which carry the config they were trained with instead.
        self.register_buffer("pixel_mean", torch.tensor([float(v) for v in pixel_mean]).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor([float(v) for v in pixel_std]).view(3, 1, 1), persistent=False)
        self.min_size = {True: int(min_size_train), False: int(min_size_test)}
        self.max_size = {True: int(max_size_train), False: int(max_size_test)}
        self.size_divisibility = int(size_divisibility)
        self.num_classes = int(num_classes)

    # ------------------------------------------------------------------ inputs
    def forward(self, inputs: Any, targets: Optional[Sequence[Dict[str, Tensor]]] = None) -> PreparedInputs:
        """Prepare a loader ``Batch`` or a list of images (+ targets) for the detector."""
        if hasattr(inputs, "images") and hasattr(inputs, "image_sizes"):
            if targets is not None:
                raise TypeError("model(batch, targets): a loader Batch carries its own targets; pass model(batch)")
            return self._from_batch(inputs)
        if isinstance(inputs, Tensor) and inputs.dim() == 4:
            inputs = list(inputs.unbind(0))
        if not isinstance(inputs, (list, tuple)):
            raise TypeError(
                f"model input: expected a loader Batch or a list of [3, H, W] image tensors, got {type(inputs).__name__}"
            )
        return self._from_list(inputs, targets)

    def _from_batch(self, batch: Any) -> PreparedInputs:
        images = batch.images
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            what = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"batch.images: expected a float tensor [N, 3, H, W], got {what}")
        num_images, _, padded_h, padded_w = images.shape
        image_sizes = [(int(h), int(w)) for h, w in batch.image_sizes]
        orig_sizes = [(int(h), int(w)) for h, w in getattr(batch, "orig_sizes", image_sizes)]
        if len(image_sizes) != num_images or len(orig_sizes) != num_images:
            raise ValueError(
                f"batch: {num_images} images but {len(image_sizes)} image_sizes and {len(orig_sizes)} orig_sizes"
            )
        for i, (h, w) in enumerate(image_sizes):
            if not (0 < h <= padded_h and 0 < w <= padded_w):
                raise ValueError(f"batch.image_sizes[{i}] = {(h, w)}: expected within the padded size {(padded_h, padded_w)}")
        device = self.pixel_mean.device
        images = _to_device(images, device, torch.float32)
        images = (images - self.pixel_mean) / self.pixel_std
        # The loader pads with 0 in 0..255; zero the padding after normalization
        # instead, as for list inputs (the network sees a neutral, mean-colored border).
        heights = host_tensor([h for h, _ in image_sizes], torch.int64, device)
        widths = host_tensor([w for _, w in image_sizes], torch.int64, device)
        inside = (torch.arange(padded_h, device=device)[None, :, None] < heights[:, None, None]) & (
            torch.arange(padded_w, device=device)[None, None, :] < widths[:, None, None]
        )  # [N, Hp, Wp]
        images = images * inside[:, None].to(images.dtype)

        gt_boxes = gt_labels = None
        if self.training:
            targets = getattr(batch, "targets", None)
            if targets is None or len(targets) != num_images:
                raise ValueError(
                    f"batch.targets: training needs one target dict per image ({num_images}), got "
                    f"{None if targets is None else len(targets)}"
                )
            gt_boxes, gt_labels = self._check_targets(targets, device, "batch.targets")
        return PreparedInputs(ImageList(images, image_sizes), orig_sizes, gt_boxes, gt_labels)

    def _from_list(self, images: Sequence[Tensor], targets: Optional[Sequence[Dict[str, Tensor]]]) -> PreparedInputs:
        if len(images) == 0:
            raise ValueError("model input: got an empty list of images")
        device = self.pixel_mean.device
        min_size, max_size = self.min_size[self.training], self.max_size[self.training]
        resized, orig_sizes, image_sizes = [], [], []
        for i, image in enumerate(images):
            if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
                what = f"shape {list(image.shape)}" if isinstance(image, Tensor) else type(image).__name__
                raise ValueError(f"images[{i}]: expected a tensor [3, H, W] (0..255, channels first), got {what}")
            if not (image.is_floating_point() or image.dtype == torch.uint8):
                raise ValueError(f"images[{i}]: expected a float (0..255) or uint8 tensor, got {image.dtype}")
            h, w = int(image.shape[1]), int(image.shape[2])
            if h < 1 or w < 1:
                raise ValueError(f"images[{i}]: empty image of size {(h, w)}")
            new_h, new_w = resized_size(h, w, min_size, max_size)
            image = _to_device(image, device, torch.float32)
            image = (image - self.pixel_mean) / self.pixel_std
            if (new_h, new_w) != (h, w):
                image = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False)[0]
            resized.append(image)
            orig_sizes.append((h, w))
            image_sizes.append((new_h, new_w))

        d = self.size_divisibility
        padded_h = int(math.ceil(max(h for h, _ in image_sizes) / d) * d)
        padded_w = int(math.ceil(max(w for _, w in image_sizes) / d) * d)
        batch = resized[0].new_zeros((len(resized), 3, padded_h, padded_w))
        for i, image in enumerate(resized):
            batch[i, :, : image.shape[1], : image.shape[2]].copy_(image)

        gt_boxes = gt_labels = None
        if self.training:
            if targets is None:
                raise ValueError("model(images, targets): training mode needs targets (one dict per image)")
        if targets is not None:
            if len(targets) != len(images):
                raise ValueError(f"model(images, targets): {len(images)} images but {len(targets)} targets")
            gt_boxes, gt_labels = self._check_targets(targets, device, "targets")
            # Boxes follow the images: x by new_w / w, y by new_h / h.
            gt_boxes = [
                scale_boxes(boxes, nw / w, nh / h) for boxes, (nh, nw), (h, w) in zip(gt_boxes, image_sizes, orig_sizes)
            ]
        return PreparedInputs(ImageList(batch, image_sizes), orig_sizes, gt_boxes, gt_labels)

    def _check_targets(
        self, targets: Sequence[Dict[str, Tensor]], device: torch.device, source: str
    ) -> Tuple[List[Tensor], List[Tensor]]:
        gt_boxes, gt_labels = [], []
        for i, target in enumerate(targets):
            boxes, labels = _check_target_structure(target, i, source)
            gt_boxes.append(_to_device(boxes, device))
            gt_labels.append(_to_device(labels, device))
        validate_targets(gt_boxes, gt_labels, self.num_classes, source)
        return gt_boxes, gt_labels

    # ----------------------------------------------------------------- outputs
    @staticmethod
    def postprocess(
        detections: List[Dict[str, Tensor]],
        image_sizes: Sequence[Tuple[int, int]],
        orig_sizes: Sequence[Tuple[int, int]],
    ) -> List[Dict[str, Tensor]]:
        """Map detection boxes from input pixels to original-image pixels, clipped."""
        results = []
        for det, (h, w), (oh, ow) in zip(detections, image_sizes, orig_sizes):
            boxes = det["boxes"]
            if (h, w) != (oh, ow):
                boxes = clip_boxes_to_image(scale_boxes(boxes, ow / w, oh / h), (oh, ow))
            results.append({**det, "boxes": boxes})
        return results

    def extra_repr(self) -> str:
        return (
            f"min_size_train={self.min_size[True]}, max_size_train={self.max_size[True]}, "
            f"min_size_test={self.min_size[False]}, max_size_test={self.max_size[False]}, "
            f"size_divisibility={self.size_divisibility}"
        )
