"""Training and evaluation batches: layout, augmentation, full-image masks, determinism, host sharding.

The loaders get the model's specs; here Mask R-CNN's with INPUT.MASK_FORMAT bitmask (full-image masks at
stride 1; the records mix polygons and RLE), built as the model builds them (tests/test_data_targets.py
takes them from a built model and covers the polygon layout and the other targets)."""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import threading

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from jaxseg.config import get_cfg
from jaxseg.data import loaders, mappers
from jaxseg.data.coco import annotation_to_mask, load_coco_json
from jaxseg.data.image_io import read_image
from jaxseg.data.input_spec import InputSpec
from jaxseg.data.target_spec import TargetSpec
from jaxseg.data.transforms import RandomFlip, ResizeShortestEdge, apply_augmentations
from jaxseg.errors import UserError

SIZES = [(48, 64), (64, 48), (40, 40), (50, 90), (72, 40), (56, 60), (44, 70), (80, 52), (60, 60), (36, 64)]
G = 5


def _polygon(rng: np.random.Generator, h: int, w: int) -> list[float]:
    """A random convex-ish quadrilateral or triangle of at least ~14 px inside (h, w)."""
    bw, bh = rng.uniform(14, w * 0.7), rng.uniform(14, h * 0.7)
    x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
    if rng.random() < 0.5:
        pts = [(x0, y0), (x0 + bw, y0 + 0.2 * bh), (x0 + 0.8 * bw, y0 + bh), (x0, y0 + 0.9 * bh)]
    else:
        pts = [(x0 + bw / 2, y0), (x0 + bw, y0 + bh), (x0, y0 + bh)]
    return [float(v) for p in pts for v in p]


def _annotation(ann_id: int, image_id: int, segm, h: int, w: int, category: int, crowd: int = 0) -> dict:
    mask = annotation_to_mask(segm, h, w)
    ys, xs = np.nonzero(mask)
    x0, y0 = float(xs.min()), float(ys.min())
    bbox = [x0, y0, float(xs.max() + 1 - x0), float(ys.max() + 1 - y0)]
    if isinstance(segm, list):  # polygon boxes are the polygon's extent, as in COCO
        pts = np.array(segm[0]).reshape(-1, 2)
        bbox = [*pts.min(0).tolist(), *(pts.max(0) - pts.min(0)).tolist()]
    return {"id": ann_id, "image_id": image_id, "category_id": category, "bbox": bbox, "iscrowd": crowd,
            "area": float(mask.sum()), "segmentation": segm}


def write_dataset(root) -> tuple[str, str]:
    """Ten annotated images of mixed aspect ratios, one crowd-only, one empty, one with 8 instances."""
    rng = np.random.default_rng(1)
    (root / "img").mkdir()
    images, annotations = [], []
    sizes = SIZES + [(50, 70), (60, 40), (64, 64)]
    for index, (h, w) in enumerate(sizes):
        image_id = 100 + index
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "img" / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": h, "width": w})
        if index == len(SIZES) + 1:
            continue  # no annotations
        count = 8 if index == len(SIZES) + 2 else int(rng.integers(1, 4))
        for k in range(count):
            polygon = _polygon(rng, h, w)
            if k == 2:  # touch the right and bottom borders
                pts = np.array(polygon).reshape(-1, 2)
                polygon = (pts + [w, h] - pts.max(0)).ravel().tolist()
            segm: list | dict = [polygon]
            if k == 1:  # an RLE (compressed, str counts) of a polygon's mask
                rle = mask_util.encode(np.asfortranarray(annotation_to_mask([polygon], h, w)))
                segm = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
            crowd = int(index == len(SIZES))
            annotations.append(_annotation(len(annotations) + 1, image_id, segm, h, w, 1 + k % 3, crowd))
    categories = [{"id": i, "name": f"class{i}"} for i in (1, 2, 3)]
    json_file = root / "instances.json"
    json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return str(json_file), str(root / "img")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("loaders")
    return load_coco_json(*write_dataset(root))


def make_cfg(**overrides):
    cfg = get_cfg()
    cfg.MODEL.MASK_ON = True
    cfg.INPUT.MIN_SIZE_TRAIN = (48, 64)
    cfg.INPUT.MAX_SIZE_TRAIN = 100
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 100
    cfg.SOLVER.IMS_PER_BATCH = 4
    cfg.DATALOADER.NUM_WORKERS = 2
    cfg.DATALOADER.MAX_GT_INSTANCES = G
    cfg.INPUT.MASK_FORMAT = "bitmask"
    for key, value in overrides.items():
        group, name = key.split("__")
        cfg[group][name] = value
    return cfg


