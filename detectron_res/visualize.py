"""Drawing detections on images with OpenCV.

Boxes are float ``x1, y1, x2, y2`` in absolute, 0-based continuous pixel
coordinates of the image they are drawn on (pixel ``i`` spans ``[i, i+1)``), as
everywhere in the toolkit. Images are ``np.uint8`` arrays of shape ``[H, W, 3]``
in BGR order (what OpenCV reads and writes).

Design choices, each for legibility on any photograph:

* every class has one fixed colour, computed from its label id by stepping the
  hue by the golden ratio (consecutive labels get far-apart hues, the same label
  always gets the same colour, with no table to run out of);
* colours are bright and saturated, and every box line is drawn over a thin dark
  outline: the bright line stands out on dark images, the outline on light ones;
* the label text sits on a filled box of the class colour, in black or white
  depending on which contrasts more with that colour;
* line width and font size scale with the image, so a 64-pixel thumbnail and a
  4000-pixel photograph both look right.
"""

from __future__ import annotations

import colorsys
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

__all__ = ["class_color", "text_color_for", "draw_detections", "MIN_DRAWN_SIDE"]

# Annotated still images smaller than this (longer side, pixels) are drawn enlarged
# (see draw_detections' min_side): a 10-pixel label on a 64-pixel thumbnail would
# hide the objects it names.
MIN_DRAWN_SIDE = 384

# 1 / golden ratio: hue steps of this size never repeat and stay well spread
# for any number of classes (the classic "golden angle" palette).
_GOLDEN_RATIO_CONJUGATE = 0.618033988749895
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_color(label: int) -> Tuple[int, int, int]:
    """The fixed BGR colour of a class.

    Args:
        label: the contiguous class id (1..K; 0 is background and also valid).
    Returns:
        ``(b, g, r)`` ints in 0..255. The same label always gives the same colour.
    """
    hue = (int(label) * _GOLDEN_RATIO_CONJUGATE) % 1.0
    # Alternate two saturation/value levels so that labels whose hues end up
    # close (e.g. 1 and 14) still differ in brightness.
    saturation, value = (0.85, 1.0) if int(label) % 2 else (0.65, 0.9)
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return int(round(b * 255)), int(round(g * 255)), int(round(r * 255))


def text_color_for(background_bgr: Sequence[int]) -> Tuple[int, int, int]:
    """Black or white, whichever contrasts more with ``background_bgr``.

    Uses the WCAG relative luminance (sRGB linearised, Rec. 709 weights) and picks
    the text colour with the larger contrast ratio.
    """
    b, g, r = (float(c) / 255.0 for c in background_bgr)

    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    luminance = 0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b)
    contrast_with_black = (luminance + 0.05) / 0.05
    contrast_with_white = 1.05 / (luminance + 0.05)
    return (0, 0, 0) if contrast_with_black >= contrast_with_white else (255, 255, 255)


