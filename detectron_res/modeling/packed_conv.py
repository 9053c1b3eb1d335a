"""Convolution weights kept in oneDNN's packed layout for CPU inference.

torch's CPU convolution (oneDNN) reads its weights in a blocked layout of its own
choosing, and converts the stored (dense) weight into it on every call. On large
maps that conversion is a small part of the call; on small ones it is most of it:
R-50-C4 at 128 x 160 pixels with 16 RoIs, the RPN's 3x3 1024-channel convolution
took 28 ms per call with the dense weight and 8 ms with a packed one, res5's
convolutions 0.71-0.79x in bf16 (2-core AMD EPYC, Zen 4; see
``benchmarks/OPTIMIZATIONS.md``). :class:`PackedConvWeights` converts a weight once
per input shape and keeps the result, which ``torch.ops.mkldnn._convolution_pointwise``
(the operator torch.compile's CPU backend runs packed convolutions with) reads
directly. The arithmetic is oneDNN's either way: outputs change by float rounding
at most (bf16 ones were bit-identical in every measurement).

Why per input shape: the layout oneDNN picks can depend on it (a 1x1 convolution
packed for a batch of 16 RoIs and run on one 8 x 10 map took 30 ms instead of
0.4 ms, a conversion back on every call). A conv keeps the packings of its
``max_shapes`` most recent input shapes: a stream of same-sized images, and the
per-RoI head at a fixed proposal count, hit; a new shape costs one conversion,
what the dense path pays on every call, and replaces the oldest packing. Memory:
at most ``max_shapes`` extra copies of the conv weights.

Used only where it is exact and eager: CPU tensors, channels-last weights or
inputs (``model.speed.channels_last``), no autograd (inference), not while tracing,
exporting or compiling, and weights of the dtype the call computes in (float32, or
bf16 under bf16 autocast), and not under a dispatch mode (the multiply-add
counter of ``detectron_res.analysis``). Anywhere else the dense path runs.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Tuple

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from .graph_capture import exporting_or_compiling

__all__ = ["PackedConvWeights", "packing_available", "pack_conv_weights", "MAX_PACKED_SHAPES"]

# Input shapes remembered per convolution: two, so that inference alternating between
# two image sizes (or two RoI counts) stays packed.
MAX_PACKED_SHAPES = 2
_PACKED_DTYPES = (torch.float32, torch.bfloat16)


def packing_available() -> bool:
    """Whether this torch has oneDNN and the two operators that pack and run weights."""
    if not torch.backends.mkldnn.is_available():
        return False
    ops = torch.ops.mkldnn
    try:
        return bool(ops._reorder_convolution_weight) and bool(ops._convolution_pointwise)
    except (AttributeError, RuntimeError):
        return False


def _strictly_channels_last(t: Tensor) -> bool:
    """Channels-last and not also NCHW-contiguous (a [O, I, 1, 1] weight is both)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


class PackedConvWeights:
    """The packed copies of one convolution's weight, one per recent input shape.

    A conv with this object as ``packed_weights`` (see
    :class:`~detectron_res.modeling.backbone.norm.Conv2dNorm`) asks :meth:`conv`,
    which returns None where the packed path does not apply.
    """

    def __init__(self, max_shapes: int = MAX_PACKED_SHAPES):
        if max_shapes < 1:
            raise ValueError(f"max_shapes must be >= 1, got {max_shapes}")
        self.max_shapes = int(max_shapes)
        self._packed: "OrderedDict[Tuple, Tensor]" = OrderedDict()
        # (storage pointer, version counter) of the weight the packings were made from:
        # loading new weights into the conv invalidates them.
        self._weight_key: Optional[Tuple[int, int]] = None
        self.conversions = 0  # packings made so far (the tests read it)

    @property
    def cached_shapes(self):
        """The input shapes packed for, least recently used first."""
        return [shape for shape, _ in self._packed]

    def compute_dtype(self, x: Tensor, weight: Tensor) -> Optional[torch.dtype]:
        """The dtype the call computes in if the packed path applies, else None."""
        if x.device.type != "cpu" or weight.device.type != "cpu" or x.dim() != 4:
            return None
        # oneDNN's operator returns channels-last whatever the input; torch's dense
        # convolution does so when the input or the weight is channels-last. An NCHW
        # model (model.speed.channels_last off) keeps the dense path and stays NCHW.
        if not (_strictly_channels_last(x) or _strictly_channels_last(weight)):
            return None
        # A dispatch mode (FlopCounterMode of detectron_res.analysis) must see an aten convolution.
        if torch.is_grad_enabled() or exporting_or_compiling() or is_in_torch_dispatch_mode():
            return None
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        if dtype not in _PACKED_DTYPES or weight.dtype != dtype:
            return None
        return dtype

    def conv(self, conv: nn.Conv2d, x: Tensor, weight: Tensor, bias: Optional[Tensor],
             stride: Optional[Tuple[int, int]] = None) -> Optional[Tensor]:
        """``conv``'s convolution of ``x`` with a packed ``weight`` (``conv.stride``
        unless ``stride`` is given); None where that does not apply."""
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            return None
        dtype = self.compute_dtype(x, weight)
        if dtype is None or (bias is not None and bias.dtype != dtype):
            return None
        weight_key = (weight.data_ptr(), weight._version)
        if weight_key != self._weight_key:
            self._packed.clear()
            self._weight_key = weight_key
        padding, dilation = list(conv.padding), list(conv.dilation)
        stride = list(conv.stride if stride is None else stride)
        key = (tuple(x.shape), tuple(stride))
        packed = self._packed.pop(key, None)
        if packed is None:
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                weight, padding, stride, dilation, conv.groups, list(x.shape)
            )
            self.conversions += 1
        self._packed[key] = packed  # the most recent last
        while len(self._packed) > self.max_shapes:
            self._packed.popitem(last=False)
        # Autocast would cast the input to its dtype; oneDNN's operator is not on its lists.
        return torch.ops.mkldnn._convolution_pointwise(
            x.to(dtype), packed, bias, padding, stride, dilation, conv.groups, "none", [], ""
        )

    # Packings are derived data (oneDNN tensors, which neither copy nor pickle):
    # a copied or unpickled model starts with none and packs again.
    def __deepcopy__(self, memo):
        return PackedConvWeights(self.max_shapes)

    def __getstate__(self):
        return {"max_shapes": self.max_shapes}

    def __setstate__(self, state):
        self.__init__(state["max_shapes"])


def pack_conv_weights(module: nn.Module, max_shapes: int = MAX_PACKED_SHAPES) -> int:
    """Give every convolution of ``module`` that computes with its own weight a
    :class:`PackedConvWeights` (a ``Conv2dNorm`` without a norm after it: a plain
    convolution or one with FrozenBN folded in). Returns how many got one.

    A conv that still has a norm computes with a weight derived on every call (the
    fused FrozenBN) or none at all, so packing it would convert every time.
    """
    from .backbone.norm import Conv2dNorm  # the backbone package imports this module

    count = 0
    for sub in module.modules():
        if isinstance(sub, Conv2dNorm) and isinstance(sub.norm, nn.Identity):
            sub.packed_weights = PackedConvWeights(max_shapes)
            count += 1
    return count
