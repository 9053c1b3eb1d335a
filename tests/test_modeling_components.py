"""Anchors, box coder, matcher, sampler, proposals and detection post-processing,
against hand-computed values and torchvision's reference implementations."""
import math

import pytest
import torch
from torch import nn
from torchvision.models.detection._utils import BoxCoder as TorchvisionBoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchorGenerator
from torchvision.models.detection.image_list import ImageList as TorchvisionImageList
from torchvision.ops import batched_nms, nms

from detectron_res.modeling.anchor_generator import AnchorGenerator
from detectron_res.modeling.box_coder import BoxCoder
from detectron_res.modeling.poolers import ROIPooler, boxes_to_rois
from detectron_res.modeling.roi_heads import FastRCNNPredictor, ROIHeads
from detectron_res.modeling.rpn import RegionProposalNetwork, RPNHead, keep_topk_per_image, nms_first_per_image
from detectron_res.modeling.sampling import BalancedSampler, Matcher
from detectron_res.structures import clip_boxes


# ----------------------------------------------------------------------------- anchors
def test_anchors_small_map_hand_computed():
    gen = AnchorGenerator(sizes=[16, 32], aspect_ratios=[1.0], stride=16, offset=0.5)
    anchors = gen((2, 3))
    assert anchors.shape == (2 * 3 * 2, 4)
    # location (y=0, x=0): centre (8, 8); sizes 16 and 32
    assert anchors[0].tolist() == [0.0, 0.0, 16.0, 16.0]
    assert anchors[1].tolist() == [-8.0, -8.0, 24.0, 24.0]
    # location (y=1, x=2) is index (1 * 3 + 2) * A: centre (40, 24)
    assert anchors[10].tolist() == [32.0, 16.0, 48.0, 32.0]
    assert anchors[11].tolist() == [24.0, 8.0, 56.0, 40.0]


def test_anchor_aspect_ratios_keep_area():
    gen = AnchorGenerator(sizes=[32], aspect_ratios=[0.5, 1.0, 2.0], stride=16, offset=0.0)
    cell = gen((1, 1))
    w = cell[:, 2] - cell[:, 0]
    h = cell[:, 3] - cell[:, 1]
    torch.testing.assert_close(w * h, torch.full((3,), 1024.0))
    torch.testing.assert_close(h / w, torch.tensor([0.5, 1.0, 2.0]))
    # ratio 0.5 is a wide box: w = 32 * sqrt(2)
    assert math.isclose(float(w[0]), 32 * math.sqrt(2), rel_tol=1e-6)
    # centred on (0, 0) with offset 0
    torch.testing.assert_close(cell[:, :2] + cell[:, 2:], torch.zeros(3, 2))


def test_anchors_agree_with_torchvision_at_offset_zero():
    # torchvision centres anchors on x * stride (offset 0) and rounds the cell
    # anchors; with ratio 1 and even sizes there is nothing to round.
    sizes, ratios = (32, 64, 128), (1.0,)
    ours = AnchorGenerator(sizes=sizes, aspect_ratios=ratios, stride=16, offset=0.0)((5, 7))
    tv = TorchvisionAnchorGenerator(sizes=(sizes,), aspect_ratios=(ratios,))
    images = TorchvisionImageList(torch.zeros(1, 3, 80, 112), [(80, 112)])
    theirs = tv(images, [torch.zeros(1, 8, 5, 7)])[0]
    torch.testing.assert_close(ours, theirs)


