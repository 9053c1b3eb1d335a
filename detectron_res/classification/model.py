"""The image classifier: a backbone with its classification head, input normalization
and loss, plus :func:`build_classifier`, the one place where a
:class:`~detectron_res.classification.config.ClassifierConfig` becomes constructor calls.

Shape shorthand: ``N`` images, ``V`` test views per image, ``S`` crop side, ``K``
classes.

The backbone's parameter names are kept exactly as the backbone defines them
(``stem.conv1.weight``, ``res2.0.conv1.norm.running_mean``, ``fc.weight``: the
canonical ImageNet key space of ``detectron_res/weights.py``), so the trained
weights initialize a detector without any renaming. Optional dropout before the
classifier therefore lives inside the ``fc`` layer (:class:`DropoutLinear`) rather
than in a new module that would shift the names.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.backbone import VGG16, CifarResNet, ResNet
from .loader import ClassificationBatch

__all__ = ["DropoutLinear", "ImageClassifier", "build_classifier", "classifier_arch_name", "unwrap"]


class DropoutLinear(nn.Linear):
    """``nn.Linear`` applying dropout to its input in training: ``fc(dropout(x))``.

    Same parameters and state-dict keys as ``nn.Linear``. Used for the dropout
    switch of the ResNet-1202 experiment (Sec 4.2 discusses, but does not use,
    dropout for that over-fitting 19.4M-parameter model).

    Input ``(N, in_features)``; output ``(N, out_features)``.
    """

    def __init__(self, in_features: int, out_features: int, *, p: float) -> None:
        super().__init__(in_features, out_features)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p!r} (config key model.dropout)")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.dropout(x, self.p, self.training))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dropout={self.p}"


class ImageClassifier(nn.Module):
    """Normalization + backbone + softmax cross-entropy.

    Args:
        backbone: maps normalized ``float (N, 3, S, S)`` to logits ``(N, K)``
            (``ResNet(num_classes=K)``, ``CifarResNet``, ``VGG16(num_classes=K)``).
        pixel_mean, pixel_std: per-channel normalization in 0..255 units, in
            ``input_format`` order: the backbone sees ``(x - mean) / std``.
        input_format: ``"BGR"`` or ``"RGB"``, the channel order of the input.
        arch: the weights' architecture name (``"resnet50"``, ``"vgg16"``,
            ``"cifar_resnet56"``), recorded in checkpoints.

    ``forward(batch)``:
        training: a :class:`ClassificationBatch` (or ``(images, labels)``) ->
            ``{"loss_cls": scalar}``. The batch's top-1 error (a fraction, detached)
            is kept in :attr:`last_batch_error` for the training-error curve.
        evaluation: ``uint8/float (N, 3, S, S)`` or ``(N, V, 3, S, S)`` images (or a
            batch) -> class probabilities ``(N, K)``: the softmax, averaged over the
            ``V`` views (the averaging of 10-crop testing).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: str,
        arch: str,
    ) -> None:
        super().__init__()
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"input_format must be BGR or RGB, got {input_format!r} (config key model.input_format)")
        if len(pixel_mean) != 3 or len(pixel_std) != 3:
            raise ValueError(f"pixel_mean / pixel_std need 3 values each, got {list(pixel_mean)} / {list(pixel_std)}")
        self.backbone = backbone
        self.input_format = input_format
        self.arch = arch
        # Not persistent: the state dict stays the backbone's, in canonical names; the
        # normalization travels in the checkpoint's header instead.
        self.register_buffer("pixel_mean", torch.tensor([float(v) for v in pixel_mean]).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor([float(v) for v in pixel_std]).view(1, 3, 1, 1), False)
        self.last_batch_error: Optional[torch.Tensor] = None

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` in 0..255 (any dtype) -> float ``(x - mean) / std``."""
        return (images.float() - self.pixel_mean) / self.pixel_std

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` 0..255 images -> ``(N, K)`` logits."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"ImageClassifier expects (N, 3, S, S) images, got shape {tuple(images.shape)}")
        return self.backbone(self.normalize(images))

    def forward(self, batch: Any):
        if isinstance(batch, ClassificationBatch):
            images, labels = batch.images, batch.labels
        elif isinstance(batch, (tuple, list)) and len(batch) == 2:
            images, labels = batch
        else:
            images, labels = batch, None
        if self.training:
            if labels is None:
                raise ValueError("ImageClassifier in training mode needs labels: pass a ClassificationBatch")
            logits = self.logits(images)
            with torch.no_grad():
                self.last_batch_error = (logits.argmax(dim=1) != labels).float().mean().detach()
            return {"loss_cls": F.cross_entropy(logits.float(), labels)}
        return self.predict_probs(images)

    def predict_probs(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` or ``(N, V, 3, S, S)`` -> ``(N, K)`` softmax averaged over views."""
        if images.dim() == 4:
            images = images.unsqueeze(1)
        if images.dim() != 5:
            raise ValueError(f"expected (N, 3, S, S) or (N, V, 3, S, S) images, got shape {tuple(images.shape)}")
        n, v = images.shape[:2]
        probs = F.softmax(self.logits(images.flatten(0, 1)).float(), dim=1)  # (N*V, K)
        return probs.view(n, v, -1).mean(dim=1)


def classifier_arch_name(cfg) -> str:
    """``"resnet50"`` / ``"vgg16"`` (the names of ``detectron_res.weights.ARCHS``) or
    ``"cifar_resnet56"`` for the CIFAR nets, which no detector uses."""
    m = cfg.model
    if m.arch == "vgg16":
        return "vgg16"
    return f"{'cifar_resnet' if m.arch == 'cifar_resnet' else 'resnet'}{int(m.depth)}"


def build_classifier(cfg) -> ImageClassifier:
    """Build the classifier described by ``cfg.model`` (He initialization, Sec 3.4).

    Raises:
        ValueError: an unsupported combination; the message names the config key.
    """
    m = cfg.model
    num_classes = int(m.num_classes)
    if m.arch == "resnet":
        backbone: nn.Module = ResNet(
            int(m.depth),
            stride_in_1x1=bool(m.stride_in_1x1),
            norm=str(m.norm),
            freeze_at=0,
            shortcut=str(m.shortcut),
            residual=bool(m.residual),
            num_classes=num_classes,
            base_channels=int(m.base_channels),
        )
    elif m.arch == "cifar_resnet":
        backbone = CifarResNet(
            int(m.depth), residual=bool(m.residual), shortcut=str(m.shortcut), num_classes=num_classes,
            norm=str(m.norm),
        )
    elif m.arch == "vgg16":
        if float(m.dropout) > 0:
            raise ValueError(
                f"config key 'model.dropout'={m.dropout} is not available for model.arch=vgg16: VGG-16 already "
                "applies dropout 0.5 after fc6 and fc7; set model.dropout=0"
            )
        backbone = VGG16(num_classes=num_classes)
    else:
        raise ValueError(f"config key 'model.arch' must be one of resnet, cifar_resnet, vgg16; got {m.arch!r}")
    if float(m.dropout) > 0:
        old = backbone.fc
        fc = DropoutLinear(old.in_features, old.out_features, p=float(m.dropout))
        fc.load_state_dict(old.state_dict())  # keep the backbone's initialization
        backbone.fc = fc
    return ImageClassifier(
        backbone=backbone,
        pixel_mean=list(m.pixel_mean),
        pixel_std=list(m.pixel_std),
        input_format=str(m.input_format),
        arch=classifier_arch_name(cfg),
    )


def unwrap(model: nn.Module) -> ImageClassifier:
    """The :class:`ImageClassifier` inside a DistributedDataParallel wrapper (or itself)."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    assert isinstance(inner, ImageClassifier), type(inner)
    return inner
