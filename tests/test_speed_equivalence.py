"""Speed options must not change results, and the speed benchmark compares like with like.

* Our detector gives the same detections with every speed option on and off:
  FrozenBN folded (``prepare_for_inference``), channels-last weights, and the
  changes proposed for the modeling code (``benchmarks/proposed.py``), on
  bottleneck and basic-block ResNets and with every pooler type.
* The torchvision detector of the benchmark, built into the C4 architecture and
  given our weights by ``benchmarks/common.py``, computes the same trunk
  features and the same detections as ours (an independent implementation of
  every stage: transform, anchors, RPN, RoIAlign, res5, post-processing).
* The benchmark's multiply-add count agrees with ``detectron_res.analysis``
  (which counts a real forward pass).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from common import (  # noqa: E402
    DetectorSpec,
    _torchvision_key,
    build_ours,
    build_pair,
    make_images,
    make_targets,
    match_detections,
    optimize_for_inference,
    randomize_weights,
)
from proposed import PROPOSED_CHANGES, apply_proposed, prepool_applicable  # noqa: E402
from run import StageTimer, count_macs, padded_size  # noqa: E402

from detectron_res.analysis import count_macs as analysis_count_macs  # noqa: E402
from detectron_res.config import load_config  # noqa: E402
from detectron_res.modeling.build import build_model  # noqa: E402

# A thin ResNet (a quarter of the paper's widths) so that the whole file runs in seconds.
THIN = [
    "model.backbone.base_channels=16",
    "model.backbone.norm=FrozenBN",
    "model.backbone.freeze_at=2",
    "model.backbone.stride_in_1x1=false",
    "model.anchor.sizes=[32,64,128]",
    "model.roi_heads.num_classes=5",
    "model.rpn.pre_nms_topk_test=300",
    "model.rpn.post_nms_topk_test=30",
    "model.rpn.pre_nms_topk_train=300",
    "model.rpn.post_nms_topk_train=60",
    "model.rpn.boundary_threshold=-1",
    "model.roi_heads.batch_size_per_image=16",
    "input.min_size_train=[112]",
    "input.max_size_train=160",
    "input.min_size_test=112",
    "input.max_size_test=160",
]


def thin_model(*overrides: str):
    """A thin detector with the benchmark's random weights (non-trivial FrozenBN statistics, sharp predictor)."""
    model = build_model(load_config(None, THIN + list(overrides)))
    randomize_weights(model, seed=1)
    with torch.no_grad():
        # The thin res5's features are larger than the full-width one's: soften the
        # class scores so that they spread over (0.05, 1) instead of saturating.
        model.roi_heads.predictor.cls_score.weight.mul_(0.15)
    return model.eval()


def _images():
    # Two sizes: padding and per-image clipping are part of what must not change.
    return make_images(1, 112, 144, seed=3) + make_images(1, 128, 96, seed=4)


def _assert_same_detections(reference, other, *, score_tol=1e-4, box_tol=1e-2):
    num = sum(len(d["boxes"]) for d in reference)
    assert num > 0, "the test model produced no detections; nothing was compared"
    stats = match_detections(reference, other)
    assert stats["agreement"] == 1.0, stats
    assert stats["max_score_diff"] <= score_tol and stats["max_box_diff"] <= box_tol, stats
    for a, b in zip(reference, other):
        assert torch.equal(a["labels"], b["labels"])


@pytest.mark.parametrize(
    "overrides",
    [
        ("model.backbone.depth=50", "model.roi_heads.pooler_type=ROIAlign"),
        ("model.backbone.depth=50", "model.roi_heads.pooler_type=ROIAlignV2"),
        ("model.backbone.depth=50", "model.roi_heads.pooler_type=ROIPool"),
        ("model.backbone.depth=18", "model.roi_heads.pooler_type=ROIAlignV2"),
    ],
    ids=["R50-ROIAlign", "R50-ROIAlignV2", "R50-ROIPool", "R18-ROIAlignV2"],
)
def test_every_speed_option_gives_the_plain_detections(overrides):
    plain = thin_model(*overrides)
    images = _images()
    reference = plain(images)
    variants = {"fold+channels_last": optimize_for_inference(plain), "all": optimize_for_inference(apply_proposed(plain))}
    if overrides[1].endswith("=ROIAlign"):
        # Each option alone, on the configuration of the benchmark.
        variants["fold"] = optimize_for_inference(plain, channels_last=False)
        variants["channels_last"] = optimize_for_inference(plain, fold_bn=False)
        for change in PROPOSED_CHANGES:
            variants[change] = apply_proposed(plain, [change])
    for name, model in variants.items():
        _assert_same_detections(reference, model(images))
    # The plain model itself was not changed by building the variants.
    _assert_same_detections(reference, plain(images), score_tol=0.0, box_tol=0.0)


def test_prepool_applies_only_where_it_is_exact():
    assert prepool_applicable(thin_model("model.backbone.depth=50", "model.roi_heads.pooler_type=ROIAlign"))
    assert prepool_applicable(thin_model("model.backbone.depth=50", "model.roi_heads.pooler_type=ROIAlignV2"))
    # Max pooling does not commute with a linear map; a stride-2 1x1 (MSRA layout) keeps every other bin;
    # basic blocks start with a 3x3 conv.
    assert not prepool_applicable(thin_model("model.backbone.depth=50", "model.roi_heads.pooler_type=ROIPool"))
    assert not prepool_applicable(thin_model("model.backbone.depth=50", "model.backbone.stride_in_1x1=true"))
    assert not prepool_applicable(thin_model("model.backbone.depth=18"))
    # A trainable BN normalizes the map and the pooled RoIs with different batch statistics.
    assert not prepool_applicable(thin_model("model.backbone.depth=50", "model.backbone.norm=BN", "model.backbone.freeze_at=0"))
    with pytest.raises(ValueError, match="unknown proposed changes"):
        apply_proposed(thin_model("model.backbone.depth=18"), ["fold_everything"])


