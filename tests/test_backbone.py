"""Backbones: ResNet (Table 1 / Sec 3.3), CIFAR ResNets (Table 6), VGG-16, norms, freezing.

References: torchvision's models (parameter counts, layer-by-layer sizes, an MSRA
layout obtained by moving torchvision's strides), the paper's tables and
hand-computed counts.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from detectron_res.modeling.backbone import (
    VGG16,
    CifarResNet,
    Conv2dNorm,
    FrozenBatchNorm2d,
    ResNet,
    VGG16RegionHead,
    build_resnet_res5_head,
    fold_frozen_batchnorm,
    get_norm,
)
from detectron_res.modeling.backbone.resnet import ZeroPadShortcut

# PAPER_FACTS: torchvision parameter counts (stride placement does not change them).
TORCHVISION_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}


def num_params(module, trainable_only=False):
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def randomize_bn(model, seed=0):
    """Non-trivial BN statistics and affine parameters, so BN errors would show."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            c = m.running_mean.numel()
            with torch.no_grad():
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.rand(c, generator=g) - 0.5)
    return model


# ----------------------------------------------------------------------------- ResNet
@pytest.mark.parametrize("depth", sorted(TORCHVISION_PARAMS))
@pytest.mark.parametrize("stride_in_1x1", [True, False])
def test_resnet_parameter_counts_equal_torchvision(depth, stride_in_1x1):
    with torch.device("meta"):
        ours = ResNet(depth, stride_in_1x1=stride_in_1x1, num_classes=1000)
    assert num_params(ours) == TORCHVISION_PARAMS[depth]
    if depth == 50:
        with torch.device("meta"):
            assert num_params(torchvision.models.resnet50()) == TORCHVISION_PARAMS[50]


@pytest.mark.parametrize("depth,table6", [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85), (110, 1.7)])
def test_cifar_resnet_parameter_counts_round_to_table6(depth, table6):
    with torch.device("meta"):
        model = CifarResNet(depth)
        plain = CifarResNet(depth, residual=False)
    millions = num_params(model) / 1e6
    digits = 1 if table6 >= 1 else 2
    assert round(millions, digits) == table6
    # Option A shortcuts are parameter-free: the plain net has the same count.
    assert num_params(plain) == num_params(model)


def test_cifar_resnet_shapes_and_depth_check():
    model = CifarResNet(20).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # 6n+2 weighted layers: 1 conv + 6n convs + fc.
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) + 1 == 20
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(21)


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_stage_shapes_match_torchvision_layers(depth):
    # Shapes only: the meta device propagates them without computing anything.
    with torch.device("meta"):
        ours = ResNet(depth, out_features=["stem", "res2", "res3", "res4", "res5"]).eval()
        reference = getattr(torchvision.models, f"resnet{depth}")().eval()
        x = torch.empty(1, 3, 100, 130)
    with torch.no_grad():
        outputs = ours(x)
        y = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        expected = {"stem": y}
        for i, name in enumerate(["res2", "res3", "res4", "res5"]):
            y = getattr(reference, f"layer{i + 1}")(y)
            expected[name] = y
    for name, out in outputs.items():
        assert out.shape == expected[name].shape, name
        assert ours.out_channels[name] == out.shape[1]
    assert ours.strides == {"stem": 4, "res2": 4, "res3": 8, "res4": 16, "res5": 32}


def test_out_features_builds_only_the_needed_stages():
    with torch.device("meta"):
        trunk = ResNet(50, out_features=["res4"])
    assert trunk.stage_names == ["stem", "res2", "res3", "res4"]
    assert not hasattr(trunk, "res5") and not hasattr(trunk, "fc")
    assert trunk.out_channels["res4"] == 1024 and trunk.strides["res4"] == 16
    thin = ResNet(50, out_features=["res4"], base_channels=16)
    out = thin(torch.randn(1, 3, 64, 64))
    assert list(out) == ["res4"] and out["res4"].shape == (1, 256, 4, 4)
    with pytest.raises(ValueError, match="out_features"):
        ResNet(50, out_features=["res6"])
    with pytest.raises(ValueError, match="depth"):
        ResNet(42)


