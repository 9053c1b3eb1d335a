"""Small generated datasets in the real layouts, for tests, demos and CPU experiments.

* :func:`make_synthetic_imagenet`: ``root/{train,val}/<class>/*.JPEG``, the ImageNet
  folder layout, with images of varying size and aspect ratio.
* :func:`make_synthetic_cifar10`: a ``cifar-10-batches-py`` folder in the official
  python-pickle format (``data_batch_1..5``, ``test_batch``, ``batches.meta``).

Each class is a two-colour sinusoidal pattern (vertical or horizontal stripes,
plaid, rings, diagonal cross; a second spatial frequency for classes 6-10), all
unchanged by the horizontal flips of the augmentation, with random colours, phase
and pixel noise: learnable by a small network in a few hundred iterations, but not
by a colour histogram. Nothing here is a benchmark: numbers measured on these images say
how a training run behaves, not how well a model recognizes real objects.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import List, Tuple

import cv2
import numpy as np

__all__ = ["grating_image", "make_synthetic_imagenet", "make_synthetic_cifar10"]


# Class patterns, all unchanged by a horizontal flip (the training augmentation flips).
_PATTERNS = ("vertical", "horizontal", "plaid", "rings", "diagonal_cross")


def _class_params(label: int, num_classes: int) -> Tuple[str, float]:
    """(pattern, cycles per 32 pixels) of a class: up to 5 classes differ by pattern
    only (at 3 cycles); more classes also use a second frequency (6 cycles)."""
    pattern = _PATTERNS[label % len(_PATTERNS)]
    freq = 3.0 if label < len(_PATTERNS) else 6.0
    return pattern, freq


def grating_image(label: int, num_classes: int, height: int, width: int, rng: np.random.Generator,
                  *, noise: float = 30.0) -> np.ndarray:
    """One ``uint8 (height, width, 3)`` RGB image of class ``label``: a two-colour
    pattern with random colours, phase, small rotation, and Gaussian pixel noise."""
    if not 0 <= label < num_classes <= 2 * len(_PATTERNS):
        raise ValueError(f"label {label} of {num_classes} classes: at most {2 * len(_PATTERNS)} classes")
    pattern, freq = _class_params(label, num_classes)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    scale = 32.0 / max(32.0, min(height, width))  # the same number of stripes at any image size
    jitter = rng.normal(0.0, 0.05)  # a slight rotation (flip-symmetric on average)
    u = (xx * np.cos(jitter) + yy * np.sin(jitter)) * scale
    v = (-xx * np.sin(jitter) + yy * np.cos(jitter)) * scale
    k = 2 * np.pi * freq / 32.0
    phase = rng.uniform(0, 2 * np.pi, size=2)
    if pattern == "vertical":
        wave = np.sin(k * u + phase[0])
    elif pattern == "horizontal":
        wave = np.sin(k * v + phase[0])
    elif pattern == "plaid":
        wave = 0.5 * (np.sin(k * u + phase[0]) + np.sin(k * v + phase[1]))
    elif pattern == "rings":
        cy, cx = rng.uniform(0.3, 0.7, size=2) * (height * scale, width * scale)
        wave = np.sin(k * np.hypot(u - cx, v - cy) + phase[0])
    else:  # diagonal_cross: both diagonals, which a flip exchanges
        d = k / np.sqrt(2.0)
        wave = 0.5 * (np.sin(d * (u + v) + phase[0]) + np.sin(d * (u - v) + phase[1]))
    wave = 0.5 + 0.5 * wave
    # Two roughly complementary colours: always enough contrast to see the pattern.
    a = rng.uniform(0, 255, size=3)
    b = np.clip(255.0 - a + rng.normal(0.0, 30.0, size=3), 0, 255)
    image = a[None, None, :] * wave[..., None] + b[None, None, :] * (1 - wave[..., None])
    image += rng.normal(0.0, noise, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_synthetic_imagenet(
    root: str | os.PathLike,
    *,
    num_classes: int = 3,
    train_per_class: int = 24,
    val_per_class: int = 8,
    size_range: Tuple[int, int] = (40, 72),
    seed: int = 0,
) -> List[str]:
    """Write an ImageNet-layout folder of grating images; returns the class names.

    Image sides are uniform in ``size_range`` (independently for height and width).
    Class folders are named like WordNet ids (``n00000000``, ``n00000001``, ...).
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    names = [f"n{k:08d}" for k in range(num_classes)]
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for label, name in enumerate(names):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                h, w = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
                rgb = grating_image(label, num_classes, h, w, rng)
                ok = cv2.imwrite(str(folder / f"{name}_{i:05d}.JPEG"), rgb[:, :, ::-1],
                                 [cv2.IMWRITE_JPEG_QUALITY, 95])
                if not ok:
                    raise OSError(f"cannot write {folder / f'{name}_{i:05d}.JPEG'}")
    return names


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """``(N, 32, 32, 3)`` RGB -> ``(N, 3072)``: R plane, G plane, B plane, row-major."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


def make_synthetic_cifar10(
    root: str | os.PathLike,
    *,
    num_train: int = 5000,
    num_test: int = 1000,
    seed: int = 0,
    noise: float = 30.0,
) -> Path:
    """Write a ``cifar-10-batches-py``-style folder of 32x32 grating images.

    ``num_train`` images are split evenly over ``data_batch_1..5`` (it must be a
    multiple of 5); labels cycle through the 10 classes in random order.
    Returns ``root``.
    """
    if num_train % 5 != 0 or num_train < 5 or num_test < 1:
        raise ValueError(f"num_train={num_train} must be a positive multiple of 5 and num_test={num_test} >= 1")
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    class_names = [f"grating{k}" for k in range(10)]

    def make(n: int) -> Tuple[np.ndarray, List[int]]:
        labels = rng.permutation(np.arange(n) % 10).tolist()
        images = np.stack([grating_image(k, 10, 32, 32, rng, noise=noise) for k in labels])
        return images, labels

    def dump(name: str, images: np.ndarray, labels: List[int], batch_label: str) -> None:
        obj = {
            "batch_label": batch_label,
            "labels": labels,
            "data": _cifar_rows(images),
            "filenames": [f"{name}_{i:05d}.png" for i in range(len(labels))],
        }
        with open(root / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)

    per = num_train // 5
    for b in range(5):
        images, labels = make(per)
        dump(f"data_batch_{b + 1}", images, labels, f"training batch {b + 1} of 5")
    images, labels = make(num_test)
    dump("test_batch", images, labels, "testing batch 1 of 1")
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"label_names": class_names, "num_cases_per_batch": per, "num_vis": 3072}, f, protocol=2)
    return root
