"""Image classification datasets: ImageNet in its folder layout, and CIFAR-10 in its
official python-pickle layout.

Both expose the same small interface (:class:`ClassificationDataset`):
``len(ds)``, ``ds.image(i)`` (``np.uint8 (H, W, 3)`` in **RGB** order),
``ds.labels`` (``np.int64 (N,)``), ``ds.class_names`` and ``ds.num_classes``.
Labels are class indices ``0..K-1`` (``class_names[k]`` is class ``k``), the target
of the cross-entropy loss; this differs from the detection datasets, whose labels
are ``1..K`` because 0 is the background there.

ImageNet folder layout (torchvision's ``ImageFolder`` convention)::

    root/train/n01440764/n01440764_10026.JPEG
    root/train/n01443537/...
    root/val/n01440764/ILSVRC2012_val_00000293.JPEG
    ...

Class names are the sub-folder names, sorted; every split must hold the same class
folders (a class without images in a split is allowed in the test split only).

CIFAR-10 layout (https://www.cs.toronto.edu/~kriz/cifar.html, "python version")::

    cifar-10-batches-py/data_batch_1 .. data_batch_5   10000 training images each
    cifar-10-batches-py/test_batch                      10000 test images
    cifar-10-batches-py/batches.meta                    label_names

Each batch is a pickled dict with ``data`` (``uint8 (10000, 3072)``: per row the 1024
red, then 1024 green, then 1024 blue values of a 32x32 image, row-major) and
``labels`` (10000 ints in 0..9). The files were written by Python 2, so their keys
may come back as ``bytes`` or ``str``; both are accepted. They are read with the
restricted unpickler of ``detectron_res.weights`` (numpy arrays and plain containers
only), so a tampered file cannot run code.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..data.catalog import datasets_root
from ..data.image_io import read_image
from ..weights import RestrictedUnpickler, UnsafeWeightsError

__all__ = [
    "ClassificationDataset",
    "ImageFolderDataset",
    "Cifar10Dataset",
    "read_cifar10_batch",
    "build_datasets",
    "resolve_data_root",
    "IMAGE_EXTENSIONS",
    "CIFAR10_TRAIN_FILES",
    "CIFAR10_TEST_FILE",
    "CIFAR10_META_FILE",
]

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff")
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_META_FILE = "batches.meta"
_CIFAR_SIDE = 32
# The 45k/5k split of Sec 4.2 is a fixed random subset, the same in every run.
_HOLDOUT_SEED = 0


class ClassificationDataset:
    """Base of the classification datasets.

    Attributes:
        name: e.g. ``"imagenet_train"``, ``"cifar10_test"``.
        class_names: ``K`` names; label ``k`` is ``class_names[k]``.
        labels: ``int64 (N,)`` class index of every image.
    """

    name: str
    class_names: List[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def image(self, index: int) -> np.ndarray:
        """Image ``index`` as ``np.uint8 (H, W, 3)`` in RGB order."""
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.name}: {len(self)} images, {self.num_classes} classes"


# ----------------------------------------------------------------------------
# ImageNet folder layout
# ----------------------------------------------------------------------------
def _scan_class_folders(split_dir: Path) -> List[str]:
    if not split_dir.is_dir():
        raise FileNotFoundError(
            f"{split_dir}: folder not found; expected <data.root>/<split>/<class>/*.JPEG (config keys data.root, "
            "data.train_split / data.test_split)"
        )
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"{split_dir}: no class sub-folders; expected {split_dir}/<class>/<image files>")
    return classes


class ImageFolderDataset(ClassificationDataset):
    """ImageNet-style ``root/<split>/<class>/<image>`` folders.

    Args:
        root: the folder holding the split folders (config ``data.root``).
        split: the split folder name (``"train"``, ``"val"``).
        class_names: the class list to use (the training split's, so that a test
            split gets the same label indices); None takes this split's folders.

    Raises:
        FileNotFoundError: the split folder does not exist.
        ValueError: no class folder, no image in the training split's class folder,
            or a class folder that ``class_names`` does not know.
    """

    def __init__(self, root: str | os.PathLike, split: str, *, class_names: Optional[Sequence[str]] = None) -> None:
        split_dir = Path(root) / split
        found = _scan_class_folders(split_dir)
        defines_classes = class_names is None  # the training split: every class needs images
        if class_names is None:
            class_names = found
        else:
            unknown = sorted(set(found) - set(class_names))
            if unknown:
                raise ValueError(
                    f"{split_dir}: class folder(s) {unknown[:5]} are not in the training split's "
                    f"{len(class_names)} classes; every split must use the same class folders"
                )
        self.name = f"{Path(root).name}_{split}"
        self.root = Path(root)
        self.split = split
        self.class_names = list(class_names)
        files: List[str] = []
        labels: List[int] = []
        for label, cls in enumerate(self.class_names):
            cls_dir = split_dir / cls
            if not cls_dir.is_dir():
                continue  # a test split may lack a class
            names = sorted(e.name for e in os.scandir(cls_dir)
                           if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
            if not names and defines_classes:
                raise ValueError(f"{cls_dir}: class folder without images (extensions {', '.join(IMAGE_EXTENSIONS)})")
            files += [str(cls_dir / n) for n in names]
            labels += [label] * len(names)
        if not files:
            raise ValueError(f"{split_dir}: no image files in its class folders")
        # One numpy array instead of 1.28M Python strings: loader workers read it
        # without touching reference counts, so forked workers do not copy it.
        self.files = np.array([f.encode() for f in files])
        self.labels = np.asarray(labels, dtype=np.int64)

    def file_name(self, index: int) -> str:
        return self.files[index].decode()

    def image(self, index: int) -> np.ndarray:
        return read_image(self.file_name(index), format="RGB")


# ----------------------------------------------------------------------------
# CIFAR-10 python pickles
# ----------------------------------------------------------------------------
def _text_keys(obj: dict) -> dict:
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _read_cifar_pickle(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: CIFAR-10 file not found; data.root must be the official 'cifar-10-batches-py' folder "
            f"({', '.join(CIFAR10_TRAIN_FILES)}, {CIFAR10_TEST_FILE}, {CIFAR10_META_FILE})"
        )
    with open(path, "rb") as f:
        try:
            obj = RestrictedUnpickler(f, source=str(path)).load()
        except UnsafeWeightsError:
            raise
        except Exception as e:
            raise ValueError(f"{path}: not a readable CIFAR-10 pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return _text_keys(obj)


def read_cifar10_batch(path: str | os.PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch file -> ``(images uint8 (N, 32, 32, 3) RGB, labels int64 (N,))``."""
    path = Path(path)
    obj = _read_cifar_pickle(path)
    if "data" not in obj or "labels" not in obj:
        raise ValueError(f"{path}: expected keys 'data' and 'labels', got {sorted(obj)[:6]}")
    data = np.asarray(obj["data"])
    labels = np.asarray(obj["labels"], dtype=np.int64)
    row = 3 * _CIFAR_SIDE * _CIFAR_SIDE
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != row:
        raise ValueError(f"{path}: 'data' must be uint8 (N, {row}), got {data.dtype} {tuple(data.shape)}")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    # Row = R plane, G plane, B plane, each 32 rows of 32: (N, C, H, W) -> (N, H, W, C).
    images = data.reshape(-1, 3, _CIFAR_SIDE, _CIFAR_SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


class Cifar10Dataset(ClassificationDataset):
    """CIFAR-10 from the official ``cifar-10-batches-py`` folder, held in memory.

    Args:
        root: the ``cifar-10-batches-py`` folder (config ``data.root``).
        split: ``"train"`` (the 50k training images minus the held-out ones),
            ``"holdout"`` (the held-out ones) or ``"test"`` (``test_batch``).
        holdout: number of training images held out (Sec 4.2's 45k/5k split: 5000),
            a fixed random subset.
    """

    SPLITS = ("train", "holdout", "test")

    def __init__(self, root: str | os.PathLike, split: str = "train", *, holdout: int = 0) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"CIFAR-10 split {split!r} is not supported; expected one of {', '.join(self.SPLITS)}")
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: CIFAR-10 folder not found (config key data.root)")
        meta = _read_cifar_pickle(root / CIFAR10_META_FILE)
        names = meta.get("label_names")
        if not isinstance(names, (list, tuple)) or not names:
            raise ValueError(f"{root / CIFAR10_META_FILE}: expected a 'label_names' list")
        self.class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        if split == "test":
            images, labels = read_cifar10_batch(root / CIFAR10_TEST_FILE)
        else:
            parts = [read_cifar10_batch(root / f) for f in CIFAR10_TRAIN_FILES]
            images = np.concatenate([p[0] for p in parts])
            labels = np.concatenate([p[1] for p in parts])
            if not 0 <= holdout < len(labels):
                raise ValueError(f"data.holdout={holdout}: expected 0 <= holdout < {len(labels)} training images")
            held = np.zeros(len(labels), dtype=bool)
            if holdout:
                held[np.random.default_rng(_HOLDOUT_SEED).permutation(len(labels))[:holdout]] = True
            keep = held if split == "holdout" else ~held
            if split == "holdout" and not holdout:
                raise ValueError("CIFAR-10 split 'holdout' needs data.holdout > 0 (e.g. 5000)")
            images, labels = images[keep], labels[keep]
        bad = (labels < 0) | (labels >= len(self.class_names))
        if bad.any():
            raise ValueError(f"{root}: label {int(labels[bad][0])} outside 0..{len(self.class_names) - 1}")
        self.root = root
        self.split = split
        self.name = f"cifar10_{split}"
        self.images = images
        self.labels = labels

    def image(self, index: int) -> np.ndarray:
        return self.images[index]


