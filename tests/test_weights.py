"""ImageNet weight import: torchvision / MSRA (Detectron Caffe2 blobs) / Detectron2 files.

The references are torchvision's own models (same logits after conversion), a
Detectron-format pickle written here with Caffe2 blob names, and hand-made
malicious files that must be refused.
"""
import os
import pickle
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from detectron_res.modeling.backbone import VGG16, FrozenBatchNorm2d, ResNet, build_resnet_res5_head
from detectron_res.weights import (
    ImageNetWeights,
    UnsafeWeightsError,
    WeightsDownloadError,
    WeightsFormatError,
    WeightsMismatchError,
    key_table,
    torchvision_resnet_key,
    load_imagenet_weights,
    load_into,
)
from helpers import load_tool


def randomize_torchvision_bn(model, seed=0):
    """Non-trivial BN statistics; the last BN of each block is small so that deep
    networks keep O(1) activations (errors then show at the 1e-4 level)."""
    g = torch.Generator().manual_seed(seed)
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            last_in_block = name.endswith(("bn3", "bn2")) and "layer" in name
            with torch.no_grad():
                m.running_mean.copy_(torch.rand(c, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) * (0.2 if last_in_block else 1.0) + 0.1)
                m.bias.copy_(torch.rand(c, generator=g) * 0.2 - 0.1)
    return model


# ----------------------------------------------------------------------------- torchvision
@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_torchvision_resnet_weights_give_the_same_logits(depth, tmp_path):
    torch.manual_seed(depth)
    reference = randomize_torchvision_bn(getattr(torchvision.models, f"resnet{depth}")()).eval()
    path = tmp_path / f"resnet{depth}.pth"
    torch.save(reference.state_dict(), path)  # how torchvision's .pth files are made

    weights = load_imagenet_weights(path, arch=f"resnet{depth}")
    assert weights.fmt == "torchvision" and weights.input_format == "RGB"
    assert weights.stride_in_1x1 is False and weights.pixel_std == (58.395, 57.12, 57.375)
    assert weights.unconverted_keys == [] and weights.missing_keys == []
    assert all(k.endswith("num_batches_tracked") for k in weights.ignored_keys)

    ours = ResNet(depth, **{k: v for k, v in weights.model_kwargs().items() if k != "depth"}, num_classes=1000)
    report = load_into(ours, weights)
    assert report.complete, report.summary()
    ours.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert expected.abs().max() > 0.1  # the comparison is not between two near-zero tensors
    assert (expected - got).abs().max().item() < 1e-4


