"""Reading images from disk into ``uint8`` arrays.

Every image that enters the toolkit goes through :func:`read_image`, so that all
readers (COCO, VOC, YOLO), the loaders and the inference tool see the same pixels:

* EXIF orientation is applied (phones store portrait photos as landscape pixels
  plus an orientation tag; COCO and VOC annotations are made on the rotated view).
* Grayscale, palette, CMYK, RGBA and 16-bit images become 3-channel ``uint8``.
  Alpha is dropped (not composited), as Detectron2 and torchvision do.
  16-bit grayscale keeps the high byte of the bits it actually uses: its values
  are shifted right by ``b - 8``, ``b`` the bit length of the image's largest
  value (at least 8). Full-range 16-bit data is rescaled 0..65535 -> 0..255
  (``value >> 8``); 12-bit sensor data stored in 16 bits (values up to 4095)
  0..4095 -> 0..255 instead of coming out nearly black; data that fits in 8 bits
  is kept as it is. Each image is scaled by its own bit depth, never stretched
  to its min..max (that would change the contrast image by image).
* Corrupt, truncated, empty or non-image files raise :class:`ImageReadError`
  naming the file, never a half-decoded image (Pillow's default is to refuse
  truncated files, and we do not change that).
* A pixel-count guard (``max_pixels``, config key ``data.max_pixels``) refuses
  decompression bombs before any pixel is decoded. A limit above Pillow's own
  (``2 * PIL.Image.MAX_IMAGE_PIXELS``) raises Pillow's for the whole process, so
  that genuinely huge images can be read when the user asks for it.

Why Pillow and not OpenCV: ``cv2.imdecode`` applies EXIF orientation only with
``IMREAD_COLOR`` (which in turn loses the information needed to scale 16-bit data
correctly) and silently returns a partially grey image for some truncated JPEGs.
Pillow reads the header lazily (cheap size checks for whole datasets, see
:func:`read_image_size`), exposes EXIF, and raises on truncation. Both use
libjpeg-turbo, so decoding speed is the same.
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "ImageReadError",
    "DEFAULT_MAX_PIXELS",
    "read_image",
    "read_image_size",
    "IMAGE_EXTENSIONS",
]

# The same limit Pillow uses by default (2 x 89,478,485 pixels is where Pillow itself
# refuses; 178,956,970 is where it starts warning): a 13k x 13k image, far above any
# detection dataset, far below what exhausts memory on a loader worker.
DEFAULT_MAX_PIXELS = 178_956_970

# File extensions the directory-scanning readers (YOLO) accept as images.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# EXIF orientation values 5..8 transpose the image: width and height swap.
_EXIF_ORIENTATION_TAG = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)

PathLike = Union[str, "os.PathLike[str]"]


class ImageReadError(OSError):
    """An image file could not be read. ``str(err)`` is ``"<path>: <reason>"``."""

    def __init__(self, path: PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):
        # Loader workers send exceptions to the main process by pickling them;
        # the default OSError pickling would call __init__ with the wrong arguments.
        return (ImageReadError, (self.path, self.reason))


def _too_many_pixels(pixels: str, max_pixels: Optional[int]) -> str:
    return (
        f"{pixels} pixels exceeds max_pixels={max_pixels} (possible decompression bomb; raise the limit, "
        "config key data.max_pixels, if the image is genuine)"
    )


def _allow_in_pillow(max_pixels: Optional[int]) -> None:
    """Make Pillow's own bomb check (which raises above ``2 * MAX_IMAGE_PIXELS``) no
    stricter than ``max_pixels``. Only ever raised, never lowered: other code in the
    process keeps at least the protection it had."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None:
        return
    if max_pixels is None:
        Image.MAX_IMAGE_PIXELS = None
    elif max_pixels > 2 * limit:
        Image.MAX_IMAGE_PIXELS = max_pixels // 2 + 1