def resolve_data_root(root: str) -> Path:
    """``data.root`` as a path: absolute as given; relative under the datasets root
    (``$DETECTRON_RES_DATASETS``, else ``./datasets``, as for the detection datasets)
    when it exists there, else under the current directory."""
    path = Path(root).expanduser()
    if path.is_absolute():
        return path
    under_root = Path(datasets_root()) / path
    return under_root if under_root.exists() else path.resolve()


def build_datasets(cfg) -> Tuple[ClassificationDataset, ClassificationDataset]:
    """``(train, test)`` datasets of ``cfg.data`` (a :class:`ClassifierConfig`)."""
    d = cfg.data
    root = resolve_data_root(str(d.root))
    if d.format == "imagenet_folder":
        train = ImageFolderDataset(root, d.train_split)
        test = ImageFolderDataset(root, d.test_split, class_names=train.class_names)
    elif d.format == "cifar10":
        train = Cifar10Dataset(root, "train", holdout=int(d.holdout))
        test = Cifar10Dataset(root, d.test_split, holdout=int(d.holdout))
    else:
        raise ValueError(f"config key 'data.format' must be imagenet_folder or cifar10; got {d.format!r}")
    if train.num_classes != int(cfg.model.num_classes):
        raise ValueError(
            f"model.num_classes={cfg.model.num_classes} but the training set {train.name} has {train.num_classes} "
            f"classes; set model.num_classes={train.num_classes}"
        )
    return train, test
