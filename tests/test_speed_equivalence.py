"""Speed options must not change results, and the speed benchmark compares like with like.

* The real detector (``build_model`` from a config) gives the same detections with
  every speed option on (``model.fold_frozen_bn``, ``model.speed.*``) as with all
  of them off, on bottleneck and basic-block ResNets, in both bottleneck layouts
  and with every pooler type; each option alone too.
* Training: the same four losses and the same gradients with the options on and off.
* RoIAlign as one sparse matrix product (``model.speed.roi_align_by_matrix``)
  gives torchvision's ``roi_align`` values and gradients.
* The optimized code paths really run where they apply (res5's conv1 before
  RoIAlign, folded and channels-last weights) and fall back where they would
  not be exact: RoIPool, the MSRA layout, a training BN, basic blocks, and RoIs
  reaching off the feature map (where forcing the fast order would give other
  numbers). ``ROIPooler.weights_sum_to_one`` is checked against torchvision's
  RoIAlign kernel itself.
* The torchvision detector of the benchmark, built into the C4 architecture and
  given our weights by ``benchmarks/detectors.py``, computes the same trunk
  features and the same detections as ours (an independent implementation of
  every stage: transform, anchors, RPN, RoIAlign, res5, post-processing).
* The benchmark's multiply-add count agrees with ``detectron_res.analysis``
  (which counts a real forward pass), with and without conv1 before RoIAlign.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch
from torchvision.ops import roi_align

# The repository root, for the ``benchmarks`` package (not installed with detectron_res).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.detectors import (  # noqa: E402
    SPEED_OPTIONS,
    DetectorSpec,
    _torchvision_key,
    build_ours,
    build_pair,
    make_images,
    make_targets,
    match_detections,
    speed_overrides,
)
from benchmarks.inference import padded_size  # noqa: E402
from benchmarks.sweeps import StageTimer  # noqa: E402

from detectron_res.analysis import count_c4_detector_macs as count_macs  # noqa: E402
from detectron_res.analysis import count_macs as analysis_count_macs  # noqa: E402
from detectron_res.modeling.backbone.norm import Conv2dNorm  # noqa: E402
from detectron_res.modeling.poolers import ROIPooler, boxes_to_rois, roi_align_by_matrix  # noqa: E402
from helpers import R50_ALIGN, thin_detector, two_test_images  # noqa: E402

def thin_model(*overrides: str):
    """A thin detector with the benchmark's random weights (tests/helpers.py)."""
    return thin_detector(*overrides)


def plain_and_fast(*overrides: str, options=SPEED_OPTIONS):
    """The same detector twice (same weights): every speed option off, and ``options`` on."""
    plain = thin_model(*overrides, *speed_overrides(()))
    fast = thin_model(*overrides, *speed_overrides(options))
    fast.load_state_dict(plain.state_dict())
    return plain, fast


def _images():
    return two_test_images()


def _assert_same_detections(reference, other, *, score_tol=1e-4, box_tol=1e-2):
    num = sum(len(d["boxes"]) for d in reference)
    assert num > 0, "the test model produced no detections; nothing was compared"
    stats = match_detections(reference, other)
    assert stats["agreement"] == 1.0, stats
    assert stats["max_score_diff"] <= score_tol and stats["max_box_diff"] <= box_tol, stats
    for a, b in zip(reference, other):
        assert torch.equal(a["labels"], b["labels"])


class PoolerCalls:
    """Counts RoI pooling calls: one per forward in the plain order, one per map pooled otherwise."""

    def __init__(self, model):
        self.count = 0
        self.handle = model.roi_heads.pooler.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.count += 1


# ----------------------------------------------------------------- inference
R50_MSRA_ALIGN = R50_ALIGN + ("model.backbone.stride_in_1x1=true",)
BOTH = ("conv1", "shortcut")


