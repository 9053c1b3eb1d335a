"""The two detectors of the speed benchmark, made equal: ours and torchvision's C4.

The benchmark compares our Faster R-CNN C4 with torchvision's ``FasterRCNN``
assembled into the same architecture and loaded with the same weights:

* :class:`DetectorSpec` says what both detectors are (depth, scale, proposals);
* :func:`build_ours` builds ours through the project's own ``build_model(cfg)``
  and gives it random but non-trivial weights (:func:`randomize_weights`);
* :func:`build_torchvision_c4` assembles torchvision's detector from
  torchvision's ResNet: ``conv1..layer3`` as the shared trunk (stride 16),
  ``MultiScaleRoIAlign`` 14x14, ``layer4`` + average pool as the per-region head
  (ResNet paper, Appendix A), ``FastRCNNPredictor``;
* :func:`copy_weights_to_torchvision` copies every tensor by an explicit key
  table (the ResNet part is the library's own,
  :func:`detectron_res.weights.torchvision_resnet_key`) and fails on any key it
  cannot place;
* :data:`SPEED_OPTIONS` are our model's speed switches (config keys
  ``model.fold_frozen_bn`` and ``model.speed.*``): :func:`build_ours` takes the
  ones to switch on, :func:`with_speed_options` rebuilds a model with others,
  :func:`optimize_for_inference` returns a copy prepared for inference;
* the inputs both are timed on (:func:`make_images`, :func:`make_targets`) and
  :func:`match_detections`, which compares two detectors' outputs.

How they are timed is in ``timing.py``; what is timed, in ``inference.py``,
``training.py``, ``contention.py`` and ``sweeps.py``.

Settings made equal on both sides (torchvision's own defaults differ): input
size 600/1000, RPN pre/post-NMS top-n 6000/300 (test) and 12000/2000 (train),
proposal minimum size 16 px, RoI NMS 0.3, score threshold 0.05, 100 detections,
box weights (10, 10, 5, 5), 128 RoIs per image at 25% foreground, the same
anchors in the same order, pixel mean/std, FrozenBN everywhere with stem and
res2 (``conv1``/``layer1``) frozen, and ROIAlign with ``aligned=False`` and
adaptive sampling (``MultiScaleRoIAlign(['0'], 14, sampling_ratio=0)``). The
architecture is torchvision's ResNet "v1.5" (stride on the 3x3 conv,
``stride_in_1x1=False``), the only layout torchvision has.

Images are float ``[3, H, W]`` tensors in 0..255, RGB (torchvision weights'
order); both detectors normalize them themselves.
"""
from __future__ import annotations

import copy
import math
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign, box_iou
from torchvision.ops.misc import FrozenBatchNorm2d as TorchvisionFrozenBN

from detectron_res.config import load_config
from detectron_res.modeling.backbone.resnet import BasicBlock, BottleneckBlock
from detectron_res.modeling.build import build_model
from detectron_res.modeling.faster_rcnn import FasterRCNN
from detectron_res.weights import torchvision_resnet_key

__all__ = [
    "DetectorSpec",
    "SPEED_OPTIONS",
    "speed_overrides",
    "with_speed_options",
    "INFERENCE_ABLATION",
    "TRAINING_ABLATION",
    "ablation_models",
    "our_config_overrides",
    "build_ours",
    "randomize_weights",
    "build_torchvision_c4",
    "copy_weights_to_torchvision",
    "build_pair",
    "optimize_for_inference",
    "make_images",
    "make_targets",
    "match_detections",
]

# torchvision's ImageNet normalization on the 0..255 scale (its weights expect RGB).
TORCHVISION_PIXEL_MEAN = (123.675, 116.28, 103.53)
TORCHVISION_PIXEL_STD = (58.395, 57.12, 57.375)
_TV_RESNETS = {
    18: torchvision.models.resnet18,
    34: torchvision.models.resnet34,
    50: torchvision.models.resnet50,
    101: torchvision.models.resnet101,
    152: torchvision.models.resnet152,
}


