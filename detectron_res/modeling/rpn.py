"""Region Proposal Network on the shared conv4 features (Ren et al. 2015, Sec 3.1).

Shape shorthand used in the comments:
    N: images in the batch          C: channels of the conv4 feature map
    Hf, Wf: feature-map size        A: anchors per location
    P = Hf * Wf * A: anchors per image (the same for every image of a padded batch)
    G: ground-truth boxes of one image
    k: proposals kept per image before NMS

Training (Sec 3.1.3): anchors are labelled by :class:`~.sampling.Matcher`
(IoU >= 0.7 or best anchor of a ground truth: positive; < 0.3: negative), anchors
crossing the image boundary are ignored, 256 per image are sampled with up to half
positive, and the losses are the binary cross-entropy of the objectness and the
smooth-L1 loss of the box deltas of the positives, both normalized by the number
of sampled anchors (py-faster-rcnn ``anchor_target_layer``).

Proposals (train and test): the top ``pre_nms_topk`` anchors by objectness are
decoded, clipped to the image, boxes smaller than ``min_size`` removed, NMS at
``nms_thresh``, and the top ``post_nms_topk`` kept, all images of a batch at once.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou, nms

from ..structures import clip_boxes, host_tensor, nonempty_mask, sizes_tensor
from .anchor_generator import AnchorGenerator
from .backbone.norm import Conv2dNorm
from .box_coder import BoxCoder
from .sampling import BalancedSampler, Matcher

__all__ = ["RPNHead", "RegionProposalNetwork", "keep_topk_per_image"]


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then sibling 1x1 convs for objectness and box deltas.

    Outputs per location one objectness logit and four deltas ``(dx, dy, dw, dh)``
    for each of the ``A`` anchors (Sec 3.1: "cls" and "reg" layers; one logistic
    score per anchor instead of the paper's two-way softmax, which is equivalent).
    """

    def __init__(self, *, in_channels: int, num_anchors: int, head_channels: int = 0):
        """
        Args:
            in_channels: ``C`` of the feature map.
            num_anchors: ``A``.
            head_channels: channels of the 3x3 conv; 0 means ``in_channels``
                (VGG-16: 512, the paper's intermediate layer).
        """
        super().__init__()
        head_channels = in_channels if head_channels == 0 else head_channels
        # Conv2dNorm without a norm: a plain nn.Conv2d (same parameters) that inference
        # can run with oneDNN-packed weights (prepare_for_inference).
        self.conv = Conv2dNorm(in_channels, head_channels, kernel_size=3, padding=1, norm=None)
        self.objectness_logits = Conv2dNorm(head_channels, num_anchors, kernel_size=1, norm=None)
        self.anchor_deltas = Conv2dNorm(head_channels, num_anchors * 4, kernel_size=1, norm=None)
        # Gaussian(0, 0.01) weights and zero biases, as py-faster-rcnn initializes the RPN.
        for layer in (self.conv, self.objectness_logits, self.anchor_deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Tensor) -> Tuple[Tensor, Tensor]:
        """
        Args:
            features: ``[N, C, Hf, Wf]``.
        Returns:
            logits ``[N, A, Hf, Wf]`` and deltas ``[N, A * 4, Hf, Wf]`` (channel
            ``a * 4 + j`` is delta ``j`` of anchor ``a``).
        """
        hidden = F.relu(self.conv(features))
        return self.objectness_logits(hidden), self.anchor_deltas(hidden)


def keep_topk_per_image(keep: Tensor, image_idx: Tensor, num_images: int, topk: int) -> Tuple[Tensor, List[int]]:
    """Keep at most ``topk`` entries of each image from score-sorted indices.

    Args:
        keep: ``[M]`` indices sorted by decreasing score (the output of NMS),
            entries of all images mixed.
        image_idx: ``[M]`` image of each entry of ``keep``.
        num_images: ``N``.
        topk: entries kept per image.
    Returns:
        The kept indices grouped by image (image 0 first), still by decreasing
        score within an image, and the number kept for each image.
    """
    # A stable sort by image keeps the score order inside each image.
    image_idx, order = torch.sort(image_idx, stable=True)
    keep = keep[order]
    # The per-image counts are needed on the host to return one tensor per image:
    # this one synchronization follows NMS, which synchronizes anyway.
    counts = torch.bincount(image_idx, minlength=num_images).tolist()
    starts = [sum(counts[:i]) for i in range(num_images)]
    num_per_image = [min(c, topk) for c in counts]
    # Image i occupies keep[starts[i] : starts[i] + counts[i]]: take its first entries.
    index = torch.cat(
        [torch.arange(s, s + n, device=keep.device) for s, n in zip(starts, num_per_image)]
        or [torch.zeros(0, dtype=torch.int64, device=keep.device)]
    )
    return keep[index], num_per_image