@pytest.mark.parametrize(
    "overrides, moved",
    [
        (R50_ALIGN, BOTH),
        (("model.backbone.depth=50", "model.roi_heads.pooler_type=ROIAlignV2"), BOTH),
        # The MSRA layout: both 1x1 convs have stride 2 and read every other bin.
        (R50_MSRA_ALIGN, BOTH),
        # Fallbacks: a maximum does not commute with a linear map; basic blocks start with a 3x3 conv.
        (("model.backbone.depth=50", "model.roi_heads.pooler_type=ROIPool"), ()),
        (("model.backbone.depth=18", "model.roi_heads.pooler_type=ROIAlignV2"), ()),
    ],
    ids=["R50-ROIAlign", "R50-ROIAlignV2", "R50-MSRA-ROIAlign", "R50-ROIPool", "R18-ROIAlignV2"],
)
def test_all_speed_options_give_the_plain_detections(overrides, moved):
    plain, fast = plain_and_fast(*overrides)
    plain.prepare_for_inference()
    fast.prepare_for_inference()
    # The options took effect: FrozenBN folded away, NHWC weights; the plain model kept both as built.
    assert not any(isinstance(m, Conv2dNorm) and not isinstance(m.norm, torch.nn.Identity) for m in fast.modules())
    assert fast.backbone.stem.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert plain.backbone.stem.conv1.weight.is_contiguous()
    assert fast.roi_heads.convs_moved_before_pool == moved and plain.roi_heads.convs_moved_before_pool == ()
    images = _images()
    calls = PoolerCalls(fast)
    _assert_same_detections(plain(images), fast(images))
    assert calls.count == (2 if moved else 1)  # conv1's and the shortcut's maps, not the input


@pytest.mark.parametrize("option", SPEED_OPTIONS)
def test_each_speed_option_alone_gives_the_plain_detections(option):
    plain, fast = plain_and_fast(*R50_ALIGN, options=(option,))
    plain.prepare_for_inference()
    # Without folding, FrozenBN stays and fused_frozen_bn is what applies it.
    fast.prepare_for_inference()
    _assert_same_detections(plain(_images()), fast(_images()))


def test_fused_frozen_bn_without_folding_matches_the_separate_norm():
    plain, fast = plain_and_fast(*R50_ALIGN, options=("fused_frozen_bn",))
    x = torch.randn(2, 3, 64, 80) * 50
    with torch.no_grad():
        reference = plain.eval().backbone(x)["res4"]
        fused = fast.eval().backbone(x)["res4"]
    torch.testing.assert_close(fused, reference, rtol=1e-4, atol=1e-4 * float(reference.abs().max()))
    conv = fast.backbone.res3[0].conv1
    assert conv.fuse_frozen_bn and not plain.backbone.res3[0].conv1.fuse_frozen_bn
    # The fused conv never calls its norm module (that is the point).
    called = []
    handle = conv.norm.register_forward_hook(lambda *_: called.append(1))
    with torch.no_grad():
        fast.backbone(x)
    handle.remove()
    assert not called


# ------------------------------------------------------------------ training
def _losses_and_grads(model, images, targets):
    model.train()
    torch.manual_seed(7)  # the RPN and RoI samplers draw the same samples for both models
    losses = model(images, targets)
    sum(losses.values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return losses, grads


def _assert_same_training(plain, fast, images, targets):
    losses_plain, grads_plain = _losses_and_grads(plain, images, targets)
    losses_fast, grads_fast = _losses_and_grads(fast, images, targets)
    assert set(losses_plain) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}
    assert float(losses_plain["loss_box_reg"].detach()) > 0, "no foreground RoI: the box head's gradients were not compared"
    for key in losses_plain:
        torch.testing.assert_close(losses_fast[key], losses_plain[key], rtol=1e-4, atol=1e-6)
    assert set(grads_fast) == set(grads_plain) and len(grads_plain) > 50
    for name, grad in grads_plain.items():
        assert grad is not None and grads_fast[name] is not None, name
        # Sums over thousands of RoI positions in another order: float32 rounding
        # reaches ~2e-3 of the largest gradient entry of res5's weights.
        scale = float(grad.abs().max()) + 1e-12
        assert float((grads_fast[name] - grad).abs().max()) <= 1e-2 * scale, name