@dataclass(frozen=True)
class DetectorSpec:
    """What both detectors of a comparison are.

    Attributes:
        depth: ResNet depth (50 and 101 in the benchmark; 18..152 work).
        num_classes: foreground classes ``K`` (80: COCO, Table 8).
        min_size, max_size: test (and train) resize of the shorter / longer side
            (Appendix A: 600 / 1000).
        num_proposals: RPN proposals kept after NMS at test time (Appendix A: 300).
        pre_nms_topk: RPN anchors kept before NMS at test time (6000).
        anchor_sizes: anchor sizes in pixels, ratios 0.5, 1, 2 (COCO: 64..512).
        pooler_type: ``ROIAlign`` (= torchvision's ``MultiScaleRoIAlign``).
        rpn_min_size: proposals narrower/lower than this many pixels are dropped.
        pre_nms_topk_train, post_nms_topk_train: RPN top-n before / after NMS in
            training (Faster R-CNN: 12000 / 2000).
        rois_per_image_train: RoIs sampled per image for the box head (128, 25%
            foreground).
    """

    depth: int = 50
    num_classes: int = 80
    min_size: int = 600
    max_size: int = 1000
    num_proposals: int = 300
    pre_nms_topk: int = 6000
    anchor_sizes: Tuple[int, ...] = (64, 128, 256, 512)
    pooler_type: str = "ROIAlign"
    rpn_min_size: float = 16.0
    pre_nms_topk_train: int = 12000
    post_nms_topk_train: int = 2000
    rois_per_image_train: int = 128

    def with_(self, **changes) -> "DetectorSpec":
        return replace(self, **changes)

    @property
    def name(self) -> str:
        return f"R-{self.depth}-C4"


# Our detector's speed switches, by short name -> config key. Each is exact (results
# change by float rounding only); benchmarks/OPTIMIZATIONS.md says what each saves.
SPEED_OPTIONS: Tuple[str, ...] = (
    "fold_frozen_bn",  # prepare_for_inference folds FrozenBN into the conv weights
    "channels_last",  # prepare_for_inference stores weights NHWC
    "packed_conv_weights",  # prepare_for_inference: CPU convs keep oneDNN-packed weights per input shape
    "fused_frozen_bn",  # unfolded FrozenBN scales the weight, not the output (training)
    "inplace_relu",  # in-place ReLU and residual addition
    "res5_conv1_before_pool",  # res5's first 1x1 conv on the map before RoIAlign
    "res5_shortcut_before_pool",  # and its projection shortcut
    "roi_align_by_matrix",  # CPU RoIAlign as one sparse matrix product (all cores; fast backward)
)
_SPEED_KEYS = {
    "fold_frozen_bn": "model.fold_frozen_bn",
    "channels_last": "model.speed.channels_last",
    "packed_conv_weights": "model.speed.packed_conv_weights",
    "fused_frozen_bn": "model.speed.fused_frozen_bn",
    "inplace_relu": "model.speed.inplace_relu",
    "res5_conv1_before_pool": "model.speed.res5_conv1_before_pool",
    "res5_shortcut_before_pool": "model.speed.res5_shortcut_before_pool",
    "roi_align_by_matrix": "model.speed.roi_align_by_matrix",
}


def speed_overrides(options: Sequence[str] = SPEED_OPTIONS) -> List[str]:
    """Config overrides that switch on the speed ``options`` (names of :data:`SPEED_OPTIONS`) and off the others."""
    unknown = sorted(set(options) - set(SPEED_OPTIONS))
    if unknown:
        raise ValueError(f"unknown speed options {unknown}; expected some of {', '.join(SPEED_OPTIONS)}")
    return [f"{_SPEED_KEYS[name]}={'true' if name in options else 'false'}" for name in SPEED_OPTIONS]


