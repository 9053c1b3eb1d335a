"""oneDNN-packed convolution weights (``model.speed.packed_conv_weights``,
``detectron_res/modeling/packed_conv.py``).

* A packed convolution gives the dense convolution's output: float32 within rounding,
  bf16 (under autocast, as the bf16-prepared model runs) bit for bit; 1x1 and 3x3,
  strided, with and without bias; channels-last inputs only (NCHW ones keep the
  dense path and their layout).
* One conversion per input shape: the same shape again converts nothing, a new
  shape converts once, the oldest of more than ``max_shapes`` shapes is dropped,
  and new weights loaded into the conv invalidate every packing.
* The dense path runs wherever the packed one would not be exact or eager: with
  autograd, float32 weights under bf16 autocast, tracing, a norm left after the conv.
* ``prepare_for_inference`` gives every norm-less convolution its packing (none with
  the option off); the detections equal those with the option off (also in
  ``test_speed_equivalence.py``), and a prepared model still copies and pickles.
"""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

from detectron_res.modeling.backbone.norm import Conv2dNorm
from detectron_res.modeling.packed_conv import PackedConvWeights, pack_conv_weights, packing_available
from helpers import R50_ALIGN, thin_detector, two_test_images

pytestmark = pytest.mark.skipif(not packing_available(), reason="this torch has no oneDNN weight packing")


def _conv(in_channels=16, out_channels=24, kernel_size=3, stride=1, padding=1, bias=True, seed=0):
    torch.manual_seed(seed)
    conv = Conv2dNorm(in_channels, out_channels, kernel_size=kernel_size, stride=stride, padding=padding,
                      norm=None).eval()
    if not bias:
        conv.bias = None
    conv.packed_weights = PackedConvWeights()
    return conv


def _dense(conv, x):
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding)


@pytest.mark.parametrize("kernel_size, stride, padding", [(3, 1, 1), (3, 2, 1), (1, 1, 0), (1, 2, 0)])
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_float32_convolution_equals_the_dense_one(kernel_size, stride, padding, channels_last, bias):
    conv = _conv(kernel_size=kernel_size, stride=stride, padding=padding, bias=bias)
    x = torch.randn(3, 16, 11, 13)
    if channels_last:
        conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        packed, dense = conv(x), _dense(conv, x)
    # NCHW (model.speed.channels_last off) keeps the dense path: oneDNN's operator would
    # return channels-last and change the layout of everything after it.
    assert conv.packed_weights.conversions == (1 if channels_last else 0)
    assert packed.shape == dense.shape and packed.dtype == torch.float32
    torch.testing.assert_close(packed, dense, rtol=1e-5, atol=1e-5)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    assert packed.is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize("kernel_size, padding", [(3, 1), (1, 0)])
def test_packed_bf16_convolution_under_autocast_equals_autocast_bit_for_bit(kernel_size, padding):
    conv = _conv(kernel_size=kernel_size, padding=padding).to(memory_format=torch.channels_last)
    reference_conv = copy.deepcopy(conv)
    reference_conv.packed_weights = None
    conv.weight.data = conv.weight.data.to(torch.bfloat16)  # as cast_for_autocast stores them
    conv.bias.data = conv.bias.data.to(torch.bfloat16)
    x = torch.randn(2, 16, 9, 10).contiguous(memory_format=torch.channels_last)  # float32, as the image
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        packed = conv(x)
        reference = reference_conv(x)  # autocast rounds the float32 weights to the same bf16 values
    assert conv.packed_weights.conversions == 1
    assert packed.dtype == reference.dtype == torch.bfloat16
    assert torch.equal(packed, reference)


def test_one_conversion_per_input_shape_and_the_oldest_dropped():
    conv = _conv()
    conv.packed_weights = PackedConvWeights(max_shapes=2)
    shapes = [(1, 16, 8, 10), (1, 16, 8, 10), (4, 16, 7, 7), (1, 16, 8, 10), (2, 16, 5, 6), (4, 16, 7, 7)]
    conversions = []
    with torch.inference_mode():
        for shape in shapes:
            x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(conv(x), _dense(conv, x), rtol=1e-5, atol=1e-5)
            conversions.append(conv.packed_weights.conversions)
    # New, same, new, remembered, new (drops the 4-RoI shape, least recently used), dropped -> again.
    assert conversions == [1, 1, 2, 2, 3, 4]
    assert conv.packed_weights.cached_shapes == [(2, 16, 5, 6), (4, 16, 7, 7)]


