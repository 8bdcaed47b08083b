"""Ground-truth instance masks on the host, in the two forms the training batch carries them.

Box-aligned masks (``gt_masks``, TargetSpec.box_mask_size S, Mask R-CNN)
    ``gt_masks[b, g]`` covers exactly ``gt_boxes[b, g]``: pixel (i, j) is the box cell
    ``x0 + (j + [0, 1]) * (x1 - x0) / S``, ``y0 + (i + [0, 1]) * (y1 - y0) / S``. The device turns it into
    the mask target of a proposal box by ROIAlign with the proposal's coordinates relative to the GT box.
    Polygons are rasterized straight into that frame (as detectron2 rasterizes them into proposal
    boxes); RLE masks are decoded and area-resampled into it (Pillow bilinear with a box, >= 0.5). The
    crop is taken in the original image (the box before resizing) and flipped with the image; resizing
    does not change it.

Full-image bitmasks (``gt_bitmasks``, TargetSpec.bitmask_stride s, BlendMask / CondInst-style heads)
    As AdelaiDet's ``add_bitmasks``: the full-resolution 0/1 mask of the instance in the resized (and
    flipped) image, zero-padded to the batch's padded size (Hp, Wp), then sampled at
    ``[s // 2::s, s // 2::s]``, which gives (Hp // s, Wp // s) when s divides Hp and Wp. Polygons: their
    coordinates go through the resize and the flip, then pycocotools rasterizes them at the resized
    image size (AdelaiDet rasterizes at the padded size; the two agree for polygons inside the image).
    RLE: decoded at the original size, resized with nearest neighbour and flipped, as detectron2's
    BitMasks. No segmentation: the pixels whose centre lies in the (transformed) box. The sampling grid
    does not depend on the padding, so a sample carries only the sampled part of its resized image
    (:func:`stride_sample`) and collation pads it with zeros.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from jaxseg.data.coco import annotation_to_mask
from jaxseg.data.transforms import BILINEAR, FlipTransform, ResizeTransform

__all__ = ["box_aligned_mask", "full_image_bitmask", "pack_polygons", "paste_box_mask", "polygon_capacity",
           "stride_sample", "strided_size"]


# ----------------------------------------------------------------------------------------------
# Polygons for the device (Mask R-CNN targets rasterised inside each sampled RoI)


def polygon_capacity(records: Sequence[dict], multiple: int = 16) -> tuple[int, int]:
    """(vertex slots S, polygons P) that hold every non-crowd polygon instance of ``records``: the most
    vertices and polygons of one instance, rounded up to ``multiple`` (S) and to a multiple of 4 (P)."""
    points = polygons = 1
    for record in records:
        for anno in record.get("annotations", ()):
            segm = anno.get("segmentation")
            if anno.get("iscrowd", 0) or not isinstance(segm, list) or not segm:
                continue
            points = max(points, sum(len(p) // 2 for p in segm))
            polygons = max(polygons, len(segm))
    return -(-points // multiple) * multiple, -(-polygons // 4) * 4


def pack_polygons(instances: Sequence[Sequence[np.ndarray]], slots: int, max_polygons: int,
                  where: str = "an image") -> dict[str, np.ndarray]:
    """Polygons of G instances (each a list of (K, 2) float64 arrays, transformed into the training image)
    -> the device layout read by `jaxseg.models.ops.rasterize`:

    ``xy`` (G, S, 2, 2) uint32: the float64 x, y of each vertex slot as bit patterns (exact; jax arrays are
    not float64), ``polygon`` (G, S) int32: the slot's polygon within its instance, -1 for padding (a
    polygon's slots are consecutive), ``start`` (G, P) int32: each polygon's first slot (-1 padding).
    """
    xy = np.zeros((len(instances), slots, 2), np.float64)
    polygon = np.full((len(instances), slots), -1, np.int32)
    start = np.full((len(instances), max_polygons), -1, np.int32)
    for g, polys in enumerate(instances):
        n = sum(len(p) for p in polys)
        if n > slots or len(polys) > max_polygons:
            raise ValueError(f"{where}: instance {g} has {len(polys)} polygons with {n} vertices; the batch "
                             f"layout holds {max_polygons} polygons with {slots} vertices per instance")
        at = 0
        for k, p in enumerate(polys):
            xy[g, at:at + len(p)] = p
            polygon[g, at:at + len(p)] = k
            start[g, k] = at
            at += len(p)
    return {"xy": xy.view(np.uint32).reshape(len(instances), slots, 2, 2), "polygon": polygon, "start": start}


# ----------------------------------------------------------------------------------------------
# Masks in the frame of their box


def box_aligned_mask(segmentation: list | dict | None, box: Sequence[float], size: int,
                     image_hw: tuple[int, int]) -> np.ndarray:
    """The (size, size) uint8 0/1 mask of ``segmentation`` sampled inside ``box`` (XYXY, same frame).

    Polygons are shifted and scaled into the box and rasterized at ``size``; an RLE (compressed or
    not) of an ``image_hw`` image is decoded and area-resampled; no segmentation fills the box.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    if not segmentation:
        return np.ones((size, size), np.uint8)
    if isinstance(segmentation, dict):
        return _rle_box_mask(segmentation, (x0, y0, x1, y1), size, image_hw)
    scale = np.array([size / max(x1 - x0, 0.1), size / max(y1 - y0, 0.1)])
    polygons = [((np.asarray(p, np.float64).reshape(-1, 2) - (x0, y0)) * scale).ravel().tolist()
                for p in segmentation]
    rle = mask_util.merge(mask_util.frPyObjects(polygons, size, size))
    return np.ascontiguousarray(mask_util.decode(rle), dtype=np.uint8)


