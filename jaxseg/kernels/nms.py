"""Greedy non-maximum suppression with torchvision's predicate, static shapes.

Box ``j`` is suppressed by a kept box ``i`` of higher rank iff ``inter / (area_i + area_j - inter) >
threshold`` (strict), with ``area = (x2 - x1) * (y2 - y1)`` (no +1). Rank is descending score, ties
broken by lower index. ``batched_nms`` adds "and both boxes have the same ``idxs`` value", on the
unshifted coordinates (exact per-group NMS, not torchvision's coordinate-offset trick).

The "xla" implementation is the exact greedy algorithm, done in tiles of ``T`` boxes in rank order:
inside a tile the greedy result is the unique fixed point of ``keep = alive & ~any(keep_i & sup_ij)``
(reached by iterating from ``keep = alive``); the tile's kept boxes then suppress every later box
with one (T, N) IoU block. Only the tiles that hold valid boxes are visited, and the loop stops once
``max_output`` boxes are kept, so sparse ``valid`` masks and small ``max_output`` are cheap.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jaxseg.kernels._dispatch import register, resolve

_TILE = 128


def nms(
    boxes: jax.Array,
    scores: jax.Array,
    iou_threshold: float,
    *,
    valid: jax.Array | None = None,
    max_output: int | None = None,
    implementation: str | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Greedy NMS (torchvision semantics) with fixed-size output.

    Args:
      boxes: (N, 4) XYXY.
      scores: (N,).
      iou_threshold: suppress when IoU is strictly greater.
      valid: (N,) bool or None; invalid boxes are never kept and never suppress.
      max_output: K, the output length (default N).
      implementation: None (default), "xla", or a registered faster implementation.

    Returns:
      keep: (K,) int32 indices of the kept boxes in descending score order (ties: lower index
        first), padded with 0; keep_valid: (K,) bool, True for the real entries.
    """
    fn = resolve("nms", implementation)
    return fn(boxes, scores, iou_threshold, valid=valid, max_output=max_output)


def batched_nms(
    boxes: jax.Array,
    scores: jax.Array,
    idxs: jax.Array,
    iou_threshold: float,
    *,
    valid: jax.Array | None = None,
    max_output: int | None = None,
    implementation: str | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Like :func:`nms`, but a box only suppresses boxes with the same ``idxs`` (N,) value."""
    fn = resolve("batched_nms", implementation)
    return fn(boxes, scores, idxs, iou_threshold, valid=valid, max_output=max_output)


@register("nms", "xla")
@partial(jax.jit, static_argnames=("max_output",))
def nms_xla(boxes, scores, iou_threshold, *, valid=None, max_output=None):
    """Pure-JAX :func:`nms`."""
    return _greedy_nms(boxes, scores, None, iou_threshold, valid, max_output)


@register("batched_nms", "xla")
@partial(jax.jit, static_argnames=("max_output",))
def batched_nms_xla(boxes, scores, idxs, iou_threshold, *, valid=None, max_output=None):
    """Pure-JAX :func:`batched_nms`."""
    return _greedy_nms(boxes, scores, idxs, iou_threshold, valid, max_output)


def _suppression(a, b, threshold, group_a=None, group_b=None):
    """(len(a), len(b)) bool: box a_i (the higher ranked) suppresses box b_j."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iw = jnp.maximum(jnp.minimum(a[:, None, 2], b[None, :, 2]) - jnp.maximum(a[:, None, 0], b[None, :, 0]), 0)
    ih = jnp.maximum(jnp.minimum(a[:, None, 3], b[None, :, 3]) - jnp.maximum(a[:, None, 1], b[None, :, 1]), 0)
    inter = iw * ih
    sup = inter / (area_a[:, None] + area_b[None, :] - inter) > threshold  # NaN -> False
    if group_a is not None:
        sup = sup & (group_a[:, None] == group_b[None, :])
    return sup


def _rank(scores, valid):
    """Permutation putting valid boxes first, then descending score, then ascending index."""
    neg = -scores.astype(jnp.float32) + 0.0  # +0.0 folds -0.0 into 0.0 so that 0 and -0 tie
    return jnp.lexsort((neg, ~valid))


def _tile_keep(sup, alive):
    """Greedy result inside one tile: fixed point of keep = alive & ~any_i(keep_i & sup_ij), i < j."""

    def step(state):
        keep, _ = state
        new = alive & ~jnp.any(sup & keep[:, None], axis=0)
        return new, jnp.any(new != keep)

    return lax.while_loop(lambda s: s[1], step, (alive, jnp.bool_(True)))[0]


def _greedy_nms(boxes, scores, groups, threshold, valid, max_output):
    n = boxes.shape[0]
    k_out = n if max_output is None else int(max_output)
    if n == 0 or k_out == 0:
        return jnp.zeros((k_out,), jnp.int32), jnp.zeros((k_out,), bool)
    valid = jnp.ones((n,), bool) if valid is None else valid.astype(bool)
    order = _rank(scores, valid)
    tile = min(_TILE, -(-n // 8) * 8)
    padded = -(-n // tile) * tile
    pad = lambda a: jnp.pad(a[order], [(0, padded - n)] + [(0, 0)] * (a.ndim - 1))
    b = pad(boxes.astype(jnp.float32))
    alive = pad(valid)
    g = None if groups is None else pad(groups)
    upper = jnp.arange(tile)[:, None] < jnp.arange(tile)[None, :]
    tiles_needed = -(-jnp.sum(valid) // tile)

    def visit(state):
        t, alive, kept = state
        start = t * tile
        bt = lax.dynamic_slice_in_dim(b, start, tile)
        gt = None if g is None else lax.dynamic_slice_in_dim(g, start, tile)
        sup = _suppression(bt, bt, threshold, gt, gt) & upper
        keep_t = _tile_keep(sup, lax.dynamic_slice_in_dim(alive, start, tile))
        hit = jnp.any(_suppression(bt, b, threshold, gt, g) & keep_t[:, None], axis=0)  # (padded,)
        later = jnp.arange(padded) >= start + tile
        alive = lax.dynamic_update_slice_in_dim(alive & ~(hit & later), keep_t, start, 0)
        return t + 1, alive, kept + jnp.sum(keep_t)

    cond = lambda s: (s[0] < tiles_needed) & (s[2] < k_out)
    t, alive, _ = lax.while_loop(cond, visit, (jnp.int32(0), alive, jnp.int32(0)))
    kept = alive & (jnp.arange(padded) < t * tile)  # tiles never visited hold no kept box
    return _compact(order, kept[:n], k_out)


def _compact(order, kept, k_out):
    """Indices ``order[kept]`` in order, written into a (k_out,) array padded with 0."""
    pos = jnp.cumsum(kept) - 1
    slot = jnp.where(kept, pos, k_out)
    keep = jnp.zeros((k_out,), jnp.int32).at[slot].set(order.astype(jnp.int32), mode="drop")
    return keep, jnp.arange(k_out) < jnp.sum(kept)