def nms_first_per_image(
    boxes: Tensor, scores: Tensor, image_idx: Tensor, num_images: int, iou_threshold: float, topk: int
) -> Tuple[Tensor, List[int]]:
    """The first ``topk`` boxes of each image that greedy NMS keeps, by decreasing score.

    The boxes ``keep_topk_per_image(batched_nms(boxes, scores, image_idx, t), ...)``
    keeps, without running NMS past the ``topk``-th survivor. Boxes are visited in a
    stable descending score order, as torchvision's CPU NMS visits them (equal scores
    stay in input order; ``batched_nms``'s final sort may swap them). Greedy NMS decides on a box from the boxes before it alone, so NMS of
    an image's ``m`` best boxes keeps exactly the survivors among them: if ``topk``
    survive, they are the answer. ``m`` starts at ``2 * topk`` and doubles until
    then (or until every box is in). The RPN at test time keeps 300 of 6000 boxes
    (Appendix A): NMS over all 6000 compared each survivor with every lower box.

    Args:
        boxes: ``[M, 4]``; scores: ``[M]``; image_idx: ``[M]`` image of each box.
        num_images: ``N``.
        iou_threshold: boxes overlapping a kept one by more than this are dropped.
        topk: boxes kept per image at most.
    Returns:
        Indices into ``boxes``, grouped by image (image 0 first) and by decreasing
        score within an image, and the number kept for each image.
    """
    kept_per_image = []
    for i in range(num_images):
        mine = torch.nonzero(image_idx == i).squeeze(1)
        mine = mine[torch.sort(scores[mine], descending=True, stable=True).indices]
        num_boxes = mine.numel()
        candidates = min(num_boxes, 2 * topk)
        while True:
            head = mine[:candidates]
            kept = nms(boxes[head], scores[head], iou_threshold)  # positions in head, by score
            if kept.numel() >= topk or candidates == num_boxes:
                break
            candidates = min(num_boxes, 2 * candidates)
        kept_per_image.append(head[kept[:topk]])
    if not kept_per_image:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device), []
    return torch.cat(kept_per_image), [k.numel() for k in kept_per_image]


