"""The synthetic shapes dataset: valid COCO, visible-part masks, determinism, caching and atomicity."""

from __future__ import annotations

import hashlib
import itertools
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
from pycocotools.coco import COCO

from jaxseg.data import shapes
from jaxseg.errors import UserError

N = 20


@pytest.fixture(scope="module")
def val(tmp_path_factory) -> tuple[COCO, str]:
    """A small val split and its COCO index."""
    json_path, image_root = shapes.prepare("val", str(tmp_path_factory.mktemp("shapes")), num_images=N)
    return COCO(json_path), image_root


def _digest(folder: str) -> str:
    """sha256 over every file's relative path and bytes under ``folder``."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(folder)):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, folder).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def test_coco_records(val):
    coco, image_root = val
    assert len(coco.imgs) == N and [c["name"] for c in coco.loadCats(sorted(coco.cats))] == list(shapes.CLASSES)
    assert sorted(coco.cats) == list(range(1, len(shapes.CLASSES) + 1))
    for img in coco.imgs.values():
        assert os.path.isfile(os.path.join(image_root, img["file_name"]))
        assert img["height"] == img["width"] == 128
        assert 1 <= len(coco.getAnnIds(imgIds=img["id"])) <= shapes.MAX_OBJECTS
    kinds = set()
    for ann in coco.anns.values():
        mask = coco.annToMask(ann)
        assert mask.sum() > 0 and ann["iscrowd"] == 0
        x, y, w, h = (int(v) for v in ann["bbox"])
        assert [x, y, w, h] == ann["bbox"]
        assert mask[y : y + h, x : x + w].sum() == mask.sum()  # inside the box
        ys, xs = np.nonzero(mask)
        assert [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1] == [x, y, w, h]  # tight
        if isinstance(ann["segmentation"], dict):
            kinds.add("rle")
            assert isinstance(ann["segmentation"]["counts"], str)
            assert ann["area"] == mask.sum()
        else:
            kinds.add("polygon")
            polygon_area = mask_util.area(mask_util.frPyObjects(ann["segmentation"], 128, 128))[0]
            assert abs(ann["area"] - mask.sum()) <= 0.05 * mask.sum() and polygon_area == mask.sum()
    assert kinds == {"rle", "polygon"}


def test_occlusion_visible_parts_are_disjoint(val):
    coco, _ = val
    overlapping_boxes = 0
    for image_id in coco.imgs:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        masks = np.stack([coco.annToMask(a) for a in anns])
        assert masks.sum(0).max() <= 1  # an occluded mask excludes every shape drawn over it
        for a, b in itertools.combinations(anns, 2):
            (ax, ay, aw, ah), (bx, by, bw, bh) = a["bbox"], b["bbox"]
            overlapping_boxes += ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah
    assert overlapping_boxes > 0


def test_deterministic(tmp_path):
    first = shapes.generate(str(tmp_path / "a"), "train", 8, 96, seed=3)
    shapes.generate(str(tmp_path / "b"), "train", 8, 96, seed=3)
    shapes.generate(str(tmp_path / "c"), "train", 8, 96, seed=4)
    shapes.generate(str(tmp_path / "d"), "val", 8, 96, seed=3)
    assert first == str(tmp_path / "a" / "instances.json")
    digests = [_digest(str(tmp_path / d)) for d in "abcd"]
    assert digests[0] == digests[1] and len(set(digests)) == 3


def test_prepare_is_idempotent(tmp_path, monkeypatch):
    json_path, image_root = shapes.prepare("train", str(tmp_path), num_images=3, image_size=64)
    stamps = [os.stat(json_path).st_mtime_ns, os.stat(os.path.join(image_root, "000000.png")).st_mtime_ns]

    def fail(*args, **kwargs):
        raise AssertionError("regenerated")

    monkeypatch.setattr(shapes, "generate", fail)
    assert shapes.prepare("train", str(tmp_path), num_images=3, image_size=64) == (json_path, image_root)
    assert stamps == [os.stat(json_path).st_mtime_ns, os.stat(os.path.join(image_root, "000000.png")).st_mtime_ns]


def test_interrupted_generation_leaves_no_json(tmp_path, monkeypatch):
    render, calls = shapes.render_image, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return render(*args)

    monkeypatch.setattr(shapes, "render_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        shapes.prepare("val", str(tmp_path), num_images=5, image_size=64)
    final = shapes.split_dir("val", str(tmp_path), num_images=5, image_size=64)
    assert not os.path.exists(os.path.join(final, shapes.JSON_NAME)) and os.listdir(tmp_path) == []
    monkeypatch.setattr(shapes, "render_image", render)
    json_path, _ = shapes.prepare("val", str(tmp_path), num_images=5, image_size=64)
    assert len(COCO(json_path).imgs) == 5 and os.listdir(tmp_path) == [os.path.basename(final)]


def test_default_root_and_bad_arguments(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXSEG_DATASETS", str(tmp_path))
    assert shapes.split_dir("train").startswith(str(tmp_path / "shapes"))
    assert "_n2000_" in shapes.split_dir("train") and "_n200_" in shapes.split_dir("val")
    with pytest.raises(UserError, match="test"):
        shapes.prepare("test", str(tmp_path))
    with pytest.raises(UserError):
        shapes.prepare("train", str(tmp_path), num_images=0)
