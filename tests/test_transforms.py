"""ResizeShortestEdge size rule and pixels (detectron2 reference), flips, augmentation lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jaxseg.data.image_io import read_image
from jaxseg.data.transforms import (
    FlipTransform,
    RandomFlip,
    ResizeShortestEdge,
    ResizeTransform,
    apply_augmentations,
    resize_image,
    resize_shortest_edge_shape,
)

DATA = Path(__file__).parent / "data" / "d2_maskrcnn"


@pytest.mark.parametrize(
    "hw, short, max_size, expected",
    [
        ((512, 512), 800, 1333, (800, 800)),  # square
        ((480, 640), 800, 1333, (800, 1067)),  # landscape: 1066.67 rounds up
        ((640, 480), 800, 1333, (1067, 800)),  # portrait
        ((427, 640), 800, 1333, (800, 1199)),  # a typical COCO image
        ((400, 1000), 800, 1333, (533, 1333)),  # max_size binds: 2000 -> 1333
        ((1000, 400), 800, 1333, (1333, 533)),
        ((2, 3), 3, 10**9, (3, 5)),  # 4.5 rounds half up (Python's round would give 4)
        ((4, 5), 2, 10**9, (2, 3)),  # 2.5 -> 3
        ((1200, 1600), 600, 1000, (600, 800)),  # downscale
    ],
)
def test_shape_rule(hw, short, max_size, expected):
    assert resize_shortest_edge_shape(*hw, short, max_size) == expected
    assert ResizeShortestEdge(short, max_size).get_output_shape(*hw) == expected


def test_resize_matches_detectron2_reference():
    image = read_image(str(DATA / "image.png"))  # RGB file, BGR array
    expected = np.load(DATA / "reference.npz")["resized_bgr_uint8"]
    out = ResizeShortestEdge([800, 800], 1333).apply_image(image)
    assert out.dtype == np.uint8 and out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)


def test_resize_image_channel_layouts():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    gray = rgb[:, :, 0]
    assert resize_image(rgb, (5, 6)).shape == (5, 6, 3)
    out2d = resize_image(gray, (5, 6))
    out3d = resize_image(gray[:, :, None], (5, 6))
    assert out2d.shape == (5, 6) and out3d.shape == (5, 6, 1)
    np.testing.assert_array_equal(out3d[:, :, 0], out2d)
    # Channels are resized independently, so the order does not matter.
    flipped = resize_image(rgb[:, :, ::-1].copy(), (5, 6))
    np.testing.assert_array_equal(flipped, resize_image(rgb, (5, 6))[:, :, ::-1])
    with pytest.raises(ValueError, match="uint8"):
        resize_image(rgb.astype(np.float32), (5, 6))


def test_resize_boxes_coords_and_segmentation():
    t = ResizeTransform(512, 512, 800, 800)
    boxes = np.array([[0, 0, 512, 512], [10.0, 20.0, 30.0, 40.0]], dtype=np.float32)
    np.testing.assert_allclose(t.apply_boxes(boxes), boxes * 1.5625)
    assert t.apply_boxes(boxes).dtype == np.float32
    np.testing.assert_allclose(t.apply_coords(np.array([[512.0, 256.0]])), [[800.0, 400.0]])
    aug = ResizeShortestEdge(800, 1333)
    np.testing.assert_allclose(aug.apply_boxes(boxes, (512, 512)), boxes * 1.5625)
    mask = np.zeros((4, 6), bool)
    mask[1:3, 2:5] = True
    out = ResizeTransform(4, 6, 8, 12).apply_segmentation(mask)
    assert out.dtype == bool and out.shape == (8, 12)
    np.testing.assert_array_equal(out, mask.repeat(2, 0).repeat(2, 1))


def test_multiscale_choice_and_range():
    choice = ResizeShortestEdge((640, 672, 704, 736, 768, 800), 1333)
    assert choice.is_random
    with pytest.raises(ValueError, match="Generator"):
        choice.get_output_shape(480, 640)
    rng = np.random.default_rng(0)
    shorts = {choice.get_output_shape(480, 640, rng)[0] for _ in range(200)}
    assert shorts == {640, 672, 704, 736, 768, 800}
    a = [choice.get_output_shape(480, 640, np.random.default_rng(5)) for _ in range(2)]
    assert a[0] == a[1]  # same seed, same draw
    span = ResizeShortestEdge((600, 610), 10**6, sample_style="range")
    shorts = {span.get_output_shape(100, 200, rng)[0] for _ in range(300)}
    assert shorts == set(range(600, 611))
    with pytest.raises(ValueError):
        ResizeShortestEdge((1, 2, 3), sample_style="range")
    with pytest.raises(ValueError):
        ResizeShortestEdge(800, sample_style="uniform")


def test_zero_length_means_no_resize():
    image = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    aug = ResizeShortestEdge(0)
    assert aug.get_output_shape(2, 4) == (2, 4)
    np.testing.assert_array_equal(aug.apply_image(image), image)


def test_flip_transform():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    h = FlipTransform(2, 3, horizontal=True)
    np.testing.assert_array_equal(h.apply_image(image), image[:, ::-1])
    np.testing.assert_array_equal(h.apply_image(h.apply_image(image)), image)
    boxes = np.array([[0.5, 0.0, 1.0, 2.0]], np.float32)
    np.testing.assert_allclose(h.apply_boxes(boxes), [[2.0, 0.0, 2.5, 2.0]])
    np.testing.assert_allclose(h.apply_coords(np.array([[0.5, 1.0]])), [[2.5, 1.0]])
    v = FlipTransform(2, 3, horizontal=False, vertical=True)
    np.testing.assert_array_equal(v.apply_image(image), image[::-1])
    np.testing.assert_allclose(v.apply_boxes(boxes), [[0.5, 0.0, 1.0, 2.0]])
    np.testing.assert_allclose(v.apply_coords(np.array([[0.5, 0.5]])), [[0.5, 1.5]])


def test_random_flip():
    with pytest.raises(ValueError, match="Generator"):
        RandomFlip(0.5).get_transform(4, 4)
    assert RandomFlip(1.0).get_transform(4, 4).horizontal
    assert not RandomFlip(0.0).get_transform(4, 4).horizontal
    rng = np.random.default_rng(0)
    flips = [RandomFlip(0.5).get_transform(4, 4, rng).horizontal for _ in range(400)]
    assert 150 < sum(flips) < 250
    t = RandomFlip(1.0, horizontal=False, vertical=True).get_transform(4, 4)
    assert t.vertical and not t.horizontal
    with pytest.raises(ValueError):
        RandomFlip(0.5, horizontal=True, vertical=True)


def test_augmentations_move_image_and_boxes_together():
    image = np.zeros((40, 60, 3), np.uint8)
    box = np.array([[10, 5, 30, 15]], np.float32)
    image[5:15, 10:30] = 255
    augs = [ResizeShortestEdge(80, 1000), RandomFlip(1.0)]
    out, transforms = apply_augmentations(augs, image, np.random.default_rng(0))
    assert out.shape == (80, 120, 3)
    x1, y1, x2, y2 = transforms.apply_boxes(box)[0]
    np.testing.assert_allclose([x1, y1, x2, y2], [60, 10, 100, 30])
    assert out[int(y1) + 1 : int(y2) - 1, int(x1) + 1 : int(x2) - 1].min() == 255
    assert out[: int(y1) - 1].max() == 0 and out[:, : int(x1) - 1].max() == 0
    mask = image[:, :, 0] > 0
    np.testing.assert_array_equal(transforms.apply_segmentation(mask), out[:, :, 0] > 127)
