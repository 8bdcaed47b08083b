"""--predict end to end on odd image files, and convert -> MODEL.WEIGHTS directory."""

import json
import os

import jax
import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from jaxseg.checkpoint.loading import abstract_variables, load_weights
from jaxseg.config import setup_cfg
from jaxseg.convert import main as convert_main
from jaxseg.main import main
from jaxseg.models.registry import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs", "COCO-InstanceSegmentation")
CONFIG = os.path.join(CONFIGS, "mask_rcnn_R_50_FPN_3x.yaml")
ASTRONAUT = os.path.join(ROOT, "tests", "data", "d2_maskrcnn", "image.png")


def _odd_images(tmp_path):
    """Five 96x128 pictures in the file variants detectron2's read_image must handle."""
    rgb = np.asarray(Image.open(ASTRONAUT).convert("RGB").resize((128, 96)))
    paths = {}
    paths["rgb"] = tmp_path / "rgb.jpg"
    Image.fromarray(rgb).save(paths["rgb"], quality=95)
    paths["gray"] = tmp_path / "gray.png"
    Image.fromarray(rgb).convert("L").save(paths["gray"])
    paths["rgba"] = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)])).save(paths["rgba"])
    paths["16bit"] = tmp_path / "depth16.png"
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 3).astype(np.uint16)).save(paths["16bit"])
    paths["exif"] = tmp_path / "rotated.jpg"  # stored 128x96 portrait, EXIF orientation 6 turns it to 96x128
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(rgb, 1))).save(paths["exif"], exif=exif, quality=95)
    return paths


@pytest.mark.slow
def test_predict_writes_pictures_and_coco_json(tmp_path, d2_maskrcnn_weights):
    paths = _odd_images(tmp_path)
    out = tmp_path / "out"
    rc = main(["--config", CONFIG, "--predict", *map(str, paths.values()), "--output", str(out),
               "MODEL.WEIGHTS", d2_maskrcnn_weights, "INPUT.MIN_SIZE_TEST", "192", "INPUT.MAX_SIZE_TEST", "400"])
    assert rc == 0
    for p in paths.values():
        pic = Image.open(out / (os.path.splitext(p.name)[0] + ".png"))
        assert pic.size == (128, 96) and pic.mode == "RGB"
    results = json.load(open(out / "coco_instances_results.json"))
    assert results, "the random model detects something on these pictures"
    assert {r["file_name"] for r in results} <= {p.name for p in paths.values()}
    assert all(r["image_id"] in range(len(paths)) for r in results)
    coco_ids = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31,
                32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57,
                58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87,
                88, 89, 90}
    for r in results:
        assert r["category_id"] in coco_ids
        x, y, w, h = r["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 128.01 and y + h <= 96.01 and w > 0 and h > 0
        assert 0.05 < r["score"] <= 1
        assert r["segmentation"]["size"] == [96, 128]
        assert mask_util.decode(r["segmentation"]).shape == (96, 128)
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]


def test_variable_tree_matches_detectron2_state_dict():
    keys = json.load(open(os.path.join(ROOT, "tests", "data", "d2_maskrcnn", "keys.json")))
    from flax.traverse_util import flatten_dict

    from jaxseg.checkpoint.detectron2 import path_to_d2_name, to_flax_layout

    cfg = setup_cfg(CONFIG, [])
    flat = flatten_dict(abstract_variables(build_model(cfg)))
    ours = {path_to_d2_name(p): v.shape for p, v in flat.items()}
    theirs = {k: tuple(s) for k, s, _ in keys if "cell_anchors" not in k}
    assert set(ours) == set(theirs)
    for p, v in flat.items():
        assert v.shape == to_flax_layout(np.zeros(theirs[path_to_d2_name(p)], np.float32), p).shape


def test_r101_has_detectron2_tensor_count():
    cfg = setup_cfg(os.path.join(CONFIGS, "mask_rcnn_R_101_FPN_3x.yaml"), [])
    leaves = jax.tree.leaves(abstract_variables(build_model(cfg)))
    assert len(leaves) == 562
    assert sum(int(np.prod(x.shape)) for x in leaves) == 63_493_808


def test_convert_then_load_directory(tmp_path, d2_maskrcnn_weights):
    out = tmp_path / "converted"
    assert convert_main([d2_maskrcnn_weights, str(out), "--config", CONFIG]) == 0
    cfg = setup_cfg(CONFIG, [])
    a = load_weights(cfg, d2_maskrcnn_weights)
    b = load_weights(cfg, str(out))
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert convert_main([d2_maskrcnn_weights, str(out), "--config", CONFIG]) == 2  # never overwrites
