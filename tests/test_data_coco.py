"""COCO-format loading (records, contiguous ids, degenerate polygons, RLE), masks, the dataset catalog."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from jaxseg.data import catalog, coco
from jaxseg.data.builtin_meta import COCO_THING_CATEGORIES, COCO_THING_CLASSES
from jaxseg.errors import UserError

SQUARE = [10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]  # 20x20 at (10, 10)


def _rle_box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, dict]:
    """A rectangle mask and its compressed RLE (counts as str, as in a json)."""
    mask = np.zeros((h, w), np.uint8)
    mask[y0:y1, x0:x1] = 1
    rle = mask_util.encode(np.asfortranarray(mask))
    return mask, {"size": [h, w], "counts": rle["counts"].decode("ascii")}


def _uncompressed(mask: np.ndarray) -> dict:
    """An RLE with a list of run lengths (column-major, starting with zeros), as COCO's crowd annotations."""
    flat = mask.ravel(order="F")
    runs, current, count = [], 0, 0
    for v in flat:
        if v == current:
            count += 1
        else:
            runs.append(count)
            current, count = v, 1
    runs.append(count)
    return {"size": list(mask.shape), "counts": runs}


def write_tiny_coco(root) -> tuple[str, str, dict]:
    """A 4-image COCO json with polygons, both RLE forms, crowd, empty and degenerate annotations."""
    image_root = root / "images"
    image_root.mkdir()
    sizes = {1: (60, 80), 2: (70, 50), 3: (50, 50), 4: (40, 64)}
    rng = np.random.default_rng(0)
    images = []
    for image_id, (h, w) in sizes.items():
        name = f"{image_id:03d}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(image_root / name)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
    rle_mask, _ = _rle_box(60, 80, 20, 50, 40, 70)
    border_mask, border_rle = _rle_box(50, 50, 0, 25, 30, 50)  # touches the top and right borders
    crowd_mask, crowd_rle = _rle_box(40, 64, 5, 20, 5, 30)
    annotations = [
        {"id": 10, "image_id": 1, "category_id": 7, "bbox": [10, 10, 20, 20], "iscrowd": 0, "area": 400,
         "segmentation": [SQUARE]},
        {"id": 11, "image_id": 1, "category_id": 3, "bbox": [40, 20, 30, 30], "iscrowd": 0, "area": 900,
         "segmentation": _uncompressed(rle_mask)},
        {"id": 12, "image_id": 1, "category_id": 12, "bbox": [40, 20, 30, 30], "iscrowd": 1, "area": 900,
         "segmentation": _uncompressed(rle_mask)},
        {"id": 13, "image_id": 1, "category_id": 7, "bbox": [1, 1, 2, 2], "iscrowd": 0, "area": 0,
         "segmentation": [[1.0, 2.0, 3.0, 4.0]]},  # degenerate: dropped with its annotation
        {"id": 14, "image_id": 1, "category_id": 3, "bbox": [50, 0, 10, 10], "iscrowd": 0, "area": 50,
         "segmentation": [[1.0, 1.0, 2.0, 2.0], [50.0, 0.0, 60.0, 0.0, 60.0, 10.0]]},  # one polygon kept
        {"id": 30, "image_id": 3, "category_id": 12, "bbox": [30, 0, 20, 25], "iscrowd": 0, "area": 500,
         "segmentation": border_rle},
        {"id": 40, "image_id": 4, "category_id": 3, "bbox": [5, 5, 25, 15], "iscrowd": 1, "area": 375,
         "segmentation": crowd_rle},
    ]
    categories = [{"id": 12, "name": "c12"}, {"id": 3, "name": "c3"}, {"id": 7, "name": "c7"}]  # unsorted
    json_file = root / "instances.json"
    json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    masks = {"rle": rle_mask, "border": border_mask, "crowd": crowd_mask}
    return str(json_file), str(image_root), masks


@pytest.fixture
def tiny(tmp_path):
    return write_tiny_coco(tmp_path)


def test_records(tiny, caplog):
    json_file, image_root, _ = tiny
    with caplog.at_level(logging.WARNING, logger="jaxseg.data.coco"):
        records = coco.load_coco_json(json_file, image_root)
    assert "dropped 1 annotations" in caplog.text
    assert [r["image_id"] for r in records] == [1, 2, 3, 4]
    first = records[0]
    assert first["file_name"] == f"{image_root}/001.png"
    assert (first["height"], first["width"]) == (60, 80)
    assert len(first["annotations"]) == 4  # the degenerate one is gone
    cats = [a["category_id"] for a in first["annotations"]]
    assert cats == [1, 0, 2, 0]  # ids 3, 7, 12 -> 0, 1, 2
    assert all(a["bbox_mode"] == "XYWH_ABS" for a in first["annotations"])
    assert [a["iscrowd"] for a in first["annotations"]] == [0, 0, 1, 0]
    assert first["annotations"][0]["segmentation"] == [SQUARE]
    assert first["annotations"][3]["segmentation"] == [[50.0, 0.0, 60.0, 0.0, 60.0, 10.0]]
    rle = first["annotations"][1]["segmentation"]
    assert isinstance(rle, dict) and isinstance(rle["counts"], bytes)  # list counts were compressed
    assert records[1]["annotations"] == []


