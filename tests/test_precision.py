"""Tests of detectron_res.precision and the bf16 paths that use it.

The choice of ``auto`` is checked with faked CPU flags (so the test means the same on
every machine); the bf16 inference path against the fp32 one on a tiny detector
(detections close, the network really in bf16, post-processing in float32); bf16
training against fp32 on one step.
"""

import logging

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from detectron_res.config import ConfigError, load_config
from detectron_res.modeling.build import build_model
from detectron_res.precision import autocast, cpu_flags, cpu_native_bf16, resolve_precision

from helpers import make_tiny_checkpoint, synthetic_image


# ---------------------------------------------------------------- auto-detection
ZEN3 = {"fpu", "sse4_2", "avx", "avx2", "fma"}  # AVX2, no AVX-512
SKYLAKE_X = ZEN3 | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}  # AVX-512, no bf16
ZEN4 = SKYLAKE_X | {"avx512_bf16"}
SAPPHIRE_RAPIDS = SKYLAKE_X | {"avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}


@pytest.mark.parametrize(
    "flags, expected, reason",
    [
        (ZEN3, "fp32", "no native bf16"),
        (SKYLAKE_X, "fp32", "no native bf16"),
        (ZEN4, "bf16", "avx512_bf16"),
        (SAPPHIRE_RAPIDS, "bf16", "avx512_bf16"),
        ({"amx_bf16"}, "bf16", "amx_bf16"),
        (set(), "fp32", "no native bf16"),
    ],
)
def test_auto_follows_the_cpu_flags(flags, expected, reason):
    resolved = resolve_precision("auto", "cpu", flags=flags)
    assert resolved.name == expected and reason in resolved.reason
    assert resolved.dtype == (torch.bfloat16 if expected == "bf16" else None)


def test_auto_on_cuda_is_bf16_and_explicit_choices_are_kept():
    assert resolve_precision("auto", torch.device("cuda"), flags=ZEN3).name == "bf16"
    assert resolve_precision("fp32", "cpu", flags=ZEN4).name == "fp32"  # an explicit choice wins
    assert resolve_precision("BF16", "cpu", flags=ZEN3).name == "bf16"  # even where bf16 is emulated
    with pytest.raises(ValueError, match=r"--precision must be one of auto, fp32, bf16; got 'fp16'"):
        resolve_precision("fp16", "cpu", what="--precision")


@pytest.mark.parametrize("capability,expected", [((7, 0), "fp32"), ((7, 5), "fp32"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_on_cuda_follows_the_gpus_native_bf16(monkeypatch, capability, expected):
    """V100 (7.0) and T4 (7.5) emulate bf16, slower than fp32; A100 (8.0) and H100 (9.0) do not."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    chosen = resolve_precision("auto", torch.device("cuda", 0), flags=ZEN3)
    assert chosen.name == expected


def test_cpu_flags_reads_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Fake\nflags\t\t: fpu AVX2 avx512f avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_flags(str(info)) == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert cpu_native_bf16(cpu_flags(str(info))) == "avx512_bf16"
    # Where /proc/cpuinfo is missing (not Linux), torch's own CPU capability report answers.
    fallback = cpu_flags(str(tmp_path / "missing"))
    assert ("avx2" in fallback) == bool(torch.cpu.get_capabilities().get("avx2"))


def test_this_machine_agrees_with_torch():
    """/proc/cpuinfo and torch's cpuinfo library see the same bf16 support."""
    caps = torch.cpu.get_capabilities()
    assert (cpu_native_bf16() is not None) == bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def test_config_key_is_checked():
    assert load_config(None, []).test.precision == "auto"
    with pytest.raises(ConfigError, match="test.precision"):
        load_config(None, ["test.precision=fp16"])


def test_eval_precision_is_logged(caplog):
    from detectron_res.detection.task import eval_precision

    with caplog.at_level(logging.INFO, logger="detectron_res"):
        assert eval_precision(load_config(None, ["test.precision=bf16"]), torch.device("cpu")).name == "bf16"
    assert "Evaluation precision: bf16 (test.precision=bf16)" in caplog.text


# ---------------------------------------------------------------- bf16 inference
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model_final.pth")


def _record_postprocessing_dtypes(monkeypatch):
    """Record the dtypes that reach NMS and box decoding in the RPN and the box head."""
    import detectron_res.modeling.box_coder as box_coder
    import detectron_res.modeling.roi_heads as roi_heads
    import detectron_res.modeling.rpn as rpn

    seen = []
    # The RPN runs NMS per image (rpn.nms_first_per_image), the box head batched over classes.
    for module, name in ((rpn, "nms"), (roi_heads, "batched_nms")):
        original = getattr(module, name)

        def recording_nms(boxes, scores, *args, _original=original, _name=module.__name__):
            seen.append((_name, "nms", boxes.dtype, scores.dtype))
            return _original(boxes, scores, *args)

        monkeypatch.setattr(module, name, recording_nms)
    decode = box_coder.BoxCoder.decode

    def recording_decode(self, deltas, src_boxes):
        out = decode(self, deltas, src_boxes)
        seen.append(("decode", "decode", out.dtype, src_boxes.dtype))
        return out

    monkeypatch.setattr(box_coder.BoxCoder, "decode", recording_decode)
    return seen


def test_bf16_inference_is_close_to_fp32_and_postprocesses_in_fp32(tiny_checkpoint, monkeypatch):
    from detectron_res.predictor import Predictor

    images = [synthetic_image(90, 130, seed=1), synthetic_image(120, 100, seed=3)]
    fp32 = Predictor(tiny_checkpoint, device="cpu", precision="fp32", score_thresh=0.1)
    bf16 = Predictor(tiny_checkpoint, device="cpu", precision="bf16", score_thresh=0.1)
    assert (fp32.precision.name, bf16.precision.name) == ("fp32", "bf16")

    # The network really runs in bf16: the stem's convolution output.
    conv_dtypes = []
    handle = bf16.model.backbone.stem.conv1.register_forward_hook(lambda m, i, o: conv_dtypes.append(o.dtype))
    seen = _record_postprocessing_dtypes(monkeypatch)
    low = bf16(images)
    handle.remove()
    assert conv_dtypes == [torch.bfloat16] * len(images)  # one forward pass per image (batch_size 1)
    assert {name for name, *_ in seen} == {"detectron_res.modeling.rpn", "detectron_res.modeling.roi_heads", "decode"}
    assert all(a == b == torch.float32 for _, _, a, b in seen), seen

    high = fp32(images)
    # The random tiny model's boxes overlap heavily, so bf16 rounding can let NMS keep
    # a neighbour instead of a box now and then: each clear fp32 detection (score >=
    # 0.2) is looked for in bf16 with the same class, IoU >= 0.5 and a score within
    # 0.02, and at least 80% must be found (13 of 14 here); each image's top detection
    # must be found almost exactly (IoU >= 0.95).
    found = total = 0
    for a, b in zip(high, low):
        assert b.boxes.dtype == np.float32 and b.scores.dtype == np.float32
        clear = np.nonzero(a.scores >= 0.2)[0]
        assert len(clear) > 0, "the tiny model should detect something clearly"
        iou = box_iou(torch.from_numpy(a.boxes), torch.from_numpy(b.boxes)).numpy()
        for i in clear:
            match = (iou[i] >= 0.5) & (b.labels == a.labels[i]) & (np.abs(b.scores - a.scores[i]) <= 0.02)
            found, total = found + int(match.any()), total + 1
        assert b.labels[0] == a.labels[0] and iou[0, 0] >= 0.95 and abs(b.scores[0] - a.scores[0]) <= 0.01
    assert found >= 0.8 * total, (found, total)


def test_auto_predictor_logs_its_choice(tiny_checkpoint, caplog):
    from detectron_res.predictor import Predictor

    with caplog.at_level(logging.INFO, logger="detectron_res"):
        predictor = Predictor(tiny_checkpoint, device="cpu")
    expected = resolve_precision("auto", "cpu")
    assert predictor.precision == expected
    assert f"inference precision: {expected}" in caplog.text
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16; got 'half'"):
        Predictor(tiny_checkpoint, device="cpu", precision="half")


# ---------------------------------------------------------------- bf16 training
def test_bf16_training_step_on_cpu_matches_fp32():
    """One training step of the tiny detector under CPU bf16 autocast: float32
    losses close to fp32's, float32 gradients (the parameters stay float32)."""
    cfg = load_config(None, ["model.backbone.depth=18", "model.backbone.base_channels=8",
                             "model.roi_heads.num_classes=3", "model.roi_heads.pooler_type=ROIAlignV2"])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    images = [torch.from_numpy(synthetic_image(96, 128, seed=s)).permute(2, 0, 1).float() for s in (1, 2)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [50.0, 20.0, 120.0, 90.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.tensor([[5.0, 5.0, 40.0, 50.0]]), "labels": torch.tensor([2])},
    ]

    def step(precision):
        torch.manual_seed(1)  # the same anchor and RoI samples
        model.zero_grad(set_to_none=True)
        with autocast(precision, "cpu"):
            losses = model(images, targets)
        sum(losses.values()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return {k: v.detach() for k, v in losses.items()}, grads

    losses32, grads32 = step("fp32")
    losses16, grads16 = step("bf16")
    assert set(losses16) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}
    for name, value in losses16.items():
        assert value.dtype == torch.float32 and torch.isfinite(value)
        # The RPN's losses come from the same sampled anchors: close. The head's come
        # from proposals that bf16 objectness may rank (and NMS keep) differently, so
        # its positive RoIs may differ: loss_box_reg moved 11% here (0.526 vs 0.472).
        tolerance = 0.02 if name.startswith("loss_rpn") else 0.2
        assert value.item() == pytest.approx(losses32[name].item(), rel=tolerance), name
    assert grads16.keys() == grads32.keys()
    assert all(g.dtype == torch.float32 for g in grads16.values())
    flat16 = torch.cat([g.flatten() for g in grads16.values()])
    flat32 = torch.cat([g.flatten() for g in grads32.values()])
    assert torch.nn.functional.cosine_similarity(flat16, flat32, dim=0) > 0.98


# ---------------------------------------------------------------- bf16 weights stored once
def _tiny_bottleneck_model(*overrides):
    """A tiny R-50-C4 (bottleneck blocks, so res5's conv1 and shortcut run before pooling)."""
    cfg = load_config(None, ["model.backbone.depth=50", "model.backbone.base_channels=8",
                             "model.roi_heads.num_classes=3", "model.roi_heads.pooler_type=ROIAlignV2",
                             "input.min_size_test=96", "input.max_size_test=128",
                             "model.roi_heads.score_thresh_test=0.05", *overrides])
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # scores spread over the classes (no ties), as make_tiny_checkpoint does
        torch.nn.init.normal_(model.roi_heads.predictor.cls_score.weight, std=0.0001)
        torch.nn.init.normal_(model.roi_heads.predictor.cls_score.bias, std=0.3)
        torch.nn.init.normal_(model.roi_heads.predictor.bbox_pred.weight, std=0.0001)
    return model


def _weight_conversions(model, images):
    """Run ``model(images)`` and count the float32 -> bf16 conversions of tensors
    shaped like one of its 4-D weights (what autocast does to a float32 weight)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    shapes = {tuple(p.shape) for p in model.parameters() if p.dim() == 4}
    counted = []

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            # Autocast converts with aten::to (seen here as such under inference mode).
            src, dst_dtype = None, None
            if func is torch.ops.aten.to.dtype:
                src, dst_dtype = args[0], args[1] if len(args) > 1 else kwargs.get("dtype")
            elif func is torch.ops.aten._to_copy.default:
                src, dst_dtype = args[0], kwargs.get("dtype")
            elif func is torch.ops.aten.copy_.default:
                src, dst_dtype = args[1], args[0].dtype
            if src is not None and src.dtype == torch.float32 and dst_dtype == torch.bfloat16 and tuple(src.shape) in shapes:
                counted.append(tuple(src.shape))
            return func(*args, **(kwargs or {}))

    with Count():
        outputs = model(images)
    return outputs, counted


@pytest.mark.parametrize("overrides", [(), ("model.fold_frozen_bn=false",)])
def test_bf16_prepared_model_equals_fp32_model_under_autocast(overrides):
    """prepare_for_inference(precision="bf16") stores the weights in bf16 once: the same
    detections, bit for bit, as the float32 model under bf16 autocast (autocast rounds the
    same weights the same way), with no weight converted during a call, and the model
    runs bf16 by itself (no autocast around the call needed)."""
    import copy

    from detectron_res.modeling.backbone.norm import Conv2dNorm, FrozenBatchNorm2d

    model = _tiny_bottleneck_model(*overrides)
    fp32 = copy.deepcopy(model).prepare_for_inference()
    bf16 = copy.deepcopy(model).prepare_for_inference(precision="bf16")
    images = [torch.from_numpy(synthetic_image(96, 128, seed=s)).permute(2, 0, 1).float() for s in (1, 2)]

    with autocast("bf16", "cpu"):
        reference, autocast_conversions = _weight_conversions(fp32, images)
    outputs, conversions = _weight_conversions(bf16, images)
    assert len(autocast_conversions) > 0, "the check must see autocast converting float32 weights"
    folded = not overrides
    # Folded: every weight is stored bf16, none converted per call. Unfolded, a conv with
    # its FrozenBN scales its weight in float32 first: those stay float32 (and are converted).
    assert (len(conversions) == 0) == folded, conversions
    for a, b in zip(reference, outputs):
        assert len(a["boxes"]) > 0
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key]), key
        assert b["boxes"].dtype == b["scores"].dtype == torch.float32

    for module in bf16.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            keeps_norm = isinstance(getattr(module, "norm", None), FrozenBatchNorm2d)
            assert module.weight.dtype == (torch.float32 if keeps_norm else torch.bfloat16), module
            if module.weight.dim() == 4:
                assert module.weight.is_contiguous(memory_format=torch.channels_last), module
    assert any(isinstance(m, Conv2dNorm) and m.weight.dtype == torch.bfloat16 for m in bf16.backbone.modules()) == folded


def test_bf16_prepared_model_is_prepared_once_and_not_trained():
    from detectron_res.precision import cast_for_autocast

    model = _tiny_bottleneck_model().prepare_for_inference(precision="bf16")
    assert cast_for_autocast(model, torch.bfloat16) == 0  # already stored in bf16
    assert model.prepare_for_inference(precision="bf16") is model  # again: nothing changes
    with pytest.raises(ValueError, match=r"precision='fp32'.*already stores torch.bfloat16 weights"):
        model.prepare_for_inference(precision="fp32")
    with pytest.raises(RuntimeError, match="stores torch.bfloat16 weights .* cannot be trained again"):
        model.train()
    fresh = _tiny_bottleneck_model()
    converted = cast_for_autocast(fresh, torch.bfloat16)
    # Only layers without a FrozenBN left after them (here: the RPN head and the box predictor).
    assert converted == sum(
        (m.bias is not None) + 1 for m in fresh.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.weight.dtype == torch.bfloat16
    )
    assert 0 < converted < sum(1 for p in fresh.parameters())


def test_predictor_stores_bf16_weights(tiny_checkpoint):
    from detectron_res.predictor import Predictor

    bf16 = Predictor(tiny_checkpoint, device="cpu", precision="bf16")
    fp32 = Predictor(tiny_checkpoint, device="cpu", precision="fp32")
    weights = lambda p: {m.weight.dtype for m in p.model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}  # noqa: E731
    assert weights(bf16) == {torch.bfloat16} and weights(fp32) == {torch.float32}


@pytest.mark.parametrize("channels_last", [True, False])
def test_spatial_mean_of_bf16_is_the_float32_mean_rounded(channels_last):
    """res5's global average pool: float32 exactly ``mean``; bf16 (a product with a row
    of ones) within bf16 rounding of the float32 mean of the same bf16 values."""
    from detectron_res.modeling.roi_heads import spatial_mean

    torch.manual_seed(0)
    x = torch.randn(5, 64, 7, 7) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(spatial_mean(x), x.mean(dim=(2, 3)))
    low = x.to(torch.bfloat16)
    result = spatial_mean(low)
    assert result.dtype == torch.bfloat16 and result.shape == (5, 64)
    reference = low.float().mean(dim=(2, 3))  # the exact mean of the bf16 values
    # Two bf16 roundings (the sum, the division): relative error <= 2 * 2^-8, plus the
    # absolute error of a sum that cancels (|sum| << sum of |x|).
    bound = 2 * 2.0**-8 * (reference.abs() + low.float().abs().mean(dim=(2, 3)))
    assert ((result.float() - reference).abs() <= bound).all()
    with autocast("bf16", "cpu"):  # under autocast too (the inference path)
        assert torch.equal(spatial_mean(low), result)


def test_both_export_formats_refuse_a_bf16_prepared_model(tiny_checkpoint, tmp_path):
    from detectron_res.export import export_onnx, export_torchscript
    from detectron_res.predictor import Predictor

    predictor = Predictor(tiny_checkpoint, device="cpu", precision="bf16")
    with pytest.raises(ValueError, match=r"export_onnx: .*stores torch.bfloat16 weights .* precision='fp32'"):
        export_onnx(predictor.model, tmp_path / "model.onnx")
    with pytest.raises(ValueError, match=r"export_torchscript: .*stores torch.bfloat16 weights .* precision='fp32'"):
        export_torchscript(predictor.model, tmp_path / "model.pt")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("block_elements", [1 << 20, 1000])
def test_roi_align_by_matrix_in_bf16_blocks_equals_the_float32_product_cast(monkeypatch, block_elements):
    """The pooler's bf16 output: the float32 product converted block by block through a
    reused buffer (several blocks and a partial last one with the small block size) is
    the float32 product converted at once, bit for bit; with autograd the plain product
    is converted and the gradient reaches the float32 map."""
    import detectron_res.modeling.poolers as poolers

    monkeypatch.setattr(poolers, "_BLOCK_ELEMENTS", block_elements)
    torch.manual_seed(0)
    features = torch.randn(2, 96, 20, 24).contiguous(memory_format=torch.channels_last)
    xy = torch.rand(37, 2) * torch.tensor([300.0, 250.0])
    boxes = torch.cat((xy, (xy + torch.rand(37, 2) * 150 + 2).clamp(max=torch.tensor([383.0, 319.0]))), dim=1)
    rois = torch.cat((torch.randint(0, 2, (37, 1)).float(), boxes), dim=1)
    for bin_stride in (1, 2):
        args = (features, rois, 14, 1 / 16, 0, True, bin_stride)
        with torch.inference_mode():
            reference = poolers.roi_align_by_matrix(*args)
            low = poolers.roi_align_by_matrix(*args, out_dtype=torch.bfloat16)
        assert reference.dtype == torch.float32 and low.dtype == torch.bfloat16
        assert low.shape == reference.shape and low.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(low, reference.to(torch.bfloat16))
    grad_features = features.clone().requires_grad_(True)
    out = poolers.roi_align_by_matrix(grad_features, rois, 14, 1 / 16, 0, True, out_dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert grad_features.grad is not None and grad_features.grad.dtype == torch.float32
