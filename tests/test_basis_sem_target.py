"""gt_thing_semantic: BlendMask's basis semantic target, built by the training loader on the fly.

Checked against AdelaiDet's own pipeline on tests/data/blendmask_R_50_3x/train (prepare_thing_sem_from_instance
map at the original size, DatasetMapperWithBasis resize, ImageList padding, F.interpolate(scale_factor=1/8)),
then with a flip and with a non-square batch whose sizes are not multiples of 32 (the rule written out here).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from jaxseg.config import setup_cfg
from jaxseg.data import loaders, mappers
from jaxseg.data.coco import load_coco_json
from jaxseg.data.input_spec import InputSpec
from jaxseg.data.semantic import resize_labels, thing_semantic_map, top_left_target, transform_labels
from jaxseg.data.target_spec import TargetSpec
from jaxseg.data.transforms import RandomFlip, ResizeTransform
from jaxseg.errors import UserError
from jaxseg.models.blendmask.blendmask import blendmask_target_spec

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "data", "blendmask_R_50_3x")
TRAIN = os.path.join(FIXTURE, "train")
CONFIG = os.path.join(HERE, "..", "configs", "BlendMask", "R_50_3x.yaml")
STRIDE = 8  # BASIS_MODULE.COMMON_STRIDE


def make_cfg(min_size: int = 800, flip: str = "none", batch: int = 1, loss_on: bool = True,
             mask_format: str = "polygon"):
    """The BlendMask R_50_3x config with a fixed training size (the reference's), no flip, no workers."""
    return setup_cfg(CONFIG, ["INPUT.MASK_FORMAT", mask_format,
        "INPUT.MIN_SIZE_TRAIN", f"({min_size},)", "INPUT.MAX_SIZE_TRAIN", "1333", "INPUT.RANDOM_FLIP", flip,
        "SOLVER.IMS_PER_BATCH", str(batch), "DATALOADER.NUM_WORKERS", "0", "DATALOADER.ASPECT_RATIO_GROUPING",
        "False", "MODEL.BASIS_MODULE.LOSS_ON", str(loss_on),
    ])


def make_loader(cfg, records, target_spec: TargetSpec | None = None) -> loaders.TrainLoader:
    spec = blendmask_target_spec(cfg) if target_spec is None else target_spec
    return loaders.build_train_loader(cfg, records, InputSpec.from_config(cfg, 32), spec, seed=0,
                                      process_index=0, process_count=1)


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    return dict(np.load(os.path.join(TRAIN, "reference_train.npz"), allow_pickle=False))


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return load_coco_json(os.path.join(TRAIN, "gt.json"), FIXTURE)


def padded_target(full: np.ndarray, padded_hw: tuple[int, int], stride: int = STRIDE) -> np.ndarray:
    """The rule written out: zero padding right and below, then pixel (s i, s j) for i < Hp // s, j < Wp // s."""
    padded = np.zeros(padded_hw, full.dtype)
    padded[: full.shape[0], : full.shape[1]] = full
    rows, cols = np.arange(padded_hw[0] // stride) * stride, np.arange(padded_hw[1] // stride) * stride
    return padded[rows[:, None], cols[None]]


def test_matches_adelaidet_reference(ref, records):
    """Boxes, size, the original-size map, the resized map and the stride-8 target equal upstream's."""
    cfg = make_cfg()
    loader = make_loader(cfg, records)
    spec = loader.target_spec
    assert spec.thing_semantic_stride == STRIDE and loader.buckets == [(800, 800)]
    batch = loader.load_batch(0)
    assert set(batch) == {"images", "image_hw", "image_id", *spec.keys()} and "gt_thing_semantic" in spec.keys()
    n = len(ref["gt_boxes"])
    np.testing.assert_allclose(batch["gt_boxes"][0, :n], ref["gt_boxes"], rtol=1e-6, atol=0)
    np.testing.assert_array_equal(batch["gt_classes"][0, :n], ref["gt_classes"])
    assert int(batch["gt_valid"][0].sum()) == n
    np.testing.assert_array_equal(batch["image_hw"][0], ref["image_size"])

    record = records[0]
    original = thing_semantic_map(record["annotations"], record["height"], record["width"])
    assert original.dtype == np.uint8
    np.testing.assert_array_equal(original, ref["basis_sem_original"])
    resize = loader.mapper.resize.get_transform(record["height"], record["width"])
    full = transform_labels(original, resize, None)
    np.testing.assert_array_equal(full, ref["basis_sem_full"])

    target = batch["gt_thing_semantic"]
    hp, wp = batch["images"].shape[1:3]
    assert tuple(ref["basis_sem_padded_shape"]) == (1, hp, wp)
    assert target.shape == (1, hp // STRIDE, wp // STRIDE) == (1, *ref["basis_sem_target"].shape)
    assert target.dtype == np.int32
    np.testing.assert_array_equal(target[0], ref["basis_sem_target"])
    np.testing.assert_array_equal(top_left_target(ref["basis_sem_full"], STRIDE), ref["basis_sem_target"])
    # the cell centre (pixel 8i + 4, what a plain nearest resize takes) would differ
    assert (ref["basis_sem_full"][4::8, 4::8] != ref["basis_sem_target"]).any()


def test_horizontal_flip_moves_the_map_with_the_image(ref, records):
    cfg = make_cfg(flip="horizontal")
    loader = make_loader(cfg, records)
    mapper = dataclasses.replace(loader.mapper, flip=RandomFlip(1.0))  # always flip
    plain = make_loader(make_cfg(), records).load_batch(0)
    sample = mapper((0, 0, 0))
    batch = mappers.collate_train([sample], loader.buckets[0], mapper.max_instances, loader.target_spec,
                                  loader.polygon_capacity)
    np.testing.assert_array_equal(batch["images"], plain["images"][:, :, ::-1])
    flipped = ref["basis_sem_full"][:, ::-1]
    want = padded_target(flipped, batch["images"].shape[1:3])
    np.testing.assert_array_equal(batch["gt_thing_semantic"][0], want)
    assert (want != ref["basis_sem_target"]).any()
    n = len(ref["gt_boxes"])
    boxes = ref["gt_boxes"].copy()
    boxes[:, [0, 2]] = 800 - ref["gt_boxes"][:, [2, 0]]
    np.testing.assert_allclose(batch["gt_boxes"][0, :n], boxes, rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------------------------
# A non-square batch whose sizes are not multiples of 32, with a crowd annotation


def _synthetic_record(root: str, image_id: int, h: int, w: int) -> dict:
    """Overlapping polygons (one in two parts), an RLE and, last, a crowd polygon over part of them."""
    rng = np.random.default_rng(image_id)
    path = os.path.join(root, f"{image_id}.png")
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    big = [0.1 * w, 0.1 * h, 0.9 * w, 0.15 * h, 0.8 * w, 0.9 * h, 0.05 * w, 0.8 * h]
    parts = [[0.2 * w, 0.2 * h, 0.5 * w, 0.25 * h, 0.3 * w, 0.6 * h], [0.6 * w, 0.6 * h, 0.95 * w, 0.7 * h,
                                                                       0.7 * w, 0.98 * h]]
    yy, xx = np.mgrid[:h, :w]
    disc = ((yy - 0.5 * h) ** 2 + (xx - 0.7 * w) ** 2 <= (0.2 * min(h, w)) ** 2).astype(np.uint8)
    rle = mask_util.encode(np.asfortranarray(disc))
    crowd = [0.0, 0.0, 0.45 * w, 0.0, 0.45 * w, 0.45 * h, 0.0, 0.45 * h]
    annos = [
        {"bbox": [0.05 * w, 0.1 * h, 0.85 * w, 0.8 * h], "segmentation": [big], "category_id": 0, "iscrowd": 0},
        {"bbox": [0.2 * w, 0.2 * h, 0.75 * w, 0.78 * h], "segmentation": parts, "category_id": 5, "iscrowd": 0},
        {"bbox": [0.5 * w, 0.3 * h, 0.4 * w, 0.4 * h],
         "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")}, "category_id": 7, "iscrowd": 0},
        {"bbox": [0.3 * w, 0.05 * h, 0.1 * w, 0.1 * h], "category_id": 2, "iscrowd": 0},  # no segmentation
        {"bbox": [0.0, 0.0, 0.45 * w, 0.45 * h], "segmentation": [crowd], "category_id": 3, "iscrowd": 1},
    ]
    for a in annos:
        a["bbox_mode"] = "XYWH_ABS"
    return {"file_name": path, "image_id": image_id, "height": h, "width": w, "annotations": annos}


def expected_original(record: dict) -> np.ndarray:
    """prepare_thing_sem_from_instance's rule with pycocotools directly: every annotation with a mask."""
    h, w = record["height"], record["width"]
    out = np.zeros((h, w), np.uint8)
    for anno in record["annotations"]:
        segm = anno.get("segmentation")
        if segm is None:
            continue
        rle = mask_util.merge(mask_util.frPyObjects(segm, h, w)) if isinstance(segm, list) else segm
        out[mask_util.decode(rle) == 1] = anno["category_id"] + 1
    return out


def test_non_square_batch_not_a_multiple_of_32(tmp_path):
    """50x90 and 60x40 images at MIN_SIZE_TRAIN 43 -> 43x77 and 65x43 in one (96, 96) bucket: every map is
    zero in its image's padding, (96/8, 96/8), crowd pixels painted, crowd instances not in the boxes."""
    records = [_synthetic_record(str(tmp_path), 1, 50, 90), _synthetic_record(str(tmp_path), 2, 60, 40)]
    cfg = make_cfg(min_size=43, batch=2, mask_format="bitmask")  # an RLE among the masks
    loader = make_loader(cfg, records)
    assert loader.buckets == [(96, 96)]
    batch = loader.load_batch(0)
    target = batch["gt_thing_semantic"]
    assert target.shape == (2, 12, 12) and target.dtype == np.int32
    for i, index in enumerate(loader.batch_indices(0)):
        record = records[index]
        h, w = record["height"], record["width"]
        nh, nw = (int(v) for v in batch["image_hw"][i])
        assert (nh, nw) == {1: (43, 77), 2: (65, 43)}[record["image_id"]]
        original = expected_original(record)
        assert set(np.unique(original)) == {0, 1, 4, 6, 8}  # the crowd class (3 + 1) is painted
        np.testing.assert_array_equal(thing_semantic_map(record["annotations"], h, w), original)
        full = np.array(Image.fromarray(original).resize((nw, nh), Image.Resampling.NEAREST))
        want = padded_target(full, (96, 96))
        np.testing.assert_array_equal(target[i], want, err_msg=f"image {record['image_id']}")
        assert not target[i, -(-nh // STRIDE):].any() and not target[i, :, -(-nw // STRIDE):].any()
        assert int(batch["gt_valid"][i].sum()) == 4 and 3 not in batch["gt_classes"][i, :4]


@pytest.mark.parametrize("hw", [(43, 77), (801, 17), (96, 96)])
def test_top_left_target_is_torch_nearest_downsampling(hw):
    """F.interpolate(scale_factor=1/8) keeps floor(H/8) x floor(W/8) pixels (8i, 8j), for any size."""
    torch = pytest.importorskip("torch")
    labels = np.random.default_rng(0).integers(0, 81, hw).astype(np.uint8)
    got = top_left_target(labels, STRIDE)
    want = torch.nn.functional.interpolate(torch.from_numpy(labels)[None, None].float(), scale_factor=1 / STRIDE)
    np.testing.assert_array_equal(got, want[0, 0].long().numpy())


def test_class_ids_past_uint8_use_int32():
    """A class id of 255 or more would wrap in upstream's uint8 file; the map is then int32 and resizes alike."""
    square = [[2.0, 2.0, 9.0, 2.0, 9.0, 9.0, 2.0, 9.0]]
    annos = [{"segmentation": square, "category_id": 299}]
    labels = thing_semantic_map(annos, 12, 14)
    assert labels.dtype == np.int32 and set(np.unique(labels)) == {0, 300}
    resize = ResizeTransform(12, 14, 29, 31)
    small = thing_semantic_map([{"segmentation": square, "category_id": 7}], 12, 14)
    np.testing.assert_array_equal(resize_labels(labels, resize) == 300, resize_labels(small, resize) == 8)


def test_no_map_unless_the_spec_asks(records, monkeypatch):
    """LOSS_ON False (or a spec without the stride): no gt_thing_semantic and no map is painted."""
    cfg = make_cfg(loss_on=False)
    spec = blendmask_target_spec(cfg)
    assert spec.thing_semantic_stride == 0 and "gt_thing_semantic" not in spec.keys()

    def forbidden(*args, **kwargs):
        raise AssertionError("thing-semantic map built for a spec without it")

    monkeypatch.setattr(mappers, "thing_semantic_sample", forbidden)
    loader = make_loader(cfg, records)
    sample = loader.mapper((0, 0, 0))
    batch = loader.load_batch(0)
    assert "thing_semantic" not in sample and "gt_thing_semantic" not in batch
    assert set(batch) == {"images", "image_hw", "image_id", *spec.keys()}


def test_loader_checks_the_stride(records):
    with pytest.raises(UserError, match="thing-semantic stride must be >= 0"):
        make_loader(make_cfg(), records, TargetSpec(thing_semantic_stride=-1))
    with pytest.raises(UserError, match="thing-semantic stride 3 does not divide"):
        make_loader(make_cfg(), records, TargetSpec(thing_semantic_stride=3))
