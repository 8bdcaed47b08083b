"""FCOS training targets (AdelaiDet `FCOSOutputs._get_ground_truth`) as static-shape JAX.

Every location of every FPN level is assigned by rule, per image, to at most one ground-truth box:

1. *Candidates.* With center sampling, a location is a candidate for a GT box when it lies strictly inside the
   square of half-width `pos_radius * stride` around the box centre, clipped to the box. Without it, strictly
   inside the box (all of l, t, r, b > 0).
2. *Scale.* The location's level must "care" about the box: `lo <= max(l, t, r, b) <= hi` in pixels, both ends
   inclusive, with (lo, hi) the level's size range.
3. *Ambiguity.* Of the remaining boxes the one with the smallest area wins; equal areas go to the lowest index.
   Locations left without a box are background (label `num_classes`).

Regression targets are (l, t, r, b) of the assigned box in units of the location's stride; the centerness target
is `sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))` (zero at background locations).

Ground truth is padded to a fixed G per image with a validity mask; padding rows never match. The largest
intermediates are (N, L, G) float32/bool arrays, one per box side.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

INF = 100000000.0  # AdelaiDet's "no box" area and the open upper size bound


def fcos_locations(feature_hw: Sequence[tuple[int, int]], strides: Sequence[int]) -> np.ndarray:
    """(L, 2) float32 (x, y) of every location: `(j * s + s // 2, i * s + s // 2)` over each padded (H_l, W_l)
    feature map, row-major per level, levels concatenated in the given order."""
    out = []
    for (h, w), s in zip(feature_hw, strides, strict=True):
        ys, xs = np.meshgrid(np.arange(h) * s + s // 2, np.arange(w) * s + s // 2, indexing="ij")
        out.append(np.stack([xs.reshape(-1), ys.reshape(-1)], axis=1))
    return np.concatenate(out).astype(np.float32)


def location_levels(feature_hw: Sequence[tuple[int, int]]) -> np.ndarray:
    """(L,) int32 level index of every location, in `fcos_locations`' order."""
    return np.concatenate([np.full(h * w, i, np.int32) for i, (h, w) in enumerate(feature_hw)])


def level_ranges(sizes_of_interest: Sequence[float], num_levels: int) -> list[tuple[float, float]]:
    """FCOS.SIZES_OF_INTEREST (one value fewer than levels) -> per-level (lo, hi):
    (-1, s0), (s0, s1), ..., (s_last, INF)."""
    if len(sizes_of_interest) != num_levels - 1:
        raise ValueError(f"sizes_of_interest {list(sizes_of_interest)} must have {num_levels - 1} values "
                         f"for {num_levels} levels")
    bounds = [-1.0, *(float(s) for s in sizes_of_interest), INF]
    return list(zip(bounds[:-1], bounds[1:]))


def _sides(xs: jax.Array, ys: jax.Array, boxes: jax.Array) -> tuple[jax.Array, ...]:
    """Distances (l, t, r, b) from locations to boxes, each broadcast like `xs` against the box axis."""
    x1, y1, x2, y2 = (boxes[..., k] for k in range(4))
    return xs - x1, ys - y1, x2 - xs, y2 - ys


def _candidates(xs, ys, boxes, radius_px, center_sample: bool) -> jax.Array:
    """(N, L, G) bool: location strictly inside the (centre-sampled) box. xs/ys/radius_px (1, L, 1), boxes
    (N, 1, G, 4)."""
    x1, y1, x2, y2 = (boxes[..., k] for k in range(4))
    if center_sample:  # the centre square, clipped to the box
        cx, cy = (x1 + x2) * 0.5, (y1 + y2) * 0.5
        x1, y1 = jnp.maximum(cx - radius_px, x1), jnp.maximum(cy - radius_px, y1)
        x2, y2 = jnp.minimum(cx + radius_px, x2), jnp.minimum(cy + radius_px, y2)
    return (xs - x1 > 0) & (ys - y1 > 0) & (x2 - xs > 0) & (y2 - ys > 0)


def _first_centre_x_is_zero(gt_boxes: jax.Array, gt_valid: jax.Array) -> jax.Array:
    """(N,) bool: the image's first valid GT box has centre x == 0. AdelaiDet's center sampling then returns no
    candidate at all for the image (its "no gt" test looks at the first box's centre only); kept for parity. Only a
    zero-width box at the left border can trigger it, and detectron2's mapper filters those out."""
    first = jnp.argmax(gt_valid, axis=1)  # (N,)
    box = jnp.take_along_axis(gt_boxes, first[:, None, None], axis=1)[:, 0]  # (N, 4)
    return gt_valid.any(axis=1) & ((box[:, 0] + box[:, 2]) * 0.5 == 0)


