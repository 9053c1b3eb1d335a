"""Augmentation and test views of the classifier (ResNet paper Sec 3.4 and Sec 4.2).

All functions take and return ``np.uint8 (H, W, 3)`` RGB images (test views return
a stack ``(V, h, w, 3)``); the model subtracts the mean later, on the device.

Training, ImageNet (Sec 3.4): "The image is resized with its shorter side randomly
sampled in [256, 480] for scale augmentation. A 224x224 crop is randomly sampled
from an image or its horizontal flip ... The standard color augmentation in [21] is
used." [21] is Krizhevsky et al. 2012: PCA lighting noise, a random multiple of the
principal components of the RGB pixel values added to every pixel.

Training, CIFAR-10 (Sec 4.2): "4 pixels are padded on each side, and a 32x32 crop
is randomly sampled from the padded image or its horizontal flip."

Test (Sec 3.4): "the standard 10-crop testing": the shorter side resized to 256
(the usual protocol), then the four corner crops and the centre crop, and the same
five of the horizontally flipped image. The single-crop view is the centre crop.
Crops are cut with ``torchvision.transforms.v2.functional`` (centre offset
``round((H - h) / 2)``).

Randomness comes from a ``np.random.Generator`` passed in by the caller (seeded
per sample by the loader), so a sample's augmentation does not depend on which
worker process loads it.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

__all__ = [
    "resize_short_side",
    "random_crop",
    "pca_lighting",
    "TrainTransform",
    "EvalTransform",
    "IMAGENET_EIGVAL",
    "IMAGENET_EIGVEC",
]

# Principal components of ImageNet's RGB pixels (values in 0..1), as used by the
# Krizhevsky et al. 2012 colour augmentation (and fb.resnet.torch): eigenvalues,
# and eigenvectors as columns, in R, G, B order.
IMAGENET_EIGVAL = np.array([0.2175, 0.0188, 0.0045], dtype=np.float64)
IMAGENET_EIGVEC = np.array(
    [
        [-0.5675, 0.7192, 0.4009],
        [-0.5808, -0.0045, -0.8140],
        [-0.5836, -0.6948, 0.4203],
    ],
    dtype=np.float64,
)


def resize_short_side(image: np.ndarray, size: int) -> np.ndarray:
    """Resize ``(H, W, 3)`` so that ``min(H, W) == size``, keeping the aspect ratio.

    The longer side is ``round(long * size / short)``. Area interpolation when
    shrinking (no aliasing), bilinear when enlarging.
    """
    h, w = image.shape[:2]
    short = min(h, w)
    if short == size:
        return image
    scale = size / short
    new_h = size if h == short else int(round(h * scale))
    new_w = size if w == short else int(round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (new_w, new_h), interpolation=interp)


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator, *, pad: int = 0) -> np.ndarray:
    """A ``size x size`` crop at a uniformly random position of the (zero-padded) image."""
    if pad > 0:
        image = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="constant")
    h, w = image.shape[:2]
    if h < size or w < size:
        raise ValueError(f"cannot crop {size}x{size} from a {h}x{w} image (input.crop_size too large)")
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(0, w - size + 1))
    return image[top : top + size, left : left + size]


def pca_lighting(image: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """Krizhevsky et al. 2012 colour augmentation on an RGB ``uint8`` image.

    Adds ``255 * eigvec @ (alpha * eigval)`` to every pixel, ``alpha ~ N(0, std)``
    per image (3 values), then rounds and clips to 0..255. The shift is a few
    intensity levels (std 0.1: about 3), so rounding back to ``uint8`` costs little
    and keeps the loader's batches 4x smaller than float ones.
    """
    if std <= 0:
        return image
    alpha = rng.normal(0.0, std, size=3)
    shift = 255.0 * IMAGENET_EIGVEC @ (alpha * IMAGENET_EIGVAL)  # (3,) RGB
    out = image.astype(np.float32) + shift.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class TrainTransform:
    """Scale augmentation, random crop, flip and colour augmentation.

    Args:
        short_side_range: ``(lo, hi)``: the shorter side is resized to a uniformly
            random integer in ``[lo, hi]`` (Sec 3.4: 256..480); None keeps the size.
        crop_size: side of the random square crop (224; CIFAR 32).
        pad: zero padding on each side before cropping (CIFAR: 4).
        hflip: flip horizontally with probability 0.5.
        lighting_std: PCA lighting noise std (0.1; 0 disables).
    """

    def __init__(
        self,
        *,
        short_side_range: Optional[Tuple[int, int]],
        crop_size: int,
        pad: int = 0,
        hflip: bool = True,
        lighting_std: float = 0.0,
    ) -> None:
        if short_side_range is not None:
            lo, hi = (int(v) for v in short_side_range)
            if not 1 <= lo <= hi:
                raise ValueError(f"short_side_range={short_side_range}: expected (lo, hi) with 1 <= lo <= hi")
            short_side_range = (lo, hi)
        self.short_side_range = short_side_range
        self.crop_size = int(crop_size)
        self.pad = int(pad)
        self.hflip = bool(hflip)
        self.lighting_std = float(lighting_std)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB -> ``(crop, crop, 3)`` uint8 RGB."""
        if self.short_side_range is not None:
            lo, hi = self.short_side_range
            image = resize_short_side(image, int(rng.integers(lo, hi + 1)))
        image = random_crop(image, self.crop_size, rng, pad=self.pad)
        if self.hflip and rng.random() < 0.5:
            image = image[:, ::-1]
        image = pca_lighting(image, self.lighting_std, rng)
        return np.ascontiguousarray(image)


class EvalTransform:
    """Deterministic test views.

    Args:
        short_side: resize the shorter side to this first (256); 0 keeps the size.
        crop_size: side of the crops (224; CIFAR 32).
        view: ``"center"`` (one centre crop) or ``"ten_crop"`` (4 corners + centre,
            then the same of the flipped image: torchvision's ``ten_crop`` order).
    """

    def __init__(self, *, short_side: int, crop_size: int, view: str = "center") -> None:
        if view not in ("center", "ten_crop"):
            raise ValueError(f"test view {view!r} is not supported; expected 'center' or 'ten_crop'")
        self.short_side = int(short_side)
        self.crop_size = int(crop_size)
        self.view = view

    @property
    def num_views(self) -> int:
        return 10 if self.view == "ten_crop" else 1

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB -> ``(V, crop, crop, 3)`` uint8 RGB, V = 1 or 10."""
        if self.short_side > 0:
            image = resize_short_side(image, self.short_side)
        h, w = image.shape[:2]
        if h < self.crop_size or w < self.crop_size:
            raise ValueError(
                f"test image of {h}x{w} is smaller than input.crop_size={self.crop_size} "
                "(set input.test_short_side >= input.crop_size)"
            )
        chw = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # a writable copy
        size = [self.crop_size, self.crop_size]
        if self.view == "center":
            crops: Sequence[torch.Tensor] = [TF.center_crop(chw, size)]
        else:
            crops = TF.ten_crop(chw, size)
        return torch.stack(list(crops)).permute(0, 2, 3, 1).contiguous().numpy()