def test_metadata_for_named_dataset(tiny):
    json_file, image_root, _ = tiny
    name = "tiny_meta_test"
    try:
        coco.register_coco_instances(name, json_file, image_root, extra="kept")
        meta = catalog.get_metadata(name)
        assert meta["evaluator_type"] == "coco" and meta["extra"] == "kept"
        records = catalog.get_dataset_dicts(name)
        assert catalog.get_dataset_dicts(name) is records  # cached
        assert meta["thing_classes"] == ["c3", "c7", "c12"]
        assert meta["thing_dataset_id_to_contiguous_id"] == {3: 0, 7: 1, 12: 2}
        assert meta["json_file"] == json_file and meta["image_root"] == image_root
        assert name in catalog.list_datasets()
        with pytest.raises(UserError, match="already registered"):
            coco.register_coco_instances(name, json_file, image_root)
    finally:
        catalog.remove_dataset(name)
    assert name not in catalog.list_datasets()


def test_annotation_to_mask(tiny):
    json_file, image_root, masks = tiny
    records = coco.load_coco_json(json_file, image_root)
    square = coco.annotation_to_mask([SQUARE], 60, 80)
    assert square.dtype == np.uint8 and square.shape == (60, 80)
    assert square.sum() == 400 and square[10:30, 10:30].all()
    compressed = records[0]["annotations"][1]["segmentation"]
    np.testing.assert_array_equal(coco.annotation_to_mask(compressed, 60, 80), masks["rle"])
    np.testing.assert_array_equal(coco.annotation_to_mask(_uncompressed(masks["rle"]), 60, 80), masks["rle"])
    border = records[2]["annotations"][0]["segmentation"]
    assert isinstance(border["counts"], str)
    np.testing.assert_array_equal(coco.annotation_to_mask(border, 50, 50), masks["border"])
    union = coco.annotation_to_mask([SQUARE, [40.0, 40.0, 50.0, 40.0, 50.0, 50.0, 40.0, 50.0]], 60, 80)
    assert union.sum() == 500
    with pytest.raises(UserError, match="does not match"):
        coco.annotation_to_mask(border, 60, 80)