def test_classifier_with_out_features_returns_logits_under_fc():
    model = ResNet(18, num_classes=7, out_features=["res3", "fc"], base_channels=16).eval()
    out = model(torch.randn(2, 3, 64, 64))
    assert set(out) == {"res3", "fc"} and out["fc"].shape == (2, 7)


def test_base_channels_scales_every_width():
    thin = ResNet(50, base_channels=16, out_features=["res5"])
    assert thin.out_channels == {"stem": 16, "res2": 64, "res3": 128, "res4": 256, "res5": 512}


def _msra_layout_torchvision(depth):
    """torchvision's ResNet with the MSRA layout: stride in the 1x1, pool1 ceil/no pad."""
    model = getattr(torchvision.models, f"resnet{depth}")()
    model.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
    for layer in (model.layer2, model.layer3, model.layer4):
        block = layer[0]
        block.conv1.stride, block.conv2.stride = (2, 2), (1, 1)
    return model


def test_msra_layout_matches_reference_with_moved_strides():
    reference = randomize_bn(_msra_layout_torchvision(50)).eval()
    ours = ResNet(50, stride_in_1x1=True, num_classes=1000).eval()
    assert isinstance(ours.stem.pool, nn.MaxPool2d) and ours.stem.pool.ceil_mode
    # Same weights by position: both models create their tensors in the same order.
    src = [t for k, t in reference.state_dict().items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in ours.state_dict() if not k.endswith("num_batches_tracked")]
    assert len(src) == len(dst)
    ours.load_state_dict(dict(zip(dst, src)), strict=False)
    x = torch.randn(1, 3, 67, 77)  # odd sizes exercise ceil_mode and stride placement
    with torch.no_grad():
        assert torch.allclose(ours(x), reference(x), atol=1e-4, rtol=1e-4)


def test_stride_placement():
    msra = ResNet(50, stride_in_1x1=True, out_features=["res3"])
    tv = ResNet(50, stride_in_1x1=False, out_features=["res3"])
    assert msra.res3[0].conv1.stride == (2, 2) and msra.res3[0].conv2.stride == (1, 1)
    assert tv.res3[0].conv1.stride == (1, 1) and tv.res3[0].conv2.stride == (2, 2)
    assert msra.stem.pool.padding == 0 and tv.stem.pool.padding == 1


# ----------------------------------------------------------------------------- shortcuts
def _projection_params(c_in, c_out):
    return c_in * c_out + 2 * c_out  # 1x1 conv (no bias) + BN weight/bias


def test_shortcut_options_parameter_counts_resnet34():
    with torch.device("meta"):
        counts = {opt: num_params(ResNet(34, shortcut=opt, num_classes=1000)) for opt in "ABC"}
        plain = num_params(ResNet(34, residual=False, num_classes=1000))
    # B adds projections where dimensions change: conv3_1, conv4_1, conv5_1 (Sec 3.3).
    b_minus_a = _projection_params(64, 128) + _projection_params(128, 256) + _projection_params(256, 512)
    # C also projects the identity shortcuts: 3 + 3 + 5 + 2 blocks of ResNet-34.
    c_minus_b = (
        3 * _projection_params(64, 64)
        + 3 * _projection_params(128, 128)
        + 5 * _projection_params(256, 256)
        + 2 * _projection_params(512, 512)
    )
    assert counts["B"] == TORCHVISION_PARAMS[34]
    assert counts["B"] - counts["A"] == b_minus_a
    assert counts["C"] - counts["B"] == c_minus_b
    assert plain == counts["A"]


def test_zero_pad_shortcut():
    shortcut = ZeroPadShortcut(4, 8, stride=2)
    x = torch.randn(2, 4, 7, 9)
    y = shortcut(x)
    assert y.shape == (2, 8, 4, 5)
    assert torch.equal(y[:, :4], x[:, :, ::2, ::2]) and torch.all(y[:, 4:] == 0)
    model = ResNet(34, shortcut="A", base_channels=16, num_classes=10).eval()
    assert model(torch.randn(1, 3, 65, 65)).shape == (1, 10)


