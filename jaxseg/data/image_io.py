"""Reading images from disk the way detectron2's evaluation and predictor scripts do.

The pixels must match detectron2 bit for bit, so the rules are Pillow's:

* the EXIF Orientation tag (0x0112) is applied with a flip/rotate, all eight cases;
* the image is converted with ``PIL.Image.convert``: grayscale, palette, RGBA (alpha dropped,
  not composited), CMYK and YCbCr become RGB with Pillow's formulas;
* 16-bit grayscale ("I;16" PNG/TIFF) and 32-bit ("I", "F") images are *clipped* to 0..255, not
  rescaled: 1000 becomes 255. 16-bit-per-channel RGB PNGs are decoded by Pillow to their high byte.
  This is what detectron2 feeds its models, so it is kept;
* "BGR" is the RGB array with its channels reversed; "L" gives an (H, W, 1) array like detectron2.

Every failure to read a file raises :class:`jaxseg.errors.UserError` naming the path.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from jaxseg.errors import UserError

EXIF_ORIENTATION_TAG = 0x0112

# EXIF orientation value -> the Pillow transpose that makes the image upright.
_ORIENTATION_TO_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

SUPPORTED_FORMATS = ("BGR", "RGB", "L")

# Errors Pillow raises for unreadable, truncated or hostile files.
_PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def apply_exif_orientation(image: Image.Image) -> Image.Image:
    """Return ``image`` turned upright according to its EXIF Orientation tag (1..8).

    Images without EXIF data, with an unreadable EXIF block or with orientation 1 come back as is.
    """
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION_TAG)
    except Exception:  # a broken EXIF block must not make a readable image unreadable
        return image
    method = _ORIENTATION_TO_TRANSPOSE.get(orientation)
    return image if method is None else image.transpose(method)


def _convert(image: Image.Image, mode: str) -> Image.Image:
    """``image.convert(mode)``, routing 16-bit modes through "I" on Pillow versions that need it."""
    try:
        return image.convert(mode)
    except ValueError:
        if not image.mode.startswith("I;16"):
            raise
        return image.convert("I").convert(mode)


def pil_to_numpy(image: Image.Image, format: str = "BGR") -> np.ndarray:
    """Convert a Pillow image to a writable uint8 array: (H, W, 3) for "BGR"/"RGB", (H, W, 1) for "L"."""
    if format not in SUPPORTED_FORMATS:
        raise UserError(f"unsupported image format {format!r}; use one of {', '.join(SUPPORTED_FORMATS)}")
    array = np.array(_convert(image, "L" if format == "L" else "RGB"))
    if format == "L":
        return array[:, :, None]
    if format == "BGR":
        return np.ascontiguousarray(array[:, :, ::-1])
    return array


def read_image(path: str | os.PathLike, format: str = "BGR") -> np.ndarray:
    """Read an image file as a uint8 array with detectron2's ``read_image`` semantics.

    Args:
        path: the image file.
        format: "BGR" (detectron2's default model input), "RGB" or "L".

    Returns:
        (H, W, 3) uint8 for "BGR" and "RGB", (H, W, 1) for "L", after EXIF orientation.

    Raises:
        UserError: the file is missing, a directory, not an image, truncated or corrupt.
    """
    if format not in SUPPORTED_FORMATS:
        raise UserError(f"unsupported image format {format!r}; use one of {', '.join(SUPPORTED_FORMATS)}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(f"image file not found: {path}")
    if os.path.isdir(path):
        raise UserError(f"expected an image file but got a directory: {path}")
    try:
        with Image.open(path) as image:
            image.load()  # decode everything now so truncation is caught here
            upright = apply_exif_orientation(image)
            return pil_to_numpy(upright, format)
    except UserError:
        raise
    except _PIL_ERRORS as err:
        raise UserError(f"cannot read image {path}: {type(err).__name__}: {err}") from err