def specs_for(cfg) -> tuple[InputSpec, TargetSpec]:
    """Mask R-CNN's specs for cfg (size divisibility 32 of the FPN backbone)."""
    return (InputSpec.from_config(cfg, 32),
            TargetSpec(bitmask_stride=1 if cfg.MODEL.MASK_ON else 0))


def loader_for(records, seed=0, **kwargs):
    cfg_overrides = {k: v for k, v in kwargs.items() if "__" in k}
    other = {k: v for k, v in kwargs.items() if "__" not in k}
    other.setdefault("process_index", 0)
    other.setdefault("process_count", 1)
    cfg = make_cfg(**cfg_overrides)
    return loaders.build_train_loader(cfg, records, *specs_for(cfg), seed=seed, **other)


def take(iterator, n: int) -> list[dict]:
    with iterator:
        return [next(iterator) for _ in range(n)]


def assert_batches_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_config_keys():
    cfg = get_cfg()
    assert cfg.DATALOADER.MAX_GT_INSTANCES == 100 and cfg.INPUT.MASK_FORMAT == "polygon"


def test_layout(records):
    loader = loader_for(records)
    assert len(loader.dataset_dicts) == len(records) - 2  # crowd-only and empty images filtered
    assert all(hp % 32 == 0 and wp % 32 == 0 for hp, wp in loader.buckets)
    assert loader.buckets == [(64, 128), (128, 64)]  # landscape, portrait (w <= h)
    for step, batch in enumerate(take(iter(loader), 4)):
        b = 4
        hp, wp = batch["images"].shape[1:3]
        assert batch["images"].shape == (b, hp, wp, 3) and batch["images"].dtype == np.uint8
        assert (hp, wp) in loader.buckets
        assert batch["image_hw"].shape == (b, 2) and batch["image_hw"].dtype == np.int32
        assert batch["gt_boxes"].shape == (b, G, 4) and batch["gt_boxes"].dtype == np.float32
        assert batch["gt_classes"].shape == (b, G) and batch["gt_classes"].dtype == np.int32
        assert batch["gt_valid"].shape == (b, G) and batch["gt_valid"].dtype == bool
        assert batch["gt_bitmasks"].shape == (b, G, hp, wp) and batch["gt_bitmasks"].dtype == np.uint8
        assert batch["image_id"].shape == (b,) and batch["image_id"].dtype == np.int64
        indices = loader.batch_indices(step)
        for i, index in enumerate(indices):
            record = loader.dataset_dicts[index]
            assert batch["image_id"][i] == record["image_id"]
            h, w = batch["image_hw"][i]
            assert h <= hp and w <= wp and (min(h, w) in (48, 64) or max(h, w) == 100)
            assert not batch["images"][i, h:].any() and not batch["images"][i, :, w:].any()
            valid = batch["gt_valid"][i]
            n = int(valid.sum())
            assert valid[:n].all() and not valid[n:].any()
            assert n == min(G, sum(not a["iscrowd"] for a in record["annotations"]))
            boxes = batch["gt_boxes"][i, :n]
            assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
            assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= w).all() and (boxes[:, [1, 3]] <= h).all()
            masks = batch["gt_bitmasks"][i, :n]
            assert set(np.unique(masks)) <= {0, 1} and masks.any(axis=(1, 2)).all()
            assert not masks[:, h:].any() and not masks[:, :, w:].any()
            assert not batch["gt_bitmasks"][i, n:].any() and not batch["gt_boxes"][i, n:].any()
            landscape = [r["width"] > r["height"] for r in (loader.dataset_dicts[j] for j in indices)]
            assert len(set(landscape)) == 1 and (hp < wp) == landscape[0]


def _transformed_mask(segm, transforms, record: dict, hw: tuple[int, int]) -> np.ndarray:
    """The full mask in the augmented image as detectron2 makes it: polygons moved then rasterized, RLE resized."""
    if isinstance(segm, dict):
        return transforms.apply_segmentation(annotation_to_mask(segm, record["height"], record["width"]))
    moved = [transforms.apply_coords(np.reshape(p, (-1, 2))).ravel().tolist() for p in segm]
    return annotation_to_mask(moved, *hw)