@pytest.mark.parametrize("overrides", [R50_ALIGN, R50_MSRA_ALIGN], ids=["torchvision-layout", "MSRA-layout"])
def test_speed_options_give_the_same_training_losses_and_gradients(overrides):
    plain, fast = plain_and_fast(*overrides)
    images = _images()
    targets = make_targets(images, 5, boxes_per_image=3, seed=5)
    calls = PoolerCalls(fast)
    _assert_same_training(plain, fast, images, targets)
    assert calls.count == 2  # conv1 and the shortcut ran before RoIAlign in training too


def test_a_ground_truth_box_off_the_map_takes_the_plain_order_in_training():
    # Room for every proposal in the RoI sample, so that the box below is certainly one of them.
    plain, fast = plain_and_fast(*R50_ALIGN, "model.roi_heads.batch_size_per_image=512")
    images = _images()
    targets = make_targets(images, 5, boxes_per_image=3, seed=5)
    # Ground-truth boxes join the proposals in training; this one reaches 40 px
    # beyond the right edge of the padded batch (160 x 160 pixels).
    targets[0]["boxes"][0] = torch.tensor([100.0, 20.0, 200.0, 90.0])
    calls = PoolerCalls(fast)
    _assert_same_training(plain, fast, images, targets)
    assert calls.count == 1


# --------------------------------------------------------- RoIAlign as a matrix
@pytest.mark.parametrize(
    "aligned, sampling_ratio, size, bin_stride",
    [(False, 0, 14, 1), (True, 0, 7, 1), (False, 2, 7, 1), (True, 3, 14, 1), (False, 0, 14, 2), (True, 2, 7, 2)],
)
def test_roi_align_by_matrix_matches_torchvision(aligned, sampling_ratio, size, bin_stride):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 6, 10, 12, generator=g).contiguous(memory_format=torch.channels_last)
    # Boxes on and off a 192 x 160 image (a 12 x 10 map at stride 16), from tiny (and
    # inverted: x2 < x1) to larger than the map, in both images.
    n = 300
    xy = torch.rand(n, 2, generator=g) * torch.tensor([240.0, 200.0]) - 40.0
    wh = torch.rand(n, 2, generator=g) * torch.tensor([260.0, 220.0]) * torch.rand(n, 1, generator=g) ** 2 - 2.0
    rois = torch.cat((torch.randint(0, 2, (n, 1), generator=g).float(), xy, xy + wh), dim=1)
    ours_in = features.clone().requires_grad_(True)
    tv_in = features.clone().requires_grad_(True)
    pooled = roi_align_by_matrix(ours_in, rois, size, 1 / 16, sampling_ratio, aligned, bin_stride)
    # bin_stride keeps every other bin: what a stride-2 1x1 conv reads.
    reference = roi_align(tv_in, rois, (size, size), 1 / 16, sampling_ratio, aligned=aligned)[
        :, :, ::bin_stride, ::bin_stride
    ]
    kept = len(range(0, size, bin_stride))
    assert pooled.shape == (n, 6, kept, kept)
    torch.testing.assert_close(pooled, reference, rtol=1e-5, atol=1e-5)
    grad = torch.randn(reference.shape, generator=g)
    pooled.backward(grad)
    reference.backward(grad)
    torch.testing.assert_close(ours_in.grad, tv_in.grad, rtol=1e-5, atol=1e-4)
    assert roi_align_by_matrix(features, rois[:0], size, 1 / 16, sampling_ratio, aligned, bin_stride).shape == (
        0, 6, kept, kept
    )
    # Without autograd the product is written straight into its output (addmm, beta=0):
    # the same numbers as the autograd path's sparse.mm, bit for bit.
    with torch.inference_mode():
        fast = roi_align_by_matrix(features, rois, size, 1 / 16, sampling_ratio, aligned, bin_stride)
    assert torch.equal(fast, pooled.detach())