# py-faster-rcnn's generate_anchors(), computed by hand, in its inclusive pixel
# coordinates (the first cell's base box is [0, 0, 15, 15], centre 7.5). Base size 16:
#   ratio 0.5: w = round(sqrt(256 / 0.5)) = round(22.63) = 23, h = round(23 * 0.5) = round(11.5) = 12
#   ratio 1:   w = 16, h = 16
#   ratio 2:   w = round(sqrt(128)) = round(11.31) = 11, h = 22
# then scaled by size / 16; an anchor W x H is [7.5 - (W-1)/2, 7.5 - (H-1)/2, 7.5 + (W-1)/2, 7.5 + (H-1)/2].
PY_FASTER_RCNN_TABLE = {
    # size: {ratio: inclusive box}
    64: {0.5: (-38, -16, 53, 31), 1.0: (-24, -24, 39, 39), 2.0: (-14, -36, 29, 51)},  # 92x48, 64x64, 44x88
    128: {0.5: (-84, -40, 99, 55), 1.0: (-56, -56, 71, 71), 2.0: (-36, -80, 51, 95)},  # 184x96, 128, 88x176
    256: {0.5: (-176, -88, 191, 103), 1.0: (-120, -120, 135, 135), 2.0: (-80, -168, 95, 183)},
    512: {0.5: (-360, -184, 375, 199), 1.0: (-248, -248, 263, 263), 2.0: (-168, -344, 183, 359)},
}


@pytest.mark.parametrize("sizes", [[128, 256, 512], [64, 128, 256, 512]], ids=["voc_9", "coco_12"])
def test_py_faster_rcnn_anchors_equal_the_hand_table(sizes):
    ratios = [0.5, 1.0, 2.0]
    gen = AnchorGenerator(sizes=sizes, aspect_ratios=ratios, stride=16, offset=0.5, style="py-faster-rcnn")
    anchors = gen((1, 1))  # the first cell: its centre is (8, 8) in continuous coordinates
    # inclusive [x1, y1, x2, y2] -> continuous [x1, y1, x2 + 1, y2 + 1]
    expected = [[x1, y1, x2 + 1.0, y2 + 1.0] for s in sizes for x1, y1, x2, y2 in
                (PY_FASTER_RCNN_TABLE[s][r] for r in ratios)]  # fmt: skip
    assert anchors.tolist() == expected
    assert len(expected) == 3 * len(sizes)
    # the example: size 512, ratio 0.5 is 736 x 384 here, 724 x 362 with exact areas
    a = anchors[sizes.index(512) * 3]
    assert (a[2] - a[0]).item() == 736 and (a[3] - a[1]).item() == 384
    exact = AnchorGenerator(sizes=sizes, aspect_ratios=ratios, stride=16, offset=0.5)((1, 1))[sizes.index(512) * 3]
    assert round((exact[2] - exact[0]).item()) == 724 and round((exact[3] - exact[1]).item()) == 362


def test_paper_configs_use_py_faster_rcnn_anchors():
    from detectron_res.config import load_config

    for name in ("voc07_r101", "voc07_vgg16", "voc12_r101", "voc12_vgg16", "coco_r101", "coco_r50", "coco_vgg16"):
        assert load_config(name).model.anchor.style == "py-faster-rcnn", name
    for name in ("demo_shapes", "coco_r50_c4_d2_1x"):
        assert load_config(name).model.anchor.style == "exact_area", name


def test_anchor_generator_rejects_bad_settings():
    with pytest.raises(ValueError, match="model.anchor.style"):
        AnchorGenerator(sizes=[32], aspect_ratios=[1.0], stride=16, style="detectron")
    with pytest.raises(ValueError, match="sizes"):
        AnchorGenerator(sizes=[], aspect_ratios=[1.0], stride=16)
    with pytest.raises(ValueError, match="aspect_ratios"):
        AnchorGenerator(sizes=[32], aspect_ratios=[0.0], stride=16)


# --------------------------------------------------------------------------- box coder
def _random_boxes(n, generator, max_xy=500.0, min_wh=4.0):
    xy = torch.rand(n, 2, generator=generator) * max_xy
    wh = torch.rand(n, 2, generator=generator) * 200 + min_wh
    return torch.cat((xy, xy + wh), dim=1)


def test_box_coder_hand_computed():
    coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    src = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    tgt = torch.tensor([[5.0, 5.0, 15.0, 25.0]])  # centre (10, 15), size 10 x 20
    deltas = coder.encode(src, tgt)
    torch.testing.assert_close(deltas, torch.tensor([[0.5, 1.0, 0.0, math.log(2.0)]]))
    weighted = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)).encode(src, tgt)
    torch.testing.assert_close(weighted, torch.tensor([[5.0, 10.0, 0.0, 5 * math.log(2.0)]]))


