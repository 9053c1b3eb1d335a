"""The assembled detector: build_model, losses, input checks, both input forms,
BN folding, ImageNet loading, autocast, and the paper's models at full size."""
import math

import pytest
import torch
from omegaconf import OmegaConf

from detectron_res.config import load_config
from detectron_res.data.loader import Batch
from detectron_res.modeling.backbone import FrozenBatchNorm2d, ResNet
from detectron_res.modeling.build import build_model
from detectron_res.modeling.faster_rcnn import FasterRCNN
from detectron_res.modeling.preprocess import Preprocessor, resized_size
from detectron_res.weights import ImageNetWeights, WeightsMismatchError

TINY = [
    "model.backbone.depth=18",
    "model.backbone.base_channels=16",
    "model.backbone.freeze_at=0",
    "model.anchor.sizes=[32,64]",
    "model.roi_heads.num_classes=3",
    "model.rpn.pre_nms_topk_test=200",
    "model.rpn.post_nms_topk_test=50",
    "model.rpn.pre_nms_topk_train=300",
    "model.rpn.post_nms_topk_train=100",
    "model.rpn.batch_size_per_image=64",
    "model.roi_heads.batch_size_per_image=32",
    "input.min_size_train=[96]",
    "input.max_size_train=160",
    "input.min_size_test=96",
    "input.max_size_test=160",
]


def tiny_model(*overrides) -> FasterRCNN:
    torch.manual_seed(0)
    return build_model(load_config(None, TINY + list(overrides)))


@pytest.fixture(scope="module")
def shared_model():
    """One model for the tests that only check input errors (building one takes time)."""
    return tiny_model()


def _images(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 100, 150, generator=g) * 255, torch.rand(3, 120, 90, generator=g) * 255]


def _targets():
    return [
        {"boxes": torch.tensor([[10.0, 20.0, 60.0, 80.0], [70.0, 5.0, 140.0, 50.0]]), "labels": torch.tensor([2, 3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]


def _randomize_frozen_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            c = m.weight.numel()
            m.weight.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)


# ----------------------------------------------------------------------- structure
def test_parameter_names_and_predictor_shapes():
    model = tiny_model()
    names = [n for n, _ in model.named_parameters()]
    prefixes = {n.split(".")[0] for n in names}
    assert prefixes == {"backbone", "rpn", "roi_heads"}
    assert any(n.startswith("backbone.stem.") for n in names) and any(n.startswith("backbone.res4.") for n in names)
    assert not any(n.startswith("backbone.res5.") for n in names)
    assert any(n.startswith("roi_heads.res5.0.") for n in names)
    head = model.roi_heads
    d = head.res5[-1].conv2.weight.shape[0]  # R-18 at base 16: res5 width 128
    assert tuple(head.predictor.cls_score.weight.shape) == (4, d)  # K + 1 scores
    assert tuple(head.predictor.bbox_pred.weight.shape) == (12, d)  # class-specific deltas
    assert model.rpn.anchor_generator.num_anchors == 6
    assert model.rpn.anchor_generator.stride == 16


def test_build_errors_name_the_config_key():
    cfg = load_config(None, TINY)
    bad = OmegaConf.to_container(cfg)
    bad["model"]["backbone"]["name"] = "resnext"
    with pytest.raises(ValueError, match=r"model\.backbone\.name' must be one of resnet, vgg16; got 'resnext'"):
        build_model(OmegaConf.create(bad))
    with pytest.raises(ValueError, match=r"model\.roi_heads\.pooler_resolution' must be 7 for .*vgg16.*got 14"):
        build_model(load_config(None, ["model.backbone.name=vgg16"]))
    with pytest.raises(ValueError, match=r"model\.rpn\.negative_iou"):
        build_model(load_config(None, TINY + ["model.rpn.negative_iou=0.8"]))


# ------------------------------------------------------------------------ training
def test_training_losses_and_backward():
    model = tiny_model().train()
    losses = model(_images(), _targets())
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}
    assert all(v.dim() == 0 and math.isfinite(v.item()) for v in losses.values())
    assert losses["loss_box_reg"].item() > 0 and losses["loss_rpn_loc"].item() > 0
    sum(losses.values()).backward()
    assert model.rpn.head.conv.weight.grad is not None
    assert model.roi_heads.predictor.bbox_pred.weight.grad.abs().sum() > 0
    assert model.backbone.stem.conv1.weight.grad.abs().sum() > 0


def test_images_without_objects_give_zero_regression_losses():
    model = tiny_model().train()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model(_images(), [empty, dict(empty)])
    assert losses["loss_rpn_loc"].item() == 0.0
    assert losses["loss_box_reg"].item() == 0.0
    assert math.isfinite(losses["loss_rpn_cls"].item()) and losses["loss_rpn_cls"].item() > 0
    assert math.isfinite(losses["loss_cls"].item()) and losses["loss_cls"].item() > 0
    sum(losses.values()).backward()
    assert model.roi_heads.predictor.bbox_pred.weight.grad.abs().sum() == 0
    assert model.roi_heads.predictor.cls_score.weight.grad.abs().sum() > 0


def test_training_from_loader_batch():
    model = tiny_model().train()
    images = _images()
    padded = torch.zeros(2, 3, 128, 160)
    padded[0, :, :100, :150] = images[0]
    padded[1, :, :120, :90] = images[1]
    batch = Batch(images=padded, image_sizes=[(100, 150), (120, 90)], orig_sizes=[(100, 150), (120, 90)], targets=_targets())
    losses = model(batch)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}
    sum(losses.values()).backward()