def test_new_weights_invalidate_the_packings():
    conv = _conv()
    x = torch.randn(1, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        before = conv(x)
    other = _conv(seed=1)
    conv.load_state_dict(other.state_dict())  # copies in place: same storage, new version
    with torch.inference_mode():
        after = conv(x)
    assert conv.packed_weights.conversions == 2
    torch.testing.assert_close(after, _dense(other, x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, after)


def test_the_dense_path_runs_where_packing_does_not_apply():
    conv = _conv()
    x = torch.randn(1, 16, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
    # Autograd: the packed operator has no backward.
    out = conv(x)
    out.sum().backward()
    assert x.grad is not None and conv.weight.grad is not None
    # Float32 weights under bf16 autocast: autocast converts them (the fp32-prepared model).
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x.detach()).dtype == torch.bfloat16
    # Tracing: the graph must hold the dense operator.
    with torch.no_grad():
        traced = torch.jit.trace(conv, x.detach(), check_trace=False)  # the check reruns it eagerly
    assert "mkldnn" not in str(traced.graph)
    assert conv.packed_weights.conversions == 0
    # A dispatch mode (the multiply-add counter) sees the aten convolution.
    from detectron_res.analysis import count_macs

    with torch.inference_mode():
        assert count_macs(conv, x.detach(), stages=())["total"] == 24 * 16 * 9 * 8 * 8
    assert conv.packed_weights.conversions == 0
    # A conv with its FrozenBN still after it computes with a weight derived per call: not packed.
    model = thin_detector(*R50_ALIGN, "model.fold_frozen_bn=false")
    model.prepare_for_inference()
    assert all(m.packed_weights is None for m in model.backbone.modules() if isinstance(m, Conv2dNorm))


def test_prepare_for_inference_packs_and_gives_the_same_detections():
    plain = thin_detector(*R50_ALIGN, "model.speed.packed_conv_weights=false")
    packed = thin_detector(*R50_ALIGN)
    packed.load_state_dict(plain.state_dict())
    plain.prepare_for_inference()
    packed.prepare_for_inference()
    convs = [m for m in packed.modules() if isinstance(m, Conv2dNorm)]
    assert convs and all(m.packed_weights is not None for m in convs)  # RPN head included
    assert all(m.packed_weights is None for m in plain.modules() if isinstance(m, Conv2dNorm))
    images = two_test_images()
    reference, outputs = plain(images), packed(images)
    assert sum(len(d["boxes"]) for d in reference) > 0
    for a, b in zip(reference, outputs):
        assert torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=0, atol=1e-2)
        torch.testing.assert_close(a["scores"], b["scores"], rtol=0, atol=1e-4)
    # Every conv ran packed, res5's conv1 and shortcut on the whole map (stride 1) included.
    assert packed.roi_heads.convs_moved_before_pool == ("conv1", "shortcut")
    assert all(m.packed_weights.conversions > 0 for m in convs)
    conversions = sum(m.packed_weights.conversions for m in convs)
    packed(images)  # the same image sizes again: nothing converted
    assert sum(m.packed_weights.conversions for m in convs) == conversions
    # Packings are derived data: copies and pickles start without them and pack again.
    for clone in (copy.deepcopy(packed), pickle.loads(pickle.dumps(packed))):
        clone_convs = [m for m in clone.modules() if isinstance(m, Conv2dNorm)]
        assert all(m.packed_weights is not None and m.packed_weights.conversions == 0 for m in clone_convs)
        for a, b in zip(outputs, clone(images)):
            assert torch.equal(a["boxes"], b["boxes"])


def test_pack_conv_weights_counts_the_convs_it_packs():
    model = thin_detector(*R50_ALIGN)
    model.prepare_for_inference()
    assert pack_conv_weights(model) == sum(
        1 for m in model.modules() if isinstance(m, Conv2dNorm) and isinstance(m.norm, torch.nn.Identity)
    )
    with pytest.raises(ValueError, match="max_shapes"):
        PackedConvWeights(max_shapes=0)