def test_box_coder_round_trip():
    g = torch.Generator().manual_seed(0)
    src, tgt = _random_boxes(100, g), _random_boxes(100, g)
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    torch.testing.assert_close(coder.decode(coder.encode(src, tgt), src), tgt, rtol=1e-5, atol=1e-3)


def test_box_coder_agrees_with_torchvision():
    g = torch.Generator().manual_seed(1)
    src, tgt = _random_boxes(64, g), _random_boxes(64, g)
    weights = (10.0, 10.0, 5.0, 5.0)
    ours, theirs = BoxCoder(weights=weights), TorchvisionBoxCoder(weights)
    # torchvision: encode_single(reference_boxes=targets, proposals=sources)
    torch.testing.assert_close(ours.encode(src, tgt), theirs.encode_single(tgt, src))
    # class-specific decode: [R, K*4] deltas, including ones beyond the clamp
    deltas = torch.randn(64, 3 * 4, generator=g) * 20
    expected = theirs.decode_single(deltas, src).view(64, 3, 4)
    torch.testing.assert_close(ours.decode(deltas.view(64, 3, 4), src[:, None, :]), expected)


def test_box_coder_clamps_scale():
    coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    box = coder.decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), torch.tensor([[0.0, 0.0, 16.0, 16.0]]))
    # exp(log(1000 / 16)) * 16 = 1000 pixels around the centre (8, 8)
    torch.testing.assert_close(box, torch.tensor([[-492.0, -492.0, 508.0, 508.0]]))


# ----------------------------------------------------------------------------- matcher
IOU = torch.tensor(
    [
        [0.9, 0.5, 0.1, 0.2, 0.0],
        [0.1, 0.6, 0.65, 0.65, 0.0],
    ]
)


def test_matcher_rpn_rule_with_ties_and_ignored_band():
    matcher = Matcher(fg_iou_thresh=0.7, bg_iou_thresh_hi=0.3, allow_low_quality_matches=True)
    matched, labels = matcher(IOU)
    # p0: 0.9 >= 0.7; p1: 0.6 in the ignored band; p2, p3: tied best anchors of gt1;
    # p4: IoU 0 -> background
    assert labels.tolist() == [1, -1, 1, 1, 0]
    assert matched[[0, 1, 2, 3]].tolist() == [0, 1, 1, 1]


def test_matcher_without_low_quality_matches():
    matcher = Matcher(fg_iou_thresh=0.7, bg_iou_thresh_hi=0.3, allow_low_quality_matches=False)
    _, labels = matcher(IOU)
    assert labels.tolist() == [1, -1, -1, -1, 0]


def test_matcher_threshold_edges():
    iou = torch.tensor([[0.7, 0.3, 0.2999, 0.0, 0.69]])
    _, labels = Matcher(fg_iou_thresh=0.7, bg_iou_thresh_hi=0.3)(iou)
    # positive is IoU >= 0.7, negative is IoU < 0.3
    assert labels.tolist() == [1, -1, 0, 0, -1]
    # Fast R-CNN head with background in [0.1, 0.5): below 0.1 is ignored
    iou = torch.tensor([[0.05, 0.1, 0.49, 0.5]])
    _, labels = Matcher(fg_iou_thresh=0.5, bg_iou_thresh_hi=0.5, bg_iou_thresh_lo=0.1)(iou)
    assert labels.tolist() == [-1, 0, 0, 1]


