"""VGG-16 (Simonyan & Zisserman 2015, configuration D), the ResNet paper's detection baseline.

In Faster R-CNN with VGG-16 (ResNet paper Tables 7-8, Ren et al. 2015) the 13 conv
layers form a shared stride-16 trunk ending at conv5_3 (pool5 is dropped), each RoI
is pooled to 7x7 from conv5_3, and fc6/fc7 of the ImageNet classifier run per region.

Layer names follow the Caffe model (``conv1_1`` .. ``conv5_3``, ``fc6``, ``fc7``,
``fc8``). Blocks and strides (input ``(N, 3, H, W)``)::

    conv1_1 conv1_2            stride 1   -> pool1
    conv2_1 conv2_2            stride 2   -> pool2
    conv3_1 conv3_2 conv3_3    stride 4   -> pool3
    conv4_1 conv4_2 conv4_3    stride 8   -> pool4
    conv5_1 conv5_2 conv5_3    stride 16  (-> pool5 only in the classifier)

Every conv is 3x3, padding 1, with a bias and a ReLU; there is no normalization.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VGG16", "VGG16RegionHead", "VGG16_CONV_LAYERS", "VGG16_BLOCK_OUTPUTS"]

# (block, layer names, output channels) of configuration D.
_VGG16_BLOCKS = (
    (1, ("conv1_1", "conv1_2"), 64),
    (2, ("conv2_1", "conv2_2"), 128),
    (3, ("conv3_1", "conv3_2", "conv3_3"), 256),
    (4, ("conv4_1", "conv4_2", "conv4_3"), 512),
    (5, ("conv5_1", "conv5_2", "conv5_3"), 512),
)
VGG16_CONV_LAYERS = tuple(name for _, names, _ in _VGG16_BLOCKS for name in names)
# The last conv of each block: the names accepted by ``out_features``.
VGG16_BLOCK_OUTPUTS = tuple(names[-1] for _, names, _ in _VGG16_BLOCKS)
_BLOCK_STRIDES = {"conv1_2": 1, "conv2_2": 2, "conv3_3": 4, "conv4_3": 8, "conv5_3": 16}
# ImageNet classifier: pool5 gives 7x7x512 at 224x224 input; fc6/fc7 have 4096 units.
_POOLED_SIZE = 7
_FC_DIM = 4096


def _init_vgg(module: nn.Module) -> None:
    # torchvision's VGG initialization: He (fan_out) for convs, N(0, 0.01) for fcs.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class VGG16(nn.Module):
    """VGG-16 as a stride-16 trunk (conv1_1..conv5_3) or an ImageNet classifier.

    Args:
        num_classes: if set, add pool5, a 7x7 adaptive average pool (identity at
            224x224, as in torchvision) and fc6/fc7/fc8 with ReLU and dropout 0.5;
            ``forward`` then returns ``(N, num_classes)`` logits.
        out_features: names among ``conv1_2, conv2_2, conv3_3, conv4_3, conv5_3``
            whose outputs ``forward`` returns as a dict (before the block's pool);
            with ``num_classes`` also ``"fc8"`` (the logits). Only layers up to the
            last named one are built. Default ``["conv5_3"]`` without ``num_classes``.
        freeze_at: 0 trains everything; k freezes conv blocks 1..k (py-faster-rcnn
            fine-tunes VGG-16 from conv3_1 on, i.e. ``freeze_at=2``).

    Attributes:
        out_channels / strides: dicts for the built block outputs.
    Input: ``(N, 3, H, W)`` normalized float tensor.
    """

    def __init__(
        self,
        *,
        num_classes: Optional[int] = None,
        out_features: Optional[Sequence[str]] = None,
        freeze_at: int = 0,
    ) -> None:
        super().__init__()
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
        if out_features is None:
            out_features = [] if num_classes is not None else ["conv5_3"]
        out_features = list(out_features)
        valid_outputs = VGG16_BLOCK_OUTPUTS + (("fc8",) if num_classes is not None else ())
        for name in out_features:
            if name not in valid_outputs:
                raise ValueError(
                    f"VGG16 out_features entry {name!r} is not supported; expected one of "
                    f"{', '.join(valid_outputs)}"
                )
        if not isinstance(freeze_at, int) or not 0 <= freeze_at <= len(_VGG16_BLOCKS):
            raise ValueError(f"VGG16 freeze_at must be an int in 0..{len(_VGG16_BLOCKS)}, got {freeze_at!r}")
        self.num_classes = num_classes
        self.out_features = out_features
        self.freeze_at = freeze_at

        if num_classes is not None:
            num_blocks = len(_VGG16_BLOCKS)
        else:
            num_blocks = max(VGG16_BLOCK_OUTPUTS.index(n) for n in out_features) + 1
        self.out_channels: Dict[str, int] = {}
        self.strides: Dict[str, int] = {}
        # Forward order: conv names interleaved with "poolK" after blocks 1..4.
        self._layer_order: List[str] = []
        in_channels = 3
        for block, names, channels in _VGG16_BLOCKS[:num_blocks]:
            for name in names:
                self.add_module(name, nn.Conv2d(in_channels, channels, kernel_size=3, padding=1))
                self._layer_order.append(name)
                in_channels = channels
            self.out_channels[names[-1]] = channels
            self.strides[names[-1]] = _BLOCK_STRIDES[names[-1]]
            if block < 5 and block < num_blocks:
                self.add_module(f"pool{block}", nn.MaxPool2d(kernel_size=2, stride=2))
                self._layer_order.append(f"pool{block}")

        if num_classes is not None:
            self.pool5 = nn.MaxPool2d(kernel_size=2, stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d(_POOLED_SIZE)
            self.fc6 = nn.Linear(512 * _POOLED_SIZE * _POOLED_SIZE, _FC_DIM)
            self.fc7 = nn.Linear(_FC_DIM, _FC_DIM)
            self.fc8 = nn.Linear(_FC_DIM, num_classes)
            self.dropout = nn.Dropout(0.5)
        _init_vgg(self)

        for block, names, _ in _VGG16_BLOCKS[: min(freeze_at, num_blocks)]:
            for name in names:
                for p in getattr(self, name).parameters():
                    p.requires_grad_(False)

    def forward(self, x: torch.Tensor):
        """``(N, 3, H, W)`` -> logits ``(N, num_classes)`` or ``{name: (N, C, H/s, W/s)}``."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"VGG16 expects an (N, 3, H, W) tensor, got shape {tuple(x.shape)}")
        outputs: Dict[str, torch.Tensor] = {}
        for name in self._layer_order:
            layer = getattr(self, name)
            if name.startswith("pool"):
                x = layer(x)
            else:
                x = F.relu(layer(x))
                if name in self.out_features:
                    outputs[name] = x
        if self.num_classes is None:
            return outputs
        x = torch.flatten(self.avgpool(self.pool5(x)), 1)
        x = self.dropout(F.relu(self.fc6(x)))
        x = self.dropout(F.relu(self.fc7(x)))
        logits = self.fc8(x)
        if not self.out_features:
            return logits
        if "fc8" in self.out_features:
            outputs["fc8"] = logits
        return outputs


class VGG16RegionHead(nn.Module):
    """fc6 and fc7 of VGG-16, run per region on 7x7 RoI-pooled conv5_3 features.

    ``relu(fc7(dropout(relu(fc6(flatten(x))))))`` followed by dropout in training,
    as in py-faster-rcnn's VGG16 train net (drop6/drop7). Parameter names ``fc6.*``
    and ``fc7.*`` equal the ImageNet ``VGG16(num_classes=1000)`` ones, so weights load
    with a ``{"fc6.": "<prefix>.fc6.", "fc7.": "<prefix>.fc7."}`` prefix map.

    Args:
        in_channels: channels of the pooled features (512 for conv5_3).
        resolution: side of the pooled features (7, Faster R-CNN's RoI pooling).
        dropout: dropout probability after fc6 and fc7 (0.5; 0 disables it).

    Input ``(R, in_channels, resolution, resolution)``; output ``(R, 4096)``.
    """

    def __init__(self, *, in_channels: int = 512, resolution: int = _POOLED_SIZE, dropout: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"VGG16RegionHead dropout must be in [0, 1), got {dropout!r}")
        self.in_channels = in_channels
        self.resolution = resolution
        self.out_channels = _FC_DIM
        self.fc6 = nn.Linear(in_channels * resolution * resolution, _FC_DIM)
        self.fc7 = nn.Linear(_FC_DIM, _FC_DIM)
        self.dropout = nn.Dropout(dropout)
        _init_vgg(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.in_channels, self.resolution, self.resolution)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"VGG16RegionHead expects (R, {expected[0]}, {expected[1]}, {expected[2]}) pooled features, "
                f"got shape {tuple(x.shape)}"
            )
        x = self.dropout(F.relu(self.fc6(torch.flatten(x, 1))))
        return self.dropout(F.relu(self.fc7(x)))
