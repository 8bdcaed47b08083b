"""Ground-truth instance masks on the host, in the two forms the training batch carries them.

Polygons (``gt_polygon_xy``, ``gt_polygon_id``, ``gt_polygon_start``; TargetSpec.polygons, Mask R-CNN)
    An instance's polygons in the resized and flipped image, float64 as detectron2 transforms them, packed
    into a fixed number of vertex slots per instance (:func:`pack_polygons`; the capacity comes from the
    whole training set, :func:`polygon_capacity`). The device rasterises them inside every sampled RoI
    (`jaxseg.models.ops.rasterize`), as detectron2 does with pycocotools, so the targets are exact.

Full-image bitmasks (``gt_bitmasks``, TargetSpec.bitmask_stride s, BlendMask / CondInst-style heads)
    As AdelaiDet's ``add_bitmasks``: the full-resolution 0/1 mask of the instance in the resized (and
    flipped) image, zero-padded to the batch's padded size (Hp, Wp), then sampled at
    ``[s // 2::s, s // 2::s]``, which gives (Hp // s, Wp // s) when s divides Hp and Wp. Polygons: their
    coordinates go through the resize and the flip, then pycocotools rasterizes them at the resized
    image size (AdelaiDet rasterizes at the padded size; the two agree for polygons inside the image).
    RLE: decoded at the original size, resized with nearest neighbour and flipped, as detectron2's
    BitMasks. No segmentation: the pixels whose centre lies in the (transformed) box. The sampling grid
    does not depend on the padding, so a sample carries only the sampled part of its resized image
    (:func:`stride_sample`) and collation pads it with zeros. With stride 1 this is detectron2's
    INPUT.MASK_FORMAT bitmask (BitMasks), which Mask R-CNN ROIAligns into each sampled RoI.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxseg.data.coco import annotation_to_mask
from jaxseg.data.transforms import FlipTransform, ResizeTransform
from jaxseg.errors import UserError

__all__ = ["full_image_bitmask", "pack_polygons", "paste_box_mask", "polygon_capacity", "stride_sample",
           "strided_size", "transformed_polygons"]


# ----------------------------------------------------------------------------------------------
# Polygons for the device (Mask R-CNN targets rasterised inside each sampled RoI)


def polygon_capacity(records: Sequence[dict], multiple: int = 16) -> tuple[int, int]:
    """(vertex slots S, polygons P) that hold every non-crowd instance of ``records``: the most vertices and
    polygons of one instance, rounded up to ``multiple`` (S) and to a multiple of 4 (P).

    Raises UserError for an instance without polygons (an RLE or no segmentation): as detectron2 with
    INPUT.MASK_FORMAT polygon, such data needs INPUT.MASK_FORMAT bitmask."""
    points = polygons = 1
    for record in records:
        for anno in record.get("annotations", ()):
            if anno.get("iscrowd", 0):
                continue
            segm = anno.get("segmentation")
            if not isinstance(segm, list) or not segm:
                kind = "an RLE segmentation" if isinstance(segm, dict) else "no segmentation"
                raise UserError(
                    f"image {record.get('file_name')}: annotation {anno.get('id', '?')} has {kind}; "
                    "INPUT.MASK_FORMAT polygon trains on polygons only, set INPUT.MASK_FORMAT bitmask for RLE masks")
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
# Full-image masks


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
    return annotation_to_mask([p.ravel().tolist() for p in transformed_polygons(segmentation, resize, flip)], *hw)


def transformed_polygons(segmentation: list, resize: ResizeTransform, flip: FlipTransform | None) -> list[np.ndarray]:
    """An instance's polygons as (K, 2) float64 points of the resized and flipped image (detectron2's
    ``transform_instance_annotations``: the points are scaled and flipped in float64, not clipped)."""
    out = []
    for p in segmentation:
        coords = resize.apply_coords(np.asarray(p, np.float64).reshape(-1, 2))
        out.append(flip.apply_coords(coords) if flip is not None else coords)
    return out


def strided_size(n: int, stride: int) -> int:
    """How many of the positions ``stride // 2, stride // 2 + stride, ...`` lie in ``range(n)``."""
    return len(range(stride // 2, n, stride))


def stride_sample(mask: np.ndarray, stride: int) -> np.ndarray:
    """``mask[..., s // 2::s, s // 2::s]``: the stride-s samples AdelaiDet takes of a full-resolution mask."""
    start = stride // 2
    return np.ascontiguousarray(mask[..., start::stride, start::stride])
