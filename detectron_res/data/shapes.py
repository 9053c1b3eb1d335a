"""A small synthetic detection dataset ("shapes") for demos and tests.

``python -m detectron_res.data.shapes --out datasets/shapes`` (or
``tools/make_shapes.py``) writes, deterministically for a given seed::

    shapes/
      images/{train,val}/<split>_<n>.jpg
      annotations/instances_{train,val}.json          COCO format (+ "difficult" key)
      VOCdevkit/VOC2007/{Annotations,JPEGImages}/      VOC layout, same images
      VOCdevkit/VOC2007/ImageSets/Main/{train,val}.txt
      yolo/classes.txt, yolo/{train,val}/{images,labels}/   YOLO txt, same images
      shapes_params.json                               what generated it (idempotence)

Images are 160-256 px with textured backgrounds; each holds 1-5 objects of 4 classes
(circle, square, triangle, star) of 16-100 px with random colours and aspect ratios,
overlapping by at most 30% IoU. About a third of the images also hold a tiny object
(6-11 px), flagged ``difficult`` as VOC does for objects too small to recognize.
All box corners are integers, so the three formats encode the same boxes exactly
(YOLO up to its 6-decimal normalized values).

The images within the VOC and YOLO trees are hard links to ``images/`` (copies where
the file system has no hard links).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple
from xml.sax.saxutils import escape

import cv2
import numpy as np

from ..outputs import OutputError

__all__ = ["SHAPES_CLASS_NAMES", "generate_shapes_dataset", "ShapeObject", "render_image", "main"]

SHAPES_CLASS_NAMES = ("circle", "square", "triangle", "star")

_FORMAT_VERSION = 1  # bump when the generator's output changes for the same parameters
_SUBDIRS = ("images", "annotations", "VOCdevkit", "yolo")
_STAMP = "shapes_params.json"


class ShapeObject:
    """One generated object: integer box ``x1, y1, x2, y2`` (continuous 0-based,
    exclusive ``x2, y2``), 1-based ``label``, ``difficult`` flag."""

    __slots__ = ("box", "label", "difficult", "color")

    def __init__(self, box: Tuple[int, int, int, int], label: int, difficult: bool, color: Tuple[int, int, int]):
        self.box, self.label, self.difficult, self.color = box, label, difficult, color


def _iou_and_ioa(a: Tuple[int, int, int, int], b: Tuple[int, int, int, int]) -> Tuple[float, float]:
    """IoU of a and b, and the fraction of b covered by a."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0, 0.0
    inter = iw * ih
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area_a + area_b - inter), inter / area_b


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Moderately textured background: low-saturation colour, smooth noise, a faint
    stripe or checker pattern and pixel noise (BGR uint8)."""
    hsv = np.array([[[rng.integers(0, 180), rng.integers(0, 60), rng.integers(70, 190)]]], dtype=np.uint8)
    base = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)
    # mostly luminance variation, a little colour: objects are the saturated things
    grid = (max(2, h // 24), max(2, w // 24))
    coarse = rng.normal(0, 14, size=grid + (1,)) + rng.normal(0, 5, size=grid + (3,))
    coarse = coarse.astype(np.float32)
    img = base + cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.integers(0, 3)
    period = float(rng.uniform(8, 24))
    if kind == 0:  # stripes at a random angle
        ang = rng.uniform(0, np.pi)
        pattern = np.sin((xx * np.cos(ang) + yy * np.sin(ang)) * 2 * np.pi / period)
    elif kind == 1:  # checker
        pattern = np.sign(np.sin(xx * np.pi / period) * np.sin(yy * np.pi / period))
    else:
        pattern = np.zeros((h, w), np.float32)
    img += pattern[:, :, None] * float(rng.uniform(4, 14))
    img += rng.normal(0, 4, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _star_polygon(n_points: int = 5, inner: float = 0.45) -> np.ndarray:
    angles = np.arange(2 * n_points) * np.pi / n_points - np.pi / 2
    radii = np.where(np.arange(2 * n_points) % 2 == 0, 1.0, inner)
    return np.stack([np.cos(angles) * radii, np.sin(angles) * radii], axis=1)


_STAR = _star_polygon()
# (cv2.ellipse approximates small ellipses by coarse polygons; 72 vertices stay round)
_CIRCLE = np.stack([np.cos(np.linspace(0, 2 * np.pi, 72, endpoint=False)), np.sin(np.linspace(0, 2 * np.pi, 72, endpoint=False))], axis=1)
_TRIANGLE = np.array([[0.0, 1.0], [1.0, 1.0], [0.5, 0.0]])


def _fit_polygon(unit: np.ndarray, box: Tuple[int, int, int, int]) -> np.ndarray:
    """Scale a polygon so that its bounding box covers exactly the pixels of ``box``.

    Continuous box ``[x1, x2)`` covers pixel centres ``x1 .. x2 - 1`` (OpenCV draws in
    pixel-centre coordinates), so the polygon spans ``x1 .. x2 - 1`` there.
    """
    x1, y1, x2, y2 = box
    lo, hi = unit.min(axis=0), unit.max(axis=0)
    t = (unit - lo) / (hi - lo)
    return np.stack([x1 + t[:, 0] * (x2 - 1 - x1), y1 + t[:, 1] * (y2 - 1 - y1)], axis=1)


def _draw(img: np.ndarray, obj: ShapeObject) -> None:
    shift = 4  # sub-pixel precision for OpenCV drawing (coordinates x 16)
    x1, y1, x2, y2 = obj.box
    color = tuple(int(c) for c in obj.color)
    name = SHAPES_CLASS_NAMES[obj.label - 1]
    if name == "square":
        cv2.rectangle(img, (x1, y1), (x2 - 1, y2 - 1), color, thickness=-1)
        return
    unit = {"circle": _CIRCLE, "triangle": _TRIANGLE, "star": _STAR}[name]
    pts = np.round(_fit_polygon(unit, obj.box) * 16).astype(np.int32)
    cv2.fillPoly(img, [pts], color, lineType=cv2.LINE_AA, shift=shift)


def _object_color(rng: np.random.Generator) -> Tuple[int, int, int]:
    hsv = np.array([[[rng.integers(0, 180), rng.integers(160, 256), rng.integers(170, 256)]]], dtype=np.uint8)
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def render_image(
    rng: np.random.Generator, size_range: Tuple[int, int] = (160, 256)
) -> Tuple[np.ndarray, List[ShapeObject]]:
    """Generate one image (BGR uint8) and its objects."""
    h = int(rng.integers(size_range[0], size_range[1] + 1))
    w = int(rng.integers(size_range[0], size_range[1] + 1))
    img = _background(rng, h, w)
    objects: List[ShapeObject] = []
    max_side = min(100, int(0.6 * min(h, w)))
    for _ in range(int(rng.integers(1, 6))):
        for _attempt in range(30):
            side = float(rng.uniform(16, max_side))
            aspect = float(rng.uniform(0.75, 1.33))
            bw = int(np.clip(round(side * np.sqrt(aspect)), 16, w))
            bh = int(np.clip(round(side / np.sqrt(aspect)), 16, h))
            x1, y1 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
            box = (x1, y1, x1 + bw, y1 + bh)
            # Some overlap, but every earlier object stays mostly visible (the new one is
            # drawn on top of it), so that the boxes remain learnable.
            if all(_iou_and_ioa(box, o.box)[0] <= 0.3 and _iou_and_ioa(box, o.box)[1] <= 0.5 for o in objects):
                label = int(rng.integers(1, len(SHAPES_CLASS_NAMES) + 1))
                objects.append(ShapeObject(box, label, False, _object_color(rng)))
                break
    if rng.random() < 0.35:
        # A tiny object, too small to recognize reliably: VOC's "difficult".
        for _attempt in range(30):
            s = int(rng.integers(6, 12))
            x1, y1 = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
            box = (x1, y1, x1 + s, y1 + s)
            if all(_iou_and_ioa(box, o.box)[0] == 0.0 for o in objects):
                label = int(rng.integers(1, len(SHAPES_CLASS_NAMES) + 1))
                objects.append(ShapeObject(box, label, True, _object_color(rng)))
                break
    for obj in objects:
        _draw(img, obj)
    return img, objects


def _link_or_copy(src: str, dst: str) -> None:
    if os.path.exists(dst):
        os.remove(dst)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _voc_xml(stem: str, h: int, w: int, objects: Sequence[ShapeObject]) -> str:
    lines = [
        "<annotation>",
        "  <folder>VOC2007</folder>",
        f"  <filename>{stem}.jpg</filename>",
        "  <source><database>detectron_res shapes</database></source>",
        f"  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>",
        "  <segmented>0</segmented>",
    ]
    for o in objects:
        x1, y1, x2, y2 = o.box
        # continuous 0-based -> VOC 1-based inclusive (detectron_res.data.voc docstring)
        lines += [
            "  <object>",
            f"    <name>{escape(SHAPES_CLASS_NAMES[o.label - 1])}</name>",
            "    <pose>Unspecified</pose>",
            "    <truncated>0</truncated>",
            f"    <difficult>{int(o.difficult)}</difficult>",
            f"    <bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>",
            "  </object>",
        ]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def _params(num_train: int, num_val: int, image_size: Tuple[int, int], seed: int) -> Dict:
    return {
        "version": _FORMAT_VERSION,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "image_size": [int(image_size[0]), int(image_size[1])],
        "seed": int(seed),
        "class_names": list(SHAPES_CLASS_NAMES),
    }


def generate_shapes_dataset(
    out_dir: str,
    *,
    num_train: int = 600,
    num_val: int = 100,
    image_size: Tuple[int, int] = (160, 256),
    seed: int = 0,
    force: bool = False,
) -> Dict:
    """Write the shapes dataset under ``out_dir`` (COCO json, VOC tree, YOLO txt).

    Idempotent: if ``out_dir/shapes_params.json`` records the same parameters, nothing
    is written. A folder that holds a dataset made with other parameters (or any of
    the sub-folders it would write, made by something else) is replaced only with
    ``force``; without it that is an :class:`~detectron_res.outputs.OutputError`.

    Args:
        out_dir: destination, e.g. ``datasets/shapes``.
        num_train, num_val: images per split.
        image_size: ``(min, max)`` side length in pixels; height and width are drawn
            independently in this range.
        seed: everything is a function of the seed and the image index.
        force: regenerate (replace the sub-folders) even if the parameters match or
            the folder holds another dataset.

    Returns:
        the parameters dict plus ``"generated": bool`` and ``"seconds"``.
    """
    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train={num_train}, num_val={num_val}: expected non-negative counts")
    if not (32 <= image_size[0] <= image_size[1]):
        # objects are at least 16 px and need room to be placed without too much overlap
        raise ValueError(f"image_size={tuple(image_size)}: expected (min, max) side lengths with 32 <= min <= max")
    out_dir = os.path.abspath(out_dir)
    params = _params(num_train, num_val, image_size, seed)
    stamp = os.path.join(out_dir, _STAMP)
    if not force and os.path.isfile(stamp):
        with open(stamp) as f:
            try:
                if json.load(f) == params:
                    return {**params, "generated": False, "seconds": 0.0}
            except json.JSONDecodeError:
                pass
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise OutputError(f"{out_dir} is a file, expected a folder for the shapes dataset")
    existing = [sub for sub in _SUBDIRS if os.path.exists(os.path.join(out_dir, sub))]
    if existing and not force:
        what = "a shapes dataset made with other parameters" if os.path.isfile(stamp) else "files not made by this tool"
        raise OutputError(f"{out_dir} holds {what} ({', '.join(s + '/' for s in existing)}); pass --force to "
                          "replace them, or choose another --out")
    start = time.perf_counter()
    if os.path.exists(stamp):
        os.remove(stamp)
    for sub in _SUBDIRS:
        shutil.rmtree(os.path.join(out_dir, sub), ignore_errors=True)
    voc = os.path.join(out_dir, "VOCdevkit", "VOC2007")
    for d in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(voc, d), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    classes_txt = "".join(f"{n}\n" for n in SHAPES_CLASS_NAMES)
    os.makedirs(os.path.join(out_dir, "yolo"), exist_ok=True)
    with open(os.path.join(out_dir, "yolo", "classes.txt"), "w") as f:
        f.write(classes_txt)

    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SHAPES_CLASS_NAMES)]
    image_id = 0
    ann_id = 0
    for split_index, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        img_dir = os.path.join(out_dir, "images", split)
        yolo_img = os.path.join(out_dir, "yolo", split, "images")
        yolo_lbl = os.path.join(out_dir, "yolo", split, "labels")
        for d in (img_dir, yolo_img, yolo_lbl):
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(out_dir, "yolo", split, "classes.txt"), "w") as f:
            f.write(classes_txt)
        images, annotations, stems = [], [], []
        for i in range(count):
            # One generator per image: any image can be regenerated alone, and changing
            # num_train does not change the validation images.
            rng = np.random.default_rng([seed, split_index, i])
            img, objects = render_image(rng, tuple(image_size))
            h, w = img.shape[:2]
            stem = f"{split}_{i:05d}"
            stems.append(stem)
            path = os.path.join(img_dir, stem + ".jpg")
            if not cv2.imwrite(path, img, [cv2.IMWRITE_JPEG_QUALITY, 95]):
                raise OSError(f"could not write {path}")
            image_id += 1
            images.append({"id": image_id, "file_name": stem + ".jpg", "height": h, "width": w})
            yolo_lines = []
            for o in objects:
                x1, y1, x2, y2 = o.box
                ann_id += 1
                annotations.append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": o.label,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": 0,
                        "difficult": int(o.difficult),
                    }
                )
                yolo_lines.append(
                    f"{o.label - 1} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} "
                    f"{(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}\n"
                )
            with open(os.path.join(voc, "Annotations", stem + ".xml"), "w") as f:
                f.write(_voc_xml(stem, h, w, objects))
            _link_or_copy(path, os.path.join(voc, "JPEGImages", stem + ".jpg"))
            _link_or_copy(path, os.path.join(yolo_img, stem + ".jpg"))
            with open(os.path.join(yolo_lbl, stem + ".txt"), "w") as f:
                f.writelines(yolo_lines)
        coco = {
            "info": {"description": "detectron_res synthetic shapes", "version": str(_FORMAT_VERSION)},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        with open(os.path.join(out_dir, "annotations", f"instances_{split}.json"), "w") as f:
            json.dump(coco, f)
        with open(os.path.join(voc, "ImageSets", "Main", f"{split}.txt"), "w") as f:
            f.writelines(s + "\n" for s in stems)
    with open(stamp, "w") as f:  # written last: its presence means the tree is complete
        json.dump(params, f, indent=1)
    return {**params, "generated": True, "seconds": time.perf_counter() - start}


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .catalog import datasets_root

    parser = argparse.ArgumentParser(
        description="Generate the synthetic 'shapes' detection dataset (COCO json, VOC and YOLO trees).",
        epilog="examples:\n"
        "  python tools/make_shapes.py                       # -> datasets/shapes (600 train / 100 val)\n"
        "  python tools/make_shapes.py --out /data/shapes --num-train 2000 --seed 1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default=None, help="output folder (default: $DETECTRON_RES_DATASETS/shapes or ./datasets/shapes)")
    parser.add_argument("--num-train", type=int, default=600)
    parser.add_argument("--num-val", type=int, default=100)
    parser.add_argument("--min-size", type=int, default=160, help="smallest image side")
    parser.add_argument("--max-size", type=int, default=256, help="largest image side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="regenerate even if already generated")
    args = parser.parse_args(argv)
    out = args.out or os.path.join(datasets_root(), "shapes")
    try:
        info = generate_shapes_dataset(
            out,
            num_train=args.num_train,
            num_val=args.num_val,
            image_size=(args.min_size, args.max_size),
            seed=args.seed,
            force=args.force,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if info["generated"]:
        print(f"wrote shapes dataset to {out}: {args.num_train} train + {args.num_val} val images in {info['seconds']:.1f} s")
    else:
        print(f"shapes dataset in {out} is up to date (same parameters); use --force to regenerate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
