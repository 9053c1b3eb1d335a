"""Appendix B (Table 9) and flip testing: box voting, box refinement, global context,
multi-scale maxout, horizontal flip, and their composition."""
import pytest
import torch

from detectron_res.config import config_to_dict, load_config
from detectron_res.data.loader import Batch
from detectron_res.engine.checkpoint import save_checkpoint
from detectron_res.modeling.build import build_model
from detectron_res.modeling.test_time import (
    FeatureLevel,
    box_voting,
    hflip_batch,
    hflip_boxes,
    pyramid_size,
    select_scale_pair,
)

TINY = [
    "model.backbone.depth=18",
    "model.backbone.base_channels=8",
    "model.backbone.norm=FrozenBN",
    "model.anchor.sizes=[16,32,64]",
    "model.roi_heads.num_classes=3",
    "model.roi_heads.pooler_type=ROIAlignV2",
    "model.roi_heads.pooler_resolution=7",
    "model.rpn.pre_nms_topk_test=200",
    "model.rpn.post_nms_topk_test=40",
    "model.rpn.min_size=2",
    "input.min_size_train=[96]",
    "input.max_size_train=160",
    "input.min_size_test=96",
    "input.max_size_test=160",
]


def tiny_model(*overrides, seed=0):
    """A random tiny detector whose class scores are spread out (no ties) and exceed 0.05."""
    torch.manual_seed(seed)
    model = build_model(load_config(None, TINY + list(overrides)))
    with torch.no_grad():
        torch.nn.init.normal_(model.roi_heads.predictor.cls_score.weight, std=0.02)
        torch.nn.init.normal_(model.roi_heads.predictor.cls_score.bias, std=0.5)
    return model.eval()


def _images(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 100, 150, generator=g) * 255, torch.rand(3, 120, 90, generator=g) * 255]


def _assert_same_detections(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["labels"].tolist() == y["labels"].tolist()
        torch.testing.assert_close(x["scores"], y["scores"])
        torch.testing.assert_close(x["boxes"], y["boxes"], atol=1e-3, rtol=1e-4)


# ---------------------------------------------------------------- box voting
def test_box_voting_hand_computed():
    kept = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    kept_groups = torch.tensor([0, 0])
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # the first kept box itself, score 0.9
            [2.0, 0.0, 12.0, 10.0],  # IoU 80 / 120 = 0.67: votes, 0.6
            [0.0, 0.0, 10.0, 5.0],  # IoU 50 / 100 = 0.5 exactly: votes (>= 0.5), 0.5
            [5.0, 0.0, 15.0, 10.0],  # IoU 50 / 150 = 0.33: does not vote
            [0.0, 0.0, 10.0, 10.0],  # identical but another class (group 1): does not vote
            [50.0, 50.0, 60.0, 60.0],  # the second kept box, alone in its group
        ]
    )
    scores = torch.tensor([0.9, 0.6, 0.5, 0.95, 0.99, 0.3])
    groups = torch.tensor([0, 0, 0, 0, 1, 0])
    voted = box_voting(kept, kept_groups, boxes, scores, groups)
    # (0.9 * [0, 0, 10, 10] + 0.6 * [2, 0, 12, 10] + 0.5 * [0, 0, 10, 5]) / 2.0
    expected_first = [1.2 / 2.0, 0.0, (9.0 + 7.2 + 5.0) / 2.0, (9.0 + 6.0 + 2.5) / 2.0]
    torch.testing.assert_close(voted, torch.tensor([expected_first, [50.0, 50.0, 60.0, 60.0]]))
    assert box_voting(kept[:0], kept_groups[:0], boxes, scores, groups).shape == (0, 4)
    # at IoU >= 0.7 only the kept box itself votes
    torch.testing.assert_close(box_voting(kept, kept_groups, boxes, scores, groups, iou_thresh=0.7), kept)


