"""RoI feature extraction from the stride-16 conv4 map with ``torchvision.ops``.

The ResNet paper's C4 detector (Appendix A) RoI-pools conv4 features before conv5_1,
as Fast R-CNN does (max pooling over a grid of quantized bins). Later work replaced
it with RoIAlign (bilinear sampling, no quantization; Mask R-CNN), and
Detectron2's ``ROIAlignV2`` additionally shifts by half a pixel (``aligned=True``)
so that a box's continuous coordinates map exactly onto the feature grid.

On the CPU, RoIAlign can also run as one sparse matrix product
(:func:`roi_align_by_matrix`, ``model.speed.roi_align_by_matrix``): the same numbers
as torchvision's kernel, computed on every core, and a backward pass that is one
more sparse product instead of torchvision's serial per-channel scatter.
"""
from __future__ import annotations

import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import is_in_torch_dispatch_mode
from torchvision.ops import roi_align, roi_pool

__all__ = ["ROIPooler", "POOLER_TYPES", "boxes_to_rois", "roi_align_by_matrix"]


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


def _axis_weights(
    start: Tensor, size: Tensor, output_size: int, grid: Tensor, length: int, bin_stride: int = 1
) -> Tuple[Tensor, Tensor]:
    """Bilinear sampling weights of RoIAlign along one axis, as torchvision's kernels compute them.

    Bin ``p`` of a RoI averages ``grid`` samples at ``start + p * bin + (i + 0.5) * bin / grid``
    (``bin = size / output_size``). A sample outside ``[-1, length]`` counts as 0; the
    others are moved onto the map (below 0 to 0, beyond the last pixel to it) and
    split between their two neighbouring pixels.

    Args:
        start, size: ``[R]`` RoI start and extent in map pixels.
        grid: ``[R]`` int64 samples per bin (>= 1).
        length: the map's extent along this axis.
        bin_stride: only bins ``0, bin_stride, 2 * bin_stride, ...`` (``B`` of them).
    Returns:
        ``first [R, B]`` int64, the first map pixel of each bin's window, and
        ``weights [R, B, L]``, the weight of pixel ``first + l`` (the bin's samples
        averaged: each bin's weights sum to 1 when all its samples are on the map).
    """
    num_samples = int(grid.max()) if grid.numel() else 1
    bin_size = size / output_size  # [R]
    p = torch.arange(0, output_size, bin_stride, dtype=start.dtype, device=start.device)
    i = torch.arange(num_samples, dtype=start.dtype, device=start.device)
    # The kernel's order of operations, so that float rounding places every sample alike.
    offset = (i[None, None, :] + 0.5) * bin_size[:, None, None] / grid[:, None, None].to(start.dtype)
    coord = start[:, None, None] + p[None, :, None] * bin_size[:, None, None] + offset  # [R, S, G]
    valid = (i[None, None, :] < grid[:, None, None]) & (coord >= -1.0) & (coord <= length)
    coord = coord.clamp(min=0.0)
    low = coord.to(torch.int64)  # truncation, as (int) in the kernel (coord >= 0 here)
    at_end = low >= length - 1
    low = torch.where(at_end, torch.full_like(low, length - 1), low)
    high = torch.where(at_end, low, low + 1)
    frac = torch.where(at_end, torch.zeros_like(coord), coord - low.to(coord.dtype))
    per_sample = valid.to(coord.dtype) / grid[:, None, None].to(coord.dtype)
    index = torch.cat((low, high), dim=2)  # [R, S, 2G]
    weight = torch.cat(((1.0 - frac) * per_sample, frac * per_sample), dim=2)
    # Accumulate onto a window of consecutive pixels per bin: [R, S, 2G] -> [R, S, L].
    first = index.min(dim=2).values
    relative = index - first[..., None]
    window = int(relative.max()) + 1 if relative.numel() else 1
    weights = torch.zeros(*index.shape[:2], window, dtype=coord.dtype, device=coord.device)
    return first, weights.scatter_add_(2, relative, weight)