def test_pooler_uses_the_matrix_on_the_cpu_only_when_switched_on():
    features = torch.randn(1, 4, 8, 8)
    rois = torch.tensor([[0.0, 8.0, 8.0, 100.0, 90.0]])
    on = ROIPooler(pooler_type="ROIAlignV2", output_size=7, spatial_scale=1 / 16, roi_align_by_matrix=True)
    off = ROIPooler(pooler_type="ROIAlignV2", output_size=7, spatial_scale=1 / 16, roi_align_by_matrix=False)
    # The matrix path returns channels-last strides, torchvision's kernel contiguous ones.
    assert on(features, rois).is_contiguous(memory_format=torch.channels_last) and not on(features, rois).is_contiguous()
    assert off(features, rois).is_contiguous()
    torch.testing.assert_close(on(features, rois), off(features, rois))
    # Under CPU autocast the pooler still pools in float32 (sparse kernels have no bf16) and returns bf16.
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        low = on(features.bfloat16(), rois)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), off(features.bfloat16().float(), rois), rtol=1e-2, atol=1e-2)
    # Tracing (ONNX export) records torchvision's op.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's own shape checks warn under tracing
        traced = torch.jit.trace(on, (features, rois))
    assert "roi_align" in str(traced.graph) and "sparse" not in str(traced.graph)


# ------------------------------------------------------------------ fallbacks
def test_weights_sum_to_one_agrees_with_torchvision_roi_align():
    """Pooling a map of ones gives exactly 1 in every bin where the weights sum to 1."""
    features = torch.ones(1, 1, 10, 12)
    g = torch.Generator().manual_seed(0)
    # Boxes on and around a 192 x 160 image (a 12 x 10 map at stride 16), some tiny.
    xy = torch.rand(400, 2, generator=g) * torch.tensor([240.0, 200.0]) - 40.0
    wh = torch.rand(400, 2, generator=g) * torch.tensor([120.0, 100.0]) + torch.rand(400, 1, generator=g) * 8
    rois = torch.cat((torch.zeros(400, 1), xy, xy + wh), dim=1)
    for pooler_type, aligned in (("ROIAlign", False), ("ROIAlignV2", True)):
        pooler = ROIPooler(pooler_type=pooler_type, output_size=7, spatial_scale=1 / 16)
        pooled = roi_align(features, rois, (7, 7), 1 / 16, 0, aligned=aligned)
        all_ones = (pooled - 1).abs().flatten(1).max(dim=1).values < 1e-5
        verdict = torch.tensor([pooler.weights_sum_to_one(features, r[None]) for r in rois])
        assert not (verdict & ~all_ones).any(), rois[verdict & ~all_ones][:3]  # never wrong when it says yes
        assert verdict.sum() > 100 and (~all_ones).sum() > 50  # both kinds occur
        # It says no only near the border: boxes well inside the map always pass.
        inside = (rois[:, 1:3] >= 8).all(dim=1) & (rois[:, 3] <= 184) & (rois[:, 4] <= 152)
        assert verdict[inside].all()
        assert pooler.weights_sum_to_one(features, rois[inside])
        assert not pooler.weights_sum_to_one(features, rois)
    assert not ROIPooler(pooler_type="ROIPool", output_size=7, spatial_scale=1 / 16).weights_sum_to_one(features, rois[:1])