# -------------------------------------------------------------- scale choice
def test_select_scale_pair_brackets_the_target_size():
    # levels at linear scales 0.5, 1, 2 of the base; target 224 x 224
    scales = torch.tensor([[0.5, 1.0, 2.0]])
    boxes = torch.tensor(
        [
            [0.0, 0.0, 224.0, 224.0],  # exactly 224 at scale 1: levels 1 and 2 (1 <= ideal 1.0)
            [0.0, 0.0, 300.0, 300.0],  # ideal 0.75: between 0.5 and 1 -> 0, 1
            [0.0, 0.0, 50.0, 50.0],  # ideal 4.5: larger than every level -> the two largest
            [0.0, 0.0, 1000.0, 1000.0],  # ideal 0.224: smaller than every level -> the two smallest
            [0.0, 0.0, 100.0, 400.0],  # area 200^2: ideal 1.12 -> 1, 2
        ]
    )
    lower, upper = select_scale_pair(boxes, torch.zeros(5, dtype=torch.int64), scales, 224.0)
    assert lower.tolist() == [1, 0, 1, 0, 1] and upper.tolist() == [2, 1, 2, 1, 2]
    one_level = select_scale_pair(boxes, torch.zeros(5, dtype=torch.int64), scales[:, :1], 224.0)
    assert one_level[0].tolist() == [0] * 5 and one_level[1].tolist() == [0] * 5


def test_pyramid_size_caps_the_longer_side_in_proportion():
    # 600 / 1000 cap, image 400 x 1200 (h x w): at 300 the longer side is capped at 500
    assert pyramid_size((400, 1200), 300, 600, 1000) == (167, 500)
    assert pyramid_size((400, 600), 300, 600, 1000) == (300, 450)


# ------------------------------------------------------------------- maxout
def test_maxout_of_two_identical_levels_equals_one_level():
    heads = tiny_model("model.roi_heads.global_context=true").roi_heads
    g = torch.Generator().manual_seed(1)
    features = torch.randn(2, heads.res5[0].conv1.in_channels, 8, 10, generator=g)
    proposals = [
        torch.tensor([[5.0, 5.0, 60.0, 70.0], [20.0, 10.0, 150.0, 120.0]]),
        torch.tensor([[0.0, 0.0, 30.0, 30.0]]),
    ]
    sizes = [(128, 160), (100, 120)]
    ones = torch.ones(2, 2)
    with torch.no_grad():
        single = heads.predict(features, proposals, sizes)
        maxout = heads.predict([FeatureLevel(features, ones), FeatureLevel(features, ones)], proposals, sizes)
    for a, b in zip(single, maxout):
        torch.testing.assert_close(a, b)


def test_a_level_pools_the_rois_scaled_to_it():
    """One level at twice the base scale: each RoI is pooled at twice its coordinates."""
    heads = tiny_model().roi_heads
    g = torch.Generator().manual_seed(2)
    features = torch.randn(1, heads.res5[0].conv1.in_channels, 16, 20, generator=g)
    proposals = [torch.tensor([[5.0, 5.0, 60.0, 70.0], [20.0, 10.0, 150.0, 120.0]])]
    with torch.no_grad():
        got = heads.predict([FeatureLevel(features, torch.full((1, 2), 2.0))], proposals)
        scaled = torch.cat((torch.zeros(2, 1), proposals[0] * 2), dim=1)
        expected = heads.predictor(heads.region_features(features, scaled))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_multiscale_with_only_the_input_scale_equals_single_scale():
    plain, pyramid = tiny_model(), tiny_model("test.scales=[96]")
    with torch.no_grad():
        _assert_same_detections(plain(_images()), pyramid(_images()))


def test_multiscale_runs_the_backbone_once_per_new_level():
    model = tiny_model("test.scales=[64,96,128]")
    calls = []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape[-2:])))
    with torch.no_grad():
        out = model(_images())
    # the input (96) for the RPN and the 96 level, then 64 and 128: three passes
    assert len(calls) == 3 and len(out) == 2
    assert sum(len(d["boxes"]) for d in out) > 0