def test_unknown_and_missing(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="coco_2017_val"):
        catalog.get_dataset_dicts("coco_2017_vall")
    with pytest.raises(UserError, match="not registered"):
        catalog.get_metadata("no_such_dataset_anywhere")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    with pytest.raises(UserError) as err:
        catalog.get_dataset_dicts("coco_2017_val")
    assert str(tmp_path / "coco/annotations/instances_val2017.json") in str(err.value)
    with pytest.raises(UserError, match="not found"):
        coco.load_coco_json(tmp_path / "missing.json", tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read"):
        coco.load_coco_json(tmp_path / "bad.json", tmp_path)


def test_builtin_coco_layout(tmp_path, monkeypatch):
    name = "coco_2017_val_100"
    ann_dir = tmp_path / "coco" / "annotations"
    ann_dir.mkdir(parents=True)
    (tmp_path / "coco" / "val2017").mkdir()
    categories = [{"id": cid, "name": n, "supercategory": s} for cid, n, s in COCO_THING_CATEGORIES]
    images = [{"id": 5, "file_name": "000005.jpg", "height": 10, "width": 20}]
    annotations = [{"id": 1, "image_id": 5, "category_id": 90, "bbox": [1, 1, 4, 4], "iscrowd": 0,
                    "segmentation": [[1, 1, 5, 1, 5, 5]]}]
    coco.write_coco_json(ann_dir / "instances_val2017_100.json", images, annotations, categories)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    try:
        records = catalog.get_dataset_dicts(name)
        assert records[0]["file_name"] == str(tmp_path / "coco" / "val2017" / "000005.jpg")
        assert records[0]["annotations"][0]["category_id"] == 79  # toothbrush, id 90
        meta = catalog.get_metadata(name)
        assert meta["thing_classes"] == list(COCO_THING_CLASSES)
        assert meta["json_file"] == str(ann_dir / "instances_val2017_100.json")
    finally:
        catalog._CACHE.pop(name, None)  # the cached records point into tmp_path


def test_shapes_names_use_shapes_prepare(tiny, monkeypatch):
    from jaxseg.data import shapes

    json_file, image_root, _ = tiny
    calls = []
    monkeypatch.setattr(shapes, "prepare", lambda split, root=None: calls.append(split) or (json_file, image_root))
    assert {"shapes_train", "shapes_val"} <= set(catalog.list_datasets())
    loader = coco._shapes_loader("shapes_val_probe", "val")
    try:
        records = loader()
    finally:
        catalog.remove_dataset("shapes_val_probe")
    assert calls == ["val"] and len(records) == 4


def test_tfds_example_conversion(tmp_path):
    buffer = __import__("io").BytesIO()
    Image.new("RGB", (40, 20), (1, 2, 3)).save(buffer, format="JPEG")
    example = {
        "image": buffer.getvalue(),
        "image/filename": b"000000000042.jpg",
        "image/id": np.int64(42),
        "objects": {
            "bbox": np.array([[0.25, 0.5, 0.75, 1.0]], np.float32),  # ymin, xmin, ymax, xmax
            "label": np.array([3]),
            "is_crowd": np.array([False]),
        },
    }
    record = coco.tfds_example_to_record(example, str(tmp_path))
    assert record["file_name"] == str(tmp_path / "000000000042.jpg")
    assert (tmp_path / "000000000042.jpg").read_bytes() == buffer.getvalue()
    assert (record["height"], record["width"], record["image_id"]) == (20, 40, 42)
    anno = record["annotations"][0]
    np.testing.assert_allclose(anno["bbox"], [20, 5, 20, 10], atol=1e-4)
    assert anno["category_id"] == 3 and anno["iscrowd"] == 0 and "segmentation" not in anno


def test_tfds_unavailable_is_a_user_error(tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorflow_datasets") is None:
        with pytest.raises(UserError, match="tensorflow-datasets is not installed"):
            coco.load_tfds_coco("validation", data_dir=str(tmp_path))
        assert "coco_2017_val_tfds" not in catalog.list_datasets()
    else:
        with pytest.raises(UserError, match="not prepared"):
            coco.load_tfds_coco("validation", data_dir=str(tmp_path))


_FAKE_TFDS_BUILDER = """
import io
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image


class Coco(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.1.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="2017")]

    def _info(self):
        objects = tfds.features.Sequence({"id": np.int64, "area": np.int64, "bbox": tfds.features.BBoxFeature(),
                                          "label": tfds.features.ClassLabel(num_classes=80), "is_crowd": np.bool_})
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(encoding_format="jpeg"), "image/filename": tfds.features.Text(),
            "image/id": np.int64, "objects": objects}))

    def _split_generators(self, dl_manager):
        return {"validation": self._generate_examples()}

    def _generate_examples(self):
        for i in range(3):
            buffer = io.BytesIO()
            Image.new("RGB", (40, 20 + i), (100, 50, 20)).save(buffer, format="JPEG")
            box = tfds.features.BBox(0.1, 0.2, 0.5, 0.6)
            yield i, {"image": buffer.getvalue(), "image/filename": f"{i:012d}.jpg", "image/id": i + 1,
                      "objects": [{"id": i, "area": 10, "bbox": box, "label": 5, "is_crowd": i == 1}]}
"""


def test_tfds_prepared_array_record(tmp_path, monkeypatch):
    """A fake prepared coco/2017 (array_record, no TensorFlow) reads into sorted box-only records."""
    pytest.importorskip("tensorflow_datasets")
    package = tmp_path / "fake_tfds_coco"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "coco.py").write_text(_FAKE_TFDS_BUILDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    from fake_tfds_coco.coco import Coco

    Coco(data_dir=str(tmp_path / "data"), file_format="array_record").download_and_prepare()
    records = coco.load_tfds_coco("validation", data_dir=str(tmp_path / "data"), image_dir=str(tmp_path / "img"))
    assert [r["image_id"] for r in records] == [1, 2, 3]
    assert [(r["height"], r["width"]) for r in records] == [(20, 40), (21, 40), (22, 40)]
    assert [r["annotations"][0]["iscrowd"] for r in records] == [0, 1, 0]
    np.testing.assert_allclose(records[0]["annotations"][0]["bbox"], [8, 2, 16, 8], atol=1e-4)
    assert all(os.path.isfile(r["file_name"]) for r in records)


def test_catalog_alone_knows_the_builtin_names():
    import subprocess
    import sys

    code = ("from jaxseg.data import catalog; m = catalog.get_metadata('coco_2017_train'); "
            "print(len(m['thing_classes']), 'shapes_val' in catalog.list_datasets())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["80", "True"]