def test_torchvision_vgg16_weights_give_the_same_logits(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.vgg16().eval()
    path = tmp_path / "vgg16.pth"
    torch.save(reference.state_dict(), path)
    weights = load_imagenet_weights(path, arch="vgg16")
    assert weights.unconverted_keys == [] and weights.missing_keys == []
    assert weights.stride_in_1x1 is None
    # Every tensor is overwritten by the load: skip the random init of 138M parameters.
    with torch.device("meta"):
        ours = VGG16(num_classes=1000)
    ours.to_empty(device="cpu")
    report = load_into(ours, weights)
    assert report.complete and len(report.loaded) == len(ours.state_dict()) == 32
    ours.eval()
    x = torch.randn(1, 3, 64, 64)  # torchvision's adaptive 7x7 pool handles small inputs
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert expected.abs().max() > 0.01
    assert (expected - got).abs().max().item() < 1e-4


# ----------------------------------------------------------------------------- MSRA / Detectron
def caffe2_blobs_resnet50(seed=0):
    """A Detectron ``R-50.pkl`` look-alike: Caffe2 blob names, float32 arrays.

    Written from the naming of Detectron's pickle_caffe_blobs.py: layer ``res2a_branch2a``
    -> ``res2_0_branch2a_{w,b}``, its BN -> ``res2_0_branch2a_bn_{s,b}``, conv1's BN
    -> ``res_conv1_bn_{s,b}``; every conv got a (zero) bias blob; classifier fc1000.
    """
    rng = np.random.default_rng(seed)
    blobs = {}

    def conv(name, c_out, c_in, k):
        blobs[f"{name}_w"] = rng.normal(0, np.sqrt(2 / (c_out * k * k)), (c_out, c_in, k, k)).astype(np.float32)
        blobs[f"{name}_b"] = np.zeros(c_out, np.float32)

    def bn(name, c):
        blobs[f"{name}_s"] = rng.uniform(0.1, 1.0, c).astype(np.float32)
        blobs[f"{name}_b"] = rng.uniform(-0.1, 0.1, c).astype(np.float32)

    conv("conv1", 64, 3, 7)
    bn("res_conv1_bn", 64)
    c_in = 64
    for stage, n in zip((2, 3, 4, 5), (3, 4, 6, 3)):
        width = 64 * 2 ** (stage - 2)
        for i in range(n):
            prefix = f"res{stage}_{i}"
            conv(f"{prefix}_branch2a", width, c_in, 1)
            bn(f"{prefix}_branch2a_bn", width)
            conv(f"{prefix}_branch2b", width, width, 3)
            bn(f"{prefix}_branch2b_bn", width)
            conv(f"{prefix}_branch2c", 4 * width, width, 1)
            # Small last scale keeps activations O(1) through 16 blocks.
            bn(f"{prefix}_branch2c_bn", 4 * width)
            blobs[f"{prefix}_branch2c_bn_s"] *= 0.2
            if i == 0:
                conv(f"{prefix}_branch1", 4 * width, c_in, 1)
                bn(f"{prefix}_branch1_bn", 4 * width)
            c_in = 4 * width
    blobs["fc1000_w"] = rng.normal(0, 0.01, (1000, 2048)).astype(np.float32)
    blobs["fc1000_b"] = np.zeros(1000, np.float32)
    return blobs


def msra_reference_resnet50(blobs):
    """torchvision's ResNet-50 moved to the MSRA layout, with BN = s * x + b exactly."""
    model = torchvision.models.resnet50()
    model.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
    for layer in (model.layer2, model.layer3, model.layer4):
        layer[0].conv1.stride, layer[0].conv2.stride = (2, 2), (1, 1)

    def set_bn(bn, name):
        bn.eps = 0.0
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
        bn.weight.copy_(torch.from_numpy(blobs[f"{name}_s"]))
        bn.bias.copy_(torch.from_numpy(blobs[f"{name}_b"]))

    with torch.no_grad():
        model.conv1.weight.copy_(torch.from_numpy(blobs["conv1_w"]))
        set_bn(model.bn1, "res_conv1_bn")
        for s in range(4):
            for i, block in enumerate(getattr(model, f"layer{s + 1}")):
                prefix = f"res{s + 2}_{i}"
                for j, branch in enumerate("abc"):
                    getattr(block, f"conv{j + 1}").weight.copy_(torch.from_numpy(blobs[f"{prefix}_branch2{branch}_w"]))
                    set_bn(getattr(block, f"bn{j + 1}"), f"{prefix}_branch2{branch}_bn")
                if block.downsample is not None:
                    block.downsample[0].weight.copy_(torch.from_numpy(blobs[f"{prefix}_branch1_w"]))
                    set_bn(block.downsample[1], f"{prefix}_branch1_bn")
        model.fc.weight.copy_(torch.from_numpy(blobs["fc1000_w"]))
        model.fc.bias.copy_(torch.from_numpy(blobs["fc1000_b"]))
    return model.eval()


@pytest.fixture(scope="module")
def r50_blobs():
    return caffe2_blobs_resnet50()


@pytest.mark.parametrize("wrapped", [False, True])
def test_msra_pickle_loads_into_msra_resnet50(tmp_path, wrapped, r50_blobs):
    blobs = r50_blobs
    if wrapped:  # Detectron training checkpoints: {"blobs": ...} with SGD momentum blobs
        obj, protocol = {"blobs": {**blobs, "conv1_w_momentum": np.zeros_like(blobs["conv1_w"])}}, 4
    else:  # the MSRA ImageNet pickles were written by Python 2 with protocol 2
        obj, protocol = blobs, 2
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)

    weights = load_imagenet_weights(path, arch="resnet50")
    assert weights.fmt == "msra"
    assert weights.unconverted_keys == [] and weights.missing_keys == []
    assert weights.ignored_keys == (["conv1_w_momentum"] if wrapped else [])
    assert weights.input_format == "BGR" and weights.pixel_std == (1.0, 1.0, 1.0)
    assert weights.pixel_mean == (103.53, 116.28, 123.675) and weights.stride_in_1x1 is True

    model = ResNet(50, stride_in_1x1=True, norm="FrozenBN", num_classes=1000)
    report = load_into(model, weights)
    assert report.missing == [] and report.unexpected == [] and report.shape_mismatch == []
    assert torch.equal(model.res3[0].conv1.weight, torch.from_numpy(blobs["res3_0_branch2a_w"]))

    # The frozen affine is exactly the stored one: y = s * x + b.
    norm = model.res4[2].conv2.norm
    assert isinstance(norm, FrozenBatchNorm2d)
    scale, shift = norm.scale_and_shift()
    assert torch.allclose(scale, torch.from_numpy(blobs["res4_2_branch2b_bn_s"]), rtol=1e-6, atol=0)
    assert torch.allclose(shift, torch.from_numpy(blobs["res4_2_branch2b_bn_b"]), rtol=0, atol=1e-7)

    reference = msra_reference_resnet50(blobs)
    model.eval()
    x = torch.randn(1, 3, 67, 75)
    with torch.no_grad():
        expected, got = reference(x), model(x)
    assert expected.abs().max() > 0.01
    assert (expected - got).abs().max().item() < 1e-4


