"""Residual networks of the ResNet paper (He et al., arXiv 1512.03385).

* :class:`ResNet`: the ImageNet models of Table 1 (depths 18, 34, 50, 101, 152),
  their "plain" counterparts (``residual=False``, Sec 3.3 / Table 2), the three
  shortcut options A/B/C (Sec 3.3), an optional ImageNet classification head, and
  the stage outputs a detector needs (``out_features``).
* :func:`build_resnet_res5_head`: the last stage (conv5_x / ``res5``) alone, run per
  region on RoI-pooled features in the paper's Faster R-CNN (Appendix A, "C4").
* :class:`CifarResNet`: the 6n+2-layer CIFAR-10 networks of Sec 4.2 / Table 6.

Stage names and strides (input ``(N, 3, H, W)``, in pixels of the input image)::

    stem  conv1 7x7/2 + 3x3 max pool/2   stride 4     (Table 1 "conv1" + pool)
    res2  conv2_x                         stride 4
    res3  conv3_x, first block stride 2   stride 8
    res4  conv4_x, first block stride 2   stride 16    <- C4 trunk output
    res5  conv5_x, first block stride 2   stride 32

Where the stride-2 sits in a bottleneck block differs between the two public
families of weights (PAPER_FACTS, Table 1 notes):

* MSRA Caffe models (``stride_in_1x1=True``): on the first 1x1 conv. Their pool1 is
  3x3/2 with ``ceil_mode`` and no padding. ResNet-50 costs 3.8e9 multiply-adds.
* torchvision "v1.5" (``stride_in_1x1=False``): on the 3x3 conv; pool1 has padding 1
  and floors. ResNet-50 costs 4.1e9 multiply-adds.

Both have the same parameters, so one weight layout serves both; loading weights
into the other layout runs but computes something else, which is why the weights
carry their ``stride_in_1x1`` (see ``detectron_res/weights.py``).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .norm import NORM_NAMES, Conv2dNorm, FrozenBatchNorm2d

__all__ = [
    "ResNet",
    "ResNetStage",
    "BasicStem",
    "BasicBlock",
    "BottleneckBlock",
    "ZeroPadShortcut",
    "build_resnet_res5_head",
    "CifarResNet",
    "RESNET_DEPTHS",
]

# Table 1: block type and number of blocks in conv2_x..conv5_x.
_RESNET_SPECS: Dict[int, tuple] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
RESNET_DEPTHS = tuple(sorted(_RESNET_SPECS))
STAGE_NAMES = ("stem", "res2", "res3", "res4", "res5")
_STAGE_STRIDES = {"stem": 4, "res2": 4, "res3": 8, "res4": 16, "res5": 32}
SHORTCUT_OPTIONS = ("A", "B", "C")
STEM_POOLS = ("msra", "torchvision")
# A bottleneck's last 1x1 conv widens its channels 4x (Table 1: [1x1,64; 3x3,64; 1x1,256]).
_BOTTLENECK_EXPANSION = 4


def _check_choice(value, choices: Sequence, what: str) -> None:
    if value not in choices:
        raise ValueError(f"{what}={value!r} is not supported; expected one of {', '.join(map(repr, choices))}")


def _init_conv(conv: nn.Conv2d) -> None:
    # He initialization (He et al. 2015, cited in Sec 3.4), fan_out as in the MSRA
    # and torchvision implementations.
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class ZeroPadShortcut(nn.Module):
    """Shortcut option A (Sec 3.3): identity with zero padding for the new channels.

    Parameter-free. With ``stride`` 2 the identity samples every other pixel
    (``x[:, :, ::2, ::2]``), giving ``ceil(H / 2)`` rows, the same size as the
    residual branch's strided 3x3 (padding 1) or 1x1 (padding 0) convolution.

    Input ``(N, in_channels, H, W)``; output ``(N, out_channels, ceil(H/s), ceil(W/s))``
    whose first ``in_channels`` channels are the input and the rest zeros.
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
                f"shortcut option A can only add channels, got {in_channels} -> {out_channels} channels"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_channels - self.in_channels
        if extra > 0:
            # F.pad's last pair pads the channel dim (dim 1 of N, C, H, W) at its end.
            x = F.pad(x, (0, 0, 0, 0, 0, extra))
        return x

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


