"""draw_instances and save_png."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from jaxseg.data.builtin_meta import COCO_THING_CLASSES
from jaxseg.visualize import draw_instances, instance_colors, mask_outline, save_png

H, W = 64, 96


def _scene():
    image = np.full((H, W, 3), 100, np.uint8)
    masks = np.zeros((2, H, W), bool)
    masks[0, 20:50, 10:40] = True
    masks[1, 30:60, 50:90] = True
    boxes = np.array([[10, 20, 40, 50], [50, 30, 90, 60]], np.float32)
    scores = np.array([0.97, 0.4], np.float32)
    classes = np.array([0, 17])
    return image, boxes, scores, classes, masks


def test_shape_dtype_and_mask_colour():
    image, boxes, scores, classes, masks = _scene()
    out = draw_instances(image, boxes, scores, classes, masks, COCO_THING_CLASSES)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    colors = instance_colors(2).astype(np.float32)
    inside = out[40, 25].astype(np.float32)  # inside mask 0, away from its box label and edges
    np.testing.assert_allclose(inside, 0.5 * 100 + 0.5 * colors[0], atol=1)
    assert not np.array_equal(out[45, 70], image[45, 70])  # inside mask 1
    np.testing.assert_array_equal(out[5, 60], image[5, 60])  # background far from everything
    np.testing.assert_array_equal(image, _scene()[0])  # input untouched


def test_box_and_outline_pixels_drawn():
    image, boxes, scores, classes, masks = _scene()
    out = draw_instances(image, boxes, scores, classes, None, COCO_THING_CLASSES)
    np.testing.assert_array_equal(out[40, 10], instance_colors(2)[0])  # left box edge
    np.testing.assert_array_equal(out[40, 25], image[40, 25])  # no mask given: inside untouched
    edge = mask_outline(masks[0])
    assert edge[20, 25] and edge[35, 10] and not edge[35, 25]


def test_score_threshold_and_colours_are_stable():
    image, boxes, scores, classes, masks = _scene()
    all_drawn = draw_instances(image, boxes, scores, classes, masks, COCO_THING_CLASSES)
    again = draw_instances(image, boxes, scores, classes, masks, COCO_THING_CLASSES)
    np.testing.assert_array_equal(all_drawn, again)
    top = draw_instances(image, boxes, scores, classes, masks, COCO_THING_CLASSES, score_threshold=0.5)
    np.testing.assert_array_equal(top[45, 70], image[45, 70])  # the 0.4 instance is gone
    np.testing.assert_array_equal(top[40, 25], all_drawn[40, 25])  # the other keeps its colour


def test_empty_and_unknown_class():
    image = np.zeros((8, 9, 3), np.uint8)
    empty = draw_instances(image, np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), np.zeros((0, 8, 9)), None)
    np.testing.assert_array_equal(empty, image)
    out = draw_instances(image, [[1, 1, 6, 6]], [0.5], [999], None, ["a"])
    assert out.shape == (8, 9, 3) and out.any()
    gray = draw_instances(image[:, :, 0], np.zeros((0, 4)), [], [], None, None)
    assert gray.shape == (8, 9, 3)


def test_save_png_round_trip(tmp_path):
    image, boxes, scores, classes, masks = _scene()
    out = draw_instances(image, boxes, scores, classes, masks, COCO_THING_CLASSES)
    path = tmp_path / "sub" / "pic.png"
    save_png(path, out)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), out)
    save_png(path, image)  # overwrite in place
    np.testing.assert_array_equal(np.asarray(Image.open(path)), image)
    assert sorted(os.listdir(path.parent)) == ["pic.png"]  # no temp file left behind