def test_rois_off_the_map_take_the_plain_order():
    plain, fast = plain_and_fast(*R50_ALIGN)
    heads_plain, heads_fast = plain.eval().roi_heads, fast.eval().roi_heads
    features = torch.randn(1, 1024 // 4, 7, 9) * 2
    # The map covers 144 x 112 input pixels; the second RoI reaches 30 px beyond it.
    proposals = [torch.tensor([[10.0, 10.0, 90.0, 70.0], [60.0, 40.0, 174.0, 100.0]])]
    rois = boxes_to_rois(proposals)
    assert heads_fast.convs_moved_before_pool == BOTH and not heads_fast.pooler.weights_sum_to_one(features, rois)
    with torch.no_grad():
        reference = heads_plain.pool_and_res5(features, rois)  # [2, C5, 7, 7]
        fallback = heads_fast.pool_and_res5(features, rois)
        for a, b in zip(heads_plain.predict(features, proposals), heads_fast.predict(features, proposals)):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
        # Forcing the fast order there gives other numbers: the fallback is needed.
        heads_fast.pooler.weights_sum_to_one = lambda *_: True
        forced = heads_fast.pool_and_res5(features, rois)
    scale = float(reference.abs().max())
    torch.testing.assert_close(fallback, reference, rtol=1e-4, atol=1e-5 * scale)
    torch.testing.assert_close(forced[0], reference[0], rtol=1e-4, atol=1e-5 * scale)  # the RoI on the map
    assert float((forced[1] - reference[1]).abs().max()) > 1e-3 * scale  # not rounding: 100x the tolerance above


def test_convs_stay_after_pooling_with_a_training_batchnorm():
    # res5 with a trainable BN (freeze_at < 5): statistics of the map would differ from
    # those of the pooled RoIs in training; in eval mode BN is a fixed affine map again.
    _, fast = plain_and_fast("model.backbone.depth=50", "model.roi_heads.pooler_type=ROIAlign",
                             "model.backbone.norm=BN", "model.backbone.freeze_at=0")
    assert fast.train().roi_heads.convs_moved_before_pool == ()
    assert fast.eval().roi_heads.convs_moved_before_pool == BOTH
    # Each switch alone moves its own conv.
    for option, moved in (("res5_conv1_before_pool", ("conv1",)), ("res5_shortcut_before_pool", ("shortcut",))):
        _, one = plain_and_fast(*R50_MSRA_ALIGN, options=(option,))
        assert one.roi_heads.convs_moved_before_pool == moved
    with pytest.raises(ValueError, match="forward_every_pixel needs a 1x1"):
        fast.backbone.res3[0].conv2.forward_every_pixel(torch.zeros(1, 32, 8, 8))


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
    ours_out = ours(images)  # the speed options of the config's defaults, FrozenBN not folded
    with torch.inference_mode():
        tv_out = tv(images)
    _assert_same_detections(ours_out, tv_out)
    prepared = build_ours(spec, seed=0).prepare_for_inference()  # folded, channels-last
    _assert_same_detections(ours_out, prepared(images))


@pytest.mark.parametrize("depth", [18, 50])
def test_benchmark_mac_count_matches_a_real_forward_pass(depth):
    spec = DetectorSpec(depth=depth, num_classes=5, min_size=96, max_size=128, num_proposals=10, pre_nms_topk=200)
    model = build_ours(spec, seed=0)
    assert model.roi_heads.convs_moved_before_pool == (BOTH if depth == 50 else ())
    images = make_images(1, 96, 128, seed=0)
    timer = StageTimer(model, torch.device("cpu"))
    stages = timer.run(lambda: model(images))
    timer.remove()
    assert set(stages) == set(StageTimer.STAGES) | {"total"}
    assert all(v >= -1e-3 for v in stages.values()), stages
    assert stages["res5"] > 0 and stages["roi_pool"] > 0
    assert abs(sum(stages[k] for k in StageTimer.STAGES) - stages["total"]) < 1e-6
    num_rois = timer.rois[-1]
    counted = count_macs(model, padded_size(96, 128), num_rois)
    measured = analysis_count_macs(model, (images,))
    assert counted["trunk"] == sum(v for k, v in measured.items() if k.startswith("backbone."))
    assert counted["rpn"] == measured["rpn"]
    assert counted["res5"] + counted["predictor"] == measured["roi_heads"]
    assert counted["total"] == measured["total"]
    assert (counted["before_pool_saving"] > 0) is (depth == 50)
