"""Augmentation keeps boxes exact: resize scales by the image's scale, flip twice is the
identity, boxes stay inside the image."""

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectron_res.data.transforms import apply_transforms, build_transforms, get_resize_shape, scale_boxes


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _random_boxes(rng, h, w, n):
    x = np.sort(rng.uniform(0, w, size=(n, 2)), axis=1)
    y = np.sort(rng.uniform(0, h, size=(n, 2)), axis=1)
    boxes = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 0.5)
    return np.minimum(boxes, [w, h, w, h])


@pytest.mark.parametrize(
    "h, w, short, max_size, expected",
    [
        (375, 500, 600, 1000, (600, 800)),  # typical VOC image, paper scale
        (500, 375, 600, 1000, (800, 600)),
        (100, 1000, 600, 1000, (100, 1000)),  # capped: scale = min(6, 1) = 1
        (200, 1000, 600, 1000, (200, 1000)),
        (480, 640, 800, 1333, (800, 1067)),  # 640 * 800 / 480 = 1066.67 rounds to 1067
        (427, 640, 600, 1000, (600, 899)),  # 640 * 600 / 427 = 899.3
        (600, 600, 600, 1000, (600, 600)),
    ],
)
def test_resize_shape_hand_computed(h, w, short, max_size, expected):
    assert get_resize_shape(h, w, short, max_size) == expected


def test_resize_scales_boxes_by_exactly_the_image_scale():
    rng = np.random.default_rng(0)
    h, w = 427, 640
    boxes = _random_boxes(rng, h, w, 20)
    t = build_transforms(is_train=False, min_sizes=[600], max_size=1000)
    img, out, kept = apply_transforms(t, _image(h, w), boxes)
    assert img.shape == (600, 899, 3)
    np.testing.assert_array_equal(kept, np.arange(20))
    # per-axis scale of the actual output image
    expected = boxes * np.array([899 / w, 600 / h, 899 / w, 600 / h])
    np.testing.assert_allclose(out, expected, atol=2e-3)
    # the image itself is one bilinear resize (same as OpenCV called directly)
    src = _image(h, w)
    img, _, _ = apply_transforms(t, src, boxes)
    np.testing.assert_array_equal(img, cv2.resize(src, (899, 600), interpolation=cv2.INTER_LINEAR))
    # mapping back with the per-axis ratio recovers the original boxes
    np.testing.assert_allclose(scale_boxes(out, (600, 899), (h, w)), boxes, atol=2e-3)


def test_flip_maps_x_to_width_minus_x_and_twice_is_identity():
    h, w = 375, 500
    boxes = np.array([[0, 0, 10, 20], [100.25, 50.5, 300.75, 374], [490, 0, 500, 375]], dtype=np.float64)
    # min size = the image's short side: the resize is the identity, the flip is certain
    t = build_transforms(is_train=True, min_sizes=[375], max_size=1000, hflip_prob=1.0)
    src = _image(h, w)
    img1, b1, _ = apply_transforms(t, src, boxes, seed=0)
    np.testing.assert_array_equal(img1, src[:, ::-1])
    expected = boxes.copy()
    expected[:, 0], expected[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
    np.testing.assert_allclose(b1, expected, atol=1e-3)
    img2, b2, _ = apply_transforms(t, img1, b1, seed=1)
    np.testing.assert_array_equal(img2, src)
    np.testing.assert_allclose(b2, boxes, atol=1e-3)


def test_flip_probability_and_seed_determinism():
    h, w = 64, 96
    box = np.array([[0, 0, 10, 10]])
    t = build_transforms(is_train=True, min_sizes=[64], max_size=1000, hflip_prob=0.5)
    flipped = []
    for seed in range(40):
        _, b, _ = apply_transforms(t, _image(h, w), box, seed=seed)
        _, b_again, _ = apply_transforms(t, _image(h, w), box, seed=seed)
        np.testing.assert_array_equal(b, b_again)  # same seed, same result
        flipped.append(bool(b[0, 0] > 40))
    assert 8 <= sum(flipped) <= 32  # p = 0.5 (binomial(40, .5) is in this range w.p. > 0.9999)


def test_multi_scale_draws_every_size():
    t = build_transforms(is_train=True, min_sizes=[480, 576, 688], max_size=2000, hflip_prob=0.0)
    shorts = {apply_transforms(t, _image(100, 150), np.zeros((0, 4)), seed=s)[0].shape[0] for s in range(30)}
    assert shorts == {480, 576, 688}


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(16, 300),
    w=st.integers(16, 300),
    short=st.sampled_from([32, 100, 600]),
    max_size=st.sampled_from([0, 64, 1000]),
    seed=st.integers(0, 2**31 - 1),
)
def test_boxes_stay_inside_the_image(h, w, short, max_size, seed):
    if 0 < max_size < short:
        max_size = short
    rng = np.random.default_rng(seed)
    boxes = _random_boxes(rng, h, w, 8)
    boxes[0] = [0, 0, w, h]  # a box touching every border
    t = build_transforms(is_train=True, min_sizes=[short], max_size=max_size, hflip_prob=0.5, photometric=True)
    img, out, kept = apply_transforms(t, _image(h, w, seed % 7), boxes, seed=seed)
    nh, nw = img.shape[:2]
    assert (nh, nw) == get_resize_shape(h, w, short, max_size)
    assert len(kept) == 8  # nothing is dropped by the toolkit's transforms
    assert (out[:, 0] >= 0).all() and (out[:, 1] >= 0).all()
    assert (out[:, 2] <= nw).all() and (out[:, 3] <= nh).all()
    assert (out[:, 2] > out[:, 0]).all() and (out[:, 3] > out[:, 1]).all()
    np.testing.assert_allclose(out[0], [0, 0, nw, nh], atol=1e-3)


def test_photometric_changes_pixels_not_boxes():
    box = np.array([[5.0, 6.0, 30.0, 40.0]])
    t = build_transforms(is_train=True, min_sizes=[64], max_size=1000, hflip_prob=0.0, photometric=True)
    src = _image(64, 64)
    changed = 0
    for seed in range(10):
        img, b, _ = apply_transforms(t, src, box, seed=seed)
        np.testing.assert_allclose(b, box, atol=1e-3)
        changed += int(not np.array_equal(img, src))
    assert changed >= 5


def test_test_time_transform_is_deterministic_and_checked():
    t = build_transforms(is_train=False, min_sizes=[600], max_size=1000, hflip_prob=1.0)  # no flip at test time
    boxes = np.array([[0.0, 0.0, 10.0, 10.0]])
    a = apply_transforms(t, _image(300, 400), boxes)
    b = apply_transforms(t, _image(300, 400), boxes)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[1], [[0, 0, 20, 20]], atol=1e-3)
    with pytest.raises(ValueError, match=r"input.min_size_test=\[600, 800\].*expected one size"):
        build_transforms(is_train=False, min_sizes=[600, 800], max_size=1000)
    with pytest.raises(ValueError, match=r"input.max_size_train=500 is smaller than the shorter side 600"):
        build_transforms(is_train=True, min_sizes=[600], max_size=500)
    with pytest.raises(ValueError, match=r"input.hflip_prob=1.5"):
        build_transforms(is_train=True, min_sizes=[600], max_size=1000, hflip_prob=1.5)
    with pytest.raises(ValueError, match=r"input.min_size_train=\[0\]"):
        build_transforms(is_train=True, min_sizes=[0], max_size=1000)
