"""The loaders build what the model's specs ask for: target keys, full-image bitmasks, channel order, eval buckets."""

from __future__ import annotations

import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from jaxseg.config import get_cfg, setup_cfg
from jaxseg.data import loaders, mappers
from jaxseg.data.image_io import read_image
from jaxseg.data.input_spec import InputSpec
from jaxseg.data.target_spec import TargetSpec
from jaxseg.data.transforms import RandomFlip, ResizeShortestEdge, apply_augmentations
from jaxseg.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart", "shapes_mask_rcnn.yaml")
G = 8
MIN_TRAIN, MAX_TRAIN = (64, 80), 120
SPEC = InputSpec(min_size_train=MIN_TRAIN, max_size_train=MAX_TRAIN, min_size_test=64, max_size_test=120)


def _ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (column-major runs, starting with zeros) of a 0/1 mask."""
    flat = mask.ravel(order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + runs}


def _record(root, image_id: int, h: int, w: int) -> dict:
    """One image with two polygons (one in two parts), a compressed and an uncompressed RLE, a box-only
    instance and a crowd one."""
    rng = np.random.default_rng(image_id)
    path = os.path.join(root, f"{image_id}.png")
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    tri = [0.15 * w, 0.1 * h, 0.6 * w, 0.3 * h, 0.2 * w, 0.7 * h]
    two = [[0.6 * w, 0.55 * h, 0.9 * w, 0.6 * h, 0.8 * w, 0.9 * h],
           [0.05 * w, 0.8 * h, 0.3 * w, 0.8 * h, 0.2 * w, 0.95 * h]]
    ell = _ellipse(h, w, 0.5 * h, 0.5 * w, 0.2 * h, 0.15 * w)
    rle = mask_util.encode(np.asfortranarray(ell))
    rect = np.zeros((h, w), np.uint8)
    rect[int(0.1 * h):int(0.4 * h), int(0.7 * w):int(0.95 * w)] = 1

    def box(mask):
        ys, xs = np.nonzero(mask)
        return [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]

    def poly_box(polys):
        pts = np.concatenate([np.reshape(p, (-1, 2)) for p in polys])
        return [*pts.min(0).tolist(), *(pts.max(0) - pts.min(0)).tolist()]

    annos = [
        {"bbox": poly_box([tri]), "segmentation": [tri], "category_id": 0},
        {"bbox": poly_box(two), "segmentation": two, "category_id": 1},
        {"bbox": box(ell), "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")}, "category_id": 2},
        {"bbox": box(rect), "segmentation": _uncompressed_rle(rect), "category_id": 3},
        {"bbox": [0.4 * w, 0.05 * h, 0.2 * w, 0.3 * h], "category_id": 4},  # no segmentation
        {"bbox": [0, 0, w / 2, h / 2], "segmentation": [tri], "category_id": 0, "iscrowd": 1},
    ]
    for a in annos:
        a.setdefault("iscrowd", 0)
        a["bbox_mode"] = "XYWH_ABS"
    return {"file_name": path, "image_id": image_id, "height": h, "width": w, "annotations": annos}


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("targets"))
    return [_record(root, 1, 50, 70), _record(root, 2, 70, 50)]


def make_cfg(**overrides):
    cfg = get_cfg()
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.MAX_GT_INSTANCES = G
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = False
    cfg.DATALOADER.NUM_WORKERS = 0
    for key, value in overrides.items():
        group, name = key.split("__")
        cfg[group][name] = value
    return cfg


def train_loader(records, target_spec, input_spec=SPEC, seed=0, **cfg_overrides):
    return loaders.build_train_loader(make_cfg(**cfg_overrides), records, input_spec, target_spec, seed=seed,
                                      process_index=0, process_count=1)


def expected_bitmask(anno: dict, record: dict, resized_hw, hflip: bool, padded_hw, stride: int) -> np.ndarray:
    """AdelaiDet's rule written out: full mask of the resized + flipped image, padded, sampled at [s//2::s]."""
    h, w = record["height"], record["width"]
    nh, nw = resized_hw
    segm = anno.get("segmentation")
    if isinstance(segm, list):
        polys = []
        for p in segm:
            pts = np.reshape(p, (-1, 2)) * [nw / w, nh / h]
            if hflip:
                pts[:, 0] = nw - pts[:, 0]
            polys.append(pts.ravel().tolist())
        full = mask_util.decode(mask_util.merge(mask_util.frPyObjects(polys, nh, nw)))
        # AdelaiDet rasterizes at the padded size; the same for polygons inside the image
        at_padded = mask_util.decode(mask_util.merge(mask_util.frPyObjects(polys, *padded_hw)))
        assert not at_padded[nh:].any() and not at_padded[:, nw:].any()
        np.testing.assert_array_equal(at_padded[:nh, :nw], full)
    elif isinstance(segm, dict):
        rle = segm if not isinstance(segm["counts"], list) else mask_util.frPyObjects(segm, h, w)
        orig = mask_util.decode(rle)
        rows = np.floor((np.arange(nh) + 0.5) * h / nh).astype(int)  # nearest neighbour
        cols = np.floor((np.arange(nw) + 0.5) * w / nw).astype(int)
        full = orig[rows][:, cols]
        full = full[:, ::-1] if hflip else full
    else:
        x, y, bw, bh = anno["bbox"]
        x0, x1 = x * nw / w, (x + bw) * nw / w
        if hflip:
            x0, x1 = nw - x1, nw - x0
        y0, y1 = y * nh / h, (y + bh) * nh / h
        cy, cx = np.mgrid[:nh, :nw] + 0.5
        full = ((cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)).astype(np.uint8)
    padded = np.zeros(padded_hw, np.uint8)
    padded[:nh, :nw] = full
    start = stride // 2
    return padded[start::stride, start::stride]