def our_config_overrides(spec: DetectorSpec, options: Sequence[str] = SPEED_OPTIONS) -> List[str]:
    """``section.key=value`` overrides that make the project's config describe ``spec``,
    with the speed ``options`` on and the others off."""

    def as_list(values) -> str:
        return "[" + ",".join(str(v) for v in values) + "]"

    return [
        "model.backbone.name=resnet",
        f"model.backbone.depth={spec.depth}",
        # torchvision's ResNet is "v1.5" (stride on the 3x3) with a padded, floored pool1.
        "model.backbone.stride_in_1x1=false",
        "model.backbone.norm=FrozenBN",
        "model.backbone.freeze_at=2",
        "model.input_format=RGB",
        f"model.pixel_mean={as_list(TORCHVISION_PIXEL_MEAN)}",
        f"model.pixel_std={as_list(TORCHVISION_PIXEL_STD)}",
        f"model.anchor.sizes={as_list(spec.anchor_sizes)}",
        "model.anchor.aspect_ratios=[0.5,1.0,2.0]",
        f"model.rpn.pre_nms_topk_test={spec.pre_nms_topk}",
        f"model.rpn.post_nms_topk_test={spec.num_proposals}",
        f"model.rpn.pre_nms_topk_train={spec.pre_nms_topk_train}",
        f"model.rpn.post_nms_topk_train={spec.post_nms_topk_train}",
        f"model.rpn.min_size={spec.rpn_min_size}",
        # torchvision keeps cross-boundary anchors in training; so must we for equal work.
        "model.rpn.boundary_threshold=-1",
        f"model.roi_heads.num_classes={spec.num_classes}",
        f"model.roi_heads.pooler_type={spec.pooler_type}",
        "model.roi_heads.pooler_resolution=14",
        "model.roi_heads.pooler_sampling_ratio=0",
        f"model.roi_heads.batch_size_per_image={spec.rois_per_image_train}",
        "model.roi_heads.nms_thresh_test=0.3",
        "model.roi_heads.score_thresh_test=0.05",
        "model.roi_heads.detections_per_image=100",
        f"input.min_size_train=[{spec.min_size}]",
        f"input.max_size_train={spec.max_size}",
        f"input.min_size_test={spec.min_size}",
        f"input.max_size_test={spec.max_size}",
        "input.size_divisibility=32",
    ] + speed_overrides(options)


