"""``build_model(cfg)``: the one place where the config becomes constructor calls.

Every module of the detector takes typed keyword arguments and never sees the
config; this file reads ``cfg.model`` and ``cfg.input`` (schema:
``detectron_res/config.py``) and wires the pieces explicitly. Choices (backbone
name, pooler type) are dict lookups whose errors list the valid names.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

from torch import nn

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


def _build_resnet(cfg) -> Tuple[nn.Module, str, Dict[str, nn.Module], int]:
    """ResNet stem..res4 as the shared trunk, res5 (first block stride 2) per region."""
    b = cfg.model.backbone
    speed = dict(
        inplace_relu=bool(cfg.model.speed.inplace_relu), fuse_frozen_bn=bool(cfg.model.speed.fused_frozen_bn)
    )
    trunk = ResNet(
        int(b.depth),
        stride_in_1x1=bool(b.stride_in_1x1),
        norm=str(b.norm),
        freeze_at=int(b.freeze_at),
        shortcut=str(b.shortcut),
        residual=bool(b.residual),
        out_features=["res4"],
        base_channels=int(b.base_channels),
        **speed,
    )
    res5 = build_resnet_res5_head(
        int(b.depth),
        stride_in_1x1=bool(b.stride_in_1x1),
        norm=str(b.norm),
        base_channels=int(b.base_channels),
        shortcut=str(b.shortcut),
        residual=bool(b.residual),
        # freeze_at counts stem, res2, res3, res4, res5: 5 freezes the head too.
        freeze=int(b.freeze_at) >= 5,
        **speed,
    )
    return trunk, "res4", {"res5": res5}, int(res5.out_channels)


def _build_vgg16(cfg) -> Tuple[nn.Module, str, Dict[str, nn.Module], int]:
    """VGG-16 conv1_1..conv5_3 as the shared trunk, fc6/fc7 per region."""
    resolution = int(cfg.model.roi_heads.pooler_resolution)
    if resolution != _VGG16_POOLED_SIZE:
        raise ValueError(
            f"config key 'model.roi_heads.pooler_resolution' must be {_VGG16_POOLED_SIZE} for "
            f"model.backbone.name=vgg16 (fc6 takes a 7x7x512 RoI-pooled conv5_3 map), got {resolution}"
        )
    trunk = VGG16(out_features=["conv5_3"], freeze_at=int(cfg.model.backbone.freeze_at))
    head = VGG16RegionHead(in_channels=trunk.out_channels["conv5_3"], resolution=resolution)
    return trunk, "conv5_3", {"box_head": head}, int(head.out_channels)


# Config value of model.backbone.name -> builder of (trunk, feature name, region head, head width).
BACKBONES: Dict[str, Callable[..., Tuple[nn.Module, str, Dict[str, nn.Module], int]]] = {
    "resnet": _build_resnet,
    "vgg16": _build_vgg16,
}


def build_backbone_and_region_head(cfg) -> Tuple[nn.Module, str, Dict[str, nn.Module], int]:
    """``(trunk, feature name, {"res5" | "box_head": head}, per-region feature size D)``."""
    name = str(cfg.model.backbone.name)
    if name not in BACKBONES:
        raise ValueError(f"config key 'model.backbone.name' must be one of {', '.join(BACKBONES)}; got {name!r}")
    return BACKBONES[name](cfg)


def _check_thresholds(cfg) -> None:
    """Orderings the modules would reject, reported with the config keys involved."""
    r, h = cfg.model.rpn, cfg.model.roi_heads
    pairs = [
        ("model.rpn.negative_iou", r.negative_iou, "model.rpn.positive_iou", r.positive_iou),
        ("model.roi_heads.bg_iou_thresh_lo", h.bg_iou_thresh_lo, "model.roi_heads.bg_iou_thresh_hi", h.bg_iou_thresh_hi),
        ("model.roi_heads.bg_iou_thresh_hi", h.bg_iou_thresh_hi, "model.roi_heads.fg_iou_thresh", h.fg_iou_thresh),
    ]
    for low_key, low, high_key, high in pairs:
        if float(low) > float(high):
            raise ValueError(f"config key '{low_key}' ({low}) must be <= '{high_key}' ({high})")
    for key, value in (
        ("model.rpn.positive_fraction", r.positive_fraction),
        ("model.roi_heads.positive_fraction", h.positive_fraction),
    ):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"config key '{key}' must be in [0, 1], got {value}")


def build_model(cfg) -> FasterRCNN:
    """Build the Faster R-CNN C4 detector described by ``cfg`` (randomly initialized).

    ImageNet initialization is separate: ``model.load_imagenet_backbone(
    detectron_res.weights.load_imagenet_weights(cfg.model.weights, ...))``.
    The model is in training mode; for inference tools call
    ``model.prepare_for_inference()`` after loading a trained checkpoint.
    """
    m = cfg.model
    r = m.rpn
    h = m.roi_heads
    if str(h.pooler_type) not in POOLER_TYPES:
        raise ValueError(
            f"config key 'model.roi_heads.pooler_type' must be one of {', '.join(POOLER_TYPES)}; got {h.pooler_type!r}"
        )
    _check_thresholds(cfg)
    scales = [int(s) for s in cfg.test.scales]
    if any(s < 1 for s in scales) or len(set(scales)) != len(scales):
        raise ValueError(f"config key 'test.scales' must list distinct positive shorter sides (pixels); got {scales}")
    proposal_scale = int(cfg.test.proposal_scale)
    if proposal_scale and proposal_scale not in scales:
        raise ValueError(
            f"config key 'test.proposal_scale' must be 0 (the input scale, input.min_size_test) or one of "
            f"test.scales={scales}; got {proposal_scale}"
        )
    if float(cfg.test.scale_target_size) <= 0:
        raise ValueError(f"config key 'test.scale_target_size' must be > 0 (pixels); got {cfg.test.scale_target_size}")
    if len(cfg.input.min_size_train) == 0:
        raise ValueError("config key 'input.min_size_train' must list at least one size, got []")

    trunk, feature_name, region_head, head_dim = build_backbone_and_region_head(cfg)
    feature_channels = int(trunk.out_channels[feature_name])
    feature_stride = int(trunk.strides[feature_name])

    anchor_generator = AnchorGenerator(
        sizes=list(m.anchor.sizes),
        aspect_ratios=list(m.anchor.aspect_ratios),
        stride=feature_stride,
        # Not in every config schema version; the cell centre (py-faster-rcnn) by default.
        offset=float(cfg.model.anchor.offset),
        # py-faster-rcnn's rounded anchors in the paper configs, exact areas elsewhere
        style=str(m.anchor.style),
    )
    rpn = RegionProposalNetwork(
        head=RPNHead(
            in_channels=feature_channels,
            num_anchors=anchor_generator.num_anchors,
            head_channels=int(r.head_channels),
        ),
        anchor_generator=anchor_generator,
        box_coder=BoxCoder(weights=(1.0, 1.0, 1.0, 1.0)),
        matcher=Matcher(
            fg_iou_thresh=float(r.positive_iou),
            bg_iou_thresh_hi=float(r.negative_iou),
            bg_iou_thresh_lo=0.0,
            allow_low_quality_matches=True,
        ),
        sampler=BalancedSampler(
            batch_size_per_image=int(r.batch_size_per_image), positive_fraction=float(r.positive_fraction)
        ),
        pre_nms_topk_train=int(r.pre_nms_topk_train),
        post_nms_topk_train=int(r.post_nms_topk_train),
        pre_nms_topk_test=int(r.pre_nms_topk_test),
        post_nms_topk_test=int(r.post_nms_topk_test),
        nms_thresh=float(r.nms_thresh),
        min_size=float(r.min_size),
        boundary_threshold=int(r.boundary_threshold),
        smooth_l1_beta=float(r.smooth_l1_beta),
        loss_weight=float(r.loss_weight),
    )
    roi_heads = ROIHeads(
        pooler=ROIPooler(
            pooler_type=str(h.pooler_type),
            output_size=int(h.pooler_resolution),
            spatial_scale=1.0 / feature_stride,
            sampling_ratio=int(h.pooler_sampling_ratio),
            roi_align_by_matrix=bool(m.speed.roi_align_by_matrix),
        ),
        # Global context (Appendix B) concatenates the whole image's feature: 2 * D inputs.
        predictor=FastRCNNPredictor(
            in_channels=head_dim * (2 if bool(h.global_context) else 1), num_classes=int(h.num_classes)
        ),
        box_coder=BoxCoder(weights=tuple(float(w) for w in h.box_reg_weights)),
        matcher=Matcher(
            fg_iou_thresh=float(h.fg_iou_thresh),
            bg_iou_thresh_hi=float(h.bg_iou_thresh_hi),
            bg_iou_thresh_lo=float(h.bg_iou_thresh_lo),
            allow_low_quality_matches=False,
        ),
        sampler=BalancedSampler(
            batch_size_per_image=int(h.batch_size_per_image), positive_fraction=float(h.positive_fraction)
        ),
        num_classes=int(h.num_classes),
        smooth_l1_beta=float(h.smooth_l1_beta),
        score_thresh=float(h.score_thresh_test),
        nms_thresh=float(h.nms_thresh_test),
        detections_per_image=int(h.detections_per_image),
        res5_conv1_before_pool=bool(m.speed.res5_conv1_before_pool),
        res5_shortcut_before_pool=bool(m.speed.res5_shortcut_before_pool),
        global_context=bool(h.global_context),
        box_refinement=bool(h.box_refinement),
        box_voting_iou=float(h.box_voting_iou),
        scale_target_size=float(cfg.test.scale_target_size),
        **region_head,
    )
    preprocessor = Preprocessor(
        pixel_mean=list(m.pixel_mean),
        pixel_std=list(m.pixel_std),
        min_size_train=int(cfg.input.min_size_train[0]),
        max_size_train=int(cfg.input.max_size_train),
        min_size_test=int(cfg.input.min_size_test),
        max_size_test=int(cfg.input.max_size_test),
        size_divisibility=int(cfg.input.size_divisibility),
        num_classes=int(h.num_classes),
    )
    return FasterRCNN(
        preprocessor=preprocessor,
        backbone=trunk,
        backbone_feature=feature_name,
        rpn=rpn,
        roi_heads=roi_heads,
        input_format=str(m.input_format),
        pixel_mean=list(m.pixel_mean),
        pixel_std=list(m.pixel_std),
        stride_in_1x1=bool(m.backbone.stride_in_1x1) if str(m.backbone.name) == "resnet" else None,
        fold_frozen_bn=bool(m.fold_frozen_bn),
        channels_last=bool(m.speed.channels_last),
        test_scales=[int(s) for s in cfg.test.scales],
        test_hflip=bool(cfg.test.hflip),
        test_proposal_scale=int(cfg.test.proposal_scale),
    )
