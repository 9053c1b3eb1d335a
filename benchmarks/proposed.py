"""Prototypes of speed changes proposed for ``detectron_res/modeling`` (not yet applied there).

The benchmark measures them on a copy of our detector, so that the proposal in
``benchmarks/PROPOSED_OPTIMIZATIONS.md`` comes with numbers; the modeling code
itself is owned by another engineer, who applies them or not. Each change is
exact in real arithmetic (results differ by float rounding only), and
``tests/test_speed_equivalence.py`` checks the detections stay the same.

1. ``fused_frozen_bn``: a convolution followed by FrozenBN computes
   ``conv(x, W * scale) + shift`` instead of ``conv(x, W) * scale + shift``. The
   per-channel scale multiplies the (small) weight, not the (large) activation, so
   two elementwise passes over every conv output disappear in training too,
   where ``prepare_for_inference``'s folding is not allowed. The gradient still
   reaches ``W`` through the product.
2. ``inplace``: residual blocks apply ReLU and the shortcut addition in place
   (as torchvision's ResNet does), saving one large allocation per op. Large
   CPU tensors are fresh ``mmap`` pages every time (glibc), so each saved
   allocation also saves its page faults.
3. ``prepool_conv1``: C4 pools RoIs from res4 and runs res5 per region. The first
   res5 block starts with a 1x1 conv + FrozenBN (stride 1 in the torchvision
   layout), an affine map per pixel; RoIAlign averages bilinear samples with
   weights that sum to 1, so the two commute: ``conv1(RoIAlign(F)) ==
   RoIAlign(conv1(F))``. Running conv1 once on the stride-16 map (38 x 50
   positions at 600 x 800) instead of on 300 RoIs x 14 x 14 positions cuts
   30.8e9 multiply-adds to 1.3e9 for ResNet-50/101 (about 10% of the detector).
   The weights of the samples sum to 1 only where every sample lies within
   ``[-1, H] x [-1, W]`` of the feature map, which holds for proposals clipped to
   the image; a batch with a RoI outside it (a ground-truth box beyond the image,
   in training) takes the plain path. In training the saving is three times as
   large (forward, input gradient, weight gradient), less the backward pass of
   the second RoIAlign.
"""
from __future__ import annotations

import copy
from types import MethodType
from typing import List, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from detectron_res.modeling.backbone.norm import Conv2dNorm, FrozenBatchNorm2d
from detectron_res.modeling.backbone.resnet import BasicBlock, BottleneckBlock
from detectron_res.modeling.faster_rcnn import FasterRCNN
from detectron_res.modeling.poolers import boxes_to_rois

__all__ = ["PROPOSED_CHANGES", "apply_proposed", "prepool_applicable"]

PROPOSED_CHANGES = ("fused_frozen_bn", "inplace", "prepool_conv1")


def _fused_conv_norm_forward(self: Conv2dNorm, x: Tensor) -> Tensor:
    """``norm(conv(x))`` with a FrozenBN's scale applied to the weight (change 1)."""
    if not isinstance(self.norm, FrozenBatchNorm2d):
        return self.norm(F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups))
    scale, shift = self.norm.scale_and_shift()
    weight = self.weight * scale.reshape(-1, 1, 1, 1)
    bias = shift if self.bias is None else self.bias * scale + shift
    return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


def _inplace_bottleneck_forward(self: BottleneckBlock, x: Tensor) -> Tensor:
    """``BottleneckBlock.forward`` with in-place ReLU and addition (change 2)."""
    out = F.relu_(self.conv1(x))
    out = F.relu_(self.conv2(out))
    out = self.conv3(out)
    if self.residual:
        out += x if self.shortcut is None else self.shortcut(x)
    return F.relu_(out)


def _inplace_basic_forward(self: BasicBlock, x: Tensor) -> Tensor:
    """``BasicBlock.forward`` with in-place ReLU and addition (change 2)."""
    out = F.relu_(self.conv1(x))
    out = self.conv2(out)
    if self.residual:
        out += x if self.shortcut is None else self.shortcut(x)
    return F.relu_(out)


