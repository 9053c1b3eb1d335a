"""The Fast R-CNN stage of the C4 detector: RoI pooling, per-region head, predictor.

ResNet paper, Appendix A: "we RoI-pool ... before conv5_1. On this RoI-pooled
feature, all layers of conv5_x and up are adopted for each region, playing the
roles of VGG-16's fc layers. The final classification layer is replaced by two
sibling layers (classification and box regression)." For VGG-16 the per-region
head is fc6/fc7 on a 7x7 RoI-pooled conv5_3 map, as in Faster R-CNN.

Shape shorthand:
    N: images          R: RoIs of the whole batch       K: foreground classes
    C: conv4 channels  S: pooler resolution             D: per-region feature size
    L: pyramid levels (multi-scale testing)

Appendix B's additions (Table 9) live here too: global context (the whole image as
one more RoI, its feature concatenated to every region's: the predictor takes
``2 * D``), box refinement (each RoI's regressed box pooled again, both
predictions merged by NMS and box voting) and the maxout of two pyramid levels
(``predict`` given several :class:`~.test_time.FeatureLevel`).

Labels are 1..K for objects and 0 for background; the predictor gives ``K + 1``
class scores (column 0 = background) and class-specific deltas ``[R, K * 4]``
(columns ``4 * (c - 1) .. 4 * c - 1`` for class ``c``; none for background).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou

from ..structures import clip_boxes, nonempty_mask, sizes_tensor
from .backbone.norm import Conv2dNorm
from .backbone.resnet import BottleneckBlock
from .box_coder import BoxCoder
from .poolers import ROIPooler, boxes_to_rois
from .rpn import keep_topk_per_image
from .sampling import BalancedSampler, Matcher
from .test_time import FeatureLevel, box_voting, select_scale_pair

__all__ = ["FastRCNNPredictor", "ROIHeads"]


class FastRCNNPredictor(nn.Module):
    """The two sibling layers: ``K + 1`` class scores and ``K * 4`` class-specific deltas."""

    def __init__(self, *, in_channels: int, num_classes: int):
        """
        Args:
            in_channels: ``D`` (2048 after res5 + global average pooling, 4096 after fc7).
            num_classes: ``K`` foreground classes.
        """
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"model.roi_heads.num_classes must be >= 1, got {num_classes}")
        self.cls_score = nn.Linear(in_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)
        # py-faster-rcnn's initialization: Gaussian std 0.01 (scores), 0.001 (deltas).
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """``[R, D]`` -> class logits ``[R, K + 1]``, deltas ``[R, K * 4]``."""
        return self.cls_score(x), self.bbox_pred(x)


def spatial_mean(x: Tensor) -> Tensor:
    """Global average pool ``[R, C, H, W] -> [R, C]``.

    float32: ``x.mean(dim=(2, 3))``. bf16 / fp16 (autocast inference and training):
    the sum over the ``H * W`` positions as a matrix product with a row of ones (exact
    weights, float32 accumulation in oneDNN), divided by ``H * W``. torch's CPU
    reductions of bf16 convert the whole input to float32 first: for res5's output at
    300 RoIs ([300, 2048, 7, 7]) ``mean`` took 80 ms on one core in bf16 against 14 ms
    in float32, the product 10 ms. Channels-last input (res5's) is ``[R, H, W, C]`` in
    memory, so the reshape below is a view.
    """
    if x.dtype == torch.float32 or x.dtype == torch.float64:
        return x.mean(dim=(2, 3))
    num, channels, height, width = x.shape
    positions = x.permute(0, 2, 3, 1).reshape(num, height * width, channels)  # [R, HW, C]
    ones = x.new_ones((1, height * width))
    return torch.matmul(ones, positions).squeeze(1) / (height * width)  # [R, 1, C] -> [R, C]


class ROIHeads(nn.Module):
    """Sampling, pooling, the per-region head, losses and post-processing.

    Exactly one per-region head is given: ``res5`` (ResNet conv5_x, whose first
    block has stride 2, followed here by global average pooling), stored as
    ``roi_heads.res5``; or ``box_head`` (VGG-16 fc6/fc7, flattening the pooled map
    itself), stored as ``roi_heads.box_head``. Either runs once over all RoIs of
    the batch.

    With ``res5_conv1_before_pool`` / ``res5_shortcut_before_pool`` the first res5
    block's 1x1 convolution / projection shortcut runs on the feature map before
    RoIAlign instead of on every pooled RoI, wherever that gives the same numbers
    (see :meth:`pool_and_res5`).
    """

    def __init__(
        self,
        *,
        pooler: ROIPooler,
        predictor: FastRCNNPredictor,
        box_coder: BoxCoder,
        matcher: Matcher,
        sampler: BalancedSampler,
        num_classes: int,
        smooth_l1_beta: float,
        score_thresh: float,
        nms_thresh: float,
        detections_per_image: int,
        res5: Optional[nn.Module] = None,
        box_head: Optional[nn.Module] = None,
        append_gt_to_proposals: bool = True,
        res5_conv1_before_pool: bool = True,
        res5_shortcut_before_pool: bool = True,
        global_context: bool = False,
        box_refinement: bool = False,
        box_voting_iou: float = 0.5,
        scale_target_size: float = 224.0,
    ):
        """
        Args:
            pooler: RoI pooling of conv4 features.
            predictor: class scores and deltas from the per-region features.
            box_coder: delta parametrization (weights 10, 10, 5, 5).
            matcher: proposal labelling (foreground IoU >= 0.5, background in [lo, hi)).
            sampler: RoIs per image and foreground fraction (128, 0.25).
            num_classes: ``K``.
            smooth_l1_beta: smooth-L1 transition of the box loss (1.0 = py-faster-rcnn sigma 1).
            score_thresh: test: keep class scores strictly above this (0.05).
            nms_thresh: test: per-class NMS IoU threshold (paper 0.3).
            detections_per_image: test: keep the top this many over all classes (100).
            res5, box_head: the per-region head (exactly one).
            append_gt_to_proposals: train on the ground-truth boxes as extra
                proposals (Faster R-CNN does: it guarantees foreground RoIs early on).
            res5_conv1_before_pool, res5_shortcut_before_pool: run res5's first 1x1
                conv / its projection shortcut before pooling where exact
                (``model.speed.res5_conv1_before_pool``, ``model.speed.res5_shortcut_before_pool``).
            global_context: concatenate the whole image's pooled feature to each
                region's (train and test; the predictor takes ``2 * D`` inputs;
                ``model.roi_heads.global_context``).
            box_refinement: at test time, pool each RoI's regressed box again and merge
                both predictions by NMS and box voting (``model.roi_heads.box_refinement``).
            box_voting_iou: a candidate votes for a kept box of its class when their
                IoU is at least this (Appendix B: 0.5; ``model.roi_heads.box_voting_iou``).
            scale_target_size: multi-scale testing: RoIs are pooled from the two
                pyramid levels where their size brackets this (``test.scale_target_size``).
        """
        super().__init__()
        if (res5 is None) == (box_head is None):
            raise ValueError("ROIHeads needs exactly one per-region head: res5 (ResNet) or box_head (VGG-16)")
        if predictor.bbox_pred.out_features != num_classes * 4:
            raise ValueError(
                f"predictor predicts {predictor.bbox_pred.out_features // 4} classes, expected num_classes={num_classes}"
            )
        if detections_per_image < 1:
            raise ValueError(f"model.roi_heads.detections_per_image must be >= 1, got {detections_per_image}")
        self.pooler = pooler
        if res5 is not None:
            self.res5 = res5
        else:
            self.box_head = box_head
        self.predictor = predictor
        self.box_coder = box_coder
        self.matcher = matcher
        self.sampler = sampler
        self.num_classes = int(num_classes)
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.score_thresh = float(score_thresh)
        self.nms_thresh = float(nms_thresh)
        self.detections_per_image = int(detections_per_image)
        self.append_gt_to_proposals = bool(append_gt_to_proposals)
        self.res5_conv1_before_pool = bool(res5_conv1_before_pool)
        self.res5_shortcut_before_pool = bool(res5_shortcut_before_pool)
        self.global_context = bool(global_context)
        self.box_refinement = bool(box_refinement)
        if not 0.0 < box_voting_iou <= 1.0:
            raise ValueError(f"model.roi_heads.box_voting_iou must be in (0, 1], got {box_voting_iou}")
        self.box_voting_iou = float(box_voting_iou)
        self.scale_target_size = float(scale_target_size)
        if scale_target_size <= 0:
            raise ValueError(f"test.scale_target_size must be > 0 (pixels), got {scale_target_size}")

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        features: Tensor,
        proposals: List[Tensor],
        image_sizes: Sequence[Tuple[int, int]],
        gt_boxes: Optional[Sequence[Tensor]] = None,
        gt_labels: Optional[Sequence[Tensor]] = None,
    ) -> Tuple[List[Dict[str, Tensor]], Dict[str, Tensor]]:
        """
        Args:
            features: ``[N, C, Hf, Wf]`` conv4 features.
            proposals: ``N`` tensors ``[R_i, 4]`` in input pixels (detached).
            image_sizes: ``N`` pairs ``(h, w)``, valid region of each image.
            gt_boxes, gt_labels: in training, ``N`` tensors ``[G, 4]`` (input
                pixels) and ``[G]`` int64 in 1..K.
        Returns:
            detections: in evaluation, ``N`` dicts with ``boxes`` ``[M, 4]`` (input
                pixels, clipped), ``scores`` ``[M]``, ``labels`` ``[M]`` int64 1..K,
                by decreasing score; empty list in training.
            losses: ``{"loss_cls", "loss_box_reg"}`` in training; empty otherwise.
        """
        if self.training:
            if gt_boxes is None or gt_labels is None:
                raise ValueError("ROIHeads in training mode needs gt_boxes and gt_labels (one tensor per image)")
            proposals, class_labels, regression_targets = self.label_and_sample(proposals, gt_boxes, gt_labels)
            pred_logits, pred_deltas = self.predict(features, proposals, image_sizes)
            return [], self.losses(pred_logits, pred_deltas, class_labels, regression_targets)
        scores, boxes, roi_image = self.candidates([FeatureLevel(features)], proposals, image_sizes)
        # Box refinement doubles the candidates: merged by NMS and box voting.
        return self.select(scores, boxes, roi_image, len(proposals), vote=self.box_refinement), {}

    def region_features(self, features: Tensor, rois: Tensor) -> Tensor:
        """The per-region head on RoIs ``[R, 5]`` of a ``[N, C, Hf, Wf]`` map -> ``[R, D]``."""
        if hasattr(self, "res5"):
            # [R, C5, S/2, S/2] -> global average pool -> [R, C5]
            return spatial_mean(self.pool_and_res5(features, rois))
        return self.box_head(self.pooler(features, rois))  # [R, C, S, S] -> [R, 4096]

    def predict(
        self,
        features: Tensor | Sequence[FeatureLevel],
        proposals: List[Tensor],
        image_sizes: Optional[Sequence[Tuple[int, int]]] = None,
    ) -> Tuple[Tensor, Tensor]:
        """Pool every RoI of the batch, run the per-region head once, predict.

        Args:
            features: ``[N, C, Hf, Wf]`` conv4 features, or the levels of an image
                pyramid (multi-scale testing: each RoI is pooled from two adjacent
                levels, :func:`~.test_time.select_scale_pair`, and the two head
                outputs are merged by element-wise max, Appendix B's maxout).
            proposals: ``N`` tensors ``[R_i, 4]`` in base input pixels.
            image_sizes: ``N`` valid ``(h, w)`` of the base input; needed with global
                context (the whole-image RoI).
        Returns:
            class logits ``[R, K + 1]`` and deltas ``[R, K * 4]``, RoIs in the order
            of ``torch.cat(proposals)``. With global context each region's ``[D]``
            feature is followed by its image's whole-image feature (``[2D]`` in all).
        """
        levels = [FeatureLevel(features)] if isinstance(features, Tensor) else list(features)
        rois = boxes_to_rois(proposals)  # [R, 5]
        if not self.global_context:
            return self.predictor(self._pooled_features(levels, rois))  # [R, D] -> logits, deltas
        if image_sizes is None or len(image_sizes) != len(proposals):
            raise ValueError(
                "ROIHeads.predict with global_context needs image_sizes, one (h, w) per image: the whole-image RoI"
            )
        # One more RoI per image, its valid region [N, 5], in the same pass as the regions
        # (a head with batch statistics, BN in training, sees all of them together).
        num_rois = rois.shape[0]
        sizes = torch.tensor([[0.0, 0.0, float(w), float(h)] for h, w in image_sizes], dtype=rois.dtype)
        whole = torch.cat((torch.arange(len(image_sizes), dtype=rois.dtype)[:, None], sizes), dim=1).to(rois.device)
        pooled = self._pooled_features(levels, torch.cat((rois, whole)))  # [R + N, D]
        region_features, context = pooled[:num_rois], pooled[num_rois:]
        # [R, D] ++ [R, D] (each RoI's image's context) -> [R, 2D]
        return self.predictor(torch.cat((region_features, context[rois[:, 0].long()]), dim=1))

    def _pooled_features(self, levels: Sequence[FeatureLevel], rois: Tensor) -> Tensor:
        """``[R, 5]`` RoIs (base input pixels) -> ``[R, D]``: one level, or the maxout of two."""
        if len(levels) == 1 and levels[0].scale_xy is None:
            return self.region_features(levels[0].features, rois)
        image_idx = rois[:, 0].long()
        scales = torch.stack([lvl.scale_xy for lvl in levels], dim=1)  # [N, L, 2]
        lower, upper = select_scale_pair(rois[:, 1:], image_idx, scales.prod(dim=2).sqrt(), self.scale_target_size)
        merged: Optional[Tensor] = None
        for level, lvl in enumerate(levels):
            # RoIs pooled from this level (as the lower or the upper of their pair)
            used = torch.nonzero((lower == level) | (upper == level)).squeeze(1)
            if used.numel() == 0:
                continue
            sxy = lvl.scale_xy[image_idx[used]]  # [U, 2]
            level_rois = torch.cat((rois[used, :1], rois[used, 1:] * sxy.repeat(1, 2)), dim=1)  # [U, 5]
            out = self.region_features(lvl.features, level_rois)  # [U, D]
            if merged is None:
                merged = out.new_full((rois.shape[0], out.shape[1]), float("-inf"))
            # maxout: each RoI keeps the element-wise max over its (one or two) levels
            merged[used] = torch.maximum(merged[used], out)
        assert merged is not None, "every RoI is assigned to a level"
        return merged

    @property
    def convs_moved_before_pool(self) -> Tuple[str, ...]:
        """Which 1x1 convs of res5's first block :meth:`pool_and_res5` runs on the map
        (``"conv1"``, ``"shortcut"``) when the RoIs allow it; the part of the decision
        that does not depend on the RoIs.

        A conv moves if its switch is on, the pooler is RoIAlign (RoIPool takes a
        maximum, which no linear map commutes with) and the conv is pointwise: 1x1,
        unpadded, with a fixed affine norm (FrozenBN, a folded or an eval-mode BN; not
        a training BN or GN, whose statistics would come from the map instead of the
        RoIs). Its stride (2 on both convs in the MSRA layout, on the shortcut in the
        torchvision layout) then only picks every other pooled bin.
        """
        if not (hasattr(self, "res5") and self.pooler.is_weighted_average):
            return ()
        first = self.res5[0]
        if not isinstance(first, BottleneckBlock):  # a basic block starts with a 3x3 conv
            return ()
        moved = []
        if self.res5_conv1_before_pool and first.conv1.is_pointwise_affine:
            moved.append("conv1")
        shortcut = first.shortcut
        if (
            self.res5_shortcut_before_pool
            and first.residual
            and isinstance(shortcut, Conv2dNorm)
            and shortcut.is_pointwise_affine
        ):
            moved.append("shortcut")
        return tuple(moved)

    def pool_and_res5(self, features: Tensor, rois: Tensor) -> Tensor:
        """RoI pooling and res5 for every RoI: ``[N, C, Hf, Wf]``, ``[R, 5]`` -> ``[R, C5, S/2, S/2]``.

        RoIAlign averages bilinear samples of the map, with weights summing to 1 when
        every sample lies on the map (``ROIPooler.weights_sum_to_one``: always for
        proposals clipped to the image). A pointwise conv (:attr:`convs_moved_before_pool`)
        is one affine map at every pixel, so the two commute:
        ``conv(RoIAlign(F)) == RoIAlign(conv(F))`` up to float rounding, a stride-2 conv
        keeping every other bin. Running such a conv once on the stride-16 map
        (Hf x Wf positions) instead of on R x S x S pooled positions saves most of its
        multiply-adds: at R = 300 on a 600 x 800 image (ResNet-50/101, torchvision
        layout), conv1 30.8e9 -> 1.3e9 and the shortcut 30.8e9 -> 5.3e9, in training
        three times (forward, input and weight gradients). With both moved the
        1024-channel map is not pooled at all; a batch with a RoI off the map takes
        the plain order.
        """
        moved = self.convs_moved_before_pool
        if not moved or not self.pooler.weights_sum_to_one(features, rois):
            return self.res5(self.pooler(features, rois))  # [R, C, S, S] -> [R, C5, S/2, S/2]
        first = self.res5[0]
        needs_pooled = "conv1" not in moved or (first.residual and "shortcut" not in moved)
        pooled = self.pooler(features, rois) if needs_pooled else None  # [R, C, S, S]
        if "conv1" in moved:
            # conv1 + norm on the map [N, C, Hf, Wf] -> [N, B, Hf, Wf], pooled -> [R, B, S', S']
            conv1 = first.conv1
            conv1_out = self.pooler(conv1.forward_every_pixel(features), rois, bin_stride=conv1.stride[0])
        else:
            conv1_out = first.conv1(pooled)
        shortcut_out = None
        if "shortcut" in moved:
            # [N, C, Hf, Wf] -> [N, C5, Hf, Wf] -> every other bin of each RoI [R, C5, S/2, S/2]
            shortcut = first.shortcut
            shortcut_out = self.pooler(shortcut.forward_every_pixel(features), rois, bin_stride=shortcut.stride[0])
        elif first.residual:
            shortcut_out = pooled if first.shortcut is None else first.shortcut(pooled)
        x = first.forward_after_conv1(conv1_out, shortcut_out)
        for block in list(self.res5)[1:]:  # (slicing a ResNetStage would call its constructor)
            x = block(x)
        return x

    # ----------------------------------------------------------------- training
    @torch.no_grad()
    def label_and_sample(
        self, proposals: List[Tensor], gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor]
    ) -> Tuple[List[Tensor], Tensor, Tensor]:
        """Match proposals to ground truth and sample the RoIs of each image.

        Returns:
            sampled proposals (``N`` tensors ``[S_i, 4]``, foreground first),
            class labels ``[sum S_i]`` int64 (0 = background), and regression
            targets ``[sum S_i, 4]`` (rows of background RoIs are zeros, unused).
        """
        sampled_proposals, class_labels, regression_targets = [], [], []
        for boxes, gt, labels in zip(proposals, gt_boxes, gt_labels):
            gt = gt.to(torch.float32)
            if self.append_gt_to_proposals:
                boxes = torch.cat((boxes, gt))
            matched_idxs, match_labels = self.matcher(box_iou(gt, boxes))
            if gt.shape[0] > 0:
                roi_labels = labels[matched_idxs].to(torch.int64)
                matched_gt = gt[matched_idxs]
            else:  # no objects: everything that is not ignored is background
                roi_labels = torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device)
                matched_gt = boxes
            roi_labels[match_labels == 0] = 0
            roi_labels[match_labels == -1] = -1
            pos, neg = self.sampler(roi_labels)
            idx = torch.cat((pos, neg))
            sampled_proposals.append(boxes[idx])
            class_labels.append(roi_labels[idx])
            targets = torch.zeros((idx.numel(), 4), dtype=torch.float32, device=boxes.device)
            targets[: pos.numel()] = self.box_coder.encode(boxes[pos], matched_gt[pos])
            regression_targets.append(targets)
        return sampled_proposals, torch.cat(class_labels), torch.cat(regression_targets)

    def losses(
        self, pred_logits: Tensor, pred_deltas: Tensor, class_labels: Tensor, regression_targets: Tensor
    ) -> Dict[str, Tensor]:
        """Softmax cross-entropy over the sampled RoIs and smooth-L1 of the class-specific
        deltas of the foreground RoIs, both divided by the number of sampled RoIs
        (py-faster-rcnn's ``SmoothL1Loss`` normalization). ``loss_box_reg`` is exactly
        0 when no RoI is foreground."""
        normalizer = max(class_labels.numel(), 1)
        loss_cls = F.cross_entropy(pred_logits.float(), class_labels, reduction="sum") / normalizer

        foreground = torch.nonzero(class_labels > 0).squeeze(1)
        # Deltas of each foreground RoI's own class: [R, K*4] -> [R, K, 4] -> [F, 4]
        deltas = pred_deltas.view(pred_deltas.shape[0], self.num_classes, 4)[foreground, class_labels[foreground] - 1]
        loss_box_reg = (
            F.smooth_l1_loss(deltas.float(), regression_targets[foreground], beta=self.smooth_l1_beta, reduction="sum")
            / normalizer
        )
        return {"loss_cls": loss_cls, "loss_box_reg": loss_box_reg}

    # ---------------------------------------------------------------- inference
    def inference(
        self,
        pred_logits: Tensor,
        pred_deltas: Tensor,
        proposals: List[Tensor],
        image_sizes: Sequence[Tuple[int, int]],
    ) -> List[Dict[str, Tensor]]:
        """Softmax, per-class decoding and clipping, score threshold, per-class NMS,
        top detections per image; vectorized over RoIs, classes and images.

        Args:
            pred_logits: ``[R, K + 1]``.
            pred_deltas: ``[R, K * 4]``.
            proposals: ``N`` tensors ``[R_i, 4]``, ``sum R_i = R``.
            image_sizes: ``N`` pairs ``(h, w)``.
        Returns:
            ``N`` dicts ``boxes`` ``[M, 4]``, ``scores`` ``[M]``, ``labels`` ``[M]``.
        """
        if len(proposals) == 0:
            return []  # no images, no detections (torch.cat in decode needs one tensor)
        scores, boxes, roi_image = self.decode(pred_logits, pred_deltas, proposals, image_sizes)
        return self.select(scores, boxes, roi_image, len(proposals))

    def decode(
        self,
        pred_logits: Tensor,
        pred_deltas: Tensor,
        proposals: List[Tensor],
        image_sizes: Sequence[Tuple[int, int]],
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Softmax and per-class decoding, clipped: ``scores [R, K]``, ``boxes [R, K, 4]``,
        ``roi_image [R]`` int64."""
        num_classes = self.num_classes
        device = pred_logits.device
        num_rois = pred_logits.shape[0]
        roi_image = torch.cat(
            [torch.full((len(p),), i, dtype=torch.int64, device=device) for i, p in enumerate(proposals)]
        )  # [R]
        scores = F.softmax(pred_logits.float(), dim=1)[:, 1:]  # [R, K], background dropped
        # [R, K*4] -> [R, K, 4], decoded against [R, 1, 4] proposals
        boxes = self.box_coder.decode(pred_deltas.view(num_rois, num_classes, 4), torch.cat(proposals)[:, None, :])
        sizes = sizes_tensor(image_sizes, device)  # [N, 2]
        boxes = clip_boxes(boxes, sizes[roi_image][:, None, :])  # [R, K, 4]
        return scores, boxes, roi_image

    def candidates(
        self,
        features: Tensor | Sequence[FeatureLevel],
        proposals: List[Tensor],
        image_sizes: Sequence[Tuple[int, int]],
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Every RoI's class scores and boxes before selection, with box refinement's
        second pass appended when it is on.

        Box refinement (Appendix B): each proposal's box regressed for its
        top-scoring class is pooled again through the same head and predictor,
        giving a new score and a new regressed box; the ``R`` new rows follow the
        ``R`` original ones (``R``-row union merged by :meth:`select` with voting).
        Returns ``scores [R', K]``, ``boxes [R', K, 4]``, ``roi_image [R']`` with
        ``R' = R`` or ``2R``.
        """
        pred_logits, pred_deltas = self.predict(features, proposals, image_sizes)
        scores, boxes, roi_image = self.decode(pred_logits, pred_deltas, proposals, image_sizes)
        if not self.box_refinement:
            return scores, boxes, roi_image
        top = scores.argmax(dim=1)  # [R] top-scoring foreground class
        refined = boxes[torch.arange(boxes.shape[0], device=boxes.device), top]  # [R, 4]
        refined_proposals = list(refined.split([len(p) for p in proposals]))
        pred_logits, pred_deltas = self.predict(features, refined_proposals, image_sizes)
        scores2, boxes2, _ = self.decode(pred_logits, pred_deltas, refined_proposals, image_sizes)
        return torch.cat((scores, scores2)), torch.cat((boxes, boxes2)), torch.cat((roi_image, roi_image))

    def select(
        self, scores: Tensor, boxes: Tensor, roi_image: Tensor, num_images: int, vote: bool = False
    ) -> List[Dict[str, Tensor]]:
        """Score threshold, per-class NMS, optional box voting, top detections per image.

        Args:
            scores: ``[R, K]`` class scores (background dropped).
            boxes: ``[R, K, 4]`` class-specific boxes, clipped.
            roi_image: ``[R]`` int64 image of each row.
            num_images: ``N``.
            vote: replace each kept box by the score-weighted mean of the candidates
                of its image and class overlapping it with IoU >= ``box_voting_iou``
                (:func:`~.test_time.box_voting`; for unions of predictions).
        Returns:
            ``N`` dicts ``boxes`` ``[M, 4]``, ``scores`` ``[M]``, ``labels`` ``[M]``.
        """
        num_classes = self.num_classes
        # py-faster-rcnn keeps scores strictly above the threshold.
        keep = (scores > self.score_thresh) & nonempty_mask(boxes)  # [R, K]
        # (R, K) -> indices of the kept entries of the flattened R * K (one sync)
        flat = torch.nonzero(keep.view(-1)).squeeze(1)
        roi = torch.div(flat, num_classes, rounding_mode="floor")
        labels = flat - roi * num_classes + 1  # 1..K
        image_idx = roi_image[roi]
        boxes, scores = boxes.reshape(-1, 4)[flat], scores.reshape(-1)[flat]

        # One NMS call for all (image, class) groups.
        groups = image_idx * num_classes + (labels - 1)
        kept = batched_nms(boxes, scores, groups, self.nms_thresh)
        kept, num_per_image = keep_topk_per_image(kept, image_idx[kept], num_images, self.detections_per_image)
        if vote:
            kept_boxes = box_voting(boxes[kept], groups[kept], boxes, scores, groups, self.box_voting_iou)
        else:
            kept_boxes = boxes[kept]
        return [
            {"boxes": b, "scores": s, "labels": l}
            for b, s, l in zip(
                kept_boxes.split(num_per_image), scores[kept].split(num_per_image), labels[kept].split(num_per_image)
            )
        ]