def test_pixels_boxes_masks_match_detectron2_mapper(records):
    """Each sample equals read -> ResizeShortestEdge -> RandomFlip drawn from rng(seed, 1, epoch, position)."""
    seed = 3
    loader = loader_for(records, seed=seed)
    resize, flip = ResizeShortestEdge((48, 64), 100), RandomFlip(0.5)
    for step in range(6):
        batch = loader.load_batch(step)
        keys, _ = loader.keys(step)
        for i, (epoch, position, index) in enumerate(keys):
            record = loader.dataset_dicts[index]
            rng = np.random.default_rng([seed, 1, epoch, position])
            image, transforms = apply_augmentations([resize, flip], read_image(record["file_name"]), rng)
            h, w = image.shape[:2]
            np.testing.assert_array_equal(batch["images"][i, :h, :w], image)
            assert tuple(batch["image_hw"][i]) == (h, w)
            annos = [a for a in record["annotations"] if not a["iscrowd"]][:G]
            xyxy = np.array([a["bbox"] for a in annos], np.float64)
            xyxy[:, 2:] += xyxy[:, :2]
            np.testing.assert_allclose(batch["gt_boxes"][i, :len(annos)], transforms.apply_boxes(xyxy), atol=1e-4)
            assert list(batch["gt_classes"][i, :len(annos)]) == [a["category_id"] for a in annos]
            for g, anno in enumerate(annos):
                full = _transformed_mask(anno["segmentation"], transforms, record, (h, w))
                np.testing.assert_array_equal(batch["gt_bitmasks"][i, g, :h, :w], full)


def test_flip_moves_boxes_and_masks(records):
    loader = loader_for(records)
    plain = dataclasses.replace(loader.mapper, flip=None)
    for flip, axis in ((RandomFlip(1.0), 1), (RandomFlip(1.0, horizontal=False, vertical=True), 0)):
        flipped = dataclasses.replace(loader.mapper, flip=flip)
        for key in [(0, p, i) for p, i in enumerate(range(0, len(loader.dataset_dicts), 3))]:
            a, b = plain(key), flipped(key)
            h, w = a["image_hw"]
            np.testing.assert_array_equal(b["image"], np.flip(a["image"], axis))
            expected = a["boxes"].copy()
            if axis == 1:
                expected[:, [0, 2]] = w - a["boxes"][:, [2, 0]]
            else:
                expected[:, [1, 3]] = h - a["boxes"][:, [3, 1]]
            np.testing.assert_allclose(b["boxes"], expected, atol=1e-4)
            # polygons are flipped before they are rasterised (as detectron2), so edge pixels may differ
            assert (b["bitmasks"] != np.flip(a["bitmasks"], axis + 1)).mean() < 0.005


def test_determinism_and_resume(records):
    first = take(iter(loader_for(records, seed=5)), 6)
    again = take(loader_for(records, seed=5).batches(0), 6)
    for a, b in zip(first, again):
        assert_batches_equal(a, b)
    resumed = take(loader_for(records, seed=5).batches(3), 3)
    for a, b in zip(first[3:], resumed):
        assert_batches_equal(a, b)
    sync = loader_for(records, seed=5, num_workers=0)
    assert_batches_equal(sync.load_batch(4), first[4])
    assert_batches_equal(next(sync.batches(2)), first[2])
    other = take(iter(loader_for(records, seed=6)), 6)
    assert any(not np.array_equal(a["image_id"], b["image_id"]) for a, b in zip(first, other))


def test_epochs_visit_every_image(records):
    loader = loader_for(records)
    plan = loader.plan
    steps = 40
    keys = np.concatenate([plan[k][0] for k in range(steps)])
    for epoch in range(int(keys[:, 0].max())):  # complete epochs: each image once (carried ones may come later)
        seen = keys[keys[:, 0] == epoch][:, 2]
        assert len(seen) == len(set(seen.tolist()))
    assert set(keys[:, 2].tolist()) == set(range(len(loader.dataset_dicts)))


def test_host_sharding(records):
    whole = loader_for(records, seed=2, SOLVER__IMS_PER_BATCH=4)
    hosts = [loader_for(records, seed=2, SOLVER__IMS_PER_BATCH=4, process_index=p, process_count=2) for p in (0, 1)]
    assert all(h.local_batch_size == 2 for h in hosts)
    for step in range(5):
        keys = [h.keys(step)[0] for h in hosts]
        positions = [set(map(tuple, k[:, :2].tolist())) for k in keys]
        assert not positions[0] & positions[1]  # each host reads other stream positions
        assert positions[0] | positions[1] == set(map(tuple, whole.keys(step)[0][:, :2].tolist()))
        parts = [h.load_batch(step) for h in hosts]
        joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        assert_batches_equal(joined, whole.load_batch(step))
    with pytest.raises(UserError, match="multiple"):
        loader_for(records, SOLVER__IMS_PER_BATCH=3, process_index=0, process_count=2)


