"""``build_model(cfg)``: the one place where the config becomes constructor calls.

Every module of the detector takes typed keyword arguments and never sees the
config; this file reads ``cfg.model``, ``cfg.input`` and the test-time ``cfg.test``
settings and wires the pieces explicitly. It reads them as the schema's dataclasses
(``detectron_res/config.py``: :func:`~detectron_res.config.typed_config`), so every
value already has its declared type (``int``, ``float``, ``bool``, ``list``) and
needs no cast. Choices (backbone name, pooler type) are dict lookups whose errors
list the valid names.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple, Union

from omegaconf import DictConfig
from torch import nn

from ..config import Config, InputConfig, ModelConfig, TestConfig, typed_config
from .anchor_generator import AnchorGenerator
from .backbone import VGG16, ResNet, VGG16RegionHead, build_resnet_res5_head
from .box_coder import BoxCoder
from .faster_rcnn import FasterRCNN
from .poolers import POOLER_TYPES, ROIPooler
from .preprocess import Preprocessor
from .roi_heads import FastRCNNPredictor, ROIHeads
from .rpn import RegionProposalNetwork, RPNHead
from .sampling import BalancedSampler, Matcher

__all__ = ["build_model", "build_backbone_and_region_head", "BACKBONES"]

# VGG-16's fc6 takes the 7x7x512 map of the ImageNet classifier's pool5.
_VGG16_POOLED_SIZE = 7


def _build_resnet(model: ModelConfig) -> Tuple[nn.Module, str, Dict[str, nn.Module], int]:
    """ResNet stem..res4 as the shared trunk, res5 (first block stride 2) per region."""
    b = model.backbone
    layout = dict(
        stride_in_1x1=b.stride_in_1x1,
        norm=b.norm,
        shortcut=b.shortcut,
        residual=b.residual,
        base_channels=b.base_channels,
        inplace_relu=model.speed.inplace_relu,
        fuse_frozen_bn=model.speed.fused_frozen_bn,
    )
    trunk = ResNet(b.depth, freeze_at=b.freeze_at, out_features=["res4"], **layout)
    # freeze_at counts stem, res2, res3, res4, res5: 5 freezes the head too.
    res5 = build_resnet_res5_head(b.depth, freeze=b.freeze_at >= 5, **layout)
    return trunk, "res4", {"res5": res5}, res5.out_channels


def _build_vgg16(model: ModelConfig) -> Tuple[nn.Module, str, Dict[str, nn.Module], int]:
    """VGG-16 conv1_1..conv5_3 as the shared trunk, fc6/fc7 per region."""
    resolution = model.roi_heads.pooler_resolution
    if resolution != _VGG16_POOLED_SIZE:
        raise ValueError(
            f"config key 'model.roi_heads.pooler_resolution' must be {_VGG16_POOLED_SIZE} for "
            f"model.backbone.name=vgg16 (fc6 takes a 7x7x512 RoI-pooled conv5_3 map), got {resolution}"
        )
    trunk = VGG16(out_features=["conv5_3"], freeze_at=model.backbone.freeze_at)
    head = VGG16RegionHead(in_channels=trunk.out_channels["conv5_3"], resolution=resolution)
    return trunk, "conv5_3", {"box_head": head}, head.out_channels


# Config value of model.backbone.name -> builder of (trunk, feature name, region head, head width).
BACKBONES: Dict[str, Callable[[ModelConfig], Tuple[nn.Module, str, Dict[str, nn.Module], int]]] = {
    "resnet": _build_resnet,
    "vgg16": _build_vgg16,
}


def build_backbone_and_region_head(model: ModelConfig) -> Tuple[nn.Module, str, Dict[str, nn.Module], int]:
    """``(trunk, feature name, {"res5" | "box_head": head}, per-region feature size D)``.

    Args:
        model: the ``model`` section as its dataclass (``typed_config(cfg).model``).
    """
    name = model.backbone.name
    if name not in BACKBONES:
        raise ValueError(f"config key 'model.backbone.name' must be one of {', '.join(BACKBONES)}; got {name!r}")
    return BACKBONES[name](model)


def _check_settings(model: ModelConfig, inputs: InputConfig, test: TestConfig) -> None:
    """Choices and orderings the modules would reject, reported with the config keys involved."""
    r, h = model.rpn, model.roi_heads
    if h.pooler_type not in POOLER_TYPES:
        raise ValueError(
            f"config key 'model.roi_heads.pooler_type' must be one of {', '.join(POOLER_TYPES)}; got {h.pooler_type!r}"
        )
    pairs = [
        ("model.rpn.negative_iou", r.negative_iou, "model.rpn.positive_iou", r.positive_iou),
        ("model.roi_heads.bg_iou_thresh_lo", h.bg_iou_thresh_lo, "model.roi_heads.bg_iou_thresh_hi", h.bg_iou_thresh_hi),
        ("model.roi_heads.bg_iou_thresh_hi", h.bg_iou_thresh_hi, "model.roi_heads.fg_iou_thresh", h.fg_iou_thresh),
    ]
    for low_key, low, high_key, high in pairs:
        if low > high:
            raise ValueError(f"config key '{low_key}' ({low}) must be <= '{high_key}' ({high})")
    for key, value in (
        ("model.rpn.positive_fraction", r.positive_fraction),
        ("model.roi_heads.positive_fraction", h.positive_fraction),
    ):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"config key '{key}' must be in [0, 1], got {value}")
    scales = test.scales
    if any(s < 1 for s in scales) or len(set(scales)) != len(scales):
        raise ValueError(f"config key 'test.scales' must list distinct positive shorter sides (pixels); got {scales}")
    if test.proposal_scale and test.proposal_scale not in scales:
        raise ValueError(
            f"config key 'test.proposal_scale' must be 0 (the input scale, input.min_size_test) or one of "
            f"test.scales={scales}; got {test.proposal_scale}"
        )
    if test.scale_target_size <= 0:
        raise ValueError(f"config key 'test.scale_target_size' must be > 0 (pixels); got {test.scale_target_size}")
    if len(inputs.min_size_train) == 0:
        raise ValueError("config key 'input.min_size_train' must list at least one size, got []")


def build_model(cfg: Union[DictConfig, Config]) -> FasterRCNN:
    """Build the Faster R-CNN C4 detector described by ``cfg`` (randomly initialized).

    Args:
        cfg: a loaded config (``load_config``), or the ``Config`` dataclass itself.

    ImageNet initialization is separate: ``model.load_imagenet_backbone(
    detectron_res.weights.load_imagenet_weights(cfg.model.weights, ...))``.
    The model is in training mode; for inference tools call
    ``model.prepare_for_inference()`` after loading a trained checkpoint.
    """
    typed = typed_config(cfg)
    m, inputs, test = typed.model, typed.input, typed.test
    r, h = m.rpn, m.roi_heads
    _check_settings(m, inputs, test)

    trunk, feature_name, region_head, head_dim = build_backbone_and_region_head(m)
    feature_channels = trunk.out_channels[feature_name]
    feature_stride = trunk.strides[feature_name]

    anchor_generator = AnchorGenerator(
        sizes=m.anchor.sizes,
        aspect_ratios=m.anchor.aspect_ratios,
        stride=feature_stride,
        offset=m.anchor.offset,  # the cell centre (py-faster-rcnn) by default
        # py-faster-rcnn's rounded anchors in the paper configs, exact areas elsewhere
        style=m.anchor.style,
    )
    rpn = RegionProposalNetwork(
        head=RPNHead(
            in_channels=feature_channels,
            num_anchors=anchor_generator.num_anchors,
            head_channels=r.head_channels,
        ),
        anchor_generator=anchor_generator,
        box_coder=BoxCoder(weights=(1.0, 1.0, 1.0, 1.0)),
        matcher=Matcher(
            fg_iou_thresh=r.positive_iou,
            bg_iou_thresh_hi=r.negative_iou,
            bg_iou_thresh_lo=0.0,
            allow_low_quality_matches=True,
        ),
        sampler=BalancedSampler(batch_size_per_image=r.batch_size_per_image, positive_fraction=r.positive_fraction),
        pre_nms_topk_train=r.pre_nms_topk_train,
        post_nms_topk_train=r.post_nms_topk_train,
        pre_nms_topk_test=r.pre_nms_topk_test,
        post_nms_topk_test=r.post_nms_topk_test,
        nms_thresh=r.nms_thresh,
        min_size=r.min_size,
        boundary_threshold=r.boundary_threshold,
        smooth_l1_beta=r.smooth_l1_beta,
        loss_weight=r.loss_weight,
    )
    roi_heads = ROIHeads(
        pooler=ROIPooler(
            pooler_type=h.pooler_type,
            output_size=h.pooler_resolution,
            spatial_scale=1.0 / feature_stride,
            sampling_ratio=h.pooler_sampling_ratio,
            roi_align_by_matrix=m.speed.roi_align_by_matrix,
        ),
        # Global context (Appendix B) concatenates the whole image's feature: 2 * D inputs.
        predictor=FastRCNNPredictor(in_channels=head_dim * (2 if h.global_context else 1), num_classes=h.num_classes),
        box_coder=BoxCoder(weights=tuple(h.box_reg_weights)),
        matcher=Matcher(
            fg_iou_thresh=h.fg_iou_thresh,
            bg_iou_thresh_hi=h.bg_iou_thresh_hi,
            bg_iou_thresh_lo=h.bg_iou_thresh_lo,
            allow_low_quality_matches=False,
        ),
        sampler=BalancedSampler(batch_size_per_image=h.batch_size_per_image, positive_fraction=h.positive_fraction),
        num_classes=h.num_classes,
        smooth_l1_beta=h.smooth_l1_beta,
        score_thresh=h.score_thresh_test,
        nms_thresh=h.nms_thresh_test,
        detections_per_image=h.detections_per_image,
        res5_conv1_before_pool=m.speed.res5_conv1_before_pool,
        res5_shortcut_before_pool=m.speed.res5_shortcut_before_pool,
        global_context=h.global_context,
        box_refinement=h.box_refinement,
        box_voting_iou=h.box_voting_iou,
        scale_target_size=test.scale_target_size,
        **region_head,
    )
    preprocessor = Preprocessor(
        pixel_mean=m.pixel_mean,
        pixel_std=m.pixel_std,
        min_size_train=inputs.min_size_train[0],
        max_size_train=inputs.max_size_train,
        min_size_test=inputs.min_size_test,
        max_size_test=inputs.max_size_test,
        size_divisibility=inputs.size_divisibility,
        num_classes=h.num_classes,
    )
    return FasterRCNN(
        preprocessor=preprocessor,
        backbone=trunk,
        backbone_feature=feature_name,
        rpn=rpn,
        roi_heads=roi_heads,
        input_format=m.input_format,
        pixel_mean=list(m.pixel_mean),
        pixel_std=list(m.pixel_std),
        stride_in_1x1=m.backbone.stride_in_1x1 if m.backbone.name == "resnet" else None,
        fold_frozen_bn=m.fold_frozen_bn,
        channels_last=m.speed.channels_last,
        packed_conv_weights=m.speed.packed_conv_weights,
        test_scales=list(test.scales),
        test_hflip=test.hflip,
        test_proposal_scale=test.proposal_scale,
    )