@pytest.mark.parametrize(
    "target,match",
    [
        ({"boxes": torch.tensor([[10.0, 10.0, 10.0, 20.0]]), "labels": torch.tensor([1])}, r"targets\[1\]\['boxes'\]\[0\] = \[10.0, 10.0, 10.0, 20.0\].*positive width"),
        ({"boxes": torch.tensor([[10.0, 30.0, 20.0, 20.0]]), "labels": torch.tensor([1])}, r"targets\[1\]\['boxes'\]\[0\]"),
        ({"boxes": torch.tensor([[0.0, 0.0, 5.0, float("nan")]]), "labels": torch.tensor([1])}, r"targets\[1\]\['boxes'\]\[0\].*finite"),
        ({"boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0]]), "labels": torch.tensor([0])}, r"targets\[1\]\['labels'\]\[0\] = 0: expected a class label in 1..3"),
        ({"boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0]]), "labels": torch.tensor([4])}, r"targets\[1\]\['labels'\]\[0\] = 4"),
        ({"boxes": torch.tensor([0.0, 0.0, 5.0, 5.0]), "labels": torch.tensor([1])}, r"targets\[1\]\['boxes'\]: expected a float tensor of shape \[G, 4\], got .*\[4\]"),
        ({"boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0]]), "labels": torch.tensor([1], dtype=torch.int32)}, r"targets\[1\]\['labels'\]: expected an int64"),
        ({"boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0]]), "labels": torch.tensor([1, 2])}, r"targets\[1\]: 1 boxes but 2 labels"),
        ({"bbox": torch.zeros(0, 4)}, r"targets\[1\]: expected a dict with 'boxes' and 'labels'"),
    ],
)
def test_bad_targets_name_image_and_value(target, match, shared_model):
    model = shared_model.train()
    with pytest.raises((ValueError, TypeError), match=match):
        model(_images(), [_targets()[0], target])


def test_bad_images_name_index_and_shape(shared_model):
    model = shared_model.eval()
    with pytest.raises(ValueError, match=r"images\[1\]: expected a tensor \[3, H, W\].*got shape \[100, 150, 3\]"):
        model([torch.zeros(3, 100, 150), torch.zeros(100, 150, 3)])
    with pytest.raises(TypeError, match="expected a loader Batch or a list"):
        model("image.jpg")
    model.train()
    with pytest.raises(ValueError, match="training mode needs targets"):
        model(_images())


# ----------------------------------------------------------------------- inference
def test_eval_list_input_equals_loader_batch_in_original_coordinates():
    model = tiny_model().eval()
    images = _images()
    out_list = model(images)
    assert len(out_list) == 2
    for out, img in zip(out_list, images):
        assert out["boxes"].dtype == torch.float32 and out["labels"].dtype == torch.int64
        assert out["boxes"].shape[0] == out["scores"].shape[0] == out["labels"].shape[0] > 0
        h, w = img.shape[1:]
        assert float(out["boxes"][:, [0, 2]].max()) <= w and float(out["boxes"][:, [1, 3]].max()) <= h
        assert float(out["boxes"].min()) >= 0
        assert bool((out["scores"][:-1] >= out["scores"][1:]).all())
        assert int(out["labels"].min()) >= 1 and int(out["labels"].max()) <= 3

    # The loader resizes and pads itself; the same pixels must give the same detections.
    sizes = [resized_size(100, 150, 96, 160), resized_size(120, 90, 96, 160)]
    padded_h = math.ceil(max(h for h, _ in sizes) / 32) * 32
    padded_w = math.ceil(max(w for _, w in sizes) / 32) * 32
    padded = torch.zeros(2, 3, padded_h, padded_w)
    for i, (img, (h, w)) in enumerate(zip(images, sizes)):
        padded[i, :, :h, :w] = torch.nn.functional.interpolate(img[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    batch = Batch(images=padded, image_sizes=sizes, orig_sizes=[(100, 150), (120, 90)], targets=[{}, {}])
    out_batch = model(batch)
    for a, b in zip(out_list, out_batch):
        torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(a["scores"], b["scores"], atol=1e-4, rtol=1e-4)
        assert torch.equal(a["labels"], b["labels"])


def test_postprocess_maps_to_original_pixels():
    dets = [{"boxes": torch.tensor([[0.0, 0.0, 128.0, 64.0], [10.0, 10.0, 300.0, 300.0]])}]
    out = Preprocessor.postprocess(dets, [(64, 128)], [(100, 200)])
    torch.testing.assert_close(out[0]["boxes"], torch.tensor([[0.0, 0.0, 200.0, 100.0], [15.625, 15.625, 200.0, 100.0]]))


def test_eval_runs_under_inference_mode_and_batched_equals_single():
    model = tiny_model().eval()
    first = _images()[0]
    images = [first, _images(seed=5)[0]]  # same size, so the same padding alone and in the batch
    both = model(images)
    assert both[0]["boxes"].is_inference()
    for i in range(2):
        single = model(images[i : i + 1])[0]
        assert torch.equal(both[i]["labels"], single["labels"])
        torch.testing.assert_close(both[i]["scores"], single["scores"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(both[i]["boxes"], single["boxes"], atol=1e-3, rtol=1e-5)


# ------------------------------------------------------------------- BN folding
def test_folded_frozen_bn_equals_unfolded():
    model = tiny_model("model.backbone.norm=FrozenBN", "model.backbone.freeze_at=5")
    with torch.no_grad():
        _randomize_frozen_bn(model)
    model.eval()
    images = _images(seed=1)
    prepared = model.preprocessor(images)
    with torch.no_grad():
        features = model.backbone(prepared.images.tensor)["res4"]
        proposals = [torch.tensor([[0.0, 0.0, 64.0, 64.0], [30.0, 20.0, 120.0, 100.0]])] * 2
        logits, deltas = model.roi_heads.predict(features, proposals)
    before = model(images)

    assert model.prepare_for_inference() is model
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    with torch.no_grad():
        features_f = model.backbone(prepared.images.tensor)["res4"]
        logits_f, deltas_f = model.roi_heads.predict(features_f, proposals)
    scale = float(features.abs().max())
    torch.testing.assert_close(features_f, features, atol=1e-4 * scale, rtol=1e-4)
    torch.testing.assert_close(logits_f, logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(deltas_f, deltas, atol=1e-4, rtol=1e-4)
    after = model(images)
    for a, b in zip(before, after):
        assert torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(a["scores"], b["scores"], atol=1e-4, rtol=0)
        torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-3, rtol=1e-4)
    model.prepare_for_inference()  # folds once: calling again changes nothing
    with pytest.raises(RuntimeError, match="cannot be trained again"):
        model.train()


def test_fold_can_be_disabled():
    model = tiny_model("model.backbone.norm=FrozenBN", "model.fold_frozen_bn=false").prepare_for_inference()
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    model.train()  # not folded: still trainable


# -------------------------------------------------------------- ImageNet weights
def _resnet18_weights(**settings):
    torch.manual_seed(1)
    net = ResNet(18, stride_in_1x1=True, norm="FrozenBN", num_classes=1000, base_channels=16)
    _randomize_frozen_bn(net)
    kwargs = dict(
        arch="resnet18",
        input_format="BGR",
        pixel_mean=(103.53, 116.28, 123.675),
        pixel_std=(1.0, 1.0, 1.0),
        stride_in_1x1=True,
        stem_pool="msra",
        source="test",
    )
    kwargs.update(settings)
    return ImageNetWeights(state_dict=net.state_dict(), **kwargs)


def test_load_imagenet_backbone_maps_stages():
    model = tiny_model("model.backbone.norm=FrozenBN")
    weights = _resnet18_weights()
    report = model.load_imagenet_backbone(weights)
    state = model.state_dict()
    for key in ("stem.conv1.weight", "res3.0.conv1.weight", "res4.1.conv2.norm.running_var"):
        assert torch.equal(state[f"backbone.{key}"], weights.state_dict[key])
    assert torch.equal(state["roi_heads.res5.0.shortcut.weight"], weights.state_dict["res5.0.shortcut.weight"])
    assert sorted(report.unexpected) == ["fc.bias", "fc.weight"]
    assert not report.missing and not report.shape_mismatch


@pytest.mark.parametrize(
    "settings,key",
    [
        ({"input_format": "RGB"}, "model.input_format"),
        ({"pixel_mean": (123.675, 116.28, 103.53)}, "model.pixel_mean"),
        ({"stride_in_1x1": False, "stem_pool": "torchvision"}, "model.backbone.stride_in_1x1"),
    ],
)
def test_load_imagenet_backbone_refuses_mismatched_weights(settings, key):
    model = tiny_model("model.backbone.norm=FrozenBN")
    with pytest.raises(WeightsMismatchError, match=key.replace(".", r"\.")):
        model.load_imagenet_backbone(_resnet18_weights(**settings))


# --------------------------------------------------------------------- autocast
def test_cpu_autocast_bfloat16_train_and_eval():
    model = tiny_model().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(_images(), _targets())
    assert all(v.dtype == torch.float32 and math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(_images())
    assert out[0]["boxes"].dtype == torch.float32 and out[0]["scores"].dtype == torch.float32


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_autocast(dtype):
    model = tiny_model().cuda().train()
    targets = [{k: v.cuda() for k, v in t.items()} for t in _targets()]
    with torch.autocast("cuda", dtype=dtype):
        losses = model([i.cuda() for i in _images()], targets)
    assert all(math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.autocast("cuda", dtype=dtype):
        out = model([i.cuda() for i in _images()])
    assert out[0]["boxes"].is_cuda and out[0]["boxes"].dtype == torch.float32


# ---------------------------------------------------- the paper's models, full size
def _state_dict_numel(module, exclude=("running_mean", "running_var", "num_batches_tracked")):
    """Parameters as torchvision counts them: FrozenBN's weight/bias are buffers here."""
    return sum(v.numel() for k, v in module.state_dict().items() if not k.endswith(exclude))


PAPER_MODELS = [
    # (config, overrides, trunk + region head size = torchvision classifier minus its last fc)
    ("coco_r50.yaml", [], 25_557_032 - (2048 * 1000 + 1000)),
    ("voc07_r101.yaml", [], 44_549_160 - (2048 * 1000 + 1000)),
    ("voc07_r101.yaml", ["model.backbone.name=vgg16", "model.roi_heads.pooler_resolution=7", "model.roi_heads.pooler_type=ROIPool"], 138_357_544 - (4096 * 1000 + 1000)),
]


@pytest.mark.slow
@pytest.mark.parametrize("config,overrides,backbone_params", PAPER_MODELS)
def test_paper_models_build_and_train_step_600x1000(config, overrides, backbone_params):
    torch.manual_seed(0)
    model = build_model(load_config(config, overrides)).train()
    trunk_and_head = _state_dict_numel(model.backbone) + _state_dict_numel(
        model.roi_heads.res5 if hasattr(model.roi_heads, "res5") else model.roi_heads.box_head
    )
    assert trunk_and_head == backbone_params
    image = torch.rand(3, 600, 1000) * 255
    target = {"boxes": torch.tensor([[100.0, 150.0, 400.0, 500.0], [600.0, 50.0, 900.0, 300.0]]), "labels": torch.tensor([1, 5])}
    losses = model([image], [target])
    assert all(math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    out = model([image])
    assert out[0]["boxes"].shape[1] == 4 and out[0]["boxes"].shape[0] <= 100


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu_and_syncs_do_not_grow_with_batch():
    model = tiny_model().eval()
    cpu = model(_images())
    model.cuda()
    gpu = model([i.cuda() for i in _images()])
    for a, b in zip(cpu, gpu):
        assert torch.equal(a["labels"], b["labels"].cpu())
        torch.testing.assert_close(a["scores"], b["scores"].cpu(), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a["boxes"], b["boxes"].cpu(), atol=1e-2, rtol=1e-4)

    import warnings

    def count_syncs(images):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model(images)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        return len(caught)

    images = [i.cuda() for i in _images()]
    one, four = count_syncs(images[:1]), count_syncs(images * 2)
    # Synchronizations come from NMS and the per-image split after it (RPN and
    # head), not from loops over images, classes or boxes.
    assert one == four, (one, four)
    assert one <= 10, one


@pytest.mark.slow
def test_vgg16_load_imagenet_backbone_maps_convs_and_fcs():
    torch.manual_seed(0)
    model = build_model(
        load_config("voc07_r101.yaml", ["model.backbone.name=vgg16", "model.roi_heads.pooler_resolution=7"])
    )
    # ImageNet VGG-16 names: conv1_1..conv5_3, fc6, fc7 (+ the classifier fc8, not used).
    state = {}
    for i, (key, value) in enumerate(model.state_dict().items()):
        if key.startswith("backbone."):
            state[key[len("backbone."):]] = torch.full_like(value, float(i))
        elif key.startswith("roi_heads.box_head."):
            state[key[len("roi_heads.box_head."):]] = torch.full_like(value, float(i))
    state["fc8.weight"], state["fc8.bias"] = torch.zeros(1000, 4096), torch.zeros(1000)
    weights = ImageNetWeights(
        state_dict=state,
        arch="vgg16",
        input_format="BGR",
        pixel_mean=(103.53, 116.28, 123.675),
        pixel_std=(1.0, 1.0, 1.0),
        stride_in_1x1=None,
        stem_pool=None,
        source="test",
    )
    report = model.load_imagenet_backbone(weights)
    assert sorted(report.unexpected) == ["fc8.bias", "fc8.weight"]
    assert not report.missing and not report.shape_mismatch
    loaded = model.state_dict()
    assert torch.equal(loaded["backbone.conv5_3.weight"], state["conv5_3.weight"])
    assert torch.equal(loaded["roi_heads.box_head.fc6.weight"], state["fc6.weight"])
    assert torch.equal(loaded["roi_heads.box_head.fc7.bias"], state["fc7.bias"])
