"""RoI feature extraction from the stride-16 conv4 map with ``torchvision.ops``.

The ResNet paper's C4 detector (Appendix A) RoI-pools conv4 features before conv5_1,
as Fast R-CNN does (max pooling over a grid of quantized bins). Later work replaced
it with RoIAlign (bilinear sampling, no quantization; Mask R-CNN), and
Detectron2's ``ROIAlignV2`` additionally shifts by half a pixel (``aligned=True``)
so that a box's continuous coordinates map exactly onto the feature grid.
"""
from __future__ import annotations

from typing import Callable, Dict, List

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align, roi_pool

__all__ = ["ROIPooler", "POOLER_TYPES", "boxes_to_rois"]


def _roi_pool(features: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int) -> Tensor:
    # Fast R-CNN's max pooling (sampling_ratio has no meaning here). The kernel is
    # Caffe's: it reads x2, y2 as the INCLUSIVE last pixel (py-faster-rcnn boxes),
    # so our continuous boxes (x2 = one past the last pixel) are shifted by one to
    # pool exactly the cells py-faster-rcnn pools.
    inclusive = torch.cat((rois[:, :3], rois[:, 3:] - 1.0), dim=1)
    return roi_pool(features, inclusive, (output_size, output_size), spatial_scale)


def _roi_align(features: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int) -> Tensor:
    return roi_align(features, rois, (output_size, output_size), spatial_scale, sampling_ratio, aligned=False)


def _roi_align_v2(features: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int) -> Tensor:
    return roi_align(features, rois, (output_size, output_size), spatial_scale, sampling_ratio, aligned=True)


# Config value of model.roi_heads.pooler_type -> pooling function.
POOLER_TYPES: Dict[str, Callable[..., Tensor]] = {
    "ROIPool": _roi_pool,
    "ROIAlign": _roi_align,
    "ROIAlignV2": _roi_align_v2,
}


def boxes_to_rois(boxes: List[Tensor]) -> Tensor:
    """``N`` tensors ``[R_i, 4]`` -> ``[sum R_i, 5]`` rows ``(image index, x1, y1, x2, y2)``."""
    image_idx = torch.cat(
        [torch.full((len(b), 1), float(i), dtype=torch.float32, device=b.device) for i, b in enumerate(boxes)]
    )
    return torch.cat((image_idx, torch.cat(boxes).to(torch.float32)), dim=1)


class ROIPooler(nn.Module):
    """Pools an ``S x S`` feature grid for every RoI of a batch in one call."""

    def __init__(self, *, pooler_type: str, output_size: int, spatial_scale: float, sampling_ratio: int = 0):
        """
        Args:
            pooler_type: ``ROIPool`` (the paper), ``ROIAlign`` or ``ROIAlignV2``.
            output_size: ``S``; 14 for the ResNet C4 head (res5's stride-2 first
                block makes it 7x7), 7 for VGG-16's fc6.
            spatial_scale: feature-map pixels per input pixel, 1/16 for conv4.
            sampling_ratio: RoIAlign samples per bin side; 0 = adaptive
                (``ceil(roi_size / S)``).
        """
        super().__init__()
        if pooler_type not in POOLER_TYPES:
            raise ValueError(
                f"model.roi_heads.pooler_type must be one of {', '.join(POOLER_TYPES)}; got {pooler_type!r}"
            )
        if output_size < 1:
            raise ValueError(f"model.roi_heads.pooler_resolution must be >= 1, got {output_size}")
        if sampling_ratio < 0:
            raise ValueError(f"model.roi_heads.pooler_sampling_ratio must be >= 0, got {sampling_ratio}")
        self.pooler_type = pooler_type
        self.output_size = int(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self._pool = POOLER_TYPES[pooler_type]

    def forward(self, features: Tensor, rois: Tensor) -> Tensor:
        """
        Args:
            features: ``[N, C, Hf, Wf]``.
            rois: ``[R, 5]`` float32 rows ``(image index, x1, y1, x2, y2)`` in input pixels.
        Returns:
            ``[R, C, S, S]`` in the dtype of ``features``.
        """
        dtype = features.dtype
        # Pool in float32: half precision cannot hold box coordinates of a
        # 1000-pixel image exactly (bf16 has 8 significant bits), and the CPU
        # kernels need input and boxes of one dtype.
        pooled = self._pool(features.float(), rois.float(), self.output_size, self.spatial_scale, self.sampling_ratio)
        return pooled.to(dtype)

    def extra_repr(self) -> str:
        return (
            f"pooler_type={self.pooler_type}, output_size={self.output_size}, "
            f"spatial_scale={self.spatial_scale}, sampling_ratio={self.sampling_ratio}"
        )