def roi_align_by_matrix(
    features: Tensor,
    rois: Tensor,
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    bin_stride: int = 1,
    out_dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """``torchvision.ops.roi_align`` computed as one sparse matrix product for all channels.

    RoIAlign is linear in the features, with the same sampling weights for every
    channel: ``out = A @ F`` where ``F`` is the map as ``[N * Hf * Wf, C]`` and
    ``A`` (``[R * S * S, N * Hf * Wf]``, a few nonzeros per row) holds the bilinear
    weights of each bin, the product of one weight per axis. Building ``A`` is
    cheap (it does not depend on ``C``); the product runs on every core, and its
    backward is ``A^T @ grad``. torchvision's CPU kernel loops over RoIs and
    channels on one core and recomputes the interpolation per channel in the
    backward pass: for 256 RoIs of a 1024-channel map (R-50, 600 x 800) a training
    step's RoIAlign forward and backward take 3.1 s there and 0.5 s here.

    Same semantics as ``roi_align(features, rois, output_size, spatial_scale,
    sampling_ratio, aligned)`` (adaptive ``ceil(roi_size / S)`` samples per bin when
    ``sampling_ratio`` is 0, RoIs at least 1x1 without ``aligned``), results equal
    up to float rounding. Returns ``[R, C, S, S]`` with channels-last strides.

    ``bin_stride`` > 1 computes only every ``bin_stride``-th bin in each direction,
    ``roi_align(...)[:, :, ::bin_stride, ::bin_stride]``: all that a following
    strided 1x1 convolution reads.

    ``out_dtype`` (e.g. bf16 under autocast; default: the features' dtype): the
    dtype of the result. The product is computed in the features' dtype (float32:
    the sparse kernels have no bf16 version) and, without autograd, converted block
    by block through a small buffer that is reused: a whole float32 result is never
    allocated. A fresh large tensor costs its page faults on the CPU: for res5's
    conv1 map at 300 RoIs ([58800, 512]) allocating the float32 result took ~65 ms of
    page faults on one core and converting it into a fresh bf16 tensor 42 ms, against
    10 ms for the conversion into memory already touched.
    """
    num_images, channels, height, width = features.shape
    num_rois = rois.shape[0]
    size = len(range(0, output_size, bin_stride))  # bins kept per side
    if num_rois == 0:
        return features.new_zeros((0, channels, size, size))
    rois = rois.to(features.dtype)
    offset = 0.5 if aligned else 0.0
    start = rois[:, 1:3] * spatial_scale - offset  # (x, y)
    extent = rois[:, 3:5] * spatial_scale - offset - start
    if not aligned:
        extent = extent.clamp(min=1.0)  # the kernel's "force malformed RoIs to be 1x1"
    if sampling_ratio > 0:
        grid = torch.full_like(extent, sampling_ratio, dtype=torch.int64)
    else:
        grid = torch.ceil(extent / output_size).to(torch.int64)
    # A RoI without samples (possible only with aligned=True and x2 <= x1) pools zeros.
    empty = (grid <= 0).any(dim=1)
    grid = grid.clamp(min=1)
    first_x, wx = _axis_weights(start[:, 0], extent[:, 0], output_size, grid[:, 0], width, bin_stride)  # [R, S], [R, S, Lx]
    first_y, wy = _axis_weights(start[:, 1], extent[:, 1], output_size, grid[:, 1], height, bin_stride)
    wy = wy.masked_fill(empty[:, None, None], 0.0)
    len_y, len_x = wy.shape[2], wx.shape[2]
    # Entries of A for row (r, py, px) and window pixel (ly, lx): [R, S, S, Ly, Lx].
    values = wy[:, :, None, :, None] * wx[:, None, :, None, :]
    y = first_y[:, :, None, None, None] + torch.arange(len_y, device=features.device)[:, None]
    x = first_x[:, None, :, None, None] + torch.arange(len_x, device=features.device)
    image = rois[:, 0].to(torch.int64)[:, None, None, None, None]
    columns = (image * height + y) * width + x
    keep = values != 0
    # Rows in order, columns increasing within a row: CSR directly, no sorting.
    counts = keep.flatten(start_dim=3).sum(dim=3).flatten()
    crow = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=features.device)
    torch.cumsum(counts, dim=0, out=crow[1:])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        matrix = torch.sparse_csr_tensor(
            crow, columns[keep], values[keep], (num_rois * size * size, num_images * height * width),
            check_invariants=False,
        )
    flat = features.permute(0, 2, 3, 1).reshape(num_images * height * width, channels)  # a view if NHWC
    # In float32 under CPU autocast too (which would cast the product to bf16): the
    # pooler's precision, and the sparse kernels have no bf16 version.
    with torch.autocast(device_type="cpu", enabled=False):
        if (torch.is_grad_enabled() and flat.requires_grad) or is_in_torch_dispatch_mode():
            pooled = torch.sparse.mm(matrix, flat)  # [R * S * S, C]; backward A^T @ grad
        else:
            # Without autograd, the product goes straight into an uninitialized output
            # (beta=0 ignores its contents, NaN included): sparse.mm zero-fills a result
            # and copies the product into it, 129 ms -> 19 ms for a [58800, 1900] x
            # [1900, 512] product on one core (res5's conv1 map, 300 RoIs, 600 x 800).
            # Not under a dispatch mode: FlopCounterMode (MAC counting, analysis.py)
            # would count this addmm as a dense product.
            # Blocks pay off for large results only (at 16 RoIs one call is faster).
            if out_dtype is None or out_dtype == flat.dtype or matrix.shape[0] * channels <= 4 * _BLOCK_ELEMENTS:
                out = flat.new_empty((matrix.shape[0], channels))
                pooled = torch.addmm(out, matrix, flat, beta=0, out=out)
            else:
                pooled = _product_in_blocks(crow, columns[keep], values[keep], flat, out_dtype)
    if out_dtype is not None and pooled.dtype != out_dtype:
        pooled = pooled.to(out_dtype)
    return pooled.view(num_rois, size, size, channels).permute(0, 3, 1, 2)


