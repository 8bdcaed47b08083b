"""One training or evaluation sample from a dataset record, and the collation of training samples.

Training follows detectron2's training mapper: the model's resize (``InputSpec.train_resize()``,
ResizeShortestEdge over MIN_SIZE_TRAIN / MAX_SIZE_TRAIN / MIN_SIZE_TRAIN_SAMPLING), then
RandomFlip(INPUT.RANDOM_FLIP); crowd annotations removed; boxes clipped to the image and the empty
ones dropped (and instances whose RLE mask is empty inside their box, when box-aligned masks are
built). Only the ground truth the model's `TargetSpec` names is built: no mask is decoded when the
spec asks for none. Evaluation images are prepared by ``InputSpec.prepare_test_image``, the same code
the predictor runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jaxseg.data.image_io import read_image
from jaxseg.data.input_spec import InputSpec
from jaxseg.data.masks import box_aligned_mask, full_image_bitmask, stride_sample, strided_size
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
    plus ``masks`` (n, S, S) with ``target_spec.box_mask_size`` S and ``bitmasks`` (n, hs, ws), the stride
    samples of the resized image (see `jaxseg.data.masks`), with ``target_spec.bitmask_stride``.
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
        return sample

    def _instances(self, record: dict, resize: ResizeTransform, flip: FlipTransform | None) -> dict[str, np.ndarray]:
        """Boxes (resized frame), classes and the masks the target spec asks for, of the kept instances."""
        h, w = resize.h, resize.w
        annos = [a for a in record.get("annotations", ()) if not a.get("iscrowd", 0)]
        boxes = _xyxy_clipped(annos, h, w)
        new_boxes = resize.apply_boxes(boxes) if len(boxes) else boxes
        if flip is not None and len(boxes):
            new_boxes = flip.apply_boxes(new_boxes)
        keep = ((new_boxes[:, 2] - new_boxes[:, 0]) > _BOX_EPS) & ((new_boxes[:, 3] - new_boxes[:, 1]) > _BOX_EPS)
        size = self.target_spec.box_mask_size
        masks = None
        if size:
            masks = np.zeros((len(annos), size, size), np.uint8)
            for i in np.flatnonzero(keep):
                masks[i] = box_aligned_mask(annos[i].get("segmentation"), boxes[i], size, (h, w))
                keep[i] = not isinstance(annos[i].get("segmentation"), dict) or masks[i].any()
            if flip is not None and flip.horizontal:
                masks = masks[:, :, ::-1]
            if flip is not None and flip.vertical:
                masks = masks[:, ::-1, :]
        keep = np.flatnonzero(keep)
        if len(keep) > self.max_instances:
            _warn_once("max_instances", f"image {record['image_id']} has {len(keep)} instances; keeping the first "
                       f"{self.max_instances} (DATALOADER.MAX_GT_INSTANCES); further such images are not reported")
            keep = keep[: self.max_instances]
        out = {
            "boxes": new_boxes[keep].astype(np.float32),
            "classes": np.array([annos[i]["category_id"] for i in keep], np.int32),
        }
        if masks is not None:
            out["masks"] = masks[keep]
        stride = self.target_spec.bitmask_stride
        if stride:
            out["bitmasks"] = np.zeros((len(keep), strided_size(resize.new_h, stride),
                                        strided_size(resize.new_w, stride)), np.uint8)
            for j, i in enumerate(keep):
                full = full_image_bitmask(annos[i].get("segmentation"), new_boxes[i], resize, flip)
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


def _xyxy_clipped(annos: Sequence[dict], h: int, w: int) -> np.ndarray:
    """(N, 4) float64 XYXY boxes of the annotations (XYWH_ABS or XYXY_ABS), clipped to the image."""
    try:
        boxes = np.array([a["bbox"] for a in annos], np.float64).reshape(-1, 4)
    except (KeyError, ValueError, TypeError) as err:
        raise UserError(f"an annotation has no valid 'bbox' ([x, y, w, h] expected): {err}") from err
    for i, a in enumerate(annos):
        if a.get("bbox_mode", "XYWH_ABS") in ("XYWH_ABS", 1):
            boxes[i, 2:] += boxes[i, :2]
    return np.clip(boxes, 0.0, [w, h, w, h])


def collate_train(samples: Sequence[dict], bucket_hw: tuple[int, int], max_instances: int,
                  target_spec: TargetSpec) -> dict[str, np.ndarray]:
    """Pad samples into one batch of the training layout (`jaxseg.data.loaders`): the images, their sizes
    and ids, and exactly the ground truth of ``target_spec.keys()``."""
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
    size, stride = target_spec.box_mask_size, target_spec.bitmask_stride
    if size:
        batch["gt_masks"] = np.zeros((n, g, size, size), np.uint8)
    if stride:
        batch["gt_bitmasks"] = np.zeros((n, g, hp // stride, wp // stride), np.uint8)
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
        if size:
            batch["gt_masks"][i, :k] = sample["masks"]
        if stride:
            bits = sample["bitmasks"][:, : hp // stride, : wp // stride]
            batch["gt_bitmasks"][i, :k, : bits.shape[1], : bits.shape[2]] = bits
    return batch


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