def test_matcher_best_anchor_rule_skips_zero_overlap_and_respects_valid():
    matcher = Matcher(fg_iou_thresh=0.7, bg_iou_thresh_hi=0.3, allow_low_quality_matches=True)
    # gt1 overlaps nothing: it must not turn zero-IoU predictions into positives
    _, labels = matcher(torch.tensor([[0.8, 0.1, 0.0], [0.0, 0.0, 0.0]]))
    assert labels.tolist() == [1, 0, 0]
    # p0 invalid (crosses the boundary): ignored, and gt0's best valid anchor is p1
    valid = torch.tensor([False, True, True, True, True])
    matched, labels = matcher(IOU, valid)
    assert labels.tolist() == [-1, 1, 1, 1, 0]
    assert int(matched[1]) == 1  # p1's highest IoU is with gt1 (0.6 > 0.5)


def test_matcher_no_ground_truth():
    matched, labels = Matcher(fg_iou_thresh=0.7, bg_iou_thresh_hi=0.3, allow_low_quality_matches=True)(
        torch.zeros(0, 4)
    )
    assert labels.tolist() == [0, 0, 0, 0]
    assert matched.tolist() == [0, 0, 0, 0]


def test_matcher_rejects_unordered_thresholds():
    with pytest.raises(ValueError, match="bg_iou_thresh_hi"):
        Matcher(fg_iou_thresh=0.3, bg_iou_thresh_hi=0.7)


# ----------------------------------------------------------------------------- sampler
@pytest.mark.parametrize(
    "num_pos,num_neg,expected",
    [(10, 300, (10, 246)), (200, 300, (128, 128)), (5, 3, (5, 3)), (0, 1000, (0, 256)), (300, 0, (128, 0))],
)
def test_sampler_exact_counts(num_pos, num_neg, expected):
    labels = torch.cat(
        [torch.ones(num_pos, dtype=torch.int8), torch.zeros(num_neg, dtype=torch.int8), -torch.ones(7, dtype=torch.int8)]
    )
    labels = labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(0))]
    pos, neg = BalancedSampler(batch_size_per_image=256, positive_fraction=0.5)(labels)
    assert (pos.numel(), neg.numel()) == expected
    assert bool((labels[pos] == 1).all()) and bool((labels[neg] == 0).all())
    assert pos.unique().numel() == pos.numel() and neg.unique().numel() == neg.numel()


def test_sampler_fast_rcnn_fraction_and_reproducibility():
    labels = torch.cat([torch.full((50,), 3), torch.zeros(500, dtype=torch.int64)])
    sampler = BalancedSampler(batch_size_per_image=128, positive_fraction=0.25)
    torch.manual_seed(7)
    pos_a, neg_a = sampler(labels)
    torch.manual_seed(7)
    pos_b, neg_b = sampler(labels)
    assert (pos_a.numel(), neg_a.numel()) == (32, 96)
    assert torch.equal(pos_a, pos_b) and torch.equal(neg_a, neg_b)


# ------------------------------------------------------------------------------ RPN
def _rpn(*, pre=100, post=100, min_size=16.0, boundary=0, num_anchors=1, batch=256):
    return RegionProposalNetwork(
        head=RPNHead(in_channels=4, num_anchors=num_anchors),
        anchor_generator=AnchorGenerator(sizes=[16.0] * num_anchors, aspect_ratios=[1.0], stride=16),
        box_coder=BoxCoder(),
        matcher=Matcher(fg_iou_thresh=0.7, bg_iou_thresh_hi=0.3, allow_low_quality_matches=True),
        sampler=BalancedSampler(batch_size_per_image=batch, positive_fraction=0.5),
        pre_nms_topk_train=pre,
        post_nms_topk_train=post,
        pre_nms_topk_test=pre,
        post_nms_topk_test=post,
        nms_thresh=0.7,
        min_size=min_size,
        boundary_threshold=boundary,
        smooth_l1_beta=1.0 / 9,
    ).eval()


ANCHORS = torch.tensor(
    [
        [0.0, 0.0, 20.0, 20.0],  # best
        [1.0, 1.0, 21.0, 21.0],  # IoU 361/439 = 0.82 with the first: suppressed
        [30.0, 30.0, 40.0, 40.0],  # 10 px: below min_size 16
        [-10.0, -10.0, 30.0, 30.0],  # clipped to (0, 0, 30, 30): IoU 0.44, kept
    ]
)
LOGITS = torch.tensor([[3.0, 2.0, 1.0, 0.0]])


