"""--predict end to end on odd image files, and convert -> MODEL.WEIGHTS directory."""

import json
import os

import jax
import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

import jaxseg.visualize
from jaxseg.checkpoint.loading import abstract_variables, load_weights
from jaxseg.checkpoint.orbax_io import save_variables
from jaxseg.config import setup_cfg
from jaxseg.convert import main as convert_main
from jaxseg.data import catalog, shapes
from jaxseg.data.builtin_meta import COCO_THING_CLASSES
from jaxseg.data.coco import register_coco_instances
from jaxseg.main import dataset_metadata, main, picture_names
from jaxseg.models.registry import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs", "COCO-InstanceSegmentation")
CONFIG = os.path.join(CONFIGS, "mask_rcnn_R_50_FPN_3x.yaml")
ASTRONAUT = os.path.join(ROOT, "tests", "data", "d2_maskrcnn", "image.png")
QUICKSTART = os.path.join(ROOT, "configs", "quickstart", "shapes_mask_rcnn.yaml")


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
    assert {r["file_name"] for r in results} <= {str(p) for p in paths.values()}
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


# ----------------------------------------------------------------------------------------------------
# --predict with the quickstart model: class names and ids from the dataset, unique picture names
# ----------------------------------------------------------------------------------------------------


def _quickstart_weights(tmp_path) -> str:
    """A converted-directory MODEL.WEIGHTS of seeded random quickstart variables (no model.init compile)."""
    from test_predictor_buckets import random_variables

    path = str(tmp_path / "weights")
    save_variables(path, random_variables(build_model(setup_cfg(QUICKSTART, []))))
    return path


def _picture(path, seed: int) -> np.ndarray:
    """A 96x128 RGB JPEG of the astronaut (seed 1: upside down), written to path; returns its decoded pixels."""
    rgb = np.asarray(Image.open(ASTRONAUT).convert("RGB").resize((128, 96)))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(rgb[::-1] if seed else rgb)).save(path, quality=95)
    return np.asarray(Image.open(path).convert("RGB"))


def test_predict_uses_the_config_datasets_classes(tmp_path, monkeypatch):
    """The quickstart model (6 classes, DATASETS.TEST shapes_val): shapes' names on the pictures and shapes'
    category ids in the json, not COCO's or none."""
    monkeypatch.setenv("JAXSEG_DATASETS", str(tmp_path / "datasets"))  # shapes_val is generated here if needed
    drawn = []
    real_draw = jaxseg.visualize.draw_instances

    def draw(*args, **kwargs):
        drawn.append(args[5])
        return real_draw(*args, **kwargs)

    monkeypatch.setattr(jaxseg.visualize, "draw_instances", draw)
    image = tmp_path / "in" / "pic.jpg"
    _picture(image, 0)
    out = tmp_path / "out"
    rc = main(["--config", QUICKSTART, "--predict", str(image), "--output", str(out), "--confidence-threshold", "0",
               "MODEL.WEIGHTS", _quickstart_weights(tmp_path)])
    assert rc == 0
    assert drawn == [list(shapes.CLASSES)]
    results = json.load(open(out / "coco_instances_results.json"))
    assert results, "the random model detects something"
    assert {r["category_id"] for r in results} <= set(range(1, len(shapes.CLASSES) + 1))  # the shapes json's ids


def test_predict_same_file_name_in_two_folders(tmp_path):
    """a/x.jpg and b/x.jpg: two pictures (x.png, x_1.png), each of its own input; the json names the paths."""
    a, b = tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg"
    pixels = {str(a): _picture(a, 0), str(b): _picture(b, 1)}
    out = tmp_path / "out"
    rc = main(["--config", QUICKSTART, "--predict", str(a), str(b), "--output", str(out),
               "--confidence-threshold", "2",  # nothing drawn: each picture is its input's pixels
               "MODEL.WEIGHTS", _quickstart_weights(tmp_path), "DATASETS.TEST", "()", "DATASETS.TRAIN", "()"])
    assert rc == 0
    assert sorted(f for f in os.listdir(out) if f.endswith(".png")) == ["x.png", "x_1.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "x.png")), pixels[str(a)])
    np.testing.assert_array_equal(np.asarray(Image.open(out / "x_1.png")), pixels[str(b)])
    results = json.load(open(out / "coco_instances_results.json"))
    assert {r["file_name"] for r in results} == {str(a), str(b)}
    assert {r["image_id"] for r in results if r["file_name"] == str(b)} == {1}


def test_picture_names_are_unique():
    assert picture_names(["a/x.jpg", "b/x.jpg", "c/x.png", "x_1.jpg", "d/X.jpg", "y.jpg"]) == [
        "x.png", "x_1.png", "x_2.png", "x_1_1.png", "X_3.png", "y.png"]


@pytest.fixture
def custom_dataset(tmp_path, monkeypatch):
    """A registered COCO-json dataset with 3 categories of ids 5, 9, 12; loading its records is forbidden."""
    name = "predict_meta_test_custom"
    categories = [{"id": 12, "name": "kiwi"}, {"id": 5, "name": "apple"}, {"id": 9, "name": "fig"}]
    json_file = tmp_path / "instances.json"
    json_file.write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))
    register_coco_instances(name, json_file, tmp_path)
    real_load = catalog.get_dataset_dicts

    def load(dataset):
        assert dataset != name, "metadata is read from the json, without loading the dataset"
        return real_load(dataset)

    monkeypatch.setattr(catalog, "get_dataset_dicts", load)
    yield name
    catalog.remove_dataset(name)


def test_dataset_metadata_picks_the_dataset_with_the_models_class_count(custom_dataset):
    cfg = setup_cfg(QUICKSTART, ["DATASETS.TEST", f"('not_registered', 'coco_2017_val', '{custom_dataset}')"])
    meta = dataset_metadata(cfg, 3)
    assert meta["thing_classes"] == ["apple", "fig", "kiwi"]
    assert meta["contiguous_to_dataset_id"] == {0: 5, 1: 9, 2: 12}
    assert meta["dataset"] == custom_dataset
    coco = dataset_metadata(cfg, 80)  # coco_2017_val's metadata, without its (absent) json
    assert coco["thing_classes"] == list(COCO_THING_CLASSES) and coco["dataset"] == "coco_2017_val"
    assert coco["contiguous_to_dataset_id"][79] == 90
    train_only = setup_cfg(QUICKSTART, ["DATASETS.TEST", "()", "DATASETS.TRAIN", f"('{custom_dataset}',)"])
    assert dataset_metadata(train_only, 3)["contiguous_to_dataset_id"] == {0: 5, 1: 9, 2: 12}


def test_dataset_metadata_fallbacks():
    cfg = setup_cfg(QUICKSTART, ["DATASETS.TEST", "()", "DATASETS.TRAIN", "()"])
    coco = dataset_metadata(cfg, 80)
    assert coco["thing_classes"] == list(COCO_THING_CLASSES) and coco["contiguous_to_dataset_id"][0] == 1
    plain = dataset_metadata(cfg, 4)
    assert plain["thing_classes"] is None and plain["contiguous_to_dataset_id"] == {0: 1, 1: 2, 2: 3, 3: 4}
    assert dataset_metadata(cfg, 2, ["cat", "dog"])["thing_classes"] == ["cat", "dog"]  # the model's own names