def test_proposals_from_another_pyramid_level():
    same = tiny_model("test.scales=[64,96,128]", "test.proposal_scale=96")
    with torch.no_grad():
        _assert_same_detections(tiny_model("test.scales=[64,96,128]")(_images()), same(_images()))

    model = tiny_model("test.scales=[64,96,128]", "test.proposal_scale=64")
    rpn_calls, head_calls = [], []
    model.rpn.register_forward_hook(lambda m, i, o: rpn_calls.append((i[0].shape, i[1], [p.clone() for p in o[0]])))
    original = model.roi_heads.candidates
    model.roi_heads.candidates = lambda f, p, s: head_calls.append(([x.clone() for x in p], f)) or original(f, p, s)
    with torch.no_grad():
        model(_images())
    (feature_shape, level_sizes, level_proposals), = rpn_calls
    (proposals, levels), = head_calls
    input_sizes = model.preprocessor(_images()).images.image_sizes
    assert list(feature_shape) == list(levels[0].features.shape)  # the RPN ran on the 64 level
    assert level_sizes == [pyramid_size(o, 64, 96, 160) for o in [(100, 150), (120, 90)]]
    for i, ((h, w), (lh, lw)) in enumerate(zip(input_sizes, level_sizes)):
        back = level_proposals[i] * torch.tensor([w / lw, h / lh, w / lw, h / lh])
        torch.testing.assert_close(proposals[i], back)
        assert (proposals[i][:, 2] <= w + 1e-3).all() and (proposals[i][:, 3] <= h + 1e-3).all()
    with pytest.raises(ValueError, match=r"'test.proposal_scale' must be 0 .* test.scales=\[64, 96\]; got 80"):
        build_model(load_config(None, TINY + ["test.scales=[64,96]", "test.proposal_scale=80"]))


# ------------------------------------------------------------ box refinement
def test_refinement_with_zero_regression_equals_plain_detector_after_nms_and_voting():
    """Zero deltas: every refined box is its proposal, re-pooled to the same scores; the
    union is the plain candidates twice, which NMS 0.3 and voting reduce to the plain
    candidates' NMS 0.3 and voting."""
    models = [
        tiny_model(*extra, "model.roi_heads.nms_thresh_test=0.3")
        for extra in ([], ["model.roi_heads.box_refinement=true"])
    ]
    for m in models:
        with torch.no_grad():
            m.roi_heads.predictor.bbox_pred.weight.zero_()
            m.roi_heads.predictor.bbox_pred.bias.zero_()
    plain, refined = models
    images = _images()
    with torch.no_grad():
        prepared = plain.preprocessor(images)
        sizes = prepared.images.image_sizes
        features = plain.backbone(prepared.images.tensor)["res4"]
        proposals, _ = plain.rpn(features, sizes, None, prepared.image_scales)
        candidates = plain.roi_heads.candidates(features, proposals, sizes)
        selected = plain.roi_heads.select(*candidates, len(images), vote=True)
        voted = plain.preprocessor.postprocess(selected, sizes, prepared.orig_sizes)
        unvoted = plain(images)
        got = refined(images)
    _assert_same_detections(got, voted)
    assert sum(len(d["boxes"]) for d in got) > 10
    # voting moved boxes: the comparison is not with the plain detector's own output
    assert any(not torch.allclose(a["boxes"], b["boxes"]) for a, b in zip(voted, unvoted))


def test_refinement_pools_the_top_class_regressed_boxes_again():
    model = tiny_model("model.roi_heads.box_refinement=true")
    with torch.no_grad():
        torch.nn.init.normal_(model.roi_heads.predictor.bbox_pred.weight, std=0.05)
    seen = []
    original_predict = model.roi_heads.predict
    model.roi_heads.predict = lambda f, p, s=None: seen.append([x.clone() for x in p]) or original_predict(f, p, s)
    with torch.no_grad():
        prepared = model.preprocessor(_images())
        sizes = prepared.images.image_sizes
        features = model.backbone(prepared.images.tensor)["res4"]
        proposals, _ = model.rpn(features, sizes, None, prepared.image_scales)
        scores, boxes, roi_image = model.roi_heads.candidates(features, proposals, sizes)
    assert len(seen) == 2
    num = sum(len(p) for p in proposals)
    assert scores.shape[0] == 2 * num and roi_image[:num].tolist() == roi_image[num:].tolist()
    top = scores[:num].argmax(dim=1)
    torch.testing.assert_close(torch.cat(seen[1]), boxes[torch.arange(num), top])
    assert not torch.allclose(torch.cat(seen[1]), torch.cat(seen[0]))