@torch.no_grad()
def randomize_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights that make a detector behave like a trained one, shape-wise.

    * FrozenBN statistics and affine terms are random (mean ~ N(0, 0.1^2), var in
      [0.5, 1.5], scale in [0.5, 1.5]), so that folding them is a real change;
      the last norm of every residual branch gets a small scale (0.1..0.3) so
      that activations do not grow through 23 blocks of ResNet-101.
    * The RPN objectness spreads over many anchors and the class scores are
      sharp enough for some to pass the 0.05 threshold (an untrained
      predictor gives ~1/(K+1) to every class and no detections at all).

    Deterministic for a given ``seed``; changes ``model`` in place and returns it.
    """
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            # He initialization (fan_out), as build_model does, but from our generator.
            fan_out = module.weight.shape[0] * module.weight.shape[2] * module.weight.shape[3]
            module.weight.copy_(torch.randn(module.weight.shape, generator=g) * math.sqrt(2.0 / fan_out))
        if isinstance(module, TorchvisionFrozenBN):  # ours subclasses torchvision's
            c = module.weight.numel()
            module.weight.copy_(torch.rand(c, generator=g) + 0.5)
            module.bias.copy_(torch.randn(c, generator=g) * 0.1)
            module.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            module.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    for module in model.modules():
        last = module.conv3 if isinstance(module, BottleneckBlock) else module.conv2 if isinstance(module, BasicBlock) else None
        if last is not None and isinstance(last.norm, TorchvisionFrozenBN) and module.residual:
            c = last.norm.weight.numel()
            last.norm.weight.copy_(torch.rand(c, generator=g) * 0.2 + 0.1)
    head = getattr(getattr(model, "rpn", None), "head", None)
    if head is not None:
        for layer in (head.conv, head.objectness_logits, head.anchor_deltas):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * 0.01)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g) * 0.1)
    predictor = getattr(getattr(model, "roi_heads", None), "predictor", None)
    if predictor is not None:
        d = predictor.cls_score.weight.shape[1]
        predictor.cls_score.weight.copy_(torch.randn(predictor.cls_score.weight.shape, generator=g) * (3.0 / math.sqrt(d)))
        predictor.cls_score.bias.copy_(torch.randn(predictor.cls_score.bias.shape, generator=g))
        predictor.bbox_pred.weight.copy_(torch.randn(predictor.bbox_pred.weight.shape, generator=g) * (0.5 / math.sqrt(d)))
        predictor.bbox_pred.bias.zero_()
    return model


def build_ours(spec: DetectorSpec, seed: int = 0, options: Sequence[str] = SPEED_OPTIONS) -> FasterRCNN:
    """Our detector for ``spec`` from the project's config and ``build_model``, random weights, eval mode.

    ``options``: the speed switches to turn on (default all, the config's defaults).
    """
    cfg = load_config(None, our_config_overrides(spec, options))
    model = build_model(cfg)
    randomize_weights(model, seed)
    return model.eval()


def with_speed_options(model: FasterRCNN, spec: DetectorSpec, options: Sequence[str]) -> FasterRCNN:
    """``model``'s weights in a detector built for ``spec`` with the speed ``options`` on (the others off).

    The options are constructor settings, so the detector is rebuilt from its
    config; ``model`` is left as it is. Returned in ``model``'s mode, on its device.
    """
    other = build_model(load_config(None, our_config_overrides(spec, options)))
    other.load_state_dict(model.state_dict())
    return other.to(model.device).train(model.training)


# Options left out one at a time in the ablations. fused_frozen_bn does nothing in
# inference once FrozenBN is folded, fold_frozen_bn, channels_last and
# packed_conv_weights nothing in training (prepare_for_inference applies them).
INFERENCE_ABLATION = (
    "fold_frozen_bn", "channels_last", "packed_conv_weights", "inplace_relu", "res5_conv1_before_pool", "res5_shortcut_before_pool",
    "roi_align_by_matrix",
)
TRAINING_ABLATION = (
    "fused_frozen_bn", "inplace_relu", "res5_conv1_before_pool", "res5_shortcut_before_pool", "roi_align_by_matrix",
)


def ablation_models(ours: nn.Module, spec: DetectorSpec, left_out: Sequence[str]) -> Dict[str, nn.Module]:
    """``ours_plain`` (every speed option off) and ``ours-<option>`` (ours without it), with ours' weights."""
    models = {"ours_plain": with_speed_options(ours, spec, ())}
    for option in left_out:
        models[f"ours-{option}"] = with_speed_options(ours, spec, [o for o in SPEED_OPTIONS if o != option])
    return models


class _TorchvisionTrunk(nn.Sequential):
    """torchvision ResNet ``conv1, bn1, relu, maxpool, layer1..layer3``: the stride-16 C4 trunk."""

    def __init__(self, resnet: nn.Module, out_channels: int):
        super().__init__(
            OrderedDict(
                conv1=resnet.conv1,
                bn1=resnet.bn1,
                relu=resnet.relu,
                maxpool=resnet.maxpool,
                layer1=resnet.layer1,
                layer2=resnet.layer2,
                layer3=resnet.layer3,
            )
        )
        # torchvision's FasterRCNN reads the trunk's width from this attribute.
        self.out_channels = out_channels


class _TorchvisionRes5Head(nn.Sequential):
    """``layer4`` (conv5_x, first block stride 2) + global average pool: ``[R, C4, 14, 14] -> [R, C5]``."""

    def __init__(self, layer4: nn.Module):
        super().__init__(OrderedDict(layer4=layer4, pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(1)))


def build_torchvision_c4(spec: DetectorSpec, ours: Optional[FasterRCNN] = None) -> TorchvisionFasterRCNN:
    """torchvision's ``FasterRCNN`` assembled into the C4 architecture of ``spec``.

    Args:
        spec: the detector.
        ours: if given, its anchors are used (same boxes, same order) so that the
            RPN weights of both mean the same thing; pass it whenever weights
            will be copied (see :func:`build_pair`).
    Returns:
        the model in eval mode with torchvision's random initialization.
    """
    if spec.depth not in _TV_RESNETS:
        raise ValueError(f"DetectorSpec.depth must be one of {sorted(_TV_RESNETS)}, got {spec.depth}")
    resnet = _TV_RESNETS[spec.depth](weights=None, norm_layer=TorchvisionFrozenBN)
    c4 = resnet.layer3[-1].conv3.out_channels if spec.depth >= 50 else resnet.layer3[-1].conv2.out_channels
    c5 = resnet.fc.in_features
    trunk = _TorchvisionTrunk(resnet, c4)
    # Our freeze_at=2: stem and res2 get no gradients (all BN is frozen anyway).
    for module in (trunk.conv1, trunk.layer1):
        for p in module.parameters():
            p.requires_grad_(False)

    anchor_generator = TorchvisionAnchorGenerator(sizes=(tuple(spec.anchor_sizes),), aspect_ratios=((0.5, 1.0, 2.0),))
    if ours is not None:
        # torchvision orders a location's anchors ratio-major, rounds them to whole
        # pixels and centres them on the cell's top-left corner; ours are
        # size-major, exact and centred at (offset * stride). Giving torchvision
        # our cell anchors shifted by that offset makes every anchor identical
        # (its grid adds x * stride, y * stride to them).
        generator = ours.rpn.anchor_generator
        shift = generator.offset * generator.stride
        anchor_generator.cell_anchors = [generator.cell_anchors.detach().cpu().clone() + shift]

    model = TorchvisionFasterRCNN(
        backbone=trunk,
        num_classes=None,
        min_size=spec.min_size,
        max_size=spec.max_size,
        image_mean=list(TORCHVISION_PIXEL_MEAN),
        image_std=list(TORCHVISION_PIXEL_STD),
        rpn_anchor_generator=anchor_generator,
        rpn_pre_nms_top_n_train=spec.pre_nms_topk_train,
        rpn_post_nms_top_n_train=spec.post_nms_topk_train,
        rpn_pre_nms_top_n_test=spec.pre_nms_topk,
        rpn_post_nms_top_n_test=spec.num_proposals,
        rpn_nms_thresh=0.7,
        rpn_fg_iou_thresh=0.7,
        rpn_bg_iou_thresh=0.3,
        rpn_batch_size_per_image=256,
        rpn_positive_fraction=0.5,
        box_roi_pool=MultiScaleRoIAlign(featmap_names=["0"], output_size=14, sampling_ratio=0),
        box_head=_TorchvisionRes5Head(resnet.layer4),
        box_predictor=FastRCNNPredictor(c5, spec.num_classes + 1),
        box_score_thresh=0.05,
        box_nms_thresh=0.3,
        box_detections_per_img=100,
        box_fg_iou_thresh=0.5,
        box_bg_iou_thresh=0.5,
        box_batch_size_per_image=spec.rois_per_image_train,
        box_positive_fraction=0.25,
        bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
    )
    # torchvision's RPN has no setting for it: a fixed 1e-3 px minimum proposal size.
    model.rpn.min_size = float(spec.rpn_min_size)
    return model.eval()


def _torchvision_key(our_key: str) -> str:
    """Our parameter / buffer name -> torchvision's (see the module doc for the layout)."""
    # The trunk and res5 are ResNet layers under the library's canonical names:
    # backbone.res3.1.conv2.weight -> backbone.layer2.1.conv2.weight, and res5 is
    # torchvision's layer4 inside its box head.
    if our_key.startswith(("backbone.stem.", "backbone.res")):
        return "backbone." + torchvision_resnet_key(our_key[len("backbone."):])
    if our_key.startswith("roi_heads.res5."):
        return "roi_heads.box_head." + torchvision_resnet_key(our_key[len("roi_heads."):])
    rpn_head = {
        "rpn.head.conv": "rpn.head.conv.0.0",
        "rpn.head.objectness_logits": "rpn.head.cls_logits",
        "rpn.head.anchor_deltas": "rpn.head.bbox_pred",
        "roi_heads.predictor.cls_score": "roi_heads.box_predictor.cls_score",
        "roi_heads.predictor.bbox_pred": "roi_heads.box_predictor.bbox_pred",
    }
    module, _, leaf = our_key.rpartition(".")
    if module in rpn_head:
        return f"{rpn_head[module]}.{leaf}"
    raise KeyError(f"no torchvision name for our tensor {our_key!r}")


@torch.no_grad()
def copy_weights_to_torchvision(ours: FasterRCNN, tv: TorchvisionFasterRCNN) -> Dict[str, str]:
    """Copy every parameter and buffer of ``ours`` into ``tv``; returns the key table used.

    Our predictor has ``K * 4`` class-specific deltas (none for background);
    torchvision's has ``(K + 1) * 4`` with the background's first. Ours go to
    rows ``4:``; the background rows are zeroed (torchvision drops background
    boxes before anything uses them).

    Raises:
        KeyError: a tensor of either model has no counterpart in the other.
    """
    ours_state = {k: v for k, v in ours.state_dict().items() if not k.endswith("num_batches_tracked")}
    tv_state = tv.state_dict()
    table: Dict[str, str] = {}
    for key, value in ours_state.items():
        tv_key = _torchvision_key(key)
        if tv_key not in tv_state:
            raise KeyError(f"our tensor {key!r} maps to {tv_key!r}, which torchvision's model does not have")
        target = tv_state[tv_key]
        if tv_key.startswith("roi_heads.box_predictor.bbox_pred."):
            target.zero_()
            target[4:].copy_(value)
        else:
            if target.shape != value.shape:
                raise KeyError(f"{key!r} {list(value.shape)} vs torchvision {tv_key!r} {list(target.shape)}")
            target.copy_(value)
        table[key] = tv_key
    missing = sorted(set(tv_state) - set(table.values()) - {k for k in tv_state if k.endswith("num_batches_tracked")})
    if missing:
        raise KeyError(f"torchvision tensors not set from ours: {missing[:5]} ... ({len(missing)} in all)")
    return table


def build_pair(spec: DetectorSpec, seed: int = 0) -> Tuple[FasterRCNN, TorchvisionFasterRCNN]:
    """Ours (random weights, see :func:`randomize_weights`) and torchvision's with the same weights; eval mode."""
    ours = build_ours(spec, seed)
    tv = build_torchvision_c4(spec, ours)
    copy_weights_to_torchvision(ours, tv)
    return ours, tv


def optimize_for_inference(model: FasterRCNN, precision: str = "fp32") -> FasterRCNN:
    """A copy of ``model`` after ``prepare_for_inference(precision=...)``: what inference
    tools (``Predictor``, evaluation) run in that precision (``"bf16"``: weights stored
    in bf16 once). Which of FrozenBN folding and channels-last weights it applies is
    the model's config (``model.fold_frozen_bn``, ``model.speed.channels_last``)."""
    return copy.deepcopy(model).prepare_for_inference(precision=precision)


# ----------------------------------------------------------------------------- inputs
def make_images(num_images: int, height: int, width: int, *, seed: int = 0, device="cpu") -> List[Tensor]:
    """Deterministic float RGB images in 0..255 with smooth regions and sharp rectangles.

    Random weights respond to any input; texture and edges make the RPN's
    objectness vary across the image as it would on a photograph.
    """
    g = torch.Generator().manual_seed(seed)
    images = []
    for _ in range(num_images):
        coarse = torch.rand(1, 3, max(height // 32, 2), max(width // 32, 2), generator=g)
        image = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0]
        for _ in range(6):
            y1, x1 = int(torch.randint(0, height - 8, (1,), generator=g)), int(torch.randint(0, width - 8, (1,), generator=g))
            y2 = min(height, y1 + int(torch.randint(8, max(9, height // 2), (1,), generator=g)))
            x2 = min(width, x1 + int(torch.randint(8, max(9, width // 2), (1,), generator=g)))
            image[:, y1:y2, x1:x2] = torch.rand(3, 1, 1, generator=g)
        images.append((image * 255.0).to(device))
    return images


def make_targets(images: Sequence[Tensor], num_classes: int, *, boxes_per_image: int = 5, seed: int = 0) -> List[Dict[str, Tensor]]:
    """Random ground truth: ``boxes_per_image`` boxes of 32..half the image size per image."""
    g = torch.Generator().manual_seed(seed)
    targets = []
    for image in images:
        h, w = image.shape[-2:]
        wh = torch.rand(boxes_per_image, 2, generator=g) * torch.tensor([w / 2 - 32, h / 2 - 32]) + 32
        xy = torch.rand(boxes_per_image, 2, generator=g) * (torch.tensor([w, h]) - wh)
        boxes = torch.cat((xy, xy + wh), dim=1).to(image.device)
        labels = torch.randint(1, num_classes + 1, (boxes_per_image,), generator=g).to(image.device)
        targets.append({"boxes": boxes, "labels": labels})
    return targets


# ------------------------------------------------------------------------ comparison
@torch.no_grad()
def match_detections(
    a: Sequence[Dict[str, Tensor]], b: Sequence[Dict[str, Tensor]], *, iou: float = 0.99
) -> Dict[str, float]:
    """How far two detectors' outputs on the same images agree.

    A detection of ``a`` is matched by one of ``b`` in the same image with the
    same label and box IoU >= ``iou`` (greedy, by decreasing score of ``a``).

    Returns:
        ``num_a``, ``num_b``, ``matched`` (count), ``agreement`` (matched /
        max(num_a, num_b), 1.0 when both are empty), ``max_score_diff`` and
        ``max_box_diff`` (pixels) over matched pairs.
    """
    num_a = num_b = matched = 0
    max_score_diff = max_box_diff = 0.0
    for da, db in zip(a, b):
        boxes_a, boxes_b = da["boxes"].float().cpu(), db["boxes"].float().cpu()
        num_a += len(boxes_a)
        num_b += len(boxes_b)
        if len(boxes_a) == 0 or len(boxes_b) == 0:
            continue
        ious = box_iou(boxes_a, boxes_b)
        same_label = da["labels"].cpu()[:, None] == db["labels"].cpu()[None, :]
        ious = torch.where(same_label, ious, torch.zeros_like(ious))
        taken = torch.zeros(len(boxes_b), dtype=torch.bool)
        for i in torch.argsort(da["scores"].cpu(), descending=True).tolist():
            candidates = torch.where(taken, torch.zeros_like(ious[i]), ious[i])
            j = int(torch.argmax(candidates))
            if float(candidates[j]) >= iou:
                taken[j] = True
                matched += 1
                max_score_diff = max(max_score_diff, abs(float(da["scores"][i]) - float(db["scores"][j])))
                max_box_diff = max(max_box_diff, float((boxes_a[i] - boxes_b[j]).abs().max()))
    denominator = max(num_a, num_b)
    return {
        "num_a": num_a,
        "num_b": num_b,
        "matched": matched,
        "agreement": 1.0 if denominator == 0 else matched / denominator,
        "max_score_diff": max_score_diff,
        "max_box_diff": max_box_diff,
    }
