"""One training or evaluation sample from a dataset record, and the collation of training samples.

Training follows detectron2's training mapper: the model's resize (``InputSpec.train_resize()``,
ResizeShortestEdge over MIN_SIZE_TRAIN / MAX_SIZE_TRAIN / MIN_SIZE_TRAIN_SAMPLING), then
RandomFlip(INPUT.RANDOM_FLIP); crowd annotations removed; boxes transformed, clipped to the new image
and the empty ones dropped. Only the ground truth the model's `TargetSpec` names is built: no mask is decoded when the
spec asks for none. The thing-semantic map (`jaxseg.data.semantic`) is painted from every annotation of the
record, crowd ones and dropped instances included, as AdelaiDet's precomputed map. Evaluation images are
prepared by ``InputSpec.prepare_test_image``, the same code the predictor runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jaxseg.data.image_io import read_image
from jaxseg.data.input_spec import InputSpec
from jaxseg.data.masks import full_image_bitmask, pack_polygons, stride_sample, strided_size, transformed_polygons
from jaxseg.data.semantic import thing_semantic_sample, top_left_size
from jaxseg.data.target_spec import TargetSpec
from jaxseg.data.transforms import FlipTransform, RandomFlip, ResizeShortestEdge, ResizeTransform
from jaxseg.errors import UserError

__all__ = ["TestMapper", "TrainMapper", "collate_train", "train_augmentations"]

logger = logging.getLogger(__name__)

_BOX_EPS = 1e-5  # detectron2's threshold for an empty box (filter_empty_instances)
_WARNED: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    """Log ``message`` the first time ``key`` is seen in this process."""
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning(message)


def train_augmentations(cfg, input_spec: InputSpec) -> tuple[ResizeShortestEdge, RandomFlip | None]:
    """The training resize (the model's ``input_spec.train_resize()``) and INPUT.RANDOM_FLIP (None for "none")."""
    if cfg.INPUT.CROP.ENABLED:
        raise UserError("INPUT.CROP.ENABLED is not supported by jaxseg's training loader; set it to False")
    mode = cfg.INPUT.RANDOM_FLIP
    if input_spec.hflip_train is not None:  # AdelaiDet's mapper: a horizontal flip iff INPUT.HFLIP_TRAIN
        if mode != "horizontal":
            raise UserError(f"INPUT.RANDOM_FLIP {mode!r} is not read by this model (AdelaiDet's mapper flips "
                            "horizontally when INPUT.HFLIP_TRAIN is True): set INPUT.HFLIP_TRAIN instead")
        return input_spec.train_resize(), RandomFlip(0.5, horizontal=True, vertical=False) if input_spec.hflip_train \
            else None
    if mode not in ("none", "horizontal", "vertical"):
        raise UserError(f"INPUT.RANDOM_FLIP must be 'none', 'horizontal' or 'vertical', got {mode!r}")
    flip = None if mode == "none" else RandomFlip(0.5, horizontal=mode == "horizontal", vertical=mode == "vertical")
    return input_spec.train_resize(), flip


# ----------------------------------------------------------------------------------------------
# One training sample


@dataclass(frozen=True)
class TrainMapper:
    """Turns (epoch, stream position, dataset index) into one augmented sample; picklable for processes.

    A sample holds ``image`` (h, w, C), ``image_hw``, ``image_id``, ``boxes`` (n, 4) and ``classes`` (n,),
    plus ``polygons`` (n lists of (K, 2) float64 arrays in the resized, flipped image) with
    ``target_spec.polygons`` and ``bitmasks`` (n, hs, ws), the stride samples of the resized image (see
    `jaxseg.data.masks`), with ``target_spec.bitmask_stride``, and ``thing_semantic`` (ceil(h / s), ceil(w / s)),
    the thing-semantic map's pixels (s i, s j) (`jaxseg.data.semantic`), with ``target_spec.thing_semantic_stride``.
    """

    records: Sequence[dict]
    image_format: str
    resize: ResizeShortestEdge
    flip: RandomFlip | None
    max_instances: int
    target_spec: TargetSpec
    seed: int

    def __call__(self, key: tuple[int, int, int]) -> dict:
        """Read, resize and flip one image and its instances (rng from (seed, epoch, position))."""
        epoch, position, index = (int(k) for k in key)
        record = self.records[index]
        rng = np.random.default_rng([self.seed, 1, epoch, position])
        image = _read_checked(record, self.image_format)
        h, w = image.shape[:2]
        resize = self.resize.get_transform(h, w, rng)
        image = resize.apply_image(image)
        flip = self.flip.get_transform(resize.new_h, resize.new_w, rng) if self.flip else None
        if flip is not None:
            image = image[:, ::-1] if flip.horizontal else image
            image = image[::-1] if flip.vertical else image
        sample = {"image": image, "image_hw": (resize.new_h, resize.new_w), "image_id": _int_id(record)}
        sample.update(self._instances(record, resize, flip))
        if self.target_spec.thing_semantic_stride:  # every annotation, crowd ones too
            sample["thing_semantic"] = thing_semantic_sample(record.get("annotations", ()), (h, w), resize, flip,
                                                             self.target_spec.thing_semantic_stride)
        return sample

    def _instances(self, record: dict, resize: ResizeTransform, flip: FlipTransform | None) -> dict[str, np.ndarray]:
        """Boxes (resized frame), classes and the masks the target spec asks for, of the kept instances."""
        annos = [a for a in record.get("annotations", ()) if not a.get("iscrowd", 0)]
        boxes = _xyxy(annos)
        if len(boxes):  # as detectron2's transform_instance_annotations: transform, then clip to the new image
            boxes = resize.apply_boxes(boxes)
            boxes = flip.apply_boxes(boxes) if flip is not None else boxes
            boxes = np.minimum(boxes.clip(min=0), [resize.new_w, resize.new_h] * 2)
        keep = np.flatnonzero(((boxes[:, 2] - boxes[:, 0]) > _BOX_EPS) & ((boxes[:, 3] - boxes[:, 1]) > _BOX_EPS))
        if len(keep) > self.max_instances:
            _warn_once("max_instances", f"image {record['image_id']} has {len(keep)} instances; keeping the first "
                       f"{self.max_instances} (DATALOADER.MAX_GT_INSTANCES); further such images are not reported")
            keep = keep[: self.max_instances]
        out = {
            "boxes": boxes[keep].astype(np.float32),
            "classes": np.array([annos[i]["category_id"] for i in keep], np.int32),
        }
        if self.target_spec.polygons:
            out["polygons"] = [transformed_polygons(annos[i]["segmentation"], resize, flip) for i in keep]
        stride = self.target_spec.bitmask_stride
        if stride:
            out["bitmasks"] = np.zeros((len(keep), strided_size(resize.new_h, stride),
                                        strided_size(resize.new_w, stride)), np.uint8)
            for j, i in enumerate(keep):
                full = full_image_bitmask(annos[i].get("segmentation"), boxes[i], resize, flip)
                out["bitmasks"][j] = stride_sample(full, stride)
        return out


def _read_checked(record: dict, image_format: str) -> np.ndarray:
    """The record's image; a UserError if its size differs from the record's height and width."""
    image = read_image(record["file_name"], image_format)
    expected = (record.get("height"), record.get("width"))
    if None not in expected and image.shape[:2] != tuple(expected):
        raise UserError(
            f"image {record['file_name']} is {image.shape[1]}x{image.shape[0]} (WxH) but its annotation says "
            f"{expected[1]}x{expected[0]}"
        )
    return image


def _int_id(record: dict) -> int:
    """The record's image_id as an int (the batch holds int64 ids)."""
    try:
        return int(record["image_id"])
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"image {record.get('file_name')} needs an integer image_id, got "
                        f"{record.get('image_id')!r}") from err


