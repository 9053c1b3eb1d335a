"""Pieces of the paper's full COCO system (Appendix B, Table 9) and horizontal-flip testing.

The detector wires them (``ROIHeads`` for box refinement, global context and the
maxout of two pyramid levels; ``FasterRCNN`` for the image pyramid and the flip);
this module holds what does not belong to one stage:

- :func:`box_voting`: each box kept by NMS becomes the score-weighted mean of the
  boxes of its group (image, class) that overlap it with IoU >= 0.5 (Appendix B,
  after Gidaris and Komodakis, "multi-region" box voting).
- :class:`FeatureLevel` and :func:`select_scale_pair`: one level of an image
  pyramid and the rule that picks two adjacent levels for each RoI.
- :func:`resize_batch` and :func:`hflip_batch`: the pyramid's and the flip's input
  tensors, made from the model's own normalized input batch.

Shape shorthand: N images, R RoIs, L pyramid levels, M boxes kept, P candidate boxes.
Boxes are ``(x1, y1, x2, y2)`` in input pixels of the level or view they belong to.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou

from .preprocess import resized_size

__all__ = [
    "BOX_VOTING_IOU",
    "FeatureLevel",
    "box_voting",
    "hflip_batch",
    "hflip_boxes",
    "level_scale_xy",
    "pyramid_size",
    "resize_batch",
    "select_scale_pair",
]

# Appendix B: the union's boxes that overlap a kept box with IoU >= 0.5 vote for it.
BOX_VOTING_IOU = 0.5


def box_voting(
    kept_boxes: Tensor,
    kept_groups: Tensor,
    boxes: Tensor,
    scores: Tensor,
    groups: Tensor,
    iou_thresh: float = BOX_VOTING_IOU,
) -> Tensor:
    """Replace each kept box by the score-weighted mean of the boxes of its group overlapping it.

    Args:
        kept_boxes: ``[M, 4]`` boxes kept by NMS.
        kept_groups: ``[M]`` int64 group of each kept box (e.g. ``image * K + class``).
        boxes: ``[P, 4]`` every candidate of the union (the kept ones among them).
        scores: ``[P]`` their scores (the voting weights, >= 0).
        groups: ``[P]`` int64 their groups.
        iou_thresh: a candidate votes when ``IoU(kept, candidate) >= iou_thresh``.
    Returns:
        ``[M, 4]`` voted boxes. A kept box that no candidate overlaps enough (only
        possible when it is not among ``boxes`` or all weights are 0) stays as it is.
    """
    if kept_boxes.numel() == 0 or boxes.numel() == 0:
        return kept_boxes.clone()
    # [M, P] weights: the candidate's score where it is in the kept box's group and overlaps enough
    votes = (box_iou(kept_boxes, boxes) >= iou_thresh) & (kept_groups[:, None] == groups[None, :])
    weights = votes.to(scores.dtype) * scores[None, :]
    total = weights.sum(dim=1, keepdim=True)  # [M, 1]
    voted = (weights @ boxes) / total.clamp(min=torch.finfo(scores.dtype).tiny)  # [M, 4]
    return torch.where(total > 0, voted, kept_boxes)


@dataclass
class FeatureLevel:
    """One level of an image pyramid, as ``ROIHeads.predict`` pools from it.

    Attributes:
        features: ``[N, C, Hf, Wf]`` conv4 features of the level's input.
        scale_xy: ``[N, 2]`` float32 ``(sx, sy)``: the level's input pixels per base
            input pixel of each image (the base is where proposals live); ``None``
            means 1 (the base level itself).
    """

    features: Tensor
    scale_xy: Tensor | None = None


def select_scale_pair(
    boxes: Tensor, image_idx: Tensor, level_scales: Tensor, target_size: float
) -> Tuple[Tensor, Tensor]:
    """The two adjacent pyramid levels each RoI is pooled from.

    SPPnet's single-scale rule takes the level where the scaled RoI's area is
    nearest ``target_size ** 2`` (224 x 224, the ImageNet input size the head was
    pre-trained on). Two levels, as Appendix B asks: the pair of adjacent levels
    whose scaled RoI sizes bracket the target, i.e. the nearest level and its
    neighbour on the side of the target; a RoI too large (small) for every level
    gets the two smallest (largest) levels.

    Args:
        boxes: ``[R, 4]`` RoIs in base input pixels.
        image_idx: ``[R]`` int64 image of each RoI.
        level_scales: ``[N, L]`` linear scale of each level (``sqrt(sx * sy)``),
            increasing along ``L``.
        target_size: side of the canonical square, in pixels.
    Returns:
        ``(lower, upper)``: ``[R]`` int64 level indices, ``upper = lower + 1`` (both
        0 when ``L == 1``).
    """
    num_levels = level_scales.shape[1]
    side = ((boxes[:, 2] - boxes[:, 0]).clamp(min=1e-6) * (boxes[:, 3] - boxes[:, 1]).clamp(min=1e-6)).sqrt()  # [R]
    ideal = target_size / side  # [R] scale at which the RoI would be target_size x target_size
    # number of levels at or below the ideal scale: the pair is (count - 1, count)
    count = (level_scales[image_idx] <= ideal[:, None]).sum(dim=1)  # [R]
    lower = (count - 1).clamp(min=0, max=max(num_levels - 2, 0))
    upper = (lower + 1).clamp(max=num_levels - 1)
    return lower, upper


def pyramid_size(
    orig_size: Tuple[int, int], scale: int, min_size_test: int, max_size_test: int
) -> Tuple[int, int]:
    """Input size of one image at pyramid scale ``scale`` (shorter side), with the longer
    side capped at ``scale * max_size_test / min_size_test`` (1000 / 600 keeps the
    single-scale cap's proportion at every level)."""
    max_size = int(round(scale * max_size_test / min_size_test))
    return resized_size(orig_size[0], orig_size[1], scale, max_size)


def resize_batch(
    images: Tensor, image_sizes: Sequence[Tuple[int, int]], new_sizes: Sequence[Tuple[int, int]], size_divisibility: int
) -> Tensor:
    """Resample each image's valid region of a normalized padded batch to a new size.

    Args:
        images: ``[N, 3, Hp, Wp]`` normalized, zero padding.
        image_sizes: ``N`` valid ``(h, w)``.
        new_sizes: ``N`` target ``(h', w')``.
        size_divisibility: the new batch is padded (zeros) to a multiple of this.
    Returns:
        ``[N, 3, Hp', Wp']``.
    """
    d = size_divisibility
    padded_h = int(math.ceil(max(h for h, _ in new_sizes) / d) * d)
    padded_w = int(math.ceil(max(w for _, w in new_sizes) / d) * d)
    out = images.new_zeros((images.shape[0], images.shape[1], padded_h, padded_w))
    for i, ((h, w), (nh, nw)) in enumerate(zip(image_sizes, new_sizes)):
        region = images[i : i + 1, :, :h, :w]
        if (nh, nw) != (h, w):
            region = F.interpolate(region, size=(nh, nw), mode="bilinear", align_corners=False)
        out[i, :, :nh, :nw] = region[0]
    return out


def hflip_batch(images: Tensor, image_sizes: Sequence[Tuple[int, int]]) -> Tensor:
    """Mirror each image's valid region in place of itself (the padding stays right/bottom)."""
    out = torch.zeros_like(images)
    for i, (h, w) in enumerate(image_sizes):
        out[i, :, :h, :w] = images[i, :, :h, :w].flip(-1)
    return out


def hflip_boxes(boxes: Tensor, widths: Tensor) -> Tensor:
    """Mirror boxes ``[..., 4]`` in images of width ``widths`` (broadcast to ``boxes[..., 0]``):
    ``x -> w - x`` (the data pipeline's flip), so ``(x1, x2) -> (w - x2, w - x1)``."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((widths - x2, y1, widths - x1, y2), dim=-1)


def level_scale_xy(
    image_sizes: Sequence[Tuple[int, int]], level_sizes: Sequence[Tuple[int, int]], device: torch.device
) -> Tensor:
    """``[N, 2]`` ``(sx, sy)`` of a level relative to the base sizes."""
    values: List[List[float]] = [[lw / w, lh / h] for (h, w), (lh, lw) in zip(image_sizes, level_sizes)]
    return torch.tensor(values, dtype=torch.float32, device=device)