def test_proposed_changes_give_the_same_training_losses_and_gradients():
    plain = thin_model("model.backbone.depth=50", "model.roi_heads.pooler_type=ROIAlign").train()
    changed = apply_proposed(plain).train()
    images = _images()[:2]
    targets = make_targets(images, 5, boxes_per_image=3, seed=5)
    torch.manual_seed(7)
    losses_plain = plain(images, targets)
    torch.manual_seed(7)
    losses_changed = changed(images, targets)
    assert set(losses_plain) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}
    for key in losses_plain:
        torch.testing.assert_close(losses_changed[key], losses_plain[key], rtol=1e-4, atol=1e-6)
    sum(losses_plain.values()).backward()
    sum(losses_changed.values()).backward()
    grads_changed = dict(changed.named_parameters())
    checked = 0
    for name, p in plain.named_parameters():
        if p.grad is None:
            assert grads_changed[name].grad is None, name
            continue
        # Sums over thousands of RoI positions in another order: float32 rounding
        # reaches ~2e-3 of the largest gradient entry of res5's weights.
        scale = float(p.grad.abs().max()) + 1e-12
        assert float((grads_changed[name].grad - p.grad).abs().max()) <= 1e-2 * scale, name
        checked += 1
    assert checked > 50


# ------------------------------------------------------------- ours vs torchvision
@pytest.fixture(scope="module")
def r50_pair():
    # Full-width ResNet-50 (torchvision's ResNet cannot be made thinner) on small images, few proposals.
    spec = DetectorSpec(depth=50, num_classes=20, min_size=128, max_size=192, num_proposals=12, pre_nms_topk=400)
    return spec, *build_pair(spec, seed=0)


def test_torchvision_c4_has_our_weights_and_features(r50_pair):
    spec, ours, tv = r50_pair
    assert _torchvision_key("backbone.res3.0.shortcut.norm.running_var") == "backbone.layer2.0.downsample.1.running_var"
    assert _torchvision_key("roi_heads.res5.2.conv3.weight") == "roi_heads.box_head.layer4.2.conv3.weight"
    with pytest.raises(KeyError):
        _torchvision_key("roi_heads.mask_head.weight")
    # Both normalize the same image the same way and run the same trunk.
    image = make_images(1, 128, 192, seed=1)[0]
    with torch.no_grad():
        ours_input = (image - ours.preprocessor.pixel_mean) / ours.preprocessor.pixel_std
        tv_input = tv.transform.normalize(image)
        torch.testing.assert_close(tv_input, ours_input)
        ours_features = ours.backbone(ours_input[None])["res4"]
        tv_features = tv.backbone(tv_input[None])
    assert ours_features.shape == (1, 1024, 8, 12)
    torch.testing.assert_close(tv_features, ours_features, rtol=1e-4, atol=1e-4)
    # The same anchors in the same order (the RPN weights then mean the same thing).
    ours_anchors = ours.rpn.anchor_generator((8, 12))
    tv.rpn.anchor_generator.set_cell_anchors(torch.float32, torch.device("cpu"))
    tv_anchors = tv.rpn.anchor_generator.grid_anchors([(8, 12)], [[torch.tensor(16), torch.tensor(16)]])[0]
    torch.testing.assert_close(tv_anchors, ours_anchors)


def test_torchvision_c4_gives_our_detections(r50_pair):
    spec, ours, tv = r50_pair
    # Images at the test size (no resizing: torchvision and we round the resized size differently).
    images = make_images(2, 128, 192, seed=2)
    ours_out = ours(images)
    ours_fast = optimize_for_inference(apply_proposed(ours))(images)
    with torch.inference_mode():
        tv_out = tv(images)
    _assert_same_detections(ours_out, tv_out)
    _assert_same_detections(ours_out, ours_fast)


def test_benchmark_mac_count_matches_a_real_forward_pass():
    spec = DetectorSpec(depth=18, num_classes=5, min_size=96, max_size=128, num_proposals=10, pre_nms_topk=200)
    model = build_ours(spec, seed=0)
    images = make_images(1, 96, 128, seed=0)
    timer = StageTimer(model, torch.device("cpu"))
    stages = timer.run(lambda: model(images))
    timer.remove()
    assert set(stages) == set(StageTimer.STAGES) | {"total"}
    assert all(v >= -1e-3 for v in stages.values()), stages
    assert abs(sum(stages[k] for k in StageTimer.STAGES) - stages["total"]) < 1e-6
    num_rois = timer.rois[-1]
    counted = count_macs(model, padded_size(96, 128), num_rois)
    measured = analysis_count_macs(model, (images,))
    assert counted["trunk"] == sum(v for k, v in measured.items() if k.startswith("backbone."))
    assert counted["rpn"] == measured["rpn"]
    assert counted["res5"] + counted["predictor"] == measured["roi_heads"]
    assert counted["total"] == measured["total"]
