"""Backbones: ResNet-18..152 (+ plain and CIFAR variants) and VGG-16, with their norms."""
from .norm import Conv2dNorm, FrozenBatchNorm2d, fold_frozen_batchnorm, get_norm
from .resnet import CifarResNet, ResNet, build_resnet_res5_head
from .vgg import VGG16, VGG16RegionHead

__all__ = [
    "ResNet",
    "build_resnet_res5_head",
    "VGG16",
    "VGG16RegionHead",
    "CifarResNet",
    "FrozenBatchNorm2d",
    "fold_frozen_batchnorm",
    "Conv2dNorm",
    "get_norm",
]