def prepool_applicable(model: FasterRCNN) -> bool:
    """Whether change 3 applies: ResNet res5 head whose first conv is 1x1, stride 1, followed
    by a fixed affine norm (FrozenBN, or none once folded), and RoIAlign pooling.

    A trainable BN (or GN) normalizes with statistics of what it sees, which differ
    between the feature map and the pooled RoIs; RoIPool takes maxima, which do
    not commute with a linear map.
    """
    heads = model.roi_heads
    if not hasattr(heads, "res5") or heads.pooler.pooler_type not in ("ROIAlign", "ROIAlignV2"):
        return False
    first = heads.res5[0]
    if not isinstance(first, BottleneckBlock):
        return False
    conv1 = first.conv1
    return (
        conv1.kernel_size == (1, 1)
        and conv1.stride == (1, 1)
        and conv1.padding == (0, 0)
        and isinstance(conv1.norm, (FrozenBatchNorm2d, nn.Identity))
    )


def _inside_feature_map(rois: Tensor, features: Tensor, spatial_scale: float) -> bool:
    """Whether every RoI lies within the area the feature map covers (then RoIAlign's weights sum to 1)."""
    height, width = features.shape[-2] / spatial_scale, features.shape[-1] / spatial_scale
    boxes = rois[:, 1:]
    inside = (boxes >= 0).all(dim=1) & (boxes[:, 2] <= width) & (boxes[:, 3] <= height)
    return bool(inside.all())


def _prepool_predict(self, features: Tensor, proposals: List[Tensor]) -> Tuple[Tensor, Tensor]:
    """``ROIHeads.predict`` with res5's first 1x1 conv run before pooling (change 3).

    Shapes: features ``[N, C4, Hf, Wf]``; R RoIs; B = bottleneck width. Falls back
    to the plain order when a RoI reaches outside the feature map (a ground-truth
    box beyond the image in training), where the two orders differ.
    """
    rois = boxes_to_rois(proposals)  # [R, 5]
    if not _inside_feature_map(rois, features, self.pooler.spatial_scale):
        return self._plain_predict(features, proposals)
    first = self.res5[0]
    # conv1 + its norm on the whole map: [N, C4, Hf, Wf] -> [N, B, Hf, Wf], then pool -> [R, B, S, S]
    out = F.relu(self.pooler(first.conv1(features), rois))
    out = first.conv3(F.relu(first.conv2(out)))  # [R, C5, S/2, S/2]
    if first.residual:
        # The projection shortcut (1x1, stride 2) still needs the pooled input.
        pooled = self.pooler(features, rois)  # [R, C4, S, S]
        out = out + (pooled if first.shortcut is None else first.shortcut(pooled))
    out = F.relu(out)
    for block in list(self.res5)[1:]:
        out = block(out)
    return self.predictor(out.mean(dim=(2, 3)))


def apply_proposed(model: FasterRCNN, changes: Sequence[str] = PROPOSED_CHANGES) -> FasterRCNN:
    """A copy of ``model`` with the proposed ``changes`` (names in ``PROPOSED_CHANGES``) patched in.

    Call it before ``prepare_for_inference`` / channels-last conversion or after:
    the patched forwards read whatever weights the modules hold.
    """
    unknown = set(changes) - set(PROPOSED_CHANGES)
    if unknown:
        raise ValueError(f"unknown proposed changes {sorted(unknown)}; expected some of {', '.join(PROPOSED_CHANGES)}")
    model = copy.deepcopy(model)
    for module in model.modules():
        if "fused_frozen_bn" in changes and isinstance(module, Conv2dNorm):
            module.forward = MethodType(_fused_conv_norm_forward, module)
        if "inplace" in changes and isinstance(module, BottleneckBlock):
            module.forward = MethodType(_inplace_bottleneck_forward, module)
        if "inplace" in changes and isinstance(module, BasicBlock):
            module.forward = MethodType(_inplace_basic_forward, module)
    if "prepool_conv1" in changes and prepool_applicable(model):
        heads = model.roi_heads
        heads._plain_predict = heads.predict
        heads.predict = MethodType(_prepool_predict, heads)
    return model
