"""Thing-semantic maps: BlendMask's auxiliary "basis semantic" target, built while loading.

AdelaiDet precomputes this map with ``datasets/prepare_thing_sem_from_instance.py`` (a file per image
under ``thing_train2017/``) and its training mapper reads it back; jaxseg builds the same map from the
record's annotations on the fly (`TargetSpec.thing_semantic_stride` s, batch key ``gt_thing_semantic``):

1. at the original image size, each annotation's pycocotools mask is painted in annotation order with
   its contiguous class id + 1 (a later annotation overwrites an earlier one, 0 is background);
   every annotation of the image counts, crowd ones too, as in upstream's script (annotations without a
   segmentation paint nothing: upstream's script cannot read them at all);
2. the mapper's resize moves it as a segmentation (Pillow NEAREST), then the flip if any;
3. zero padding to the batch's (Hp, Wp) and ``F.interpolate(scale_factor=1 / s)`` (nearest): pixel
   (s i, s j), the top-left of each s x s cell, for an (Hp // s, Wp // s) target. That sampling grid
   starts at the origin whatever the padding, so a sample carries only ``map[::s, ::s]`` of its image
   (:func:`top_left_sample`) and collation pads it with zeros (:func:`top_left_target` is the whole rule
   on a padded map).

The map is uint8 as upstream's; an image with a class id of 255 or more gets an int32 map instead
(upstream's uint8 file would wrap those ids).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from jaxseg.data.coco import annotation_to_mask
from jaxseg.data.transforms import NEAREST, FlipTransform, ResizeTransform

__all__ = ["resize_labels", "thing_semantic_map", "thing_semantic_sample", "top_left_sample", "top_left_size",
           "top_left_target", "transform_labels"]


def thing_semantic_map(annotations: Sequence[dict], height: int, width: int) -> np.ndarray:
    """The (height, width) thing-semantic map of one image's annotations at its original size.

    A pixel holds ``category_id + 1`` (contiguous ids) of the last annotation in ``annotations`` whose mask
    covers it, 0 where none does. Crowd annotations are painted like the others; annotations without a
    segmentation are skipped. uint8, or int32 when some id + 1 exceeds 255.
    """
    ids = [int(a["category_id"]) for a in annotations]
    dtype = np.uint8 if max(ids, default=0) < 255 else np.int32
    out = np.zeros((height, width), dtype)
    for anno, class_id in zip(annotations, ids):
        segmentation = anno.get("segmentation")
        if segmentation:
            out[annotation_to_mask(segmentation, height, width) == 1] = class_id + 1
    return out


def resize_labels(labels: np.ndarray, resize: ResizeTransform) -> np.ndarray:
    """A label map through ``resize`` with Pillow NEAREST (mode "L" for uint8, as detectron2; "I" for int32)."""
    if labels.dtype == np.uint8:
        return resize.apply_segmentation(labels)
    image = Image.fromarray(labels.astype(np.int32))
    return np.array(image.resize((resize.new_w, resize.new_h), NEAREST), np.int32)


def transform_labels(labels: np.ndarray, resize: ResizeTransform, flip: FlipTransform | None) -> np.ndarray:
    """A label map of the original image moved into the resized and flipped training image."""
    labels = resize_labels(labels, resize)
    return flip.apply_segmentation(labels) if flip is not None else labels


def top_left_size(n: int, stride: int) -> int:
    """Length of a side of n pixels after ``F.interpolate(scale_factor=1 / stride)``: ``n // stride`` (floor)."""
    return n // stride


def top_left_sample(labels: np.ndarray, stride: int) -> np.ndarray:
    """``labels[::s, ::s]``: the pixels (s i, s j) that lie in the map (ceil(H / s), ceil(W / s))."""
    return np.ascontiguousarray(labels[::stride, ::stride])


def top_left_target(padded: np.ndarray, stride: int) -> np.ndarray:
    """Nearest ``F.interpolate(scale_factor=1 / s)`` of a padded (Hp, Wp) map: pixel (s i, s j), for i < Hp // s
    and j < Wp // s."""
    hp, wp = padded.shape[-2:]
    return top_left_sample(padded, stride)[: top_left_size(hp, stride), : top_left_size(wp, stride)]


def thing_semantic_sample(annotations: Sequence[dict], image_hw: tuple[int, int], resize: ResizeTransform,
                          flip: FlipTransform | None, stride: int) -> np.ndarray:
    """One training sample's part of ``gt_thing_semantic``: the map of ``annotations`` at the original
    ``image_hw``, resized, flipped and sampled at the top-left of every stride cell."""
    labels = thing_semantic_map(annotations, *image_hw)
    return top_left_sample(transform_labels(labels, resize, flip), stride)
