"""read_image: modes, EXIF orientation and errors, on files generated in tmp_path."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from jaxseg.data.image_io import EXIF_ORIENTATION_TAG, read_image
from jaxseg.errors import UserError

H, W = 5, 7  # not square, so a rotation changes the shape


def _rgb(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(tmp_path, name: str, image: Image.Image, **kwargs) -> str:
    path = str(tmp_path / name)
    image.save(path, **kwargs)
    return path


def test_rgb_png_bgr_rgb_and_l(tmp_path):
    rgb = _rgb()
    path = _save(tmp_path, "a.png", Image.fromarray(rgb))
    bgr = read_image(path)
    assert bgr.dtype == np.uint8 and bgr.shape == (H, W, 3)
    np.testing.assert_array_equal(bgr, rgb[:, :, ::-1])
    assert bgr.flags.c_contiguous and bgr.flags.writeable
    np.testing.assert_array_equal(read_image(path, format="RGB"), rgb)
    gray = read_image(path, format="L")
    assert gray.shape == (H, W, 1)
    np.testing.assert_array_equal(gray[:, :, 0], np.asarray(Image.fromarray(rgb).convert("L")))


def test_jpeg_matches_pillow_decode(tmp_path):
    path = _save(tmp_path, "a.jpg", Image.fromarray(_rgb(1, 16, 24)), quality=90)
    expected = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(read_image(path), expected[:, :, ::-1])


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = _rgb(2)[:, :, 0]
    path = _save(tmp_path, "g.png", Image.fromarray(gray))
    out = read_image(path)
    assert out.shape == (H, W, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_rgba_drops_alpha(tmp_path):
    rgba = np.random.default_rng(3).integers(0, 256, (H, W, 4), dtype=np.uint8)
    path = _save(tmp_path, "a.png", Image.fromarray(rgba))
    np.testing.assert_array_equal(read_image(path, "RGB"), rgba[:, :, :3])


def test_palette_is_looked_up(tmp_path):
    palette = np.random.default_rng(4).integers(0, 256, (256, 3), dtype=np.uint8)
    index = np.random.default_rng(5).integers(0, 256, (H, W), dtype=np.uint8)
    image = Image.frombytes("P", (W, H), index.tobytes())
    image.putpalette(palette.reshape(-1).tolist())
    path = _save(tmp_path, "p.png", image)
    assert Image.open(path).mode == "P"
    np.testing.assert_array_equal(read_image(path, "RGB"), palette[index])


def test_16bit_gray_png_is_clipped_not_scaled(tmp_path):
    values = np.array([[0, 1, 255, 256, 1000, 65535]], dtype=np.uint16)
    path = _save(tmp_path, "d.png", Image.fromarray(values))
    assert Image.open(path).mode.startswith("I")
    out = read_image(path, "RGB")
    expected = np.array([0, 1, 255, 255, 255, 255], dtype=np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(out[0, :, c], expected)
    np.testing.assert_array_equal(read_image(path, "L")[0, :, 0], expected)


def test_cmyk_jpeg_reads_like_pillow(tmp_path):
    path = _save(tmp_path, "c.jpg", Image.fromarray(_rgb(6, 16, 16)).convert("CMYK"))
    expected = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(read_image(path, "RGB"), expected)


# What each EXIF orientation means for the stored pixels, written with numpy only.
_UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, k=-1),  # stored rotated 90 degrees anticlockwise: turn clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, k=1),
}


def _with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = orientation
    return exif


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_png_all_eight(tmp_path, orientation):
    rgb = _rgb(7)
    path = _save(tmp_path, "o.png", Image.fromarray(rgb), exif=_with_orientation(orientation))
    expected = _UPRIGHT[orientation](rgb)
    np.testing.assert_array_equal(read_image(path, "RGB"), expected)
    np.testing.assert_array_equal(np.asarray(ImageOps.exif_transpose(Image.open(path))), expected)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_jpeg(tmp_path, orientation):
    path = _save(tmp_path, "o.jpg", Image.fromarray(_rgb(8, 16, 24)), exif=_with_orientation(orientation))
    with Image.open(path) as im:
        assert im.getexif()[EXIF_ORIENTATION_TAG] == orientation
        stored = np.array(im.convert("RGB"))
    out = read_image(path)
    assert out.shape == _UPRIGHT[orientation](stored).shape
    np.testing.assert_array_equal(out, _UPRIGHT[orientation](stored)[:, :, ::-1])


def _assert_user_error(path: str) -> None:
    with pytest.raises(UserError) as info:
        read_image(path)
    assert path in str(info.value)


def test_missing_file(tmp_path):
    _assert_user_error(str(tmp_path / "nope.jpg"))


def test_directory(tmp_path):
    _assert_user_error(str(tmp_path))


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "text.jpg"
    path.write_text("not an image\n")
    _assert_user_error(str(path))


@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_truncated(tmp_path, ext):
    path = _save(tmp_path, f"full.{ext}", Image.fromarray(_rgb(9, 64, 64)))
    data = open(path, "rb").read()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(data[: len(data) * 2 // 3])
    _assert_user_error(str(cut))


def test_unsupported_format(tmp_path):
    path = _save(tmp_path, "a.png", Image.fromarray(_rgb()))
    with pytest.raises(UserError, match="YUV"):
        read_image(path, format="YUV")