def fcos_targets(locations, level_index, strides: Sequence[int], size_ranges: Sequence[tuple[float, float]],
                 gt_boxes: jax.Array, gt_classes: jax.Array, gt_valid: jax.Array, *, num_classes: int,
                 center_sample: bool = True, pos_radius: float = 1.5) -> dict[str, jax.Array]:
    """Assign every location of every image (rules in the module docstring).

    locations (L, 2) float32 (x, y) pixels; level_index (L,) int; strides and size_ranges per level (static);
    gt_boxes (N, G, 4) XYXY pixels, gt_classes (N, G) int, gt_valid (N, G) bool.

    Returns labels (N, L) int32 (`num_classes` = background), gt_index (N, L) int32 (the assigned GT row; 0 where
    not positive), reg_targets (N, L, 4) float32 (l, t, r, b) / stride of the assigned box (0 where not positive),
    ctr_targets (N, L) float32 (0 where not positive) and positive (N, L) bool.
    """
    locations = jnp.asarray(locations, jnp.float32)
    level_index = jnp.asarray(level_index, jnp.int32)
    gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
    gt_valid = jnp.asarray(gt_valid, bool)
    n, g = gt_boxes.shape[:2]
    num_loc = locations.shape[0]
    if g == 0:
        return _background(n, num_loc, num_classes)
    stride = jnp.asarray(np.asarray(strides, np.float32))[level_index]  # (L,)
    radius_px = jnp.asarray(np.asarray([s * pos_radius for s in strides], np.float32))[level_index]
    ranges = jnp.asarray(np.asarray(size_ranges, np.float32))[level_index]  # (L, 2)

    xs, ys = locations[None, :, 0, None], locations[None, :, 1, None]  # (1, L, 1)
    boxes = gt_boxes[:, None]  # (N, 1, G, 4)
    left, top, right, bottom = _sides(xs, ys, boxes)  # each (N, L, G) pixels
    max_side = jnp.maximum(jnp.maximum(left, top), jnp.maximum(right, bottom))
    cared = (max_side >= ranges[None, :, 0, None]) & (max_side <= ranges[None, :, 1, None])
    cand = _candidates(xs, ys, boxes, radius_px[None, :, None], center_sample) & cared & gt_valid[:, None, :]
    if center_sample:
        cand = cand & ~_first_centre_x_is_zero(gt_boxes, gt_valid)[:, None, None]

    area = (gt_boxes[..., 2] - gt_boxes[..., 0]) * (gt_boxes[..., 3] - gt_boxes[..., 1])  # (N, G)
    loc_area = jnp.where(cand, area[:, None, :], INF)  # (N, L, G)
    gt_index = jnp.argmin(loc_area, axis=2).astype(jnp.int32)  # (N, L), first minimum on ties
    positive = jnp.take_along_axis(loc_area, gt_index[..., None], axis=2)[..., 0] != INF
    gt_index = jnp.where(positive, gt_index, 0)

    assigned = jnp.take_along_axis(gt_boxes, gt_index[..., None], axis=1)  # (N, L, 4)
    sides = _sides(locations[None, :, 0], locations[None, :, 1], assigned)
    reg = jnp.stack(sides, axis=-1) / stride[None, :, None]  # (N, L, 4) stride units
    reg = jnp.where(positive[..., None], reg, 0.0)
    labels = jnp.take_along_axis(jnp.asarray(gt_classes, jnp.int32), gt_index, axis=1)
    labels = jnp.where(positive, labels, num_classes)
    return {"labels": labels, "gt_index": gt_index, "reg_targets": reg,
            "ctr_targets": centerness_targets(reg, positive), "positive": positive}


def centerness_targets(reg: jax.Array, positive: jax.Array) -> jax.Array:
    """(..., 4) (l, t, r, b) -> (...) sqrt(min(l, r)/max(l, r) * min(t, b)/max(t, b)); 0 where not positive (the
    division is guarded there, so no NaN appears)."""
    lr, tb = reg[..., 0::2], reg[..., 1::2]
    safe = lambda v: jnp.where(positive, v, 1.0)
    ratio = (lr.min(-1) / safe(lr.max(-1))) * (tb.min(-1) / safe(tb.max(-1)))
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, ratio, 1.0)), 0.0)


def _background(n: int, num_loc: int, num_classes: int) -> dict[str, jax.Array]:
    """Targets of images without any GT slot: everything background."""
    return {"labels": jnp.full((n, num_loc), num_classes, jnp.int32), "gt_index": jnp.zeros((n, num_loc), jnp.int32),
            "reg_targets": jnp.zeros((n, num_loc, 4), jnp.float32), "ctr_targets": jnp.zeros((n, num_loc), jnp.float32),
            "positive": jnp.zeros((n, num_loc), bool)}