def _rle_box_mask(rle: dict, box: tuple[float, float, float, float], size: int,
                  image_hw: tuple[int, int]) -> np.ndarray:
    """An RLE mask decoded at image size, then averaged over the box onto a size x size grid."""
    h, w = image_hw
    if isinstance(rle["counts"], list):
        rle = mask_util.frPyObjects(rle, h, w)
    full = mask_util.decode(rle)
    x0, y0, x1, y1 = box
    x1, y1 = max(x1, x0 + 1e-3), max(y1, y0 + 1e-3)
    image = Image.fromarray(full * np.uint8(255))
    resampled = np.asarray(image.resize((size, size), BILINEAR, box=(x0, y0, min(x1, w), min(y1, h))))
    return (resampled >= 128).astype(np.uint8)


def paste_box_mask(mask: np.ndarray, box: Sequence[float], image_hw: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`box_aligned_mask`: (H, W) uint8, 1 where a pixel centre falls in a set cell of the box."""
    h, w = image_hw
    size_y, size_x = mask.shape
    x0, y0, x1, y1 = (float(v) for v in box)
    cols = np.floor((np.arange(w) + 0.5 - x0) / max(x1 - x0, 1e-6) * size_x).astype(np.int64)
    rows = np.floor((np.arange(h) + 0.5 - y0) / max(y1 - y0, 1e-6) * size_y).astype(np.int64)
    inside = (rows[:, None] >= 0) & (rows[:, None] < size_y) & (cols[None] >= 0) & (cols[None] < size_x)
    out = mask[np.clip(rows, 0, size_y - 1)[:, None], np.clip(cols, 0, size_x - 1)[None]]
    return (out.astype(bool) & inside).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Full-image masks at a stride


def full_image_bitmask(segmentation: list | dict | None, box: Sequence[float], resize: ResizeTransform,
                       flip: FlipTransform | None) -> np.ndarray:
    """The (new_h, new_w) uint8 0/1 mask of an instance in the resized and flipped image.

    ``box`` is the instance's XYXY box in that final frame (used only without a segmentation).
    """
    hw = (resize.new_h, resize.new_w)
    if not segmentation:
        return paste_box_mask(np.ones((1, 1), np.uint8), box, hw)
    if isinstance(segmentation, dict):
        mask = resize.apply_segmentation(annotation_to_mask(segmentation, resize.h, resize.w))
        return flip.apply_segmentation(mask) if flip is not None else mask
    polygons = []
    for p in segmentation:
        coords = resize.apply_coords(np.asarray(p, np.float64).reshape(-1, 2))
        polygons.append((flip.apply_coords(coords) if flip is not None else coords).ravel().tolist())
    return annotation_to_mask(polygons, *hw)


def strided_size(n: int, stride: int) -> int:
    """How many of the positions ``stride // 2, stride // 2 + stride, ...`` lie in ``range(n)``."""
    return len(range(stride // 2, n, stride))


def stride_sample(mask: np.ndarray, stride: int) -> np.ndarray:
    """``mask[..., s // 2::s, s // 2::s]``: the stride-s samples AdelaiDet takes of a full-resolution mask."""
    start = stride // 2
    return np.ascontiguousarray(mask[..., start::stride, start::stride])
