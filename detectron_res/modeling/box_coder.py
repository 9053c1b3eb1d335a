"""Box regression parametrization of R-CNN (Girshick et al. 2014, Appendix C).

A target box ``(x, y, w, h)`` (centre and size) is expressed relative to a source
box ``(xa, ya, wa, ha)`` (an anchor or a proposal) as::

    dx = wx * (x - xa) / wa        dw = ww * log(w / wa)
    dy = wy * (y - ya) / ha        dh = wh * log(h / ha)

The weights ``(wx, wy, ww, wh)`` normalize the targets: ``(1, 1, 1, 1)`` for the
RPN and ``(10, 10, 5, 5)`` for the Fast R-CNN head, which equals py-faster-rcnn's
division of the targets by the std ``(0.1, 0.1, 0.2, 0.2)``.

Widths are ``x2 - x1`` in continuous coordinates (no "+1"), as in torchvision's
``BoxCoder`` and Detectron2; the formulas, including the clamp of ``dw, dh`` at
``log(1000 / 16)`` before ``exp``, agree with ``torchvision.models.detection._utils.BoxCoder``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["BoxCoder"]

# Largest log-scale change decoded: a 16-pixel box may grow to at most 1000
# pixels. Without it an untrained head can produce exp(large) = inf boxes.
_DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def _centers_and_sizes(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(cx, cy, w, h)`` of ``[..., 4]`` boxes ``(x1, y1, x2, y2)`` (widths without "+1")."""
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


class BoxCoder:
    """Encodes boxes as deltas relative to source boxes and decodes them back."""

    def __init__(self, *, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), scale_clamp: float = _DEFAULT_SCALE_CLAMP):
        """
        Args:
            weights: ``(wx, wy, ww, wh)`` multiplying the four deltas (see module doc).
            scale_clamp: upper bound of ``dw / ww`` and ``dh / wh`` when decoding.
        """
        if len(weights) != 4 or any(float(w) <= 0 for w in weights):
            raise ValueError(f"BoxCoder weights must be 4 positive numbers (wx, wy, ww, wh), got {list(weights)}")
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = float(scale_clamp)

    def encode(self, src_boxes: Tensor, target_boxes: Tensor) -> Tensor:
        """Deltas that turn each source box into its target box.

        Args:
            src_boxes: ``[..., 4]`` anchors or proposals ``(x1, y1, x2, y2)``, positive size.
            target_boxes: ``[..., 4]`` boxes to reach, same shape.
        Returns:
            ``[..., 4]`` float32 deltas ``(dx, dy, dw, dh)``.
        """
        src_boxes = src_boxes.float()
        target_boxes = target_boxes.float()
        wx, wy, ww, wh = self.weights

        src_cx, src_cy, src_w, src_h = _centers_and_sizes(src_boxes)
        tgt_cx, tgt_cy, tgt_w, tgt_h = _centers_and_sizes(target_boxes)

        dx = wx * (tgt_cx - src_cx) / src_w
        dy = wy * (tgt_cy - src_cy) / src_h
        dw = ww * torch.log(tgt_w / src_w)
        dh = wh * torch.log(tgt_h / src_h)
        return torch.stack((dx, dy, dw, dh), dim=-1)

    def decode(self, deltas: Tensor, src_boxes: Tensor) -> Tensor:
        """Apply deltas to source boxes.

        Args:
            deltas: ``[..., 4]`` deltas ``(dx, dy, dw, dh)``; any float dtype
                (half-precision outputs of an autocast region are decoded in float32).
            src_boxes: ``[..., 4]`` boxes broadcasting against ``deltas``, e.g.
                ``[R, 1, 4]`` proposals for ``[R, K, 4]`` class-specific deltas.
        Returns:
            float32 boxes ``(x1, y1, x2, y2)`` of the broadcast shape.
        """
        deltas = deltas.float()
        src_boxes = src_boxes.float()
        wx, wy, ww, wh = self.weights

        src_cx, src_cy, src_w, src_h = _centers_and_sizes(src_boxes)

        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        dw = torch.clamp(deltas[..., 2] / ww, max=self.scale_clamp)
        dh = torch.clamp(deltas[..., 3] / wh, max=self.scale_clamp)

        cx = dx * src_w + src_cx
        cy = dy * src_h + src_cy
        half_w = 0.5 * torch.exp(dw) * src_w
        half_h = 0.5 * torch.exp(dh) * src_h
        return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)
