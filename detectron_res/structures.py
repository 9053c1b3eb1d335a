"""Plain data structures shared by the detector's stages, and box helpers.

Box convention used everywhere in the toolkit: float32 absolute ``(x1, y1, x2, y2)``
in continuous pixel coordinates, 0-based, where pixel ``i`` spans ``[i, i + 1)``.
A box covering a whole ``H x W`` image is therefore ``(0, 0, W, H)``; its width is
``x2 - x1`` (no "+1": that belongs to the inclusive VOC convention, which the data
readers convert away on load).

Image sizes are always ``(height, width)`` pairs, as in ``Tensor.shape[-2:]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["ImageList", "clip_boxes", "nonempty_mask", "scale_boxes", "sizes_tensor", "host_tensor"]


@dataclass
class ImageList:
    """A batch of images padded to one size, with the size of each before padding.

    Attributes:
        tensor: ``[N, 3, Hp, Wp]`` images, padded at the bottom and right.
        image_sizes: ``N`` pairs ``(h, w)``, the valid (unpadded) region of each
            image, ``h <= Hp`` and ``w <= Wp``. Boxes predicted for image ``i``
            are clipped to ``(0, 0, w, h)``.
    """

    tensor: Tensor
    image_sizes: List[Tuple[int, int]]

    def __len__(self) -> int:
        return len(self.image_sizes)

    def to(self, device: torch.device | str) -> "ImageList":
        return ImageList(self.tensor.to(device), list(self.image_sizes))


def host_tensor(values, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A tensor of host values on ``device`` without stalling the device queue.

    ``torch.tensor(values, device="cuda")`` copies synchronously, i.e. waits for
    all queued GPU work; an asynchronous copy from a fresh CPU tensor does not
    (the driver stages pageable memory before returning, so this is safe).
    """
    device = torch.device(device)
    return torch.tensor(values, dtype=dtype).to(device, non_blocking=device.type != "cpu")


def sizes_tensor(image_sizes: Sequence[Tuple[int, int]], device: torch.device) -> Tensor:
    """``N`` pairs ``(h, w)`` as a float32 ``[N, 2]`` tensor on ``device`` (no synchronization)."""
    return host_tensor([[float(h), float(w)] for h, w in image_sizes], torch.float32, device).reshape(-1, 2)


def clip_boxes(boxes: Tensor, sizes: Tensor) -> Tensor:
    """Clip boxes to their image, each box to its own image size.

    Args:
        boxes: ``[..., 4]`` boxes ``(x1, y1, x2, y2)``.
        sizes: ``(h, w)`` with a shape that broadcasts against ``boxes[..., 0]``
            after its last dimension: ``[2]`` for one image, or ``[R, 2]`` giving
            the size of the image of each of ``R`` boxes (``boxes`` ``[R, 4]`` or
            ``[R, K, 4]``; for the latter pass ``sizes[:, None, :]``).
    Returns:
        Clipped boxes, same shape and dtype; ``x`` in ``[0, w]`` and ``y`` in ``[0, h]``.
    """
    zero = torch.zeros((), dtype=boxes.dtype, device=boxes.device)
    h = sizes[..., 0].to(boxes.dtype)
    w = sizes[..., 1].to(boxes.dtype)
    # torch.clamp takes tensor bounds only of the same shape, so use min/max,
    # which broadcast: every image of a batch is clipped in one call.
    x1 = torch.minimum(torch.maximum(boxes[..., 0], zero), w)
    y1 = torch.minimum(torch.maximum(boxes[..., 1], zero), h)
    x2 = torch.minimum(torch.maximum(boxes[..., 2], zero), w)
    y2 = torch.minimum(torch.maximum(boxes[..., 3], zero), h)
    return torch.stack((x1, y1, x2, y2), dim=-1)


def nonempty_mask(boxes: Tensor, min_size: Tensor | float = 0.0) -> Tensor:
    """Boolean mask of boxes with positive size and width and height >= ``min_size``.

    Args:
        boxes: ``[..., 4]`` boxes ``(x1, y1, x2, y2)``.
        min_size: a number, or a tensor broadcasting against ``boxes[..., 0]``
            (one threshold per box, e.g. per image scaled by its resize factor).
    Returns:
        ``[...]`` bool tensor. ``>=`` as py-faster-rcnn's ``_filter_boxes`` (whose
        inclusive width ``x2 - x1 + 1`` equals our ``x2 - x1``); degenerate boxes
        (zero width or height) are always removed.
    """
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    return (widths >= min_size) & (heights >= min_size) & (widths > 0) & (heights > 0)


def scale_boxes(boxes: Tensor, scale_x: float, scale_y: float) -> Tensor:
    """Multiply ``x`` coordinates by ``scale_x`` and ``y`` coordinates by ``scale_y``.

    Args:
        boxes: ``[..., 4]`` boxes.
        scale_x, scale_y: host numbers (no tensor is copied to the device).
    Returns:
        Scaled boxes, same shape. A resize of the image by ``scale_x`` horizontally
        and ``scale_y`` vertically maps a box exactly this way in continuous
        coordinates.
    """
    return torch.stack(
        (boxes[..., 0] * scale_x, boxes[..., 1] * scale_y, boxes[..., 2] * scale_x, boxes[..., 3] * scale_y), dim=-1
    )
