"""Tests of detectron_res.visualize: class colours, text contrast, drawing geometry."""

import itertools

import numpy as np
import pytest

from detectron_res.visualize import class_color, draw_detections, text_color_for


def _relative_luminance(bgr):
    def lin(c):
        c = c / 255.0
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    b, g, r = bgr
    return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)


def test_class_colors_fixed_and_distinct():
    colors = [class_color(label) for label in range(1, 21)]
    assert colors == [class_color(label) for label in range(1, 21)]  # same label, same colour
    assert all(len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in colors)
    # The 20 VOC classes get clearly different colours: no two within 40 (of 441) in BGR space.
    min_dist = min(np.linalg.norm(np.subtract(a, b)) for a, b in itertools.combinations(colors, 2))
    assert min_dist > 40, min_dist
    # Bright enough to stand out on a dark image (max channel >= 0.9 * 255).
    assert all(max(c) >= 229 for c in colors)


@pytest.mark.parametrize("bg", [(0, 0, 0), (255, 255, 255), (255, 0, 0), (0, 255, 255), (40, 200, 40), (128, 128, 128)])
def test_text_color_maximizes_wcag_contrast(bg):
    text = text_color_for(bg)
    lum = _relative_luminance(bg)
    contrast_black = (lum + 0.05) / 0.05
    contrast_white = 1.05 / (lum + 0.05)
    expected = (0, 0, 0) if contrast_black >= contrast_white else (255, 255, 255)
    assert text == expected
    assert max(contrast_black, contrast_white) >= 4.5  # WCAG AA for any background


@pytest.mark.parametrize("background", [0, 255])
def test_box_drawn_in_class_color_with_dark_outline(background):
    image = np.full((200, 300, 3), background, np.uint8)
    box = np.array([[50.0, 80.0, 150.0, 180.0]], np.float32)
    out = draw_detections(image, box, np.array([3]), np.array([0.9]), ["a", "b", "c"])
    assert out is not image and np.all(image == background)  # copy=True leaves the input alone
    color = np.array(class_color(3))
    # Middle of the left edge (x=50, y=130) is the class colour, the pixel just outside is the dark outline.
    assert np.array_equal(out[130, 50], color)
    assert out[130, 49].max() < 60 and out[130, 51].max() < 60
    # Far from the box nothing changed.
    assert np.all(out[:40, 200:] == background) and np.all(out[190:, :] == background)
    # The label sits above the box on a filled background of the class colour.
    in_color = np.all(out == color, axis=2)
    rows, cols = np.nonzero(in_color[:80])
    assert rows.max() == 79 and 60 <= rows.min() < 75 and cols.min() == 50 and 60 < cols.max() < 150
    assert in_color[rows.min() : 80, 50 : cols.max() + 1].mean() > 0.4  # a filled box around the text
    # ... and carries text pixels in the contrasting colour.
    text = np.array(text_color_for(class_color(3)))
    assert np.any(np.all(out[60:80, 50:150] == text, axis=2))


def test_label_goes_inside_when_box_touches_top_and_stays_in_image():
    image = np.zeros((120, 100, 3), np.uint8)
    out = draw_detections(image, np.array([[70.0, 0.0, 100.0, 40.0]]), np.array([1]), np.array([0.5]), ["person"])
    color = np.array(class_color(1))
    # Label moved inside the box's top edge and shifted left so it stays in the image.
    assert np.all(out[3, 99] == color) or np.all(out[3, 98] == color)
    assert np.any(np.all(out[:20, :70] == color, axis=2))  # shifted left of the box's x1


def test_lowest_score_drawn_first_so_best_is_on_top():
    image = np.zeros((100, 100, 3), np.uint8)
    boxes = np.array([[10.0, 30.0, 90.0, 90.0], [10.0, 30.0, 90.0, 90.0]])
    out = draw_detections(image, boxes, np.array([1, 2]), np.array([0.95, 0.3]), ["a", "b"])
    assert np.array_equal(out[60, 10], np.array(class_color(1)))


def test_empty_tiny_and_out_of_image_boxes():
    image = np.random.default_rng(0).integers(0, 255, (3, 4, 3), dtype=np.uint8)
    assert np.array_equal(draw_detections(image, np.zeros((0, 4)), np.zeros((0,))), image)
    out = draw_detections(
        image, np.array([[-5.0, -5.0, 50.0, 50.0], [np.nan, 0, 1, 1]]), np.array([1, 2]), np.array([0.5, 0.4])
    )
    assert out.shape == image.shape and out.dtype == np.uint8
    big = np.zeros((3000, 4000, 3), np.uint8)
    out = draw_detections(big, np.array([[100.0, 100.0, 2000.0, 1500.0]]), np.array([2]), np.array([0.7]), ["a", "b"])
    # Lines scale with the image: the edge is several pixels thick on a 4000-pixel image.
    edge = np.all(out[800, 90:115] == np.array(class_color(2)), axis=1).sum()
    assert edge >= 8


def test_in_place_and_unnamed_label():
    image = np.zeros((60, 60, 3), np.uint8)
    out = draw_detections(image, np.array([[10.0, 30.0, 50.0, 50.0]]), np.array([7]), None, ["a"], copy=False)
    assert out is image and image.any()


def test_bad_arguments():
    with pytest.raises(TypeError, match=r"uint8 BGR image"):
        draw_detections(np.zeros((10, 10), np.uint8), np.zeros((0, 4)), np.zeros(0))
    with pytest.raises(TypeError, match=r"float32"):
        draw_detections(np.zeros((10, 10, 3), np.float32), np.zeros((0, 4)), np.zeros(0))
    with pytest.raises(ValueError, match=r"2 boxes but 1 labels"):
        draw_detections(np.zeros((10, 10, 3), np.uint8), np.zeros((2, 4)), np.zeros(1))
