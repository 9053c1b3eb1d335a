"""Assigning ground truth to anchors / proposals, and sampling balanced minibatches.

Both stages of Faster R-CNN train on a small random subset of their candidates:

* RPN (Ren et al. 2015, Sec 3.1.2): an anchor is positive if its IoU with some
  ground-truth box is >= 0.7, or if it is the anchor of highest IoU for a ground
  truth (so that every object gets at least one anchor); negative if its IoU with
  every ground truth is < 0.3; anything else is ignored. 256 anchors per image are
  sampled, up to half of them positive.
* Fast R-CNN head: a proposal is foreground if IoU >= 0.5, background if IoU is in
  ``[lo, hi)`` (``[0.1, 0.5)`` in Fast R-CNN, ``[0, 0.5)`` in end-to-end training);
  128 per image with up to 25% foreground.

:class:`Matcher` implements both labellings, :class:`BalancedSampler` the sampling.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["Matcher", "BalancedSampler"]


class Matcher:
    """Labels predictions (anchors, proposals) as foreground / background / ignored.

    Given an IoU matrix between ``G`` ground-truth boxes and ``P`` predictions, each
    prediction is matched to the ground truth of highest IoU (``matched_idxs``) and
    labelled from that IoU::

        IoU >= fg_iou_thresh                    ->  1  (foreground)
        bg_iou_thresh_lo <= IoU < bg_iou_thresh_hi  ->  0  (background)
        otherwise                               -> -1  (ignored)

    With ``allow_low_quality_matches``, for every ground truth the prediction(s)
    of highest IoU with it (all of them when several tie) are also foreground,
    provided that IoU is > 0. Such a prediction keeps the ground truth of highest
    IoU as its match (which is the same ground truth unless another one overlaps it
    more), as in py-faster-rcnn's ``anchor_target_layer``.
    """

    def __init__(
        self,
        *,
        fg_iou_thresh: float,
        bg_iou_thresh_hi: float,
        bg_iou_thresh_lo: float = 0.0,
        allow_low_quality_matches: bool = False,
    ):
        """
        Args:
            fg_iou_thresh: IoU at or above which a prediction is foreground.
            bg_iou_thresh_hi: IoU below which a prediction can be background.
            bg_iou_thresh_lo: IoU at or above which a prediction can be background;
                below it the prediction is ignored (0 makes every non-foreground
                prediction with IoU < hi background).
            allow_low_quality_matches: the "best prediction of each ground truth is
                foreground" rule of the RPN.
        """
        if not bg_iou_thresh_lo <= bg_iou_thresh_hi <= fg_iou_thresh:
            raise ValueError(
                "Matcher thresholds must satisfy bg_iou_thresh_lo <= bg_iou_thresh_hi <= fg_iou_thresh, got "
                f"lo={bg_iou_thresh_lo}, hi={bg_iou_thresh_hi}, fg={fg_iou_thresh}"
            )
        self.fg_iou_thresh = float(fg_iou_thresh)
        self.bg_iou_thresh_hi = float(bg_iou_thresh_hi)
        self.bg_iou_thresh_lo = float(bg_iou_thresh_lo)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)

    def __call__(self, iou: Tensor, valid: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """
        Args:
            iou: ``[G, P]`` IoU between ``G`` ground-truth boxes and ``P`` predictions
                (``G`` may be 0).
            valid: optional ``[P]`` bool; ``False`` predictions (e.g. anchors crossing
                the image boundary) are labelled -1 and never chosen as the best
                prediction of a ground truth.
        Returns:
            matched_idxs: ``[P]`` int64 index of the matched ground truth (0 when
                ``G == 0``; meaningless where the label is not 1).
            labels: ``[P]`` int8 in ``{1, 0, -1}``.
        """
        num_gt, num_pred = iou.shape
        device = iou.device
        if valid is not None:
            # IoU -1 is below every threshold: such predictions match nothing.
            iou = iou.masked_fill(~valid[None, :], -1.0)
        if num_gt == 0:
            max_iou = torch.zeros(num_pred, dtype=iou.dtype, device=device)
            if valid is not None:
                max_iou = max_iou.masked_fill(~valid, -1.0)
            matched_idxs = torch.zeros(num_pred, dtype=torch.int64, device=device)
        else:
            max_iou, matched_idxs = iou.max(dim=0)

        labels = torch.full((num_pred,), -1, dtype=torch.int8, device=device)
        background = (max_iou >= self.bg_iou_thresh_lo) & (max_iou < self.bg_iou_thresh_hi)
        labels[background] = 0
        labels[max_iou >= self.fg_iou_thresh] = 1

        if self.allow_low_quality_matches and num_gt > 0 and num_pred > 0:
            best_iou_per_gt = iou.max(dim=1, keepdim=True).values  # [G, 1]
            # Ties included: every prediction reaching a ground truth's best IoU.
            # A ground truth overlapping no prediction (best IoU 0) adds nothing;
            # otherwise every zero-IoU prediction would become foreground.
            is_best = (iou == best_iou_per_gt) & (best_iou_per_gt > 0)
            labels[is_best.any(dim=0)] = 1
        if valid is not None:
            labels[~valid] = -1
        return matched_idxs, labels


class BalancedSampler:
    """Samples a fixed-size minibatch with at most a given fraction of positives.

    Exact counts: with ``B = batch_size_per_image`` and ``f = positive_fraction``,
    ``num_pos = min(#positives, int(B * f))`` and
    ``num_neg = min(#negatives, B - num_pos)`` (negatives fill what positives
    leave free, as in py-faster-rcnn). Sampling uses ``torch.randperm`` on the
    default generator, so it is reproducible under ``torch.manual_seed``.
    """

    def __init__(self, *, batch_size_per_image: int, positive_fraction: float):
        if batch_size_per_image < 1:
            raise ValueError(f"BalancedSampler batch_size_per_image must be >= 1, got {batch_size_per_image}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"BalancedSampler positive_fraction must be in [0, 1], got {positive_fraction}")
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)

    def __call__(self, labels: Tensor) -> Tuple[Tensor, Tensor]:
        """
        Args:
            labels: ``[P]`` labels, ``-1`` ignored, ``0`` negative, ``> 0`` positive
                (Matcher labels, or class labels with 0 as background).
        Returns:
            pos_idx, neg_idx: int64 indices into ``labels`` of the sampled positives
            and negatives (random order).
        """
        positive = torch.nonzero(labels > 0).squeeze(1)
        negative = torch.nonzero(labels == 0).squeeze(1)

        num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
        num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)

        pos_idx = positive[torch.randperm(positive.numel(), device=positive.device)[:num_pos]]
        neg_idx = negative[torch.randperm(negative.numel(), device=negative.device)[:num_neg]]
        return pos_idx, neg_idx
