"""Normalization layers of the backbones, and the conv+norm module they share.

Four names select a normalization (``get_norm``):

* ``"FrozenBN"``: a constant per-channel affine ``y = x * scale + shift`` computed from
  fixed statistics. The ResNet paper fixes BN statistics after ImageNet pretraining
  and treats BN as "a constant scale and offset" while fine-tuning the detector
  (ResNet paper, Appendix A); the MSRA Caffe models ship only that scale and offset.
* ``"BN"``: ``nn.BatchNorm2d``, statistics of the current (per-GPU) batch.
* ``"SyncBN"``: ``nn.SyncBatchNorm``, statistics over all processes of a distributed
  job (plain BN when no process group is initialized).
* ``"GN"``: ``nn.GroupNorm`` with 32 groups (Wu & He 2018), batch independent.

Every convolution that is followed by a normalization is a :class:`Conv2dNorm`: an
``nn.Conv2d`` subclass that applies its own ``.norm``. Its parameter names are
``<name>.weight`` and ``<name>.norm.{weight,bias,running_mean,running_var}``, the
layout of Detectron2-style checkpoints, and one module holding both lets
:func:`fold_frozen_batchnorm` fold a FrozenBN into the convolution for inference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d as _TorchvisionFrozenBatchNorm2d

__all__ = ["FrozenBatchNorm2d", "Conv2dNorm", "get_norm", "fold_frozen_batchnorm", "NORM_NAMES"]

NORM_NAMES = ("FrozenBN", "BN", "SyncBN", "GN")
# Group Normalization paper default; every ResNet/VGG width used here is a multiple of it.
GN_NUM_GROUPS = 32


class FrozenBatchNorm2d(_TorchvisionFrozenBatchNorm2d):
    """BatchNorm2d with fixed statistics and affine parameters.

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` per channel,
    with all four tensors stored as buffers (never trained, never updated in train
    mode). The state dict has the same keys as ``nn.BatchNorm2d`` minus
    ``num_batches_tracked``, which is dropped on load, so BN checkpoints load directly.

    Input and output: ``(N, C, H, W)`` float tensors.
    """

    def __repr__(self) -> str:
        return f"FrozenBatchNorm2d({self.weight.shape[0]}, eps={self.eps})"

    def scale_and_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The constant affine as two ``(C,)`` tensors: ``y = x * scale + shift``."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return scale, shift

    @classmethod
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """Replace every ``BatchNorm2d``/``SyncBatchNorm`` in ``module`` by a FrozenBN.

        The statistics and affine parameters are copied. Returns the converted
        module: ``module`` itself is changed in place unless it is a BN layer, in
        which case a new FrozenBN is returned (assign it).
        """
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            reference = module.weight if module.affine else module.running_mean
            frozen = cls(module.num_features, eps=module.eps)
            if reference is not None:
                frozen = frozen.to(reference.device)
            with torch.no_grad():
                if module.affine:
                    frozen.weight.copy_(module.weight.detach())
                    frozen.bias.copy_(module.bias.detach())
                if module.track_running_stats:
                    frozen.running_mean.copy_(module.running_mean)
                    frozen.running_var.copy_(module.running_var)
            return frozen
        for name, child in module.named_children():
            converted = cls.convert_frozen_batchnorm(child)
            if converted is not child:
                setattr(module, name, converted)
        return module


def get_norm(name: str, channels: int) -> nn.Module:
    """Build the normalization layer called ``name`` for ``channels`` channels.

    Args:
        name: one of ``"FrozenBN"``, ``"BN"``, ``"SyncBN"``, ``"GN"``.
        channels: number of channels ``C`` of the ``(N, C, H, W)`` input.
    """
    if name == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if name == "BN":
        return nn.BatchNorm2d(channels)
    if name == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if name == "GN":
        if channels % GN_NUM_GROUPS != 0:
            raise ValueError(
                f"norm='GN' needs a channel count divisible by {GN_NUM_GROUPS} groups, got {channels} "
                f"channels (model.backbone.base_channels must be a multiple of {GN_NUM_GROUPS} for GN)"
            )
        return nn.GroupNorm(GN_NUM_GROUPS, channels)
    raise ValueError(f"unknown norm {name!r}; expected one of {', '.join(NORM_NAMES)}")


class Conv2dNorm(nn.Conv2d):
    """A 2-D convolution followed by its normalization layer ``.norm``.

    ``forward(x) = norm(conv(x))``; no activation (the blocks apply ReLU where the
    paper puts it, e.g. after the addition in a residual block). The convolution has
    no bias when a norm follows, because the norm's shift makes it redundant.

    Args:
        in_channels, out_channels, kernel_size, stride, padding: as ``nn.Conv2d``.
        norm: a normalization name for :func:`get_norm`, or ``None`` for a plain
            convolution with bias.
        fuse_frozen_bn: when the norm is a FrozenBN (also one that ``freeze``
            put there later), compute ``conv(x, W * scale) + shift`` instead of
            ``conv(x, W) * scale + shift`` (``model.speed.fused_frozen_bn``).
    """

    # oneDNN-packed copies of the weight for CPU inference (detectron_res.modeling.packed_conv;
    # set by FasterRCNN.prepare_for_inference). A class default too, so that a Conv2dNorm
    # pickled whole before this attribute existed still runs.
    packed_weights = None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        norm: str | None,
        fuse_frozen_bn: bool = True,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=norm is None
        )
        self.norm: nn.Module = nn.Identity() if norm is None else get_norm(norm, out_channels)
        self.fuse_frozen_bn = bool(fuse_frozen_bn)
        self.packed_weights = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fuse_frozen_bn and isinstance(self.norm, FrozenBatchNorm2d):
            return self._conv_forward(x, *self._fused_weight_and_bias())
        return self.norm(super().forward(x))

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias, stride=None) -> torch.Tensor:
        """The convolution alone, with this module's stride unless ``stride`` is given."""
        if self.packed_weights is not None and weight is self.weight:
            out = self.packed_weights.conv(self, x, weight, bias, stride)
            if out is not None:
                return out
        if stride is None:
            return super()._conv_forward(x, weight, bias)
        return F.conv2d(x, weight, bias, stride, self.padding, self.dilation, self.groups)

    def _fused_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        # FrozenBN is a constant per-channel affine (ResNet paper, Appendix A):
        # scaling the (small) weight instead of the (large) output removes two
        # elementwise passes over every output in the forward and one in the
        # backward, also in training, where fold_frozen_batchnorm is not allowed.
        # The gradient still reaches the weight through the product.
        scale, shift = self.norm.scale_and_shift()
        weight = self.weight * scale.reshape(-1, 1, 1, 1)
        bias = shift if self.bias is None else self.bias * scale + shift
        return weight, bias

    @property
    def is_pointwise_affine(self) -> bool:
        """Whether this is one fixed affine map of each input pixel on its own (then sampled with its stride).

        True for a 1x1, unpadded, ungrouped convolution followed by no norm (a plain
        or folded conv), a FrozenBN, or a BN in eval mode (running statistics). Such
        a layer commutes with any weighted average of pixels whose weights sum to 1;
        its stride only picks which outputs are kept.
        """
        if self.kernel_size != (1, 1) or self.padding != (0, 0) or self.groups != 1:
            return False
        norm = self.norm
        if isinstance(norm, (nn.Identity, FrozenBatchNorm2d)):
            return True
        # A BN normalizes with its running statistics unless it is training (or has none).
        return (
            isinstance(norm, nn.modules.batchnorm._BatchNorm)
            and not norm.training
            and norm.track_running_stats
            and norm.running_mean is not None
        )

    def forward_every_pixel(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` with stride 1: for a pointwise layer (see :attr:`is_pointwise_affine`),
        ``forward(x) == forward_every_pixel(x)[..., ::stride, ::stride]``."""
        if not self.is_pointwise_affine:
            raise ValueError(f"forward_every_pixel needs a 1x1 unpadded conv with a fixed affine norm, got {self}")
        if self.fuse_frozen_bn and isinstance(self.norm, FrozenBatchNorm2d):
            return self._conv_forward(x, *self._fused_weight_and_bias(), stride=(1, 1))
        return self.norm(self._conv_forward(x, self.weight, self.bias, stride=(1, 1)))


@torch.no_grad()
def fold_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every FrozenBN that follows a :class:`Conv2dNorm` convolution into it.

    ``norm(conv(x)) = (W x + b) * scale + shift = (W * scale) x + (b * scale + shift)``,
    so the convolution's weight becomes ``W * scale`` (per output channel), its bias
    ``b * scale + shift``, and the norm becomes ``nn.Identity``. Outputs are
    unchanged up to float rounding, and inference skips one elementwise pass per
    conv. Only FrozenBN is folded: a trainable BN/GN keeps its own parameters.

    Changes ``module`` in place and returns it. Training the result afterwards
    would train the folded weights, which is rarely what one wants.
    """
    for sub in module.modules():
        if isinstance(sub, Conv2dNorm) and isinstance(sub.norm, FrozenBatchNorm2d):
            scale, shift = sub.norm.scale_and_shift()
            folded_weight = sub.weight * scale.reshape(-1, 1, 1, 1)
            folded_bias = shift if sub.bias is None else sub.bias * scale + shift
            sub.weight = nn.Parameter(folded_weight, requires_grad=sub.weight.requires_grad)
            sub.bias = nn.Parameter(folded_bias.to(folded_weight.dtype), requires_grad=sub.weight.requires_grad)
            sub.norm = nn.Identity()
    return module