def _open(path: PathLike, max_pixels: Optional[int]) -> Image.Image:
    """Open ``path`` lazily (header only) and apply the pixel-count guard."""
    path = os.fspath(path)
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels={max_pixels}: expected a positive pixel count (config key data.max_pixels)")
    _allow_in_pillow(max_pixels)
    if not os.path.exists(path):
        raise ImageReadError(path, "file does not exist")
    if os.path.isdir(path):
        raise ImageReadError(path, "is a directory, expected an image file")
    if os.path.getsize(path) == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # We apply our own limit below; Pillow's warning would be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as e:
        # Pillow's message: "Image size (N pixels) exceeds limit of ... pixels, ...".
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise ImageReadError(path, _too_many_pixels(found.group(1) if found else "more than", max_pixels)) from None
    except Exception as e:  # Pillow raises OSError, SyntaxError, struct.error, ...
        raise ImageReadError(path, f"not a readable image ({type(e).__name__}: {e})") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        img.close()
        raise ImageReadError(path, f"image has an empty size {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        img.close()
        raise ImageReadError(path, _too_many_pixels(f"{width}x{height} = {width * height}", max_pixels))
    return img


def _exif_orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:
        # A malformed EXIF block must not make an otherwise good image unreadable;
        # the pixels are then taken as stored.
        return 1


def read_image_size(path: PathLike, *, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> Tuple[int, int]:
    """Return ``(height, width)`` of the image as :func:`read_image` would return it.

    Reads only the header (no pixel decoding), so that whole datasets can be checked
    up front. EXIF orientations 5-8 swap height and width, as :func:`read_image` does.

    Raises:
        ImageReadError: missing, empty, non-image file, or over ``max_pixels``.
    """
    img = _open(path, max_pixels)
    try:
        width, height = img.size
        if _exif_orientation(img) in _TRANSPOSING_ORIENTATIONS:
            width, height = height, width
        return height, width
    finally:
        img.close()


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert a decoded Pillow image of any mode to ``uint8`` ``HxWx3`` RGB."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit (or 32-bit integer) grayscale: Pillow's convert("RGB") clips at 255
        # instead of rescaling, which would turn most of the image white.
        # The bits in use (12-bit sensors store 0..4095 in 16-bit files): keep their
        # high byte, so that such data is not ~16x too dark (module docstring).
        arr = np.clip(np.asarray(img).astype(np.int64), 0, None)
        bits = max(8, int(arr.max(initial=0)).bit_length())
        gray = (arr >> (bits - 8)).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        # Float images carry no standard range; 0..1 data is the common case.
        if arr.size and float(np.nanmax(arr)) <= 1.0:
            arr = arr * 255.0
        gray = np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode != "RGB":
        # Covers L, LA, P (palette, with or without transparency), RGBA, CMYK, YCbCr, 1.
        img = img.convert("RGBA" if mode == "P" and "transparency" in img.info else mode)
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def read_image(
    path: PathLike, format: str = "BGR", *, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Read an image file into a ``uint8`` array of shape ``(H, W, 3)``.

    Args:
        path: JPEG, PNG, BMP, TIFF or WebP file.
        format: channel order of the result, ``"BGR"`` (MSRA Caffe weights) or
            ``"RGB"`` (torchvision weights).
        max_pixels: refuse images with more pixels than this before decoding them.

    Returns:
        ``np.uint8`` array ``(H, W, 3)``, C-contiguous, EXIF orientation applied.

    Raises:
        ImageReadError: corrupt, truncated, empty, missing or non-image file, or an
            image over ``max_pixels``. The message names the file.
        ValueError: ``format`` is neither ``"BGR"`` nor ``"RGB"``.
    """
    if format not in ("BGR", "RGB"):
        raise ValueError(f"read_image: format={format!r} is not supported, expected 'BGR' or 'RGB'")
    src = _open(path, max_pixels)
    try:
        try:
            src.load()
            img = ImageOps.exif_transpose(src) if _exif_orientation(src) != 1 else src
            arr = _to_rgb_array(img)
        except Exception as e:
            raise ImageReadError(path, f"corrupt or truncated image ({type(e).__name__}: {e})") from None
    finally:
        src.close()
    if format == "BGR":
        arr = arr[:, :, ::-1]
    return np.ascontiguousarray(arr)