def test_msra_conv_bias_is_folded_into_the_norm_shift(tmp_path, r50_blobs):
    blobs = dict(r50_blobs)
    blobs["res2_1_branch2b_b"] = np.linspace(-1, 1, 64).astype(np.float32)
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump(blobs, f)
    state = load_imagenet_weights(path, arch="resnet50").state_dict
    s, b, c = (blobs[f"res2_1_branch2b{k}"] for k in ("_bn_s", "_bn_b", "_b"))
    assert np.allclose(state["res2.1.conv2.norm.bias"].numpy(), b + s * c, atol=1e-6)


def test_msra_pickle_into_torchvision_layout_is_refused(tmp_path, r50_blobs):
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump(r50_blobs, f)
    weights = load_imagenet_weights(path, arch="resnet50")
    with pytest.raises(WeightsMismatchError, match="stride_in_1x1=True"):
        load_into(ResNet(50, stride_in_1x1=False, num_classes=1000), weights)
    with pytest.raises(WeightsMismatchError, match="model.input_format=BGR"):
        weights.check_input_settings(input_format="RGB", pixel_mean=weights.pixel_mean, pixel_std=weights.pixel_std)
    with pytest.raises(WeightsMismatchError, match="pixel_std"):
        weights.check_input_settings(input_format="BGR", pixel_mean=weights.pixel_mean, pixel_std=[58.4, 57.1, 57.4])
    with pytest.raises(WeightsMismatchError, match="model.backbone.stride_in_1x1=True"):
        weights.check_input_settings(
            input_format="BGR", pixel_mean=weights.pixel_mean, pixel_std=weights.pixel_std, stride_in_1x1=False
        )
    weights.check_input_settings(input_format="BGR", pixel_mean=[103.53, 116.28, 123.675], pixel_std=[1, 1, 1])


# ----------------------------------------------------------------------------- safety
class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"conv1_w": _RunsCode(marker)}, f)
    with pytest.raises(UnsafeWeightsError, match=r"evil\.pkl: refusing to unpickle global '(os|posix)\.system'"):
        load_imagenet_weights(path, arch="resnet50")
    assert not marker.exists()

    builtins_eval = tmp_path / "eval.pkl"
    # GLOBAL builtins.eval, then call it: the classic payload written by hand.
    builtins_eval.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(UnsafeWeightsError, match="builtins.eval"):
        load_imagenet_weights(builtins_eval, arch="resnet50", fmt="msra")