# ------------------------------------------------------------ global context
def test_global_context_changes_only_the_predictor_input_width():
    plain, context = tiny_model(), tiny_model("model.roi_heads.global_context=true")
    a, b = plain.state_dict(), context.state_dict()
    assert a.keys() == b.keys()
    width = plain.roi_heads.res5.out_channels
    different = {k for k in a if a[k].shape != b[k].shape}
    assert different == {"roi_heads.predictor.cls_score.weight", "roi_heads.predictor.bbox_pred.weight"}
    for k in different:
        assert a[k].shape[1] == width and b[k].shape == (a[k].shape[0], 2 * width)
    # With the context columns at zero the context model computes the plain one.
    state = dict(a)
    for k in different:
        state[k] = torch.cat((a[k], torch.zeros_like(a[k])), dim=1)
    context.load_state_dict(state)
    with torch.no_grad():
        _assert_same_detections(plain(_images()), context(_images()))


def test_global_context_trains_end_to_end():
    model = tiny_model("model.roi_heads.global_context=true").train()
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 60.0, 80.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.tensor([[5.0, 5.0, 50.0, 40.0]]), "labels": torch.tensor([1])},
    ]
    losses = model(_images(), targets)
    sum(losses.values()).backward()
    width = model.roi_heads.res5.out_channels
    grad = model.roi_heads.predictor.cls_score.weight.grad
    assert grad[:, width:].abs().sum() > 0  # the context half of the predictor learns
    assert model.roi_heads.res5[0].conv1.weight.grad.abs().sum() > 0


def test_loading_a_checkpoint_without_context_reinitializes_the_predictor(tmp_path, caplog):
    from detectron_res.detection.task import initialize_weights

    plain = tiny_model()
    cfg = load_config(None, TINY)
    state = {"model": plain.state_dict(), "config": config_to_dict(cfg), "iteration": 7}
    save_checkpoint(state, tmp_path / "plain.pth")
    context = tiny_model("model.roi_heads.global_context=true", seed=1)
    before = {k: v.clone() for k, v in context.state_dict().items()}
    with caplog.at_level("INFO"):
        summary = initialize_weights(context, str(tmp_path / "plain.pth"), cfg)
    after = context.state_dict()
    predictor_keys = [k for k in after if k.startswith("roi_heads.predictor.")]
    assert len(predictor_keys) == 4
    for k in after:
        if k in predictor_keys:  # all four, biases included, keep their own initialization
            assert torch.equal(after[k], before[k]), k
        else:
            assert torch.equal(after[k], plain.state_dict()[k]), k
    assert "4 re-initialized" in summary
    assert "re-initialized the predictor" in caplog.text
    assert "takes 64 inputs per region, this model's 128" in caplog.text


# ----------------------------------------------------------------- flip
def test_hflip_helpers_hand_case():
    images = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).view(2, 3, 2, 4)
    flipped = hflip_batch(images, [(2, 3), (1, 4)])
    assert flipped[0, 0, 0].tolist() == [2.0, 1.0, 0.0, 0.0]  # 3 valid columns mirrored, padding stays
    assert flipped[1, 0, 0].tolist() == [27.0, 26.0, 25.0, 24.0] and flipped[1, 0, 1].tolist() == [0.0] * 4
    boxes = torch.tensor([[1.0, 2.0, 4.0, 5.0]])
    assert hflip_boxes(boxes, torch.tensor([10.0])).tolist() == [[6.0, 2.0, 9.0, 5.0]]
    # twice: the valid regions back, the padding zero
    padding_zeroed = images.clone()
    padding_zeroed[0, :, :, 3:] = 0
    padding_zeroed[1, :, 1:, :] = 0
    torch.testing.assert_close(hflip_batch(flipped, [(2, 3), (1, 4)]), padding_zeroed)


