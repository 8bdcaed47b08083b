"""Polygon rasterisation inside a box, equal pixel for pixel to detectron2's mask targets.

detectron2 builds a Mask R-CNN mask target by shifting an instance's polygons to the proposal's corner,
scaling them by ``M / max(w, 0.1)`` (``w`` the box width in float32, the ratio in float32, the polygon
arithmetic in float64) and rasterising each polygon at M x M with pycocotools (``frPyObjects``), then taking
their union (``merge``). This module computes the same thing on the device, for every sampled RoI at once.

pycocotools' rule (``rleFrPoly``) for one polygon on an h x w grid:

1. vertices are upsampled x5 and truncated to ints: ``X = (int)(5 * x + 0.5)`` (C truncation, toward 0);
2. every edge is walked one integer step at a time along its longer axis (``u``, ``v`` the upsampled
   column and row of each step, the other coordinate ``(int)(start + slope * t + 0.5)`` in double, from the
   endpoint with the smaller walking coordinate);
3. column n of the mask gets a crossing wherever two consecutive steps have ``u`` values 5n+2 and 5n+3;
   its row is ``ceil((min(v, v') - 2) / 5)`` clamped to [0, h];
4. in each column, a pixel is inside when an odd number of the column's crossings lie at or above it.

Here step 3 is evaluated per (edge, column) in closed form (each edge crosses a column boundary at most
once: ``u`` is monotone along it), so no edge is ever walked and the cost does not depend on how far the
polygon reaches outside the box. The float64 steps of 1. and 2. are done in float64 (``jax.enable_x64``
locally), which the CPU and GPU backends support; every other step is integer arithmetic, exact anywhere.

The polygons travel packed (`jaxseg.data.masks.pack_polygons`): per instance S vertex slots holding the
float64 coordinates as their bit patterns (uint32 pairs: the arrays of a jax program without x64 cannot be
float64), the polygon each slot belongs to (-1: padding) and the first slot of each of its P polygons.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["rasterize_polygons_within_boxes"]

_SCALE = 5  # pycocotools' upsampling factor


def _f64(x: jax.Array) -> jax.Array:
    return x.astype(jnp.float64)


def _times_five(x: jax.Array) -> jax.Array:
    """fl(5 * x) as x * 4 + x (4x is exact): the same double whether or not the compiler fuses the two into
    a multiply-add (XLA's CPU and GPU backends do; fusing 5 * x + 0.5 would round once instead of twice)."""
    return x * 4.0 + x


def _product(slope: jax.Array, t: jax.Array) -> jax.Array:
    """fl(slope * t) for integers |t| < 2^24, as a sum of two exact products (slope split into its high 26 and
    low 27 mantissa bits), so that no multiply result feeds an add the compiler could fuse with it."""
    bits = jax.lax.bitcast_convert_type(slope, jnp.int64)
    hi = jax.lax.bitcast_convert_type(bits & ~np.int64((1 << 27) - 1), jnp.float64)
    t = _f64(t)
    return hi * t + (slope - hi) * t


def _round_half(start: jax.Array, slope: jax.Array, t: jax.Array) -> jax.Array:
    """(int)(start + slope * t + 0.5) in double, as pycocotools' edge walk (start, t ints)."""
    return (_f64(start) + _product(slope, t) + 0.5).astype(jnp.int32)


def _ratio(size: jax.Array, mask_size: int) -> jax.Array:
    """mask_size / max(size, 0.1) as NumPy 2 computes it for a float32 size (float32, or 280.0 in float64
    when the size is below 0.1), returned as float64."""
    small = size < np.float32(0.1)
    ratio32 = (np.float32(mask_size) / jnp.where(small, np.float32(1.0), size)).astype(jnp.float32)
    return jnp.where(small, np.float64(mask_size) / 0.1, _f64(ratio32))


def _edge_crossings(x0: jax.Array, y0: jax.Array, x1: jax.Array, y1: jax.Array, width: int,
                    height: int) -> tuple[jax.Array, jax.Array]:
    """Upsampled int endpoints (E,) of edges -> (crosses (E, W) bool, row (E, W) int32 in [0, height]):
    where each edge crosses each mask column and at which row it toggles."""
    dx, dy = jnp.abs(x1 - x0), jnp.abs(y1 - y0)
    shallow = dx >= dy
    flip = jnp.where(shallow, x0 > x1, y0 > y1)
    xs, xe = jnp.where(flip, x1, x0), jnp.where(flip, x0, x1)
    ys, ye = jnp.where(flip, y1, y0), jnp.where(flip, y0, y1)
    length = jnp.where(shallow, dx, dy)  # steps t = 0 .. length
    slope = jnp.where(shallow, _f64(ye - ys), _f64(xe - xs)) / _f64(jnp.maximum(length, 1))
    lo = (_SCALE * jnp.arange(width, dtype=jnp.int32) + 2)[None, :]  # u values 5n+2 | 5n+3 bound column n
    xs_, ys_, xe_, slope_, length_ = (a[:, None] for a in (xs, ys, xe, slope, length))

    # shallow edges: u = xs + t steps by one, so the pair is t = lo - xs and t + 1
    t = jnp.clip(lo - xs_, 0, jnp.maximum(length_ - 1, 0))
    cross_shallow = (xs_ <= lo) & (lo + 1 <= xe_)
    v_shallow = jnp.minimum(_round_half(ys_, slope_, t), _round_half(ys_, slope_, t + 1))

    # steep edges: v = ys + t, u = (int)(xs + slope * t + 0.5) monotone in t; find the step where u passes
    # from lo to lo + 1 (slope > 0) or from lo + 1 to lo (slope < 0) near its real-valued solution
    up = slope_ > 0
    q = (_f64(lo) + 0.5 - _f64(xs_)) / jnp.where(slope_ == 0, 1.0, slope_)
    q = jnp.clip(q, -2.0, _f64(length_) + 2.0)
    est = jnp.where(up, jnp.ceil(q) - 1, jnp.floor(q)).astype(jnp.int32)
    found = jnp.zeros(est.shape, bool)
    step = jnp.zeros(est.shape, jnp.int32)
    for c in (est - 1, est, est + 1):
        u0, u1 = _round_half(xs_, slope_, c), _round_half(xs_, slope_, c + 1)
        ok = jnp.where(up, (u0 <= lo) & (u1 >= lo + 1), (u0 >= lo + 1) & (u1 <= lo))
        ok &= (c >= 0) & (c + 1 <= length_) & (slope_ != 0)
        step = jnp.where(ok & ~found, c, step)
        found |= ok
    v_steep = ys_ + step

    crosses = jnp.where(shallow[:, None], cross_shallow & (length_ > 0), found)
    v = jnp.where(shallow[:, None], v_shallow, v_steep)
    row = jnp.clip(-jnp.floor_divide(2 - v, _SCALE), 0, height)  # ceil((v - 2) / 5), clamped
    return crosses, row


def _next_slot(polygon: jax.Array, start: jax.Array) -> jax.Array:
    """The slot of each vertex's successor: the next slot in the same polygon, else the polygon's first."""
    nxt = jnp.arange(1, polygon.shape[0] + 1, dtype=jnp.int32) % polygon.shape[0]
    same = polygon[nxt] == polygon
    return jnp.where(same, nxt, start[jnp.clip(polygon, 0, start.shape[0] - 1)])


def _rasterize_one(bits: jax.Array, polygon: jax.Array, start: jax.Array, box: jax.Array,
                   mask_size: int) -> jax.Array:
    """One RoI: bits (S, 2, 2) uint32, polygon (S,) (-1 padding), start (P,), box (4,) float32
    -> (M, M) bool, the union of the polygons rasterised in the box."""
    m, num_polygons = mask_size, start.shape[0]
    xy = jax.lax.bitcast_convert_type(bits, jnp.float64)  # (S, 2)
    x = (xy[:, 0] - _f64(box[0])) * _ratio(box[2] - box[0], m)
    y = (xy[:, 1] - _f64(box[1])) * _ratio(box[3] - box[1], m)
    ux = (_times_five(x) + 0.5).astype(jnp.int32)  # (S,) upsampled vertices, C truncation
    uy = (_times_five(y) + 0.5).astype(jnp.int32)
    nxt = _next_slot(polygon, start)
    crosses, row = _edge_crossings(ux, uy, ux[nxt], uy[nxt], m, m)  # (S, M)
    crosses &= (polygon >= 0)[:, None]
    # a pixel (y, n) is inside a polygon when an odd number of the polygon's crossings in column n lie at rows
    # <= y, inside the instance when inside any of its polygons. Each crossing becomes a bit string over the
    # rows (bit y set for y >= its row; 32 rows per uint32 word), XORed over the polygon's slots, ORed over
    # the polygons: a few integer operations per (slot, column), nothing per pixel and slot.
    words = -(-m // 32)
    rel = row[:, :, None] - 32 * jnp.arange(words, dtype=jnp.int32)  # (S, n, W) row relative to each word
    ones = np.uint32(0xFFFFFFFF)
    bits = jnp.where(rel >= 32, np.uint32(0), ones << jnp.clip(rel, 0, 31).astype(jnp.uint32))
    bits = jnp.where(crosses[:, :, None], bits, np.uint32(0))
    member = polygon[None, :] == jnp.arange(num_polygons, dtype=jnp.int32)[:, None]  # (P, S)
    parity = jax.lax.reduce(jnp.where(member[:, :, None, None], bits[None], np.uint32(0)), np.uint32(0),
                            jax.lax.bitwise_xor, (1,))  # (P, n, W): XOR over each polygon's slots
    union = jax.lax.reduce(parity, np.uint32(0), jax.lax.bitwise_or, (0,))  # (n, W)
    y = jnp.arange(m, dtype=jnp.uint32)
    inside = (union[:, y // 32] >> (y % 32)) & 1  # (n, y)
    return inside.T == 1


def rasterize_polygons_within_boxes(bits: jax.Array, polygon: jax.Array, start: jax.Array, boxes: jax.Array,
                                    mask_size: int) -> jax.Array:
    """Mask targets of R RoIs from their instances' polygons (`PolygonBatch` layout, one row per RoI):
    bits (R, S, 2, 2) uint32 (float64 x, y bit patterns), polygon (R, S) int32 (the slot's polygon, -1
    padding; a polygon's slots are consecutive), start (R, P) int32 (each polygon's first slot) and the
    boxes (R, 4) float32 XYXY -> (R, M, M) bool at M = mask_size, as detectron2's
    ``rasterize_polygons_within_box``."""
    with jax.enable_x64(True):
        return jax.vmap(lambda b, p, s, box: _rasterize_one(b, p, s, box, mask_size))(
            bits, polygon.astype(jnp.int32), start.astype(jnp.int32), boxes.astype(jnp.float32))
