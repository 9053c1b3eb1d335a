"""read_image / read_image_size against OpenCV and hand-made references."""

import os
import pickle

import cv2
import numpy as np
import pytest
from PIL import Image

from detectron_res.data.image_io import ImageReadError, read_image, read_image_size

IMG = os.path.join(os.path.dirname(__file__), "fixtures", "data", "images")


def _rgb(h, w):  # same formula as tests/fixtures/data/make_fixtures.py
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], axis=2).astype(np.uint8)


def test_png_rgb_and_bgr_exact():
    rgb = read_image(os.path.join(IMG, "rgb.png"), format="RGB")
    assert rgb.dtype == np.uint8 and rgb.shape == (12, 16, 3) and rgb.flags.c_contiguous
    np.testing.assert_array_equal(rgb, _rgb(12, 16))
    bgr = read_image(os.path.join(IMG, "rgb.png"))  # default BGR, like cv2.imread
    np.testing.assert_array_equal(bgr, cv2.imread(os.path.join(IMG, "rgb.png")))


def test_jpeg_matches_opencv_decoder():
    ours = read_image(os.path.join(IMG, "rgb.jpg"), format="BGR").astype(int)
    ref = cv2.imread(os.path.join(IMG, "rgb.jpg")).astype(int)
    assert ours.shape == ref.shape == (12, 16, 3)
    # Both use libjpeg(-turbo); allow for a different IDCT / upsampling choice.
    assert np.abs(ours - ref).max() <= 3


def test_grayscale_becomes_three_equal_channels():
    img = read_image(os.path.join(IMG, "gray.png"), format="RGB")
    assert img.shape == (12, 16, 3)
    for c in range(3):
        np.testing.assert_array_equal(img[:, :, c], _rgb(12, 16)[:, :, 0])


def test_16bit_gray_is_rescaled_not_clipped():
    img = read_image(os.path.join(IMG, "gray16.png"), format="RGB")
    raw = cv2.imread(os.path.join(IMG, "gray16.png"), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.max() > 255  # the fixture really is 16-bit
    np.testing.assert_array_equal(img[:, :, 1], (raw >> 8).astype(np.uint8))
    assert img.max() < 255  # clipping (Pillow's convert) would saturate most pixels


def test_rgba_drops_alpha_and_palette_expands():
    rgba = read_image(os.path.join(IMG, "rgba.png"), format="RGB")
    np.testing.assert_array_equal(rgba, _rgb(12, 16))
    pal = read_image(os.path.join(IMG, "palette.png"), format="RGB")
    ref = np.asarray(Image.open(os.path.join(IMG, "palette.png")).convert("RGB"))
    np.testing.assert_array_equal(pal, ref)


def test_exif_orientation_is_applied():
    path = os.path.join(IMG, "exif_rot6.jpg")
    img = read_image(path, format="BGR")
    assert img.shape == (16, 12, 3)  # stored 12 x 16, displayed rotated
    assert read_image_size(path) == (16, 12)
    # OpenCV's IMREAD_COLOR also applies EXIF orientation: an independent reference.
    ref = cv2.imread(path, cv2.IMREAD_COLOR)
    assert ref.shape == img.shape
    assert np.abs(img.astype(int) - ref.astype(int)).max() <= 3
    # and it is the clockwise rotation of the stored pixels
    stored = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    assert np.abs(np.rot90(stored, k=-1).astype(int) - img.astype(int)).max() <= 3


@pytest.mark.parametrize(
    "name, reason",
    [
        ("truncated.jpg", "truncated"),
        ("empty.jpg", "empty"),
        ("not_an_image.jpg", "not a readable image"),
        ("missing.jpg", "does not exist"),
    ],
)
def test_bad_files_raise_image_read_error_naming_the_file(name, reason):
    path = os.path.join(IMG, name)
    with pytest.raises(ImageReadError) as e:
        read_image(path)
    msg = str(e.value)
    assert msg.startswith(path + ": ") and reason in msg and "\n" not in msg
    assert e.value.path == path


def test_header_only_size_does_not_decode_pixels():
    # The truncated file has a complete header: its size is known, its pixels are not.
    assert read_image_size(os.path.join(IMG, "truncated.jpg")) == (64, 64)
    assert read_image_size(os.path.join(IMG, "rgb.png")) == (12, 16)
    with pytest.raises(ImageReadError, match="not a readable image"):
        read_image_size(os.path.join(IMG, "not_an_image.jpg"))


def test_max_pixels_guard():
    path = os.path.join(IMG, "rgb.png")  # 16 x 12 = 192 pixels
    assert read_image(path, max_pixels=192).shape == (12, 16, 3)
    with pytest.raises(ImageReadError, match=r"192 pixels exceeds max_pixels=191"):
        read_image(path, max_pixels=191)
    with pytest.raises(ImageReadError, match="max_pixels"):
        read_image_size(path, max_pixels=100)


def test_bad_format_and_pickling():
    with pytest.raises(ValueError, match=r"format='YUV'.*'BGR' or 'RGB'"):
        read_image(os.path.join(IMG, "rgb.png"), format="YUV")
    err = ImageReadError("/x/y.jpg", "corrupt")
    back = pickle.loads(pickle.dumps(err))  # loader workers send errors by pickling
    assert isinstance(back, ImageReadError) and str(back) == "/x/y.jpg: corrupt" and back.path == "/x/y.jpg"