def test_pth_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": _RunsCode(marker)}, path)
    with pytest.raises(UnsafeWeightsError, match=r"evil\.pth: refusing"):
        load_imagenet_weights(path, arch="resnet18")
    assert not marker.exists()


# ----------------------------------------------------------------------------- detectron2
def to_detectron2_names(tv_state):
    """The renaming of Detectron2's tools/convert-torchvision-to-d2.py, written out."""
    out = {}
    for k, v in tv_state.items():
        new = k if "layer" in k else "stem." + k
        for t in (1, 2, 3, 4):
            new = new.replace(f"layer{t}", f"res{t + 1}")
        for t in (1, 2, 3):
            new = new.replace(f"bn{t}", f"conv{t}.norm")
        new = new.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        out[new] = v.numpy()
    return out


def test_detectron2_pickle_matches_torchvision_conversion(tmp_path):
    tv = torchvision.models.resnet18()
    tv_path = tmp_path / "r18.pth"
    torch.save(tv.state_dict(), tv_path)
    d2_path = tmp_path / "r18_d2.pkl"
    with open(d2_path, "wb") as f:
        pickle.dump({"model": to_detectron2_names(tv.state_dict()), "__author__": "torchvision",
                     "matching_heuristics": True}, f)
    from_tv = load_imagenet_weights(tv_path, arch="resnet18")
    from_d2 = load_imagenet_weights(d2_path, arch="resnet18")
    assert from_d2.fmt == "detectron2" and from_d2.input_format == "RGB" and from_d2.stride_in_1x1 is False
    assert from_d2.unconverted_keys == [] and from_d2.missing_keys == []
    assert from_tv.state_dict.keys() == from_d2.state_dict.keys()
    assert all(torch.equal(from_tv.state_dict[k], from_d2.state_dict[k]) for k in from_tv.state_dict)

    anonymous = tmp_path / "anon.pkl"
    with open(anonymous, "wb") as f:
        pickle.dump({"model": to_detectron2_names(tv.state_dict())}, f)
    with pytest.raises(WeightsFormatError, match="settings='msra' or settings='torchvision'"):
        load_imagenet_weights(anonymous, arch="resnet18")
    assert load_imagenet_weights(anonymous, arch="resnet18", settings="msra").input_format == "BGR"