def _label_text(label: int, score: Optional[float], class_names: Optional[Sequence[str]]) -> str:
    if class_names is not None and 1 <= label <= len(class_names):
        name = class_names[label - 1]
    else:
        name = f"class {label}"
    return name if score is None else f"{name} {score:.2f}"


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    scores: Optional[np.ndarray] = None,
    class_names: Optional[Sequence[str]] = None,
    *,
    copy: bool = True,
    min_side: int = 0,
) -> np.ndarray:
    """Draw boxes with "class score" labels on a BGR image.

    Args:
        image: ``np.uint8 [H, W, 3]`` BGR image.
        boxes: ``[N, 4]`` float ``x1, y1, x2, y2`` absolute pixel coordinates of
            ``image`` (0-based, continuous).
        labels: ``[N]`` int contiguous class ids ``1..K``.
        scores: ``[N]`` floats in [0, 1], or None to draw names only.
        class_names: ``class_names[i]`` is the name of label ``i + 1``; labels
            without a name are drawn as ``class <id>``.
        copy: draw on a copy (default) instead of in place.
        min_side: an image whose longer side is shorter than this is drawn enlarged
            by the smallest integer factor that reaches it (nearest neighbour: its
            pixels stay visible as such), so that labels of a readable size (about
            10 pixels tall at least) do not cover a thumbnail. 0 (default) never
            enlarges; tools/infer.py passes
            :data:`MIN_DRAWN_SIDE`. Enlarging always draws on a copy.
    Returns:
        The annotated ``np.uint8`` image: ``[H, W, 3]``, or ``[k H, k W, 3]`` when
        enlarged by ``k``.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise TypeError(f"draw_detections: expected a uint8 BGR image of shape [H, W, 3], got {desc}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if len(labels) != len(boxes):
        raise ValueError(f"draw_detections: {len(boxes)} boxes but {len(labels)} labels")
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(scores) != len(boxes):
            raise ValueError(f"draw_detections: {len(boxes)} boxes but {len(scores)} scores")
    canvas = image.copy() if copy else image
    if not canvas.flags["C_CONTIGUOUS"]:
        canvas = np.ascontiguousarray(canvas)
    height, width = canvas.shape[:2]
    if min_side and max(height, width) < min_side:
        factor = int(np.ceil(min_side / max(height, width)))
        canvas = cv2.resize(canvas, (width * factor, height * factor), interpolation=cv2.INTER_NEAREST)
        boxes = boxes * factor
        height, width = canvas.shape[:2]

    # Sizes relative to the image: a 2-pixel line and 0.5 font at ~600 px (the
    # detector's test scale), never thinner than 1 pixel; the font never below 0.45
    # (text about 10 pixels tall), the smallest that stays readable on a thumbnail.
    scale = max(height, width) / 600.0
    thickness = max(1, int(round(2 * scale)))
    font_scale = max(0.45, 0.5 * scale)
    font_thickness = max(1, int(round(1.2 * scale)))
    pad = max(1, int(round(2 * scale)))

    # Most confident first: they get the best label places; drawn last, so on top.
    order = np.argsort(-scores, kind="stable") if scores is not None else np.arange(len(boxes))
    order = [i for i in order if np.all(np.isfinite(boxes[i]))]
    rects = {}
    for i in order:
        x1, y1, x2, y2 = boxes[i]
        # Continuous [x1, x2) -> the inclusive pixel rectangle OpenCV draws.
        p1 = (int(np.floor(x1)), int(np.floor(y1)))
        p2 = (max(p1[0], int(np.ceil(x2)) - 1), max(p1[1], int(np.ceil(y2)) - 1))
        rects[i] = (p1, p2)

    # Boxes first, every label after them: no box edge can cut through a label.
    for i in reversed(order):
        p1, p2 = rects[i]
        color = class_color(int(labels[i]))
        # Axis-aligned lines need no anti-aliasing; LINE_8 keeps them crisp and exactly the class colour.
        cv2.rectangle(canvas, p1, p2, (0, 0, 0), thickness + 2, lineType=cv2.LINE_8)
        cv2.rectangle(canvas, p1, p2, color, thickness, lineType=cv2.LINE_8)

    placed: list = []  # (left, top, right, bottom) of the labels placed so far
    labels_to_draw = []
    for i in order:
        p1, p2 = rects[i]
        text = _label_text(int(labels[i]), None if scores is None else float(scores[i]), class_names)
        (text_w, text_h), baseline = cv2.getTextSize(text, _FONT, font_scale, font_thickness)
        size = (text_w + 2 * pad, text_h + baseline + 2 * pad)
        left, top = _place_label(size, p1, p2, thickness, (width, height), placed)
        placed.append((left, top, left + size[0], top + size[1]))
        labels_to_draw.append((i, text, left, top, size, text_h))
    # Least confident first, so where labels must overlap the confident one is readable.
    for i, text, left, top, (box_w, box_h), text_h in reversed(labels_to_draw):
        color = class_color(int(labels[i]))
        cv2.rectangle(canvas, (left, top), (left + box_w - 1, top + box_h - 1), color, cv2.FILLED)
        cv2.putText(
            canvas,
            text,
            (left + pad, top + pad + text_h),
            _FONT,
            font_scale,
            text_color_for(color),
            font_thickness,
            lineType=cv2.LINE_AA,
        )
    return canvas


def _overlap(a: Tuple[int, int, int, int], b: Tuple[int, int, int, int]) -> int:
    """Area shared by two ``(left, top, right, bottom)`` rectangles (right/bottom exclusive)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(0, w) * max(0, h)


def _place_label(
    size: Tuple[int, int],
    p1: Tuple[int, int],
    p2: Tuple[int, int],
    line: int,
    image_size: Tuple[int, int],
    placed: Sequence[Tuple[int, int, int, int]],
) -> Tuple[int, int]:
    """Top-left corner of a label of ``size = (w, h)`` for the box ``p1``-``p2``.

    Candidates, in order of preference: above the box's top-left corner, inside it
    below the top edge, below the box, inside above the bottom edge; each shifted
    back into the image. The first that overlaps no label placed so far wins; when
    every one does (a crowded image), the one with the least overlap.
    """
    w, h = size
    width, height = image_size
    half = (line + 2) // 2 + 1  # clear of the box's line and its dark outline
    left = min(max(0, p1[0]), max(0, width - w))
    candidates = [
        (left, p1[1] - h),  # above
        (left, p1[1] + half),  # inside, below the top edge
        (left, p2[1] + half + 1),  # below
        (left, p2[1] - half - h),  # inside, above the bottom edge
    ]
    best, best_cost = None, None
    for rank, (x, y) in enumerate(candidates):
        fits = 0 <= y and y + h <= height
        y = min(max(0, y), max(0, height - h))
        rect = (x, y, x + w, y + h)
        cost = sum(_overlap(rect, other) for other in placed)
        # Prefer a place inside the image, then no overlap, then the earlier candidate.
        key = (not fits, cost, rank)
        if best_cost is None or key < best_cost:
            best, best_cost = (x, y), key
        if fits and cost == 0:
            break
    return best