def test_plain_block_has_no_shortcut_and_computes_the_conv_chain():
    model = ResNet(18, residual=False, base_channels=16, out_features=["res2"]).eval()
    randomize_bn(model)
    block = model.res2[0]
    assert block.shortcut is None and not block.residual
    x = torch.randn(1, 16, 9, 9)
    with torch.no_grad():
        # conv -> BN -> ReLU -> conv -> BN, written with functional ops.
        def conv_bn(conv, h):
            n = conv.norm
            y = F.conv2d(h, conv.weight, stride=conv.stride, padding=conv.padding)
            return F.batch_norm(y, n.running_mean, n.running_var, n.weight, n.bias, False, 0.0, n.eps)

        branch = conv_bn(block.conv2, F.relu(conv_bn(block.conv1, x)))
        assert torch.allclose(block(x), F.relu(branch), atol=1e-5)
        # The residual block with the same weights adds the identity (Eq. 1).
        residual = copy.deepcopy(block)
        residual.residual = True
        assert torch.allclose(residual(x), F.relu(branch + x), atol=1e-5)


# ----------------------------------------------------------------------------- C4 res5 head
@pytest.mark.parametrize("depth", [18, 50])
def test_res5_head_names_and_shapes_match_imagenet_model(depth):
    with torch.device("meta"):
        head = build_resnet_res5_head(depth, stride_in_1x1=True, norm="FrozenBN")
        full = ResNet(depth, stride_in_1x1=True, norm="FrozenBN", num_classes=1000)
        res5_keys = {k[len("res5."):]: v.shape for k, v in full.state_dict().items() if k.startswith("res5.")}
        assert {k: v.shape for k, v in head.state_dict().items()} == res5_keys
        assert head.out_channels == full.out_channels["res5"]
        assert head[0].stride == 2
        # Appendix A: a 14x14 RoI feature from res4 becomes 7x7 after res5.
        in_channels = full.out_channels["res4"]
        assert head(torch.empty(3, in_channels, 14, 14)).shape == (3, head.out_channels, 7, 7)


def test_res5_head_freeze():
    head = build_resnet_res5_head(50, stride_in_1x1=True, norm="BN", freeze=True)
    assert num_params(head, trainable_only=True) == 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in head.modules())


# ----------------------------------------------------------------------------- norms and freezing
def _torchvision_stage_params(depth):
    """Parameters of stem, res2..res5 and fc, summed from torchvision's modules."""
    with torch.device("meta"):
        tv = getattr(torchvision.models, f"resnet{depth}")()
    stem = num_params(tv.conv1) + num_params(tv.bn1)
    stages = [num_params(getattr(tv, f"layer{i}")) for i in range(1, 5)]
    return [stem] + stages, num_params(tv.fc)