def test_rpn_proposals_nms_min_size_clipping():
    rpn = _rpn()
    proposals = rpn.find_proposals(ANCHORS, LOGITS, torch.zeros(1, 4, 4), [(50, 50)], [1.0])
    torch.testing.assert_close(proposals[0], torch.tensor([[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 30.0, 30.0]]))
    # min_size is in original-image pixels: an image downscaled by 2 keeps 8-pixel boxes
    proposals = rpn.find_proposals(ANCHORS, LOGITS, torch.zeros(1, 4, 4), [(50, 50)], [0.5])
    assert proposals[0].shape[0] == 3


def test_rpn_proposals_topk_before_and_after_nms_per_image():
    two_logits = torch.cat((LOGITS, LOGITS.flip(1)))  # image 1 ranks the anchors in reverse
    proposals = _rpn(pre=2).find_proposals(ANCHORS, two_logits, torch.zeros(2, 4, 4), [(50, 50)] * 2, [1.0, 1.0])
    torch.testing.assert_close(proposals[0], ANCHORS[:1])  # anchors 0, 1 -> NMS -> anchor 0
    torch.testing.assert_close(proposals[1], torch.tensor([[0.0, 0.0, 30.0, 30.0]]))  # anchors 3, 2 -> 2 too small
    proposals = _rpn(post=1).find_proposals(ANCHORS, two_logits, torch.zeros(2, 4, 4), [(50, 50)] * 2, [1.0, 1.0])
    assert [p.shape[0] for p in proposals] == [1, 1]
    torch.testing.assert_close(proposals[1], torch.tensor([[0.0, 0.0, 30.0, 30.0]]))