def _make_shortcut(
    in_channels: int,
    out_channels: int,
    *,
    stride: int,
    shortcut: str,
    norm: str,
    residual: bool,
    fuse_frozen_bn: bool = True,
) -> Optional[nn.Module]:
    """The shortcut branch of a block, or ``None`` for an identity (or no) shortcut.

    Option A: zero-padding identity where dimensions change (no parameters).
    Option B: 1x1 projection (+norm) where dimensions change, identity elsewhere.
    Option C: 1x1 projection (+norm) on every shortcut.
    """
    if not residual:
        return None
    changes_shape = in_channels != out_channels or stride != 1
    if shortcut == "C" or (shortcut == "B" and changes_shape):
        return Conv2dNorm(
            in_channels, out_channels, kernel_size=1, stride=stride, norm=norm, fuse_frozen_bn=fuse_frozen_bn
        )
    if shortcut == "A" and changes_shape:
        return ZeroPadShortcut(in_channels, out_channels, stride=stride)
    return None


class _ResidualBlock(nn.Module):
    """What :class:`BasicBlock` and :class:`BottleneckBlock` share: their attributes
    and the end of a block, ``relu(residual_branch + shortcut(x))``.

    A subclass builds its convs, then ``self.shortcut`` (in that order: the order
    modules are created is the order of the state dict and of initialization).
    """

    shortcut: Optional[nn.Module]

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, residual: bool, inplace_relu: bool):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.residual = residual
        self.inplace_relu = bool(inplace_relu)

    def _relu(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu_(x) if self.inplace_relu else F.relu(x)

    def _add_shortcut_and_relu(
        self, out: torch.Tensor, x: Optional[torch.Tensor], shortcut_out: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """``relu(out + shortcut_out)``; ``shortcut_out=None``: computed from ``x``
        (``x`` itself for an identity shortcut). Without ``residual``: ``relu(out)``."""
        if self.residual:
            if shortcut_out is None:
                shortcut_out = x if self.shortcut is None else self.shortcut(x)
            out = out.add_(shortcut_out) if self.inplace_relu else out + shortcut_out
        return self._relu(out)


class BasicBlock(_ResidualBlock):
    """Two 3x3 convs, ``[3x3, C; 3x3, C]`` (Table 1, ResNet-18/34; Fig. 5 left).

    ``relu(norm(conv2(relu(norm(conv1(x))))) + shortcut(x))``; with ``residual=False``
    the addition is dropped (the paper's plain network). The stride is on ``conv1``.
    ``inplace_relu`` applies the ReLUs and the addition in place (see :class:`BottleneckBlock`);
    ``fuse_frozen_bn`` is passed to every :class:`Conv2dNorm`.

    Input ``(N, in_channels, H, W)``; output ``(N, out_channels, ceil(H/stride), ceil(W/stride))``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        norm: str = "BN",
        shortcut: str = "B",
        residual: bool = True,
        inplace_relu: bool = True,
        fuse_frozen_bn: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, stride=stride, residual=residual, inplace_relu=inplace_relu)
        conv = dict(norm=norm, fuse_frozen_bn=fuse_frozen_bn)
        self.conv1 = Conv2dNorm(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, **conv)
        self.conv2 = Conv2dNorm(out_channels, out_channels, kernel_size=3, padding=1, **conv)
        self.shortcut = _make_shortcut(
            in_channels, out_channels, stride=stride, shortcut=shortcut, residual=residual, **conv
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self._relu(self.conv1(x)))
        return self._add_shortcut_and_relu(out, x)


class BottleneckBlock(_ResidualBlock):
    """``[1x1, B; 3x3, B; 1x1, 4B]`` (Table 1, ResNet-50/101/152; Fig. 5 right).

    ``relu(conv3(relu(conv2(relu(conv1(x))))) + shortcut(x))`` with a norm after each
    conv. ``stride_in_1x1=True`` puts the stride on ``conv1`` (MSRA Caffe models),
    ``False`` on ``conv2`` (torchvision "v1.5").

    ``inplace_relu`` (``model.speed.inplace_relu``) applies the ReLUs and the
    shortcut addition in place, as torchvision's ResNet does: the same numbers, one
    large allocation fewer per op (on the CPU each is a fresh ``mmap`` with its page
    faults: a pooled res5 activation of 300 RoIs is 120 MB). Safe for autograd: no
    tensor that a backward needs is overwritten (convolutions and norms keep their
    inputs, ReLU its output). ``fuse_frozen_bn`` is passed to every :class:`Conv2dNorm`.

    Input ``(N, in_channels, H, W)``; output ``(N, out_channels, ceil(H/stride), ceil(W/stride))``.
    """

    def __init__(
        self,
        in_channels: int,
        bottleneck_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        stride_in_1x1: bool = False,
        norm: str = "BN",
        shortcut: str = "B",
        residual: bool = True,
        inplace_relu: bool = True,
        fuse_frozen_bn: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, stride=stride, residual=residual, inplace_relu=inplace_relu)
        self.stride_in_1x1 = stride_in_1x1
        conv = dict(norm=norm, fuse_frozen_bn=fuse_frozen_bn)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2dNorm(in_channels, bottleneck_channels, kernel_size=1, stride=stride_1x1, **conv)
        self.conv2 = Conv2dNorm(
            bottleneck_channels, bottleneck_channels, kernel_size=3, stride=stride_3x3, padding=1, **conv
        )
        self.conv3 = Conv2dNorm(bottleneck_channels, out_channels, kernel_size=1, **conv)
        self.shortcut = _make_shortcut(
            in_channels, out_channels, stride=stride, shortcut=shortcut, residual=residual, **conv
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._after_conv1(self.conv1(x), x, None)

    def forward_after_conv1(self, conv1_out: torch.Tensor, shortcut_out: Optional[torch.Tensor]) -> torch.Tensor:
        """``forward(x)`` given ``conv1_out = conv1(x)`` (norm applied, before its ReLU) and
        ``shortcut_out``, what the shortcut adds (``shortcut(x)``, or ``x`` itself for an
        identity; None without ``residual``).

        The C4 head uses it to run ``conv1`` and the projection shortcut on the whole
        feature map before RoI pooling (``ROIHeads.pool_and_res5``).
        """
        return self._after_conv1(conv1_out, None, shortcut_out)

    def _after_conv1(
        self, conv1_out: torch.Tensor, x: Optional[torch.Tensor], shortcut_out: Optional[torch.Tensor]
    ) -> torch.Tensor:
        out = self._relu(conv1_out)
        out = self.conv3(self._relu(self.conv2(out)))
        return self._add_shortcut_and_relu(out, x, shortcut_out)


class ResNetStage(nn.Sequential):
    """One stage (``res2``..``res5``): an ``nn.Sequential`` of blocks named ``0, 1, ...``.

    Attributes:
        out_channels: channels of the stage's output.
        first_stride: stride of its first block (1 for res2, 2 for res3..res5).
    """

    def __init__(self, blocks: List[nn.Module], *, out_channels: int, first_stride: int) -> None:
        super().__init__(*blocks)
        self.out_channels = out_channels
        self.first_stride = first_stride


def _make_stage(
    *,
    block_type: str,
    num_blocks: int,
    in_channels: int,
    bottleneck_channels: int,
    out_channels: int,
    first_stride: int,
    stride_in_1x1: bool,
    norm: str,
    shortcut: str,
    residual: bool,
    inplace_relu: bool = True,
    fuse_frozen_bn: bool = True,
) -> ResNetStage:
    """``num_blocks`` blocks; only the first one changes resolution and width."""
    blocks: List[nn.Module] = []
    speed = dict(inplace_relu=inplace_relu, fuse_frozen_bn=fuse_frozen_bn)
    for i in range(num_blocks):
        stride = first_stride if i == 0 else 1
        block_in = in_channels if i == 0 else out_channels
        if block_type == "basic":
            block = BasicBlock(
                block_in, out_channels, stride=stride, norm=norm, shortcut=shortcut, residual=residual, **speed
            )
        else:
            block = BottleneckBlock(
                block_in,
                bottleneck_channels,
                out_channels,
                stride=stride,
                stride_in_1x1=stride_in_1x1,
                norm=norm,
                shortcut=shortcut,
                residual=residual,
                **speed,
            )
        blocks.append(block)
    return ResNetStage(blocks, out_channels=out_channels, first_stride=first_stride)


def _stage_widths(depth: int, base_channels: int) -> List[tuple]:
    """(in, bottleneck, out) channels of res2..res5 for a ResNet of ``depth``."""
    block_type, _ = _RESNET_SPECS[depth]
    widths = []
    in_channels = base_channels
    for i in range(4):
        inner = base_channels * 2**i
        out = inner * _BOTTLENECK_EXPANSION if block_type == "bottleneck" else inner
        widths.append((in_channels, inner, out))
        in_channels = out
    return widths


def _check_resnet_args(depth, norm, shortcut, base_channels) -> None:
    _check_choice(depth, RESNET_DEPTHS, "ResNet depth")
    _check_choice(norm, NORM_NAMES, "norm")
    _check_choice(shortcut, SHORTCUT_OPTIONS, "shortcut")
    if not isinstance(base_channels, int) or base_channels < 1:
        raise ValueError(f"base_channels must be a positive int, got {base_channels!r}")


def _freeze_module(module: nn.Module) -> nn.Module:
    """No gradients for ``module``, and its BN layers become FrozenBN (fixed statistics)."""
    for p in module.parameters():
        p.requires_grad_(False)
    return FrozenBatchNorm2d.convert_frozen_batchnorm(module)


class BasicStem(nn.Module):
    """conv1 (7x7, stride 2, + norm + ReLU) and pool1 (3x3 max pool, stride 2): stride 4.

    ``pool="msra"``: no padding, ``ceil_mode=True`` (the MSRA Caffe models);
    ``pool="torchvision"``: padding 1, floor. Both give 56x56 from a 224x224 input.

    Input ``(N, in_channels, H, W)``; output ``(N, out_channels, ~H/4, ~W/4)``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 64,
        *,
        norm: str = "BN",
        pool: str = "torchvision",
        inplace_relu: bool = True,
        fuse_frozen_bn: bool = True,
    ) -> None:
        super().__init__()
        _check_choice(pool, STEM_POOLS, "stem_pool")
        self.out_channels = out_channels
        self.inplace_relu = bool(inplace_relu)
        self.conv1 = Conv2dNorm(
            in_channels, out_channels, kernel_size=7, stride=2, padding=3, norm=norm, fuse_frozen_bn=fuse_frozen_bn
        )
        if pool == "msra":
            self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
        else:
            self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place: max pooling keeps the ReLU's output for its backward, nothing changes it later.
        return self.pool(F.relu_(self.conv1(x)) if self.inplace_relu else F.relu(self.conv1(x)))


class ResNet(nn.Module):
    """ResNet-18/34/50/101/152 (Table 1), as an ImageNet classifier or a feature trunk.

    Args:
        depth: 18, 34, 50, 101 or 152.
        stride_in_1x1: True for the MSRA Caffe layout (stride on a bottleneck's first
            1x1 conv), False for torchvision's (stride on the 3x3). Must match the
            weights you load.
        norm: "FrozenBN", "BN", "SyncBN" or "GN" for every conv's normalization.
        freeze_at: 0 trains everything; k >= 1 freezes the first k of
            ``stem, res2, res3, res4, res5`` (no gradients, BN turned into FrozenBN).
        shortcut: option "A", "B" or "C" of Sec 3.3.
        residual: False builds the plain network (no shortcuts at all).
        num_classes: if set, build all stages plus global average pooling and the
            linear classifier ``fc``; ``forward`` then returns ``(N, num_classes)`` logits.
        out_features: stage names whose outputs ``forward`` returns as a dict. Only the
            stages up to the last named one are built, so ``["res4"]`` builds the
            stride-16 C4 trunk ``stem..res4``. With ``num_classes`` set it may also
            name ``"fc"`` (the logits). Default: ``["res5"]`` without ``num_classes``.
        base_channels: width of the stem and of res2's bottleneck; every stage scales
            with it (64 = the paper; 16 gives a 4x thinner net for CPU demos).
        stem_pool: "msra" (3x3/2, ceil, no padding) or "torchvision" (padding 1, floor).
            Default: "msra" if ``stride_in_1x1`` else "torchvision", which is what
            each family of weights was trained with.
        in_channels: input channels (3 for images).
        inplace_relu, fuse_frozen_bn: exact speed options (``model.speed.*``): ReLU
            and residual addition in place (:class:`BottleneckBlock`), FrozenBN
            applied to the conv weight (:class:`Conv2dNorm`).

    Attributes:
        out_channels: dict stage name -> channels, for the built stages.
        strides: dict stage name -> stride w.r.t. the input, for the built stages.
        stage_names: the built stages, in order.

    Input: ``(N, in_channels, H, W)`` float tensor, already normalized (the detector
    subtracts the pixel mean and divides by the std before the backbone).
    """

    def __init__(
        self,
        depth: int,
        *,
        stride_in_1x1: bool = False,
        norm: str = "BN",
        freeze_at: int = 0,
        shortcut: str = "B",
        residual: bool = True,
        num_classes: Optional[int] = None,
        out_features: Optional[Sequence[str]] = None,
        base_channels: int = 64,
        stem_pool: Optional[str] = None,
        in_channels: int = 3,
        inplace_relu: bool = True,
        fuse_frozen_bn: bool = True,
    ) -> None:
        super().__init__()
        _check_resnet_args(depth, norm, shortcut, base_channels)
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
        if out_features is None:
            out_features = [] if num_classes is not None else ["res5"]
        out_features = list(out_features)
        valid_outputs = STAGE_NAMES + (("fc",) if num_classes is not None else ())
        for name in out_features:
            _check_choice(name, valid_outputs, "out_features entry")
        if stem_pool is None:
            stem_pool = "msra" if stride_in_1x1 else "torchvision"

        self.depth = depth
        self.stride_in_1x1 = stride_in_1x1
        self.num_classes = num_classes
        self.out_features = out_features
        self.in_channels = in_channels

        # Build up to the last stage anyone needs: all of them for a classifier.
        stage_outputs = [n for n in out_features if n != "fc"]
        if num_classes is not None:
            last = len(STAGE_NAMES) - 1
        else:
            last = max(STAGE_NAMES.index(n) for n in stage_outputs) if stage_outputs else 0
        self.stage_names: List[str] = list(STAGE_NAMES[: last + 1])

        speed = dict(inplace_relu=inplace_relu, fuse_frozen_bn=fuse_frozen_bn)
        self.stem = BasicStem(in_channels, base_channels, norm=norm, pool=stem_pool, **speed)
        self.out_channels: Dict[str, int] = {"stem": base_channels}
        self.strides: Dict[str, int] = {"stem": _STAGE_STRIDES["stem"]}

        block_type, blocks_per_stage = _RESNET_SPECS[depth]
        widths = _stage_widths(depth, base_channels)
        for i, name in enumerate(self.stage_names[1:]):
            stage_in, bottleneck, stage_out = widths[i]
            stage = _make_stage(
                block_type=block_type,
                num_blocks=blocks_per_stage[i],
                in_channels=stage_in,
                bottleneck_channels=bottleneck,
                out_channels=stage_out,
                # Table 1: downsampling by conv3_1, conv4_1, conv5_1 (res2 follows the pool).
                first_stride=1 if name == "res2" else 2,
                stride_in_1x1=stride_in_1x1,
                norm=norm,
                shortcut=shortcut,
                residual=residual,
                **speed,
            )
            self.add_module(name, stage)
            self.out_channels[name] = stage_out
            self.strides[name] = _STAGE_STRIDES[name]

        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(self.out_channels["res5"], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                _init_conv(m)
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> "ResNet":
        """Freeze the first ``freeze_at`` stages of ``stem, res2..res5`` (see the class doc).

        Frozen stages get ``requires_grad=False`` and FrozenBN instead of BN, so their
        statistics stay fixed in train mode too. Freezing is not undone by a later
        call with a smaller ``freeze_at``. Returns ``self``.
        """
        if not isinstance(freeze_at, int) or not 0 <= freeze_at <= len(STAGE_NAMES):
            raise ValueError(
                f"freeze_at must be an int in 0..{len(STAGE_NAMES)} (0 trains everything, "
                f"1 freezes the stem, 2 stem+res2, ...), got {freeze_at!r}"
            )
        self.freeze_at = max(freeze_at, getattr(self, "freeze_at", 0))
        for name in STAGE_NAMES[:freeze_at]:
            if name in self.stage_names:
                _freeze_module(getattr(self, name))
        return self

    def forward(self, x: torch.Tensor):
        """``(N, C, H, W)`` -> logits ``(N, num_classes)`` or ``{name: (N, C_s, H/s, W/s)}``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ResNet expects an (N, {self.in_channels}, H, W) tensor, got shape {tuple(x.shape)}"
            )
        outputs: Dict[str, torch.Tensor] = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self.out_features:
                outputs[name] = x
        if self.num_classes is None:
            return outputs
        logits = self.fc(torch.flatten(self.avgpool(x), 1))
        if not self.out_features:
            return logits
        if "fc" in self.out_features:
            outputs["fc"] = logits
        return outputs


def build_resnet_res5_head(
    depth: int,
    *,
    stride_in_1x1: bool,
    norm: str,
    base_channels: int = 64,
    shortcut: str = "B",
    residual: bool = True,
    freeze: bool = False,
    inplace_relu: bool = True,
    fuse_frozen_bn: bool = True,
) -> ResNetStage:
    """The conv5_x stage (``res5``) alone, run per region in Faster R-CNN C4.

    The paper's detector pools each RoI from the stride-16 res4 map and runs "all
    of conv5_x and up" per region, the first block with stride 2 (Appendix A), so a
    14x14 RoI becomes 7x7 (then global average pooling, done by the caller).

    Parameter names are those of ``ResNet(depth, num_classes=1000)``'s ``res5.*`` with
    the ``res5.`` prefix removed (``0.conv1.weight``, ``0.shortcut.norm.bias``...), so
    ImageNet weights load with a ``{"res5.": "<head prefix>."}`` prefix map.

    Input ``(R, C4, h, w)`` with ``C4`` = res4's channels (1024 for ResNet-50+ at
    base_channels 64); output ``(R, out_channels, ceil(h/2), ceil(w/2))``.
    ``freeze=True`` turns off gradients and converts BN to FrozenBN.
    ``inplace_relu`` and ``fuse_frozen_bn``: as :class:`ResNet`.
    """
    _check_resnet_args(depth, norm, shortcut, base_channels)
    block_type, blocks_per_stage = _RESNET_SPECS[depth]
    stage_in, bottleneck, stage_out = _stage_widths(depth, base_channels)[3]
    head = _make_stage(
        block_type=block_type,
        num_blocks=blocks_per_stage[3],
        in_channels=stage_in,
        bottleneck_channels=bottleneck,
        out_channels=stage_out,
        first_stride=2,
        stride_in_1x1=stride_in_1x1,
        norm=norm,
        shortcut=shortcut,
        residual=residual,
        inplace_relu=inplace_relu,
        fuse_frozen_bn=fuse_frozen_bn,
    )
    for m in head.modules():
        if isinstance(m, nn.Conv2d):
            _init_conv(m)
    if freeze:
        _freeze_module(head)
    return head


class CifarResNet(nn.Module):
    """The CIFAR-10 networks of Sec 4.2 (Table 6): 6n+2 weighted layers.

    A 3x3 conv with 16 filters, then three stages (``stage1..stage3``) of n basic
    blocks (2n 3x3 convs each) on 32x32, 16x16 and 8x8 maps with 16, 32 and 64
    filters (the first conv of stage2/3 has stride 2), global average pooling and a
    ``num_classes``-way ``fc``. The paper uses option A shortcuts throughout; they
    are parameter-free, so a residual model and its plain counterpart
    (``residual=False``) have the same parameter count.

    Args:
        depth: 6n+2 (20, 32, 44, 56, 110, 1202 in the paper).
        residual: False gives the plain network of Fig. 6.
        shortcut: "A" (paper), "B" or "C".
        num_classes: classifier outputs (10 for CIFAR-10).
        norm: normalization name (BN in the paper).

    Input ``(N, 3, 32, 32)``; output logits ``(N, num_classes)``.
    """

    _WIDTHS = (16, 32, 64)

    def __init__(
        self,
        depth: int,
        *,
        residual: bool = True,
        shortcut: str = "A",
        num_classes: int = 10,
        norm: str = "BN",
    ) -> None:
        super().__init__()
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(
                f"CIFAR ResNet depth must be 6n+2 with n >= 1 (e.g. 20, 32, 44, 56, 110, 1202), got {depth!r}"
            )
        _check_choice(shortcut, SHORTCUT_OPTIONS, "shortcut")
        _check_choice(norm, NORM_NAMES, "norm")
        n = (depth - 2) // 6
        self.depth = depth
        self.stem = nn.Sequential()
        self.stem.add_module("conv1", Conv2dNorm(3, self._WIDTHS[0], kernel_size=3, padding=1, norm=norm))
        self.stem.add_module("relu", nn.ReLU())
        in_channels = self._WIDTHS[0]
        self.stage_names = []
        for i, width in enumerate(self._WIDTHS):
            stage = _make_stage(
                block_type="basic",
                num_blocks=n,
                in_channels=in_channels,
                bottleneck_channels=width,
                out_channels=width,
                first_stride=1 if i == 0 else 2,
                stride_in_1x1=False,
                norm=norm,
                shortcut=shortcut,
                residual=residual,
            )
            self.add_module(f"stage{i + 1}", stage)
            self.stage_names.append(f"stage{i + 1}")
            in_channels = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                _init_conv(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))