def test_hflip_detects_on_the_mirrored_input_and_maps_boxes_back():
    model = tiny_model("test.hflip=true")
    inputs = []
    model.backbone.register_forward_hook(lambda m, i, o: inputs.append(i[0].clone()))
    seen = []
    original = model.roi_heads.select
    model.roi_heads.select = lambda *a, **k: seen.append((a, k)) or original(*a, **k)
    images = _images()
    with torch.no_grad():
        out = model(images)
        sizes = model.preprocessor(images).images.image_sizes
        # the mirrored view's candidates, computed by hand and mirrored back
        mirror_features = model.backbone(inputs[1])["res4"]
        proposals, _ = model.rpn(mirror_features, sizes, None, model.preprocessor(images).image_scales)
        scores, boxes, roi_image = model.roi_heads.candidates(mirror_features, proposals, sizes)
    assert len(inputs) >= 2
    torch.testing.assert_close(inputs[1], hflip_batch(inputs[0], sizes))
    (all_scores, all_boxes, all_image, num_images), kwargs = seen[0]
    assert kwargs == {"vote": True} and num_images == 2
    n = all_scores.shape[0] - scores.shape[0]
    widths = torch.tensor([float(w) for _, w in sizes])[roi_image][:, None]
    torch.testing.assert_close(all_boxes[n:], hflip_boxes(boxes, widths))
    torch.testing.assert_close(all_scores[n:], scores)
    assert len(out) == 2 and sum(len(d["boxes"]) for d in out) > 0


# ------------------------------------------------------------ composition
ALL = [
    "model.roi_heads.box_refinement=true",
    "model.roi_heads.global_context=true",
    "test.scales=[64,96,128]",
    "test.hflip=true",
]


def test_all_options_compose_on_lists_and_loader_batches():
    model = tiny_model(*ALL, "model.roi_heads.detections_per_image=20")
    calls = []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape[-2:])))
    images = _images()
    with torch.no_grad():
        out = model(images)
    assert len(calls) == 2 * 3  # (input = 96 level, 64, 128) x (image, mirror)
    for det, image in zip(out, images):
        h, w = image.shape[1:]
        boxes = det["boxes"]
        assert 0 < len(boxes) <= 20
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (det["scores"][:-1] >= det["scores"][1:]).all()
    # the same images as a loader batch (already resized and padded) give the same detections
    prepared = model.preprocessor(images)
    batch = Batch(
        images=prepared.images.tensor * model.preprocessor.pixel_std + model.preprocessor.pixel_mean,
        image_sizes=prepared.images.image_sizes,
        orig_sizes=prepared.orig_sizes,
        targets=None,
        image_ids=[0, 1],
    )
    with torch.no_grad():
        from_batch = model(batch)
    _assert_same_detections(out, from_batch)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_all_options_on_cuda_match_cpu():
    model = tiny_model(*ALL)
    images = _images()
    with torch.no_grad():
        expected = model(images)
        got = model.to("cuda")([i.cuda() for i in images])
    _assert_same_detections(expected, [{k: v.cpu() for k, v in d.items()} for d in got])


def test_bad_test_time_settings_name_the_config_key():
    # ranges are checked when the config loads (config.RANGES) ...
    with pytest.raises(ValueError, match=r"config key 'test.scales' entries must be >= 1; got \[0, 96\]"):
        load_config(None, TINY + ["test.scales=[0,96]"])
    with pytest.raises(ValueError, match=r"config key 'test.scale_target_size' must be >= 1"):
        load_config(None, TINY + ["test.scale_target_size=0"])
    with pytest.raises(ValueError, match=r"config key 'model.roi_heads.box_voting_iou' must be in \(0, 1\]; got 1.5"):
        load_config(None, TINY + ["model.roi_heads.box_voting_iou=1.5"])
    # ... and what a range cannot say when the model is built
    with pytest.raises(ValueError, match=r"'test.scales' .*\[96, 96\]"):
        build_model(load_config(None, TINY + ["test.scales=[96,96]"]))