# ----------------------------------------------------------------------------- reporting
def test_unknown_and_missing_keys_are_reported(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    del state["layer4.1.conv2.weight"]
    state["extra.head.weight"] = torch.zeros(3)
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    weights = load_imagenet_weights(path, arch="resnet18")
    assert weights.missing_keys == ["res5.1.conv2.weight"]
    assert weights.unconverted_keys == ["extra.head.weight"]
    model = ResNet(18, num_classes=1000)
    report = load_into(model, weights)
    assert report.missing == ["res5.1.conv2.weight"] and not report.complete
    # The wrong architecture is refused rather than loaded halfway.
    with pytest.raises(WeightsFormatError, match="resnet50"):
        load_imagenet_weights(path, arch="resnet50")


def test_key_table_is_explicit_and_covers_the_model():
    with torch.device("meta"):
        canonical = {k for k in ResNet(101, num_classes=1000, norm="FrozenBN").state_dict()}
    for fmt in ("torchvision", "msra", "detectron2"):
        assert set(key_table("resnet101", fmt)) == canonical
    assert key_table("resnet50", "msra")["res3.0.shortcut.norm.weight"] == ("res3_0_branch1_bn_s",)
    assert key_table("resnet50", "torchvision")["res5.2.conv3.norm.running_var"] == ("layer4.2.bn3.running_var",)
    assert key_table("vgg16", "torchvision")["conv5_3.weight"] == ("features.28.weight",)


def test_prefix_map_loads_trunk_and_res5_head_of_a_c4_detector(tmp_path):
    tv = torchvision.models.resnet18()
    path = tmp_path / "r18.pth"
    torch.save(tv.state_dict(), path)
    weights = load_imagenet_weights(path, arch="resnet18")

    detector = nn.Module()
    detector.backbone = ResNet(18, out_features=["res4"], norm="FrozenBN")
    detector.roi_heads = nn.Module()
    detector.roi_heads.res5 = build_resnet_res5_head(18, stride_in_1x1=False, norm="FrozenBN")
    detector.roi_heads.predictor = nn.Linear(512, 21)
    prefix_map = {f"{s}.": f"backbone.{s}." for s in ("stem", "res2", "res3", "res4")}
    prefix_map["res5."] = "roi_heads.res5."
    report = load_into(detector, weights, prefix_map=prefix_map)
    assert report.missing == [] and report.shape_mismatch == []
    assert sorted(report.unexpected) == ["fc.bias", "fc.weight"]  # classifier not used
    assert torch.equal(detector.roi_heads.res5[1].conv2.weight, tv.layer4[1].conv2.weight)
    assert torch.equal(detector.backbone.stem.conv1.norm.running_var, tv.bn1.running_var)


def test_shape_mismatch_is_reported_not_loaded(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    weights = load_imagenet_weights(path, arch="resnet18")
    model = ResNet(18, num_classes=10)
    before = model.fc.weight.clone()
    report = load_into(model, weights)
    assert [m[0] for m in report.shape_mismatch] == ["fc.weight", "fc.bias"]
    assert torch.equal(model.fc.weight, before)


def test_saved_weights_round_trip_with_their_settings(tmp_path, r50_blobs):
    with open(tmp_path / "R-50.pkl", "wb") as f:
        pickle.dump(r50_blobs, f)
    weights = load_imagenet_weights(tmp_path / "R-50.pkl", arch="resnet50")
    weights.save(tmp_path / "r50.pth")
    # Readable with weights_only=True, i.e. no pickled code.
    assert torch.load(tmp_path / "r50.pth", weights_only=True)["input_format"] == "BGR"
    again = load_imagenet_weights(tmp_path / "r50.pth")
    assert again.fmt == "detectron_res" and again.arch == "resnet50"
    assert (again.input_format, again.pixel_mean, again.pixel_std, again.stride_in_1x1) == (
        "BGR", (103.53, 116.28, 123.675), (1.0, 1.0, 1.0), True)
    assert all(torch.equal(again.state_dict[k], v) for k, v in weights.state_dict.items())


def test_convert_weights_tool(tmp_path, capsys):
    main = load_tool("convert_weights").main

    src = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), src)
    assert main([str(src), str(tmp_path / "out.pth"), "--from", "torchvision", "--arch", "resnet18"]) == 0
    assert load_imagenet_weights(tmp_path / "out.pth").input_format == "RGB"

    state = torch.load(src, weights_only=True)
    state["junk"] = torch.zeros(1)
    torch.save(state, src)
    assert main([str(src), str(tmp_path / "bad.pth"), "--from", "torchvision", "--arch", "resnet18"]) == 1
    assert not (tmp_path / "bad.pth").exists()
    assert "junk" in capsys.readouterr().out
    assert main([str(src), str(tmp_path / "x.pth"), "--from", "msra", "--arch", "resnet18"]) == 2


# ----------------------------------------------------------------------------- named weights
def test_named_weights_use_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), cached)

    def no_network(*args, **kwargs):
        raise AssertionError("must not download a cached file")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    weights = load_imagenet_weights("torchvision://resnet18")
    assert weights.arch == "resnet18" and weights.missing_keys == []
    with pytest.raises(ValueError, match="resnet18 weights, but arch='resnet50'"):
        load_imagenet_weights("torchvision://resnet18", arch="resnet50")


def test_offline_download_error_names_url_and_destination(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsDownloadError) as info:
        load_imagenet_weights("msra://R-101")
    message = str(info.value)
    assert "https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/MSRA/R-101.pkl" in message
    assert str(tmp_path / "hub" / "checkpoints" / "MSRA" / "R-101.pkl") in message
    assert "\n" not in message
    with pytest.raises(ValueError, match="R-50, R-101"):
        load_imagenet_weights("msra://R-152")