class RegionProposalNetwork(nn.Module):
    """Proposals and RPN losses from one feature map. Train and test settings are explicit pairs."""

    def __init__(
        self,
        *,
        head: RPNHead,
        anchor_generator: AnchorGenerator,
        box_coder: BoxCoder,
        matcher: Matcher,
        sampler: BalancedSampler,
        pre_nms_topk_train: int,
        post_nms_topk_train: int,
        pre_nms_topk_test: int,
        post_nms_topk_test: int,
        nms_thresh: float,
        min_size: float,
        boundary_threshold: int,
        smooth_l1_beta: float,
        loss_weight: float = 1.0,
    ):
        """
        Args:
            head: the convolutional head.
            anchor_generator: anchors of the feature map; its ``num_anchors`` must
                equal the head's ``A``.
            box_coder: delta parametrization (weights 1, 1, 1, 1 for the RPN).
            matcher: anchor labelling (0.7 / 0.3 and the best-anchor rule).
            sampler: 256 anchors per image, positive fraction 0.5.
            pre_nms_topk_train, pre_nms_topk_test: anchors kept per image by
                objectness before NMS (paper: 12000 / 6000).
            post_nms_topk_train, post_nms_topk_test: proposals kept per image after
                NMS (paper: 2000 / 300).
            nms_thresh: IoU threshold of the proposal NMS (0.7).
            min_size: proposals narrower or lower than this many ORIGINAL-image
                pixels are removed; it is multiplied by each image's resize factor
                (py-faster-rcnn: ``min_size * im_scale``, 16 pixels).
            boundary_threshold: in training, anchors reaching more than this many
                pixels outside the image are ignored (paper: 0); -1 keeps all.
            smooth_l1_beta: transition point of the smooth-L1 loss (py-faster-rcnn's
                sigma 3 is beta 1/9); 0 gives the L1 loss.
            loss_weight: multiplies both RPN losses.
        """
        super().__init__()
        if head.objectness_logits.out_channels != anchor_generator.num_anchors:
            raise ValueError(
                f"RPN head predicts {head.objectness_logits.out_channels} anchors per location but the anchor "
                f"generator makes {anchor_generator.num_anchors} (len(sizes) x len(aspect_ratios))"
            )
        for name, value in (
            ("pre_nms_topk_train", pre_nms_topk_train),
            ("post_nms_topk_train", post_nms_topk_train),
            ("pre_nms_topk_test", pre_nms_topk_test),
            ("post_nms_topk_test", post_nms_topk_test),
        ):
            if value < 1:
                raise ValueError(f"RPN {name} must be >= 1, got {value}")
        self.head = head
        self.anchor_generator = anchor_generator
        self.box_coder = box_coder
        self.matcher = matcher
        self.sampler = sampler
        self.pre_nms_topk = {True: int(pre_nms_topk_train), False: int(pre_nms_topk_test)}
        self.post_nms_topk = {True: int(post_nms_topk_train), False: int(post_nms_topk_test)}
        self.nms_thresh = float(nms_thresh)
        self.min_size = float(min_size)
        self.boundary_threshold = int(boundary_threshold)
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.loss_weight = float(loss_weight)

    def forward(
        self,
        features: Tensor,
        image_sizes: Sequence[Tuple[int, int]],
        gt_boxes: Optional[Sequence[Tensor]] = None,
        image_scales: Optional[Sequence[float]] = None,
    ) -> Tuple[List[Tensor], Dict[str, Tensor]]:
        """
        Args:
            features: ``[N, C, Hf, Wf]`` conv4 features of the padded batch.
            image_sizes: ``N`` pairs ``(h, w)``: the valid region of each image in
                input pixels; proposals are clipped to it.
            gt_boxes: in training, ``N`` tensors ``[G, 4]`` of ground-truth boxes in
                input pixels (``G`` may be 0).
            image_scales: resize factor of each image (input pixels per original
                pixel) that scales ``min_size``; 1.0 when omitted.
        Returns:
            proposals: ``N`` float32 tensors ``[R_i, 4]`` in input pixels, by
                decreasing objectness, detached from the graph.
            losses: ``{"loss_rpn_cls", "loss_rpn_loc"}`` in training, else empty.
        """
        num_images = features.shape[0]
        pred_logits, pred_deltas = self.head(features)
        anchors = self.anchor_generator(features.shape[-2:], features.device)  # [P, 4]

        # (N, A, Hf, Wf) -> (N, Hf, Wf, A) -> (N, P)
        pred_logits = pred_logits.permute(0, 2, 3, 1).reshape(num_images, -1)
        # (N, A*4, Hf, Wf) -> (N, A, 4, Hf, Wf) -> (N, Hf, Wf, A, 4) -> (N, P, 4)
        hf, wf = pred_deltas.shape[-2:]
        pred_deltas = pred_deltas.view(num_images, -1, 4, hf, wf).permute(0, 3, 4, 1, 2).reshape(num_images, -1, 4)

        if image_scales is None:
            image_scales = [1.0] * num_images
        proposals = self.find_proposals(
            anchors, pred_logits.detach(), pred_deltas.detach(), image_sizes, image_scales
        )

        losses: Dict[str, Tensor] = {}
        if self.training:
            if gt_boxes is None:
                raise ValueError("RegionProposalNetwork in training mode needs gt_boxes (one [G, 4] tensor per image)")
            losses = self.losses(anchors, pred_logits, pred_deltas, image_sizes, gt_boxes)
        return proposals, losses

    @torch.no_grad()
    def find_proposals(
        self,
        anchors: Tensor,
        pred_logits: Tensor,
        pred_deltas: Tensor,
        image_sizes: Sequence[Tuple[int, int]],
        image_scales: Sequence[float],
    ) -> List[Tensor]:
        """Top-k, decode, clip, remove small boxes, NMS, top-k; all images at once.

        Args:
            anchors: ``[P, 4]``.
            pred_logits: ``[N, P]`` objectness logits.
            pred_deltas: ``[N, P, 4]``.
            image_sizes: ``N`` pairs ``(h, w)``.
            image_scales: ``N`` resize factors (see ``forward``).
        Returns:
            ``N`` tensors ``[R_i, 4]``, ``R_i <= post_nms_topk``.
        """
        num_images, num_anchors = pred_logits.shape
        device = pred_logits.device
        pre_nms_topk = min(self.pre_nms_topk[self.training], num_anchors)
        post_nms_topk = self.post_nms_topk[self.training]

        # Ranking by logits equals ranking by probabilities; float32 so that
        # half-precision outputs of an autocast region rank and decode exactly.
        scores, topk_idx = pred_logits.float().topk(pre_nms_topk, dim=1)  # [N, k]
        batch_idx = torch.arange(num_images, device=device)[:, None]  # [N, 1]
        boxes = self.box_coder.decode(pred_deltas[batch_idx, topk_idx], anchors[topk_idx])  # [N, k, 4]

        sizes = sizes_tensor(image_sizes, device)  # [N, 2]
        boxes = clip_boxes(boxes, sizes[:, None, :])
        min_sizes = self.min_size * host_tensor(list(image_scales), torch.float32, device)  # [N]
        keep = nonempty_mask(boxes, min_sizes[:, None]) & torch.isfinite(scores)  # [N, k]

        # (N, k) -> indices of the valid entries of the flattened N * k (one sync)
        flat = torch.nonzero(keep.view(-1)).squeeze(1)
        image_idx = torch.div(flat, pre_nms_topk, rounding_mode="floor")
        boxes, scores = boxes.reshape(-1, 4)[flat], scores.reshape(-1)[flat]
        if self.training:
            # Every box through NMS, then the top post_nms_topk per image. The early stop
            # below keeps the same boxes but breaks ties of equal scores (uniform image
            # regions give equal logits) in another order, and the order of proposals
            # feeds the RoI sampler: it moved the demo's training run (VOC07 91.8 -> 90.4).
            # Training stays as it was (benchmarks/OPTIMIZATIONS.md, third pass).
            kept = batched_nms(boxes, scores, image_idx, self.nms_thresh)
            kept, num_per_image = keep_topk_per_image(kept, image_idx[kept], num_images, post_nms_topk)
        else:
            # Inference: NMS per image, stopped at post_nms_topk survivors (6000 -> 300
            # boxes: 51 ms -> 4 ms, the same proposals).
            kept, num_per_image = nms_first_per_image(
                boxes, scores, image_idx, num_images, self.nms_thresh, post_nms_topk
            )
        return list(boxes[kept].split(num_per_image))

    def losses(
        self,
        anchors: Tensor,
        pred_logits: Tensor,
        pred_deltas: Tensor,
        image_sizes: Sequence[Tuple[int, int]],
        gt_boxes: Sequence[Tensor],
    ) -> Dict[str, Tensor]:
        """Label and sample anchors per image, then the two losses over the batch.

        Args:
            anchors: ``[P, 4]``.
            pred_logits: ``[N, P]``.
            pred_deltas: ``[N, P, 4]``.
            image_sizes: ``N`` pairs ``(h, w)``.
            gt_boxes: ``N`` tensors ``[G, 4]``.
        Returns:
            ``loss_rpn_cls`` and ``loss_rpn_loc``; the latter is exactly 0 for a
            batch without ground truth.
        """
        num_images, num_anchors = pred_logits.shape
        sampled_idx, sampled_labels, pos_idx, pos_targets = [], [], [], []
        for i, (boxes, (h, w)) in enumerate(zip(gt_boxes, image_sizes)):
            boxes = boxes.to(torch.float32)
            valid = None
            if self.boundary_threshold >= 0:
                # Cross-boundary anchors are ignored in training (Sec 3.1.3): they
                # would give large, hard-to-correct errors.
                t = self.boundary_threshold
                valid = (
                    (anchors[:, 0] >= -t) & (anchors[:, 1] >= -t) & (anchors[:, 2] <= w + t) & (anchors[:, 3] <= h + t)
                )
            matched_idxs, labels = self.matcher(box_iou(boxes, anchors), valid)
            pos, neg = self.sampler(labels)
            offset = i * num_anchors  # index into the flattened (N * P) predictions
            sampled_idx += [pos + offset, neg + offset]
            sampled_labels += [torch.ones_like(pos, dtype=torch.float32), torch.zeros_like(neg, dtype=torch.float32)]
            pos_idx.append(pos + offset)
            pos_targets.append(self.box_coder.encode(anchors[pos], boxes[matched_idxs[pos]]))

        sampled_idx_t = torch.cat(sampled_idx)
        pos_idx_t = torch.cat(pos_idx)
        # py-faster-rcnn divides both losses by the number of sampled anchors.
        normalizer = max(sampled_idx_t.numel(), 1)

        loss_cls = F.binary_cross_entropy_with_logits(
            pred_logits.reshape(-1)[sampled_idx_t].float(), torch.cat(sampled_labels), reduction="sum"
        )
        loss_loc = F.smooth_l1_loss(
            pred_deltas.reshape(-1, 4)[pos_idx_t].float(),
            torch.cat(pos_targets),
            beta=self.smooth_l1_beta,
            reduction="sum",
        )
        return {
            "loss_rpn_cls": loss_cls * (self.loss_weight / normalizer),
            "loss_rpn_loc": loss_loc * (self.loss_weight / normalizer),
        }