def _xyxy(annos: Sequence[dict]) -> np.ndarray:
    """(N, 4) float64 XYXY boxes of the annotations (XYWH_ABS or XYXY_ABS). As detectron2's BoxMode.convert,
    an XYWH box becomes XYXY in float32 (it converts through a float32 tensor); XYXY boxes stay as given."""
    try:
        boxes = np.array([a["bbox"] for a in annos], np.float64).reshape(-1, 4)
    except (KeyError, ValueError, TypeError) as err:
        raise UserError(f"an annotation has no valid 'bbox' ([x, y, w, h] expected): {err}") from err
    for i, a in enumerate(annos):
        if a.get("bbox_mode", "XYWH_ABS") in ("XYWH_ABS", 1):
            xywh = boxes[i].astype(np.float32)
            boxes[i] = np.concatenate([xywh[:2], xywh[:2] + xywh[2:]])
    return boxes


def collate_train(samples: Sequence[dict], bucket_hw: tuple[int, int], max_instances: int,
                  target_spec: TargetSpec, polygon_capacity: tuple[int, int] = (0, 0)) -> dict[str, np.ndarray]:
    """Pad samples into one batch of the training layout (`jaxseg.data.loaders`): the images, their sizes
    and ids, and exactly the ground truth of ``target_spec.keys()``; polygons in ``polygon_capacity`` (vertex
    slots, polygons) per instance."""
    if target_spec.semantic:
        raise UserError("the model asks for semantic/panoptic ground truth (gt_semantic); semantic/panoptic "
                        "ground truth is not built by jaxseg's loader yet")
    n, g = len(samples), max_instances
    hp, wp = (int(v) for v in bucket_hw)
    channels = samples[0]["image"].shape[2]
    batch = {
        "images": np.zeros((n, hp, wp, channels), np.uint8),
        "image_hw": np.zeros((n, 2), np.int32),
        "gt_boxes": np.zeros((n, g, 4), np.float32),
        "gt_classes": np.zeros((n, g), np.int32),
        "gt_valid": np.zeros((n, g), bool),
    }
    stride = target_spec.bitmask_stride
    if target_spec.polygons:
        slots, polygons = polygon_capacity
        batch["gt_polygon_xy"] = np.zeros((n, g, slots, 2, 2), np.uint32)
        batch["gt_polygon_id"] = np.full((n, g, slots), -1, np.int32)
        batch["gt_polygon_start"] = np.full((n, g, polygons), -1, np.int32)
    if stride:
        batch["gt_bitmasks"] = np.zeros((n, g, hp // stride, wp // stride), np.uint8)
    sem_hw = _thing_semantic_hw((hp, wp), target_spec.thing_semantic_stride)
    if sem_hw:
        batch["gt_thing_semantic"] = np.zeros((n, *sem_hw), np.int32)
    batch["image_id"] = np.zeros((n,), np.int64)
    for i, sample in enumerate(samples):
        h, w = sample["image_hw"]
        batch["images"][i, :h, :w] = sample["image"]
        batch["image_hw"][i] = (h, w)
        batch["image_id"][i] = sample["image_id"]
        k = len(sample["classes"])
        batch["gt_boxes"][i, :k] = sample["boxes"]
        batch["gt_classes"][i, :k] = sample["classes"]
        batch["gt_valid"][i, :k] = True
        if target_spec.polygons:
            packed = pack_polygons(sample["polygons"], *polygon_capacity, where=f"image {sample['image_id']}")
            batch["gt_polygon_xy"][i, :k] = packed["xy"]
            batch["gt_polygon_id"][i, :k] = packed["polygon"]
            batch["gt_polygon_start"][i, :k] = packed["start"]
        if stride:
            bits = sample["bitmasks"][:, : hp // stride, : wp // stride]
            batch["gt_bitmasks"][i, :k, : bits.shape[1], : bits.shape[2]] = bits
        if sem_hw:  # zero padding, then the (s i, s j) samples that fall in the padded size
            labels = sample["thing_semantic"][: sem_hw[0], : sem_hw[1]]
            batch["gt_thing_semantic"][i, : labels.shape[0], : labels.shape[1]] = labels
    return batch


def _thing_semantic_hw(padded_hw: tuple[int, int], stride: int) -> tuple[int, int] | None:
    """(Hp // s, Wp // s) of ``gt_thing_semantic`` (F.interpolate's floor), None when the spec has no map."""
    return (top_left_size(padded_hw[0], stride), top_left_size(padded_hw[1], stride)) if stride else None


# ----------------------------------------------------------------------------------------------
# One evaluation image


@dataclass(frozen=True)
class TestMapper:
    """One evaluation image, resized and padded by the model's ``InputSpec.prepare_test_image``."""

    input_spec: InputSpec

    def __call__(self, record: dict) -> dict[str, Any]:
        image = _read_checked(record, self.input_spec.format)
        h, w = image.shape[:2]
        padded, (nh, nw) = self.input_spec.prepare_test_image(image)
        return {
            "image": padded,
            "image_hw": np.array([[nh, nw]], np.int32),
            "orig_hw": np.array([[h, w]], np.int32),
            "image_id": _int_id(record),
            "file_name": record["file_name"],
        }