# Rows of a block of _product_in_blocks: a float32 buffer of ~4 MB, which malloc keeps
# in its heap (below glibc's mmap threshold) and the cache holds while it is converted.
_BLOCK_ELEMENTS = 1 << 20


def _product_in_blocks(crow: Tensor, columns: Tensor, values: Tensor, flat: Tensor, out_dtype: torch.dtype) -> Tensor:
    """``(A @ flat).to(out_dtype)`` for the CSR matrix ``A`` = ``(crow, columns, values)``,
    ``[rows, K] @ [K, C]``, without autograd: each block of rows is multiplied into one
    reused float32 buffer and copied into the ``out_dtype`` result. Every row is the
    same product as in one call (a CSR row's sum does not depend on the other rows)."""
    rows, channels = crow.numel() - 1, flat.shape[1]
    result = torch.empty((rows, channels), dtype=out_dtype, device=flat.device)
    block = max(1, _BLOCK_ELEMENTS // max(channels, 1))
    buffer = flat.new_empty((min(block, rows), channels))
    # The row pointers at the block boundaries, read once (one host sync).
    bounds = crow[torch.arange(0, rows + block, block, device=crow.device).clamp(max=rows)].tolist()
    for k, start in enumerate(range(0, rows, block)):
        stop = min(start + block, rows)
        first, last = bounds[k], bounds[k + 1]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            part = torch.sparse_csr_tensor(
                crow[start : stop + 1] - first, columns[first:last], values[first:last], (stop - start, flat.shape[0]),
                check_invariants=False,
            )
        out = buffer[: stop - start]
        torch.addmm(out, part, flat, beta=0, out=out)
        result[start:stop].copy_(out)
    return result


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

    def __init__(
        self,
        *,
        pooler_type: str,
        output_size: int,
        spatial_scale: float,
        sampling_ratio: int = 0,
        roi_align_by_matrix: bool = True,
    ):
        """
        Args:
            pooler_type: ``ROIPool`` (the paper), ``ROIAlign`` or ``ROIAlignV2``.
            output_size: ``S``; 14 for the ResNet C4 head (res5's stride-2 first
                block makes it 7x7), 7 for VGG-16's fc6.
            spatial_scale: feature-map pixels per input pixel, 1/16 for conv4.
            sampling_ratio: RoIAlign samples per bin side; 0 = adaptive
                (``ceil(roi_size / S)``).
            roi_align_by_matrix: RoIAlign of CPU tensors by :func:`roi_align_by_matrix`
                (``model.speed.roi_align_by_matrix``); CUDA keeps torchvision's
                kernel, which is parallel there.
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
        self.roi_align_by_matrix = bool(roi_align_by_matrix)
        self._pool = POOLER_TYPES[pooler_type]

    @property
    def is_weighted_average(self) -> bool:
        """RoIAlign: every output is an average of bilinear samples of the map (RoIPool takes maxima)."""
        return self.pooler_type in ("ROIAlign", "ROIAlignV2")

    def weights_sum_to_one(self, features: Tensor, rois: Tensor) -> bool:
        """Whether every output is a weighted average of map pixels with weights summing to 1.

        Then pooling commutes with any affine map applied to every pixel alike (a 1x1
        convolution with a fixed norm): ``pool(A(F)) == A(pool(F))``. torchvision's
        RoIAlign (CPU and CUDA kernels alike) gives weight 0 to a sample outside
        ``[-1, Hf] x [-1, Wf]`` (map pixels) and moves the others onto the map, so the
        weights sum to 1 exactly when no sample leaves that area. The samples lie
        inside the RoI as the kernel sees it: start ``x1 * scale - offset`` (offset
        0.5 for ``ROIAlignV2``), extent ``(x2 - x1) * scale``, at least 1 without
        ``aligned``. Proposals clipped to the image always pass; a ground-truth box
        reaching beyond the image (training) may not. Always False for ``ROIPool``.

        Args:
            features: ``[N, C, Hf, Wf]``.
            rois: ``[R, 5]`` rows ``(image index, x1, y1, x2, y2)`` in input pixels.
        """
        if not self.is_weighted_average:
            return False
        if rois.shape[0] == 0:
            return True
        aligned = self.pooler_type == "ROIAlignV2"
        offset = 0.5 if aligned else 0.0
        boxes = rois[:, 1:].float()
        # The kernel's own arithmetic (float32), so that rounding cannot differ.
        start = boxes[:, :2] * self.spatial_scale - offset  # (x, y)
        size = boxes[:, 2:] * self.spatial_scale - offset - start
        if not aligned:
            size = size.clamp(min=1.0)  # the kernel's "force malformed RoIs to be 1x1"
        end = start + size
        limit = torch.tensor([features.shape[-1], features.shape[-2]], dtype=boxes.dtype, device=boxes.device)
        inside = (torch.minimum(start, end) >= -1.0).all() & (torch.maximum(start, end) <= limit).all()
        return bool(inside)

    def forward(self, features: Tensor, rois: Tensor, bin_stride: int = 1) -> Tensor:
        """
        Args:
            features: ``[N, C, Hf, Wf]``.
            rois: ``[R, 5]`` float32 rows ``(image index, x1, y1, x2, y2)`` in input pixels.
            bin_stride: keep every ``bin_stride``-th bin per side (what a strided 1x1
                conv reads); the matrix RoIAlign computes only those.
        Returns:
            ``[R, C, S', S']`` in the dtype of ``features``, ``S' = ceil(S / bin_stride)``.
        """
        dtype = features.dtype
        # Pool in float32: half precision cannot hold box coordinates of a
        # 1000-pixel image exactly (bf16 has 8 significant bits), and the CPU
        # kernels need input and boxes of one dtype.
        features, rois = features.float(), rois.float()
        if (
            self.roi_align_by_matrix
            and self.is_weighted_average
            and features.device.type == "cpu"
            # Tracing and export know torchvision's op, not sparse tensors.
            and not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export())
        ):
            aligned = self.pooler_type == "ROIAlignV2"
            pooled = roi_align_by_matrix(
                features, rois, self.output_size, self.spatial_scale, self.sampling_ratio, aligned, bin_stride,
                out_dtype=dtype,
            )
        else:
            pooled = self._pool(features, rois, self.output_size, self.spatial_scale, self.sampling_ratio)
            if bin_stride > 1:
                pooled = pooled[:, :, ::bin_stride, ::bin_stride]
        return pooled.to(dtype)

    def extra_repr(self) -> str:
        return (
            f"pooler_type={self.pooler_type}, output_size={self.output_size}, "
            f"spatial_scale={self.spatial_scale}, sampling_ratio={self.sampling_ratio}, "
            f"roi_align_by_matrix={self.roi_align_by_matrix}"
        )