@pytest.mark.parametrize("stride", [4, 8])
def test_gt_bitmasks_follow_adelaidet_rule(records, stride):
    seed = 4
    spec = TargetSpec(bitmask_stride=stride)
    loader = train_loader(records, spec, seed=seed)
    assert loader.buckets == [(128, 128)]
    resize, flip = ResizeShortestEdge(MIN_TRAIN, MAX_TRAIN), RandomFlip(0.5)
    flips, compared = set(), 0
    for step in range(4):
        batch = loader.load_batch(step)
        assert set(batch) == {"images", "image_hw", "image_id", *spec.keys()} and "gt_polygon_xy" not in batch
        b, hp, wp = batch["images"].shape[:3]
        bits = batch["gt_bitmasks"]
        assert bits.shape == (b, G, hp // stride, wp // stride) and bits.dtype == np.uint8
        for i, (epoch, position, index) in enumerate(loader.keys(step)[0]):
            record = loader.dataset_dicts[index]
            rng = np.random.default_rng([seed, 1, epoch, position])
            image, transforms = apply_augmentations([resize, flip], read_image(record["file_name"]), rng)
            hflip = bool(transforms.transforms[1].horizontal)
            flips.add(hflip)
            assert tuple(batch["image_hw"][i]) == image.shape[:2]
            annos = [a for a in record["annotations"] if not a["iscrowd"]]
            assert int(batch["gt_valid"][i].sum()) == len(annos)
            for g, anno in enumerate(annos):
                want = expected_bitmask(anno, record, image.shape[:2], hflip, (hp, wp), stride)
                np.testing.assert_array_equal(bits[i, g], want, err_msg=f"step {step} image {i} instance {g}")
                assert want.any()
                compared += 1
            assert not bits[i, len(annos):].any()
    assert flips == {False, True} and compared == 4 * 2 * 5


def _polygon_only(records):
    return [{**r, "annotations": [a for a in r["annotations"] if isinstance(a.get("segmentation"), list)]}
            for r in records]


def test_polygons_are_the_transformed_float64_points(records):
    """gt_polygon_*: each instance's polygons moved by the resize and flip in float64, bit for bit, with the
    capacity of the dataset's largest instance; a polygon instance's slots hold its parts in order."""
    seed = 2
    polys = _polygon_only(records)
    spec = TargetSpec(polygons=True)
    loader = train_loader(polys, spec, seed=seed)
    assert loader.polygon_capacity == (16, 4)  # 6 vertices in 2 polygons at most, rounded up
    resize, flip = ResizeShortestEdge(MIN_TRAIN, MAX_TRAIN), RandomFlip(0.5)
    for step in range(3):
        batch = loader.load_batch(step)
        assert set(batch) == {"images", "image_hw", "image_id", *spec.keys()}
        xy = batch["gt_polygon_xy"].view(np.float64)[..., 0]  # (B, G, S, 2)
        for i, (epoch, position, index) in enumerate(loader.keys(step)[0]):
            record = loader.dataset_dicts[index]
            rng = np.random.default_rng([seed, 1, epoch, position])
            _, transforms = apply_augmentations([resize, flip], read_image(record["file_name"]), rng)
            annos = [a for a in record["annotations"] if not a["iscrowd"]]
            for g, anno in enumerate(annos):
                moved = [transforms.apply_coords(np.reshape(p, (-1, 2))) for p in anno["segmentation"]]
                n = sum(len(p) for p in moved)
                np.testing.assert_array_equal(xy[i, g, :n], np.concatenate(moved))
                ids = [k for k, p in enumerate(moved) for _ in p] + [-1] * (16 - n)
                assert list(batch["gt_polygon_id"][i, g]) == ids
                assert list(batch["gt_polygon_start"][i, g, :len(moved)]) == [0, 3][:len(moved)]
            assert (batch["gt_polygon_id"][i, len(annos):] == -1).all()


def test_polygon_format_refuses_rle_and_missing_masks(records):
    with pytest.raises(UserError, match=r"annotation .* has an RLE segmentation; .*INPUT.MASK_FORMAT bitmask"):
        train_loader(records, TargetSpec(polygons=True))


def test_bitmasks_and_polygons_together(records):
    polys = _polygon_only(records)
    both = train_loader(polys, TargetSpec(polygons=True, bitmask_stride=4)).load_batch(1)
    boxes_only = train_loader(polys, TargetSpec()).load_batch(1)
    assert set(both) == {"images", "image_hw", "image_id", *TargetSpec(True, 4).keys()}
    for key in boxes_only:
        np.testing.assert_array_equal(both[key], boxes_only[key], err_msg=key)


def test_target_spec_errors(records):
    with pytest.raises(UserError, match="semantic/panoptic ground truth is not built by jaxseg's loader yet"):
        train_loader(records, TargetSpec(semantic=True))
    with pytest.raises(UserError, match="stride 3 does not divide"):
        train_loader(records, TargetSpec(bitmask_stride=3))


def test_mask_on_false_builds_only_the_model_keys(records, monkeypatch):
    """A box-only Mask R-CNN config: the model's target spec has no masks; the batch has exactly its keys and
    no segmentation is decoded or rasterized."""
    from jaxseg.models.registry import build_model

    opts = ["SOLVER.IMS_PER_BATCH", "2", "DATALOADER.MAX_GT_INSTANCES", str(G), "DATALOADER.NUM_WORKERS", "0",
            "INPUT.MIN_SIZE_TRAIN", str(MIN_TRAIN), "INPUT.MAX_SIZE_TRAIN", str(MAX_TRAIN)]
    with_masks = build_model(setup_cfg(QUICKSTART, [*opts, "MODEL.MASK_ON", "True"]))
    cfg = setup_cfg(QUICKSTART, [*opts, "MODEL.MASK_ON", "False"])
    model = build_model(cfg)
    assert model.target_spec == TargetSpec() and with_masks.target_spec == TargetSpec(bitmask_stride=1)  # bitmask
    reference = loaders.build_train_loader(cfg, records, with_masks.input_spec, with_masks.target_spec, seed=1,
                                           process_index=0, process_count=1).load_batch(0)

    def forbidden(*args, **kwargs):
        raise AssertionError("mask work done for a target spec without masks")

    for name in ("decode", "frPyObjects", "merge"):
        monkeypatch.setattr(mask_util, name, forbidden)
    monkeypatch.setattr(mappers, "transformed_polygons", forbidden)
    monkeypatch.setattr(mappers, "full_image_bitmask", forbidden)
    loader = loaders.build_train_loader(cfg, records, model.input_spec, model.target_spec, seed=1,
                                        process_index=0, process_count=1)
    batch = loader.load_batch(0)
    assert set(batch) == {"images", "image_hw", "image_id", *model.target_spec.keys()}
    assert "gt_bitmasks" not in batch and batch["gt_valid"].any()
    assert "gt_bitmasks" in reference
    for key in batch:
        np.testing.assert_array_equal(batch[key], reference[key], err_msg=key)


def test_channel_order_from_input_spec(records):
    bgr = train_loader(records, TargetSpec()).load_batch(0)
    rgb_spec = InputSpec(format="RGB", min_size_train=MIN_TRAIN, max_size_train=MAX_TRAIN)
    rgb = train_loader(records, TargetSpec(), input_spec=rgb_spec).load_batch(0)
    np.testing.assert_array_equal(rgb["images"], bgr["images"][..., ::-1])
    item = next(iter(loaders.build_test_loader(make_cfg(), records, rgb_spec, process_index=0, process_count=1)))
    np.testing.assert_array_equal(item["image"], rgb_spec.prepare_test_image(read_image(records[0]["file_name"],
                                                                                       "RGB"))[0])


def test_size_divisibility_from_input_spec(records):
    loader = train_loader(records, TargetSpec(), input_spec=InputSpec(min_size_train=MIN_TRAIN,
                                                                      max_size_train=MAX_TRAIN, size_divisibility=48))
    assert loader.buckets == [(144, 144)]  # the largest resized side, 112, rounded up to 48
    assert loader.load_batch(0)["images"].shape[1:3] == (144, 144)


def test_test_buckets_pad_eval_images(records):
    """TEST.BUCKETS: an eval image is padded to the smallest bucket that holds it, else to the size divisibility."""
    spec = InputSpec(min_size_test=128, max_size_test=200, buckets=((160, 224),))
    items = list(loaders.build_test_loader(make_cfg(), records, spec, process_index=0, process_count=1))
    landscape, portrait = items  # 50x70 -> 128x179 fits the bucket; 70x50 -> 179x128 does not
    assert tuple(landscape["image_hw"][0]) == (128, 179) and landscape["image"].shape == (1, 160, 224, 3)
    assert tuple(portrait["image_hw"][0]) == (179, 128) and portrait["image"].shape == (1, 192, 128, 3)
    for item, record in zip(items, records):
        np.testing.assert_array_equal(item["image"], spec.prepare_test_image(read_image(record["file_name"]))[0])
        assert tuple(item["orig_hw"][0]) == (record["height"], record["width"])
    cfg = make_cfg(TEST__BUCKETS=((160, 224),))  # the config key reaches the loader through the model's spec
    from_cfg = InputSpec.from_config(cfg, 32, min_size_test=128, max_size_test=200)
    item = next(iter(loaders.build_test_loader(cfg, records, from_cfg, process_index=0, process_count=1)))
    assert item["image"].shape == (1, 160, 224, 3)
