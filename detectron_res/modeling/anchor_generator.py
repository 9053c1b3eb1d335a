"""Anchors of the Region Proposal Network on one feature map (the paper's C4 form).

Faster R-CNN (Ren et al. 2015, Sec 3.1.1) places ``A = len(sizes) * len(aspect_ratios)``
reference boxes at every location of the stride-16 conv4 feature map. The ResNet
paper (Appendix A) uses the Faster R-CNN anchors: areas 128^2, 256^2, 512^2 and
aspect ratios 1:2, 1:1, 2:1 on VOC; COCO adds 64^2.

Two constructions of the cell anchors (``style``):

* ``"py-faster-rcnn"``: the paper's system, py-faster-rcnn's ``generate_anchors``.
  It starts from a 16 x 16 base box, enumerates the ratios at that size with
  ROUNDED widths and heights (``w = round(sqrt(256 / r))``, ``h = round(w * r)``),
  then multiplies both by ``size / 16``. Areas are therefore not exactly ``size^2``:
  the ratio-0.5 anchors are 23 x 12 base pixels, so the size-512 one is 736 x 384
  (exact area would give 724 x 362), the ratio-2 ones 11 x 22 (size 512: 352 x 704).
* ``"exact_area"``: Detectron2's and torchvision's construction, exact areas
  ``size^2`` with ``h / w = r`` (``w = size / sqrt(r)``, ``h = size * sqrt(r)``). Up
  to 12 px from py-faster-rcnn's (size 512, ratio 0.5: 724 x 362 vs 736 x 384).

Shape shorthand: ``Hf x Wf`` feature map, ``A`` anchors per location.
Anchors are ordered location-major: index ``(y * Wf + x) * A + a``, which is the
order of the RPN head's outputs after ``(N, A, Hf, Wf) -> (N, Hf, Wf, A)``.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = ["ANCHOR_STYLES", "AnchorGenerator", "py_faster_rcnn_anchor_sizes"]

ANCHOR_STYLES = ("exact_area", "py-faster-rcnn")

# py-faster-rcnn's generate_anchors(base_size=16): the ratios are enumerated at this
# size (with rounding) before any scaling.
PY_FASTER_RCNN_BASE_SIZE = 16


def py_faster_rcnn_anchor_sizes(size: float, ratio: float) -> Tuple[float, float]:
    """``(width, height)`` of py-faster-rcnn's anchor of ``size`` and ``ratio`` (h / w).

    ``generate_anchors``: at the base size ``B = 16``, ``w = round(sqrt(B * B / r))``
    and ``h = round(w * r)`` (numpy's round, half to even, as Python's ``round``); the
    anchor of scale ``size / B`` is ``(w * size / B, h * size / B)``. Its centre is the
    base box's, pixel 7.5 in inclusive coordinates (8.0 in ours).
    """
    base = PY_FASTER_RCNN_BASE_SIZE
    w = float(round(math.sqrt(base * base / ratio)))
    h = float(round(w * ratio))
    scale = size / base
    return w * scale, h * scale


class AnchorGenerator(nn.Module):
    """Generates ``[Hf * Wf * A, 4]`` anchors ``(x1, y1, x2, y2)`` in input-image pixels."""

    def __init__(
        self,
        *,
        sizes: Sequence[float],
        aspect_ratios: Sequence[float],
        stride: int,
        offset: float = 0.5,
        style: str = "exact_area",
    ):
        """
        Args:
            sizes: anchor sizes in input pixels; an anchor of size ``s`` has area ``s^2``.
            aspect_ratios: height / width ratios; ``0.5`` is a wide box.
            stride: feature-map stride in input pixels (16 for conv4).
            offset: where in its ``stride x stride`` cell a location's anchors are
                centred, as a fraction of the stride. 0.5 is the cell centre: the
                centre ``(7.5, 7.5)`` of py-faster-rcnn's first anchor in inclusive
                pixel coordinates is ``(8, 8)`` in our continuous coordinates.
            style: ``"exact_area"`` or ``"py-faster-rcnn"`` (see the module
                docstring); config key ``model.anchor.style``.
        """
        super().__init__()
        if len(sizes) == 0 or any(float(s) <= 0 for s in sizes):
            raise ValueError(f"anchor sizes must be a non-empty list of positive numbers, got {list(sizes)}")
        if len(aspect_ratios) == 0 or any(float(r) <= 0 for r in aspect_ratios):
            raise ValueError(
                f"anchor aspect_ratios must be a non-empty list of positive numbers, got {list(aspect_ratios)}"
            )
        if stride < 1:
            raise ValueError(f"anchor stride must be >= 1, got {stride}")
        if not 0.0 <= offset < 1.0:
            raise ValueError(f"anchor offset must be in [0, 1), got {offset}")
        if style not in ANCHOR_STYLES:
            raise ValueError(f"anchor style (config key model.anchor.style) is {style!r}; expected one of "
                             f"{', '.join(ANCHOR_STYLES)}")  # fmt: skip
        self.style = style
        self.sizes = tuple(float(s) for s in sizes)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.stride = int(stride)
        self.offset = float(offset)
        # Not a parameter and not saved in checkpoints: derived from the config.
        self.register_buffer("cell_anchors", self._cell_anchors(), persistent=False)
        self._cache: Dict[Tuple[int, int, torch.device, bool], Tensor] = {}

    @property
    def num_anchors(self) -> int:
        """``A``, anchors per feature-map location."""
        return len(self.sizes) * len(self.aspect_ratios)

    def _cell_anchors(self) -> Tensor:
        """``[A, 4]`` anchors centred at (0, 0), size-major: ``a = size_i * R + ratio_j``.

        ``exact_area``: area ``s^2`` with ``h / w = r``, i.e. ``w = s / sqrt(r)``,
        ``h = s * sqrt(r)``. ``py-faster-rcnn``: :func:`py_faster_rcnn_anchor_sizes`
        (py-faster-rcnn orders its anchors ratio-major; the order here is the RPN
        head's channel layout and does not change the set of boxes).
        """
        anchors = []
        for size in self.sizes:
            for ratio in self.aspect_ratios:
                if self.style == "py-faster-rcnn":
                    w, h = py_faster_rcnn_anchor_sizes(size, ratio)
                else:
                    w = size / math.sqrt(ratio)
                    h = size * math.sqrt(ratio)
                anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
        return torch.tensor(anchors, dtype=torch.float32)

    def forward(self, feature_size: Tuple[int, int], device: torch.device | None = None) -> Tensor:
        """
        Args:
            feature_size: ``(Hf, Wf)`` of the feature map.
            device: where to put the anchors (defaults to the module's device).
        Returns:
            ``[Hf * Wf * A, 4]`` float32 anchors, location-major (see module doc).
            They are shared by all images of a batch (the padded batch has one
            feature size); they are not clipped to any image.
        """
        device = self.cell_anchors.device if device is None else torch.device(device)
        # Tensors made under torch.inference_mode() cannot enter autograd later,
        # so evaluation and training keep separate cache entries.
        key = (int(feature_size[0]), int(feature_size[1]), device, torch.is_inference_mode_enabled())
        anchors = self._cache.get(key)
        if anchors is None:
            height, width = key[0], key[1]
            shift_x = (torch.arange(width, dtype=torch.float32, device=device) + self.offset) * self.stride
            shift_y = (torch.arange(height, dtype=torch.float32, device=device) + self.offset) * self.stride
            grid_y, grid_x = torch.meshgrid(shift_y, shift_x, indexing="ij")  # [Hf, Wf] each
            shifts = torch.stack((grid_x, grid_y, grid_x, grid_y), dim=-1).reshape(-1, 1, 4)  # [Hf*Wf, 1, 4]
            # (Hf*Wf, 1, 4) + (1, A, 4) -> (Hf*Wf*A, 4)
            anchors = (shifts + self.cell_anchors.to(device)[None]).reshape(-1, 4)
            if len(self._cache) > 32:  # input sizes vary with aspect ratio; keep the cache small
                self._cache.clear()
            self._cache[key] = anchors
        return anchors