@pytest.mark.parametrize("depth", [18, 50])
def test_trainable_parameters_per_freeze_at_level(depth):
    stage_params, fc_params = _torchvision_stage_params(depth)
    total = sum(stage_params) + fc_params
    assert total == TORCHVISION_PARAMS[depth]
    for freeze_at in range(6):
        with torch.device("meta"):
            model = ResNet(depth, norm="BN", freeze_at=freeze_at, num_classes=1000)
        # Frozen stages lose their conv weights and (now FrozenBN buffers) BN affines.
        expected = total - sum(stage_params[:freeze_at])
        assert num_params(model, trainable_only=True) == expected, freeze_at
        frozen_names = ["stem", "res2", "res3", "res4", "res5"][:freeze_at]
        for name in ["stem", "res2", "res3", "res4", "res5"]:
            norms = [m for m in getattr(model, name).modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
            want = FrozenBatchNorm2d if name in frozen_names else nn.BatchNorm2d
            assert all(type(m) is want for m in norms), (freeze_at, name)
    with pytest.raises(ValueError, match="freeze_at"):
        ResNet(18, freeze_at=6)


def test_frozen_bn_has_no_parameters_and_fixed_statistics_in_train_mode():
    model = ResNet(18, norm="FrozenBN", base_channels=16, out_features=["res3"])
    randomize_bn(model)
    frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen and all(len(list(m.parameters())) == 0 for m in frozen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    for _ in range(2):
        model(torch.randn(4, 3, 32, 32) * 5 + 3)["res3"].sum().backward()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_frozen_bn_matches_batchnorm_eval_and_loads_its_state_dict():
    bn = randomize_bn(nn.Sequential(nn.BatchNorm2d(6)))[0].eval()
    frozen = FrozenBatchNorm2d(6)
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked is dropped
    x = torch.randn(2, 6, 5, 5)
    assert torch.allclose(frozen(x), bn(x), atol=1e-6)
    converted = FrozenBatchNorm2d.convert_frozen_batchnorm(bn)
    assert isinstance(converted, FrozenBatchNorm2d) and torch.allclose(converted(x), bn(x), atol=1e-6)


def test_norm_choices():
    assert isinstance(get_norm("GN", 64), nn.GroupNorm) and get_norm("GN", 64).num_groups == 32
    assert isinstance(get_norm("SyncBN", 8), nn.SyncBatchNorm)
    with pytest.raises(ValueError, match="GN.*48"):
        get_norm("GN", 48)
    with pytest.raises(ValueError, match="norm"):
        ResNet(18, norm="LayerNorm")
    for norm in ("GN", "SyncBN"):
        model = ResNet(18, norm=norm, base_channels=32, out_features=["res2"])
        assert model(torch.randn(2, 3, 32, 32))["res2"].shape == (2, 32, 8, 8)


def test_fold_frozen_batchnorm_keeps_outputs():
    model = randomize_bn(ResNet(50, norm="FrozenBN", base_channels=16, num_classes=10)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        fold_frozen_batchnorm(model)
        after = model(x)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert all(m.bias is not None for m in model.modules() if isinstance(m, Conv2dNorm))
    assert torch.allclose(before, after, atol=1e-4, rtol=1e-4)


def test_every_conv_followed_by_a_norm_is_a_conv2dnorm_without_bias():
    model = ResNet(50, norm="BN", base_channels=16, num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(isinstance(m, Conv2dNorm) and m.bias is None for m in convs)


# ----------------------------------------------------------------------------- VGG-16
def test_vgg16_matches_torchvision_sizes_and_counts():
    with torch.device("meta"):
        ours = VGG16(num_classes=1000)
        reference = torchvision.models.vgg16()
        trunk = VGG16()
    assert num_params(ours) == num_params(reference) == 138_357_544
    assert num_params(trunk) == num_params(reference.features)  # 13 convs, no fc
    assert trunk.out_channels["conv5_3"] == 512 and trunk.strides["conv5_3"] == 16


def test_vgg16_trunk_stride_16_and_freeze():
    trunk = VGG16(out_features=["conv4_3", "conv5_3"], freeze_at=2)
    out = trunk(torch.randn(1, 3, 64, 96))
    assert out["conv5_3"].shape == (1, 512, 4, 6) and out["conv4_3"].shape == (1, 512, 8, 12)
    assert not hasattr(trunk, "pool5")
    frozen = [n for n, p in trunk.named_parameters() if not p.requires_grad]
    assert sorted({n.split(".")[0] for n in frozen}) == ["conv1_1", "conv1_2", "conv2_1", "conv2_2"]
    assert VGG16(out_features=["conv3_3"]).strides == {"conv1_2": 1, "conv2_2": 2, "conv3_3": 4}


def test_vgg16_region_head_loads_imagenet_fc6_fc7():
    with torch.device("meta"):
        classifier = VGG16(num_classes=1000)
        head = VGG16RegionHead().eval()
        wanted = {k: v.shape for k, v in classifier.state_dict().items() if k.startswith(("fc6.", "fc7."))}
        assert {k: v.shape for k, v in head.state_dict().items()} == wanted
        assert head(torch.empty(5, 512, 7, 7)).shape == (5, 4096) and head.out_channels == 4096
        with pytest.raises(ValueError, match="512, 7, 7"):
            head(torch.empty(5, 512, 6, 6))
    small = VGG16RegionHead(in_channels=8, resolution=3, dropout=0.0).eval()
    x = torch.randn(2, 8, 3, 3)
    expected = F.relu(small.fc7(F.relu(small.fc6(x.flatten(1)))))
    assert torch.allclose(small(x), expected)