def _clustered_boxes(num_boxes, num_images, seed):
    """Boxes in a few clusters (heavy overlap: most are suppressed), scores with ties."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(6, 2, generator=g) * 400
    xy = centres[torch.randint(0, 6, (num_boxes,), generator=g)] + torch.randn(num_boxes, 2, generator=g) * 25
    wh = 20 + torch.rand(num_boxes, 2, generator=g) * 120
    boxes = torch.cat((xy, xy + wh), dim=1)
    scores = torch.randint(0, 50, (num_boxes,), generator=g).float() / 50  # many equal scores
    image_idx = torch.randint(0, num_images, (num_boxes,), generator=g)
    return boxes, scores, image_idx


@pytest.mark.parametrize("num_boxes, num_images, topk", [(3000, 1, 300), (3000, 2, 40), (500, 2, 2000), (800, 3, 1), (0, 2, 5)])
@pytest.mark.parametrize("seed", [0, 1])
def test_nms_first_per_image_equals_full_nms_then_topk(num_boxes, num_images, topk, seed):
    """Stopping NMS at the topk-th survivor keeps exactly what NMS of every box, then topk, keeps."""
    boxes, scores, image_idx = _clustered_boxes(num_boxes, num_images, seed)
    kept, counts = nms_first_per_image(boxes, scores, image_idx, num_images, 0.7, topk)
    # Reference: NMS of all boxes of each image, torchvision's order (stable by score), then the first topk.
    expected, expected_counts = [], []
    for i in range(num_images):
        mine = torch.nonzero(image_idx == i).squeeze(1)
        survivors = mine[nms(boxes[mine], scores[mine], 0.7)][:topk]
        expected.append(survivors)
        expected_counts.append(survivors.numel())
    assert counts == expected_counts
    assert torch.equal(kept, torch.cat(expected))
    if num_boxes:
        assert 0 < sum(counts) < num_boxes  # NMS both kept and suppressed boxes
        # The batched form the RPN used before gives the same result where no scores tie
        # (batched_nms orders equal scores of different images as its sort happens to).
        distinct = scores + torch.randperm(num_boxes, generator=torch.Generator().manual_seed(seed)) * 1e-6
        kept, counts = nms_first_per_image(boxes, distinct, image_idx, num_images, 0.7, topk)
        everything = batched_nms(boxes, distinct, image_idx, 0.7)
        batched_kept, batched_counts = keep_topk_per_image(everything, image_idx[everything], num_images, topk)
        assert counts == batched_counts and torch.equal(kept, batched_kept)


def test_rpn_losses_ignore_cross_boundary_anchors():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [-8.0, 0.0, 2.0, 10.0]])
    gt = [torch.tensor([[0.0, 0.0, 10.0, 10.0]])]
    logits = torch.tensor([[2.0, -1.0]])
    deltas = torch.tensor([[[0.5, 0.0, 0.0, 0.0], [3.0, 3.0, 3.0, 3.0]]])
    beta = 1.0 / 9
    l1 = 0.5 - 0.5 * beta  # smooth L1 of 0.5 above beta
    bce_pos, bce_neg = math.log1p(math.exp(-2.0)), math.log1p(math.exp(-1.0))

    losses = _rpn(boundary=0).losses(anchors, logits, deltas, [(10, 10)], gt)
    assert math.isclose(float(losses["loss_rpn_cls"]), bce_pos, rel_tol=1e-5)  # only anchor 0 is sampled
    assert math.isclose(float(losses["loss_rpn_loc"]), l1, rel_tol=1e-5)

    losses = _rpn(boundary=-1).losses(anchors, logits, deltas, [(10, 10)], gt)
    # anchor 1 (IoU 20/180 = 0.11 < 0.3) now is a negative; normalizer 2
    assert math.isclose(float(losses["loss_rpn_cls"]), (bce_pos + bce_neg) / 2, rel_tol=1e-5)
    assert math.isclose(float(losses["loss_rpn_loc"]), l1 / 2, rel_tol=1e-5)


def test_rpn_losses_empty_image_zero_regression():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 15.0]])
    deltas = torch.randn(1, 2, 4, requires_grad=True)
    losses = _rpn().losses(anchors, torch.zeros(1, 2, requires_grad=True), deltas, [(20, 20)], [torch.zeros(0, 4)])
    assert losses["loss_rpn_loc"].item() == 0.0
    assert math.isclose(losses["loss_rpn_cls"].item(), math.log(2.0), rel_tol=1e-6)
    sum(losses.values()).backward()
    assert float(deltas.grad.abs().sum()) == 0.0


def test_rpn_rejects_mismatched_anchor_count():
    with pytest.raises(ValueError, match="anchors per location"):
        RegionProposalNetwork(
            head=RPNHead(in_channels=4, num_anchors=9),
            anchor_generator=AnchorGenerator(sizes=[16.0], aspect_ratios=[1.0], stride=16),
            box_coder=BoxCoder(),
            matcher=Matcher(fg_iou_thresh=0.7, bg_iou_thresh_hi=0.3),
            sampler=BalancedSampler(batch_size_per_image=256, positive_fraction=0.5),
            pre_nms_topk_train=1,
            post_nms_topk_train=1,
            pre_nms_topk_test=1,
            post_nms_topk_test=1,
            nms_thresh=0.7,
            min_size=0,
            boundary_threshold=0,
            smooth_l1_beta=0.1,
        )


# ------------------------------------------------------------------------ RoI heads
def _roi_heads(num_classes=2, detections=100, score_thresh=0.05, nms_thresh=0.3, batch=128, fraction=0.25):
    return ROIHeads(
        pooler=ROIPooler(pooler_type="ROIAlignV2", output_size=2, spatial_scale=1 / 16),
        predictor=FastRCNNPredictor(in_channels=4, num_classes=num_classes),
        box_coder=BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)),
        matcher=Matcher(fg_iou_thresh=0.5, bg_iou_thresh_hi=0.5),
        sampler=BalancedSampler(batch_size_per_image=batch, positive_fraction=fraction),
        num_classes=num_classes,
        smooth_l1_beta=1.0,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_image=detections,
        box_head=nn.Flatten(),
    ).eval()


def _logits(probabilities):
    return torch.tensor(probabilities).log()


A, B, C = [0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [50.0, 50.0, 60.0, 60.0]  # IoU(A, B) = 0.82


def test_detection_nms_and_score_threshold_hand_made():
    heads = _roi_heads()
    proposals = [torch.tensor([A, B, C]), torch.tensor([A])]
    logits = _logits(
        [
            [0.1, 0.8, 0.1],  # A: class 1 0.8 (kept), class 2 0.1 (suppressed by B's 0.12)
            [0.18, 0.7, 0.12],  # B: class 1 suppressed by A, class 2 0.12 kept
            [0.955, 0.04, 0.005],  # C: both below 0.05
            [0.1, 0.6, 0.3],  # image 1, A: no suppression across images or classes
        ]
    )
    dets = heads.inference(logits, torch.zeros(4, 8), proposals, [(100, 100), (100, 100)])
    assert dets[0]["labels"].tolist() == [1, 2]
    torch.testing.assert_close(dets[0]["scores"], torch.tensor([0.8, 0.12]))
    torch.testing.assert_close(dets[0]["boxes"], torch.tensor([A, B]))
    assert dets[1]["labels"].tolist() == [1, 2]
    torch.testing.assert_close(dets[1]["scores"], torch.tensor([0.6, 0.3]))

    top1 = _roi_heads(detections=1).inference(logits, torch.zeros(4, 8), proposals, [(100, 100)] * 2)
    assert [d["labels"].tolist() for d in top1] == [[1], [1]]
    torch.testing.assert_close(torch.cat([d["scores"] for d in top1]), torch.tensor([0.8, 0.6]))


def test_roi_inference_with_no_images_returns_an_empty_list():
    # an empty batch used to raise from torch.cat([]) (issue 15)
    assert _roi_heads().inference(torch.zeros(0, 3), torch.zeros(0, 8), [], []) == []
    # images without any proposal still get one (empty) result each
    dets = _roi_heads().inference(torch.zeros(0, 3), torch.zeros(0, 8), [torch.zeros(0, 4)] * 2, [(50, 60)] * 2)
    assert len(dets) == 2 and all(len(d["boxes"]) == 0 and d["boxes"].shape == (0, 4) for d in dets)


def _reference_inference(logits, deltas, proposals, image_sizes, heads):
    """Per image, per class loops with torchvision.ops.nms: the slow, obvious way."""
    results, start = [], 0
    coder = heads.box_coder
    for props, (h, w) in zip(proposals, image_sizes):
        n = props.shape[0]
        probs = torch.softmax(logits[start : start + n], dim=1)
        dets = []
        for c in range(1, heads.num_classes + 1):
            boxes = coder.decode(deltas[start : start + n, 4 * (c - 1) : 4 * c], props)
            boxes = clip_boxes(boxes, torch.tensor([h, w]))
            scores = probs[:, c]
            keep = (scores > heads.score_thresh) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, scores = boxes[keep], scores[keep]
            kept = nms(boxes, scores, heads.nms_thresh)
            dets += [(float(s), c, b.tolist()) for s, b in zip(scores[kept], boxes[kept])]
        dets.sort(key=lambda d: -d[0])
        results.append(dets[: heads.detections_per_image])
        start += n
    return results


def test_vectorized_inference_matches_per_class_loop():
    g = torch.Generator().manual_seed(3)
    heads = _roi_heads(num_classes=4, detections=20, score_thresh=0.1, nms_thresh=0.5)
    proposals = [_random_boxes(30, g, max_xy=150), _random_boxes(25, g, max_xy=150)]
    logits = torch.randn(55, 5, generator=g) * 2
    deltas = torch.randn(55, 16, generator=g)
    sizes = [(200, 180), (160, 220)]
    ours = heads.inference(logits, deltas, proposals, sizes)
    expected = _reference_inference(logits, deltas, proposals, sizes, heads)
    for det, ref in zip(ours, expected):
        assert det["labels"].tolist() == [c for _, c, _ in ref]
        torch.testing.assert_close(det["scores"], torch.tensor([s for s, _, _ in ref]))
        torch.testing.assert_close(det["boxes"], torch.tensor([b for _, _, b in ref]).reshape(-1, 4))


def test_roi_sampling_exact_counts_and_targets():
    heads = _roi_heads(batch=128, fraction=0.25).train()
    gt = torch.tensor([[100.0, 100.0, 200.0, 200.0]])
    foreground = gt + torch.tensor([[1.0, 0.0, 1.0, 0.0]]) * torch.arange(10.0)[:, None]  # IoU >= 0.82
    background = torch.tensor([[300.0, 300.0, 340.0, 340.0]]).repeat(200, 1)
    torch.manual_seed(0)
    sampled, labels, targets = heads.label_and_sample(
        [torch.cat((foreground, background))], [gt], [torch.tensor([2])]
    )
    # 10 foreground proposals + the appended ground truth = 11 foreground, 117 background
    assert sampled[0].shape[0] == 128
    assert int((labels == 2).sum()) == 11 and int((labels == 0).sum()) == 117
    expected = heads.box_coder.encode(sampled[0][:11], gt.expand(11, 4))
    torch.testing.assert_close(targets[:11], expected)
    assert float(targets[11:].abs().sum()) == 0.0

    many = gt + torch.tensor([[1.0, 0.0, 1.0, 0.0]]) * torch.arange(50.0)[:, None] / 5
    sampled, labels, _ = heads.label_and_sample([torch.cat((many, background))], [gt], [torch.tensor([1])])
    assert int((labels == 1).sum()) == 32 and int((labels == 0).sum()) == 96


def test_roi_losses_empty_image():
    heads = _roi_heads().train()
    proposals = [torch.tensor([A, B, C])]
    features = torch.randn(1, 1, 8, 8, requires_grad=True)
    _, losses = heads(features, proposals, [(100, 100)], [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.int64)])
    assert losses["loss_box_reg"].item() == 0.0
    assert math.isfinite(losses["loss_cls"].item()) and losses["loss_cls"].item() > 0
    sum(losses.values()).backward()
    assert heads.predictor.bbox_pred.weight.grad is not None
    assert float(heads.predictor.bbox_pred.weight.grad.abs().sum()) == 0.0


def test_pooler_types_and_roi_format():
    features = torch.arange(64.0).view(1, 1, 8, 8)
    rois = boxes_to_rois([torch.tensor([[0.0, 0.0, 64.0, 64.0]]), torch.zeros(0, 4)])
    assert rois.tolist() == [[0.0, 0.0, 0.0, 64.0, 64.0]]
    pool = ROIPooler(pooler_type="ROIPool", output_size=2, spatial_scale=1 / 8)
    # Caffe RoIPool on py-faster-rcnn's inclusive box (0, 0, 59, 59): cells
    # round(0 / 8) .. round(59 / 8) = 0..7, bins of 4: the max of each quadrant.
    pooled = pool(features, boxes_to_rois([torch.tensor([[0.0, 0.0, 60.0, 60.0]])]))
    assert pooled.view(-1).tolist() == [27.0, 31.0, 59.0, 63.0]
    # inclusive (0, 0, 63, 63): cells 0..round(7.875) = 0..8 (9 cells, bins of 4.5 rounded outwards)
    assert pool(features, rois).view(-1).tolist() == [36.0, 39.0, 60.0, 63.0]
    aligned = ROIPooler(pooler_type="ROIAlignV2", output_size=2, spatial_scale=1 / 8, sampling_ratio=2)(features, rois)
    # mean of each quadrant: bilinear samples at the quadrant's sample points
    assert aligned.view(-1).tolist() == [13.5, 17.5, 45.5, 49.5]
    with pytest.raises(ValueError, match="pooler_type must be one of ROIPool, ROIAlign, ROIAlignV2"):
        ROIPooler(pooler_type="RoIWarp", output_size=7, spatial_scale=1 / 16)
