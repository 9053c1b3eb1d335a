"""Images with their ground truth after augmentation: the first check on a custom dataset.

Used by ``tools/visualize_data.py``. Each PNG shows what the model is given: the
resized (and, for training, possibly flipped) image with every box of the record.
Boxes the training loader does not train on are labelled ``[difficult]`` (unless
``use_difficult``) or ``[crowd]`` and drawn in their own colours.
"""

from __future__ import annotations

import itertools
import os
import re
from typing import List, Sequence

import cv2
import numpy as np

from ..outputs import atomic_write, check_output_dir
from .dataset import DetectionDataset
from .image_io import read_image
from .loader import TrainingSampler
from .transforms import apply_transforms

__all__ = ["write_previews"]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))[:80]


def write_previews(
    dataset: DetectionDataset,
    transform,
    out_dir: str,
    *,
    num: int = 16,
    is_train: bool = True,
    seed: int = 0,
    use_difficult: bool = False,
    overwrite: bool = False,
    extra_files: Sequence[str] = (),
) -> List[str]:
    """Write ``num`` PNGs of augmented images with their boxes; return their paths.

    Args:
        dataset: the dataset to look at.
        transform: from :func:`~detectron_res.data.transforms.build_transforms`.
        out_dir: created if needed.
        num: number of images.
        is_train: pick images in the training order for ``seed`` and augment them
            with the same per-sample seeds as the training loader; otherwise the first
            ``num`` images in dataset order, deterministic resize.
        seed: the training seed (config key ``seed``).
        use_difficult: whether difficult boxes are training targets (label text only).
        overwrite: replace existing files of the same names; without it an existing
            one is an :class:`~detectron_res.outputs.OutputError`, raised before any
            image is written. The dataset's images are never replaced.
        extra_files: other names the caller writes into ``out_dir`` afterwards
            (checked with the previews).
    """
    from ..visualize import draw_detections  # drawing style shared with inference output

    if num < 1:
        raise ValueError(f"--num={num}: expected at least 1 image")
    k = dataset.num_classes
    # Labels L + K and L + 2K name the same class flagged difficult / crowd, so that
    # those boxes get their own colour and text.
    names = list(dataset.class_names)
    names += [f"{n} [difficult]" for n in dataset.class_names]
    names += [f"{n} [crowd]" for n in dataset.class_names]
    if is_train:
        items = list(itertools.islice(iter(TrainingSampler(len(dataset), seed=seed)), min(num, len(dataset))))
    else:
        items = [(i, None) for i in range(min(num, len(dataset)))]
    file_names = [f"{n:03d}_{_safe(dataset.records[index].image_id)}.png" for n, (index, _) in enumerate(items)]
    check_output_dir(out_dir, files=[*file_names, *extra_files], inputs=[dataset.records[i].file_name for i, _ in items],
                     overwrite=overwrite, flag="--out")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for file_name, (index, sample_seed) in zip(file_names, items):
        r = dataset.records[index]
        image = read_image(r.file_name, format="RGB", max_pixels=dataset.max_pixels)
        image, boxes, kept = apply_transforms(transform, image, r.boxes, seed=sample_seed)
        labels = r.labels[kept].copy()
        difficult = r.difficult[kept] & (not use_difficult)
        labels[difficult] += k
        labels[r.iscrowd[kept]] = r.labels[kept][r.iscrowd[kept]] + 2 * k
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        canvas = draw_detections(bgr, boxes, labels, class_names=names)
        path = os.path.join(out_dir, file_name)
        ok, png = cv2.imencode(".png", canvas)
        if not ok:
            raise OSError(f"could not encode {path} as PNG")
        atomic_write(path, lambda f: f.write(png.tobytes()))
        paths.append(path)
    return paths