def test_filters_and_max_instances(records, caplog):
    keep_all = loader_for(records, DATALOADER__FILTER_EMPTY_ANNOTATIONS=False, DATALOADER__ASPECT_RATIO_GROUPING=False)
    assert len(keep_all.dataset_dicts) == len(records)
    assert len(keep_all.buckets) == 1 and keep_all.buckets[0][0] == keep_all.buckets[0][1]
    crowd_only, empty, crowded = (records.index(r) for r in records[-3:])
    mappers._WARNED.discard("max_instances")
    with caplog.at_level(logging.WARNING, logger="jaxseg.data.mappers"):
        for index in (crowd_only, empty, crowded):
            sample = keep_all.mapper((0, 0, index))
            n = len(sample["classes"])
            assert n == (G if index == crowded else 0)
            assert sample["bitmasks"].shape == (n, *sample["image_hw"]) and sample["boxes"].shape == (n, 4)
    assert "keeping the first 5" in caplog.text
    batch = mappers.collate_train([keep_all.mapper((0, 0, empty))], keep_all.buckets[0], G,
                                  TargetSpec(bitmask_stride=1))
    assert not batch["gt_valid"].any()


def test_errors_reach_the_consumer(records, tmp_path):
    broken = [dict(records[0], file_name=str(tmp_path / "missing.png"))]
    loader = loader_for(broken, SOLVER__IMS_PER_BATCH=1)
    iterator = iter(loader)
    with pytest.raises(UserError, match="missing.png"):
        next(iterator)
    wrong_size = [dict(records[0], height=records[0]["height"] + 1)]
    with pytest.raises(UserError, match="annotation says"):
        loader_for(wrong_size, SOLVER__IMS_PER_BATCH=1, num_workers=0).load_batch(0)
    with pytest.raises(UserError, match="CROP"):
        cfg = make_cfg()
        cfg.INPUT.CROP.ENABLED = True
        loaders.build_train_loader(cfg, records, *specs_for(cfg), seed=0, process_index=0, process_count=1)


def test_close_stops_threads(records):
    before = threading.active_count()
    loader = loader_for(records)
    iterator = loader.batches(0)
    next(iterator)
    assert threading.active_count() > before
    iterator.close()
    iterator.close()
    assert threading.active_count() == before
    with pytest.raises(StopIteration):
        next(iterator)
    dropped = loader.batches(0)
    next(dropped)
    del dropped  # an abandoned iterator shuts its workers down when collected
    gc.collect()
    assert threading.active_count() == before


def test_process_workers_match_threads(records):
    threads = take(loader_for(records, seed=9).batches(1), 2)
    procs = take(loader_for(records, seed=9, use_processes=True).batches(1), 2)
    for a, b in zip(threads, procs):
        assert_batches_equal(a, b)


def test_repeat_factor_sampler(records):
    loader = loader_for(records, DATALOADER__SAMPLER_TRAIN="RepeatFactorTrainingSampler",
                        DATALOADER__REPEAT_THRESHOLD=0.9)
    assert loader.plan.factors is not None and (loader.plan.factors >= 1).all()
    assert loader.load_batch(0)["images"].shape[0] == 4
    with pytest.raises(UserError, match="SAMPLER_TRAIN"):
        loader_for(records, DATALOADER__SAMPLER_TRAIN="Nope")


def test_test_loader(records):
    cfg = make_cfg()
    spec = specs_for(cfg)[0]
    items = list(loaders.build_test_loader(cfg, records, spec, process_index=0, process_count=1))
    assert [it["image_id"] for it in items] == [r["image_id"] for r in records]
    for item, record in zip(items, records):
        image = item["image"]
        h, w = item["image_hw"][0]
        assert image.shape[0] == 1 and image.shape[1] % 32 == 0 and image.shape[2] % 32 == 0
        assert tuple(item["orig_hw"][0]) == (record["height"], record["width"])
        assert min(h, w) == 64 or max(h, w) == 100
        expected = ResizeShortestEdge(64, 100).apply_image(read_image(record["file_name"]))
        np.testing.assert_array_equal(image[0, :h, :w], expected)
        assert not image[0, h:].any() and not image[0, :, w:].any()
        assert item["file_name"] == record["file_name"]
        np.testing.assert_array_equal(image, spec.prepare_test_image(read_image(record["file_name"]))[0])  # predictor's
    shard = loaders.build_test_loader(cfg, records, spec, process_index=1, process_count=3)
    assert [r["image_id"] for r in shard.dataset_dicts] == [r["image_id"] for r in records[1::3]]