def test_imagenet_weights_kwargs_build_a_matching_model():
    weights = ImageNetWeights(state_dict={}, arch="resnet50", input_format="BGR", pixel_mean=(0, 0, 0),
                              pixel_std=(1, 1, 1), stride_in_1x1=True, stem_pool="msra")
    kwargs = weights.model_kwargs()
    assert kwargs == {"depth": 50, "stride_in_1x1": True, "stem_pool": "msra"}
    with torch.device("meta"):
        model = ResNet(**kwargs, out_features=["res3"])
    assert model.stem.pool.ceil_mode and model.res3[0].conv1.stride == (2, 2)


# ----------------------------------------------------------------------------- Detectron2 detectors
def to_detectron2_detector(state_dict):
    """Our C4 detector's state dict written back in Detectron2's layout: module paths
    of GeneralizedRCNN + Res5ROIHeads (detectron2/modeling/proposal_generator/rpn.py:
    rpn_head.conv / objectness_logits / anchor_deltas; roi_heads/roi_heads.py:
    res5, box_predictor; roi_heads/fast_rcnn.py: cls_score with background LAST,
    bbox_pred with K * 4 class-specific deltas)."""
    out = {}
    for key, value in state_dict.items():
        value = value.detach().clone()
        if key.startswith("rpn.head."):
            key = "proposal_generator.rpn_head." + key[len("rpn.head."):]
        elif key.startswith("roi_heads.predictor."):
            if ".cls_score." in key:
                value = torch.cat([value[1:], value[:1]])  # ours: background first
            key = "roi_heads.box_predictor." + key[len("roi_heads.predictor."):]
        else:
            assert key.startswith(("backbone.stem.", "backbone.res", "roi_heads.res5.")), key
        out[key] = value
    # GeneralizedRCNN's normalization buffers, present in older Detectron2 files
    out["pixel_mean"] = torch.tensor([103.53, 116.28, 123.675]).view(3, 1, 1)
    out["pixel_std"] = torch.ones(3, 1, 1)
    return out


def _convert_tool():
    return load_tool("convert_weights").main


@pytest.mark.parametrize("container", ["pkl", "pth"])
def test_detectron2_c4_detector_converts_to_identical_detections(tmp_path, capsys, container):
    from detectron_res.config import load_config
    from detectron_res.predictor import Predictor
    from detectron_res.modeling.build import build_model

    # Detectron2's R50-C4 recipe, with a small test image size and few proposals for the CPU
    config = tmp_path / "d2_small.yaml"
    config.write_text(f"_base_: {Path(__file__).resolve().parent.parent / 'configs' / 'coco_r50_c4_d2_1x.yaml'}\n"
                      "model: {rpn: {pre_nms_topk_test: 200, post_nms_topk_test: 30}}\n"
                      "input: {min_size_test: 128, max_size_test: 160}\n")  # fmt: skip
    torch.manual_seed(0)
    model = build_model(load_config(str(config), ["model.weights="]))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, FrozenBatchNorm2d):  # non-trivial norms: a mis-mapped one changes the outputs
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)
        # confident, class-dependent scores so that there are detections of several classes
        predictor = model.roi_heads.predictor
        predictor.cls_score.weight.normal_(0.0, 0.05, generator=g)
        predictor.cls_score.bias.normal_(0.0, 2.0, generator=g)
        predictor.bbox_pred.weight.normal_(0.0, 0.01, generator=g)
    ours = tmp_path / "ours.pth"
    from detectron_res.config import config_to_dict
    from detectron_res.engine.checkpoint import save_checkpoint

    cfg = load_config(str(config), ["model.weights="])
    save_checkpoint({"format_version": 1, "model": model.state_dict(), "config": config_to_dict(cfg)}, ours)

    d2_state = to_detectron2_detector(model.state_dict())
    src = tmp_path / f"model_final_d2.{container}"
    if container == "pkl":  # model zoo: numpy arrays
        with open(src, "wb") as f:
            pickle.dump({"model": {k: v.numpy() for k, v in d2_state.items()}, "__author__": "Detectron2 Model Zoo"}, f)
    else:  # a training checkpoint
        torch.save({"model": d2_state, "iteration": 89999}, src)
    dst = tmp_path / "converted.pth"
    assert _convert_tool()([str(src), str(dst), "--from", "detectron2", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "arch resnet50 (bottleneck blocks per stage 3, 4, 6, 3), inferred from the keys" in out
    assert "80 classes" in out and "pixel_mean" in out

    image = (np.random.default_rng(0).random((150, 140, 3)) * 255).astype(np.uint8)
    expected = Predictor(ours, device="cpu")(image)
    got = Predictor(dst, device="cpu")(image)
    assert len(expected) > 3 and len(set(expected.labels.tolist())) > 1  # a real test: several classes
    np.testing.assert_array_equal(got.labels, expected.labels)
    np.testing.assert_array_equal(got.scores, expected.scores)
    np.testing.assert_array_equal(got.boxes, expected.boxes)


def test_detectron2_detector_errors(tmp_path, capsys):
    main = _convert_tool()
    # class-agnostic box regression cannot be held by our predictor
    state = {"backbone.res2.0.conv1.weight": torch.zeros(1), "roi_heads.res5.0.conv1.weight": torch.zeros(1),
             "roi_heads.box_predictor.cls_score.weight": torch.zeros(81, 8),
             "roi_heads.box_predictor.bbox_pred.weight": torch.zeros(4, 8),
             "proposal_generator.rpn_head.conv.weight": torch.zeros(1)}  # fmt: skip
    for b in range(3):
        state[f"backbone.res2.{b}.conv3.weight"] = torch.zeros(1)
    for stage, n in ((2, 3), (3, 4), (4, 6), (5, 3)):
        prefix = "roi_heads" if stage == 5 else "backbone"
        for b in range(n):
            state[f"{prefix}.res{stage}.{b}.conv1.weight"] = torch.zeros(1)
    torch.save({"model": state}, tmp_path / "agnostic.pth")
    assert main([str(tmp_path / "agnostic.pth"), str(tmp_path / "x.pth"), "--from", "detectron2"]) == 2
    assert "class-agnostic" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()
    # a detector handed to the ImageNet loader is named as such
    with pytest.raises(WeightsFormatError, match="detector checkpoint"):
        load_imagenet_weights(tmp_path / "agnostic.pth", fmt="detectron2", arch="resnet50")


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_arch_is_inferred_from_the_block_counts(tmp_path, capsys, depth):
    src = tmp_path / "tv.pth"
    torch.save(getattr(torchvision.models, f"resnet{depth}")().state_dict(), src)
    main = _convert_tool()
    assert main([str(src), str(tmp_path / "out.pth"), "--from", "torchvision"]) == 0
    out = capsys.readouterr().out
    blocks = {18: "2, 2, 2, 2", 34: "3, 4, 6, 3", 50: "3, 4, 6, 3", 101: "3, 4, 23, 3", 152: "3, 8, 36, 3"}[depth]
    assert f"--arch not given: resnet{depth}" in out and f"blocks per stage {blocks}" in out
    assert load_imagenet_weights(tmp_path / "out.pth").arch == f"resnet{depth}"


def test_detectron2_backbone_through_the_tool_infers_its_arch(tmp_path, capsys):
    tv = torchvision.models.resnet34()
    src = tmp_path / "r34_d2.pkl"
    with open(src, "wb") as f:
        pickle.dump({"model": to_detectron2_names(tv.state_dict()), "__author__": "torchvision"}, f)
    assert _convert_tool()([str(src), str(tmp_path / "out.pth"), "--from", "detectron2"]) == 0
    assert "--arch not given: resnet34, inferred from the keys: basic blocks per stage 3, 4, 6, 3" in capsys.readouterr().out
    assert load_imagenet_weights(tmp_path / "out.pth").arch == "resnet34"


def test_arch_inference_vgg_msra_and_failure(tmp_path):
    from detectron_res.weights import infer_arch

    vgg = torchvision.models.vgg16().state_dict()
    assert infer_arch(vgg, "torchvision")[0] == "vgg16"
    blobs = {f"res{s}_{b}_branch2{c}_w": 0 for s, n in ((2, 3), (3, 4), (4, 23), (5, 3)) for b in range(n) for c in "abc"}
    assert infer_arch(blobs, "msra") == ("resnet101", "bottleneck blocks per stage 3, 4, 23, 3")
    with pytest.raises(WeightsFormatError, match="pass --arch"):
        infer_arch({"layer1.0.conv1.weight": 0}, "torchvision")


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_resnet_key_names_every_tensor_as_torchvision_does(depth):
    """The reference is torchvision's own model: our ResNet's conv and norm tensors map
    one to one onto its state_dict keys (fc and BN counters aside), shapes equal."""
    with torch.device("meta"):
        ours = ResNet(depth, stride_in_1x1=False, norm="BN", num_classes=1000).state_dict()
        theirs = getattr(torchvision.models, f"resnet{depth}")().state_dict()
    mapped = {torchvision_resnet_key(k): k for k in ours if not k.startswith("fc.") and "num_batches" not in k}
    expected = {k for k in theirs if not k.startswith("fc.") and "num_batches" not in k}
    assert set(mapped) == expected and len(mapped) == len(expected)
    assert all(theirs[tv].shape == ours[k].shape for tv, k in mapped.items())
    assert torchvision_resnet_key("res3.1.conv2.norm.running_var") == "layer2.1.bn2.running_var"
    assert torchvision_resnet_key("res4.0.shortcut.weight") == "layer3.0.downsample.0.weight"
    with pytest.raises(KeyError, match="res2.0.conv1.running_mean"):
        torchvision_resnet_key("res2.0.conv1.running_mean")



# ----------------------------------------------------------------------------- package layering
def _weights_like(model, arch, *, stride_in_1x1):
    return ImageNetWeights(state_dict=model.state_dict(), arch=arch, input_format="BGR",
                           pixel_mean=(103.53, 116.28, 123.675), pixel_std=(1.0, 1.0, 1.0),
                           stride_in_1x1=stride_in_1x1, stem_pool="msra", source="w.pth")


def test_stride_placement_is_checked_on_bottleneck_blocks_only():
    """load_into finds bottleneck blocks by their attributes (the weights package does not
    import modeling): basic blocks have no stride choice, ResNet itself is not a block."""
    basic = ResNet(18, stride_in_1x1=True, base_channels=8, num_classes=10)
    report = load_into(ResNet(18, stride_in_1x1=False, base_channels=8, num_classes=10),
                       _weights_like(basic, "resnet18", stride_in_1x1=True))
    assert report.missing == [] and report.unexpected == [] and report.shape_mismatch == []
    msra = ResNet(50, stride_in_1x1=True, base_channels=8, num_classes=10)
    weights = _weights_like(msra, "resnet50", stride_in_1x1=True)
    load_into(ResNet(50, stride_in_1x1=True, base_channels=8, num_classes=10), weights)
    with pytest.raises(WeightsMismatchError, match=r"model's block res2\.0 has stride_in_1x1=False"):
        load_into(ResNet(50, stride_in_1x1=False, base_channels=8, num_classes=10), weights)
    # Only the blocks under the target prefixes count: res5 alone, named as in a detector.
    trunk = torch.nn.ModuleDict({"res5": ResNet(50, stride_in_1x1=False, base_channels=8, num_classes=10).res5})
    with pytest.raises(WeightsMismatchError, match=r"model's block res5\.0 has"):
        load_into(trunk, weights, prefix_map={"res5.": "res5."})


def test_weights_package_imports_nothing_from_modeling():
    code = ("import sys, detectron_res.weights; "
            "print(sorted(m for m in sys.modules if m.startswith(('detectron_res.modeling', 'detectron_res.config'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
