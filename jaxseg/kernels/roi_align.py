"""ROIAlign with the exact semantics of ``torchvision.ops.roi_align``, on NHWC features.

Each output bin averages ``gh x gw`` bilinear samples. Per axis, a sample at position ``y`` reads rows
``floor(y)`` and ``floor(y) + 1`` with weights ``1 - frac`` and ``frac`` after clamping ``y`` to
``[0, H - 1]``; samples outside ``[-1, H]`` read nothing. The 2-D weight of a sample is the product of
its two axis weights, so a bin's output is ``sum_{k,l} wy[k] * wx[l] * F[ry[k], rx[l]]`` over a few
rows ``ry`` and columns ``rx``. That is what this file computes ("taps" below are (row, weight) pairs).

Two layouts of the taps:

* ``sampling_ratio > 0``: the grid is static, so every sample gets its own two taps (``2 * s`` per
  axis); one pass, plain JAX autodiff.
* adaptive grid (``sampling_ratio <= 0``, ``g = ceil(bin_size)``): samples are at most one pixel
  apart, so ``G`` consecutive samples touch at most ``G + 1`` consecutive rows: a window of
  ``G + 1`` taps per bin holds them. Samples are taken ``G`` per axis at a time ("chunks"); ROIs are
  sorted by the number of chunks they need and processed in groups, each group looping only as
  long as its largest ROI needs. The grid is never capped, and samples that fall outside the
  feature map are skipped, so any box (long, thin, huge, partly outside) is exact and bounded in
  cost. The feature gradient goes through a ``custom_vjp`` whose backward scatter-adds the same taps.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxseg.kernels._dispatch import register, resolve

# Adaptive path: samples per axis per chunk, and ROIs per group.
_CHUNK = 4
_GROUP = 32


def roi_align(
    features: jax.Array,
    boxes: jax.Array,
    batch_index: jax.Array,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int = 0,
    aligned: bool = True,
    implementation: str | None = None,
) -> jax.Array:
    """ROIAlign of ``boxes`` on ``features``, exactly as ``torchvision.ops.roi_align`` (NHWC).

    Args:
      features: (N, H, W, C) feature maps.
      boxes: (R, 4) XYXY boxes in input-image coordinates.
      batch_index: (R,) int, the image of each box in ``features``.
      output_size: PH or (PH, PW).
      spatial_scale: feature pixels per input pixel (e.g. 1/4 for p2).
      sampling_ratio: samples per bin per axis; ``<= 0`` for the adaptive ``ceil(roi_size / out)``.
      aligned: shift box coordinates by -0.5 pixel (detectron2 ``ROIAlignV2``).
      implementation: None (default), "xla", or a registered faster implementation.

    Returns:
      (R, PH, PW, C), in the dtype of ``features``. Differentiable w.r.t. ``features`` only.
    """
    fn = resolve("roi_align", implementation)
    out_hw = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    return fn(features, boxes, batch_index, out_hw, float(spatial_scale), int(sampling_ratio), bool(aligned))


# ----------------------------------------------------------------------------------------------
# Per-axis geometry and taps


class _Axis(NamedTuple):
    """The sampling grid of one axis for every ROI (leading dims: ROIs)."""

    bin_start: jax.Array  # (..., P) float32: start of each bin
    bin_size: jax.Array  # (...,) float32
    grid: jax.Array  # (...,) int32: samples per bin (>= 0)


def _roi_axes(boxes, spatial_scale, out_hw, sampling_ratio, aligned):
    """Per-axis grids of all ROIs: (y axis, x axis, count (R,) float32)."""
    offset = 0.5 if aligned else 0.0
    scale = jnp.float32(spatial_scale)
    b = boxes.astype(jnp.float32)
    axes = []
    for lo, hi, out in ((b[:, 1], b[:, 3], out_hw[0]), (b[:, 0], b[:, 2], out_hw[1])):
        start = lo * scale - offset
        size = (hi * scale - offset) - start
        if not aligned:
            size = jnp.maximum(size, 1.0)
        bin_size = _exact_div(size, float(out))
        if sampling_ratio > 0:
            grid = jnp.full(bin_size.shape, sampling_ratio, jnp.int32)
        else:
            g = jnp.ceil(bin_size)
            # NaN -> 0; the int32 bound only binds for bins over 1e9 feature pixels.
            grid = jnp.where(g > 0, jnp.minimum(g, 2.0**30), 0.0).astype(jnp.int32)
        bin_start = start[:, None] + jnp.arange(out, dtype=jnp.float32) * bin_size[:, None]
        axes.append(_Axis(bin_start, bin_size, grid))
    count = jnp.maximum(axes[0].grid.astype(jnp.float32) * axes[1].grid.astype(jnp.float32), 1.0)
    return axes[0], axes[1], count


def _exact_div(a, b):
    """``a / b`` correctly rounded, as torchvision computes it.

    XLA rewrites a division by a constant or by a broadcast value into a multiplication by its
    reciprocal, which is off by an ulp; a sample landing exactly on the inclusive bound -1 or H would
    then flip in or out. Materialising the full-shape divisor behind a barrier keeps the division.
    """
    shape = jnp.broadcast_shapes(jnp.shape(a), jnp.shape(b))
    return a / lax.optimization_barrier(jnp.broadcast_to(jnp.asarray(b, jnp.float32), shape))


def _samples(ax: _Axis, i, i_end, size):
    """Bilinear taps of samples ``i`` (..., P, G) int: lower row, upper weight, validity."""
    gf = jnp.maximum(ax.grid, 1).astype(jnp.float32)[..., None, None]
    pos = ax.bin_start[..., None] + _exact_div((i.astype(jnp.float32) + 0.5) * ax.bin_size[..., None, None], gf)
    valid = (i < i_end) & (pos >= -1.0) & (pos <= size)  # inclusive bounds; NaN -> invalid
    pos = jnp.clip(jnp.where(valid, pos, 0.0), 0.0, size - 1.0)  # rows stay in range, even for NaN
    lo = jnp.floor(pos)
    return lo.astype(jnp.int32), pos - lo, valid


def _static_taps(ax: _Axis, samples: int, size: int):
    """Taps of a static grid of ``samples`` per bin: rows, weights (R, P, 2 * samples)."""
    i = jnp.broadcast_to(jnp.arange(samples), (*ax.bin_start.shape, samples))
    lo, frac, valid = _samples(ax, i, samples, size)
    hi = jnp.minimum(lo + 1, size - 1)
    rows = jnp.concatenate([lo, hi], axis=-1)
    weights = jnp.concatenate([jnp.where(valid, 1.0 - frac, 0.0), jnp.where(valid, frac, 0.0)], axis=-1)
    return rows, weights


def _valid_range(ax: _Axis, size: int):
    """Per bin, a superset [first, end) of the sample indices that land inside [-1, size]. (R, P) int32."""
    g = ax.grid.astype(jnp.float32)[..., None]
    step = ax.bin_size[..., None] / jnp.maximum(g, 1.0)
    lo = (-1.0 - ax.bin_start) / step - 0.5  # samples i >= lo are >= -1
    hi = (size - ax.bin_start) / step - 0.5  # samples i <= hi are <= size
    margin = 1.0 + 1e-5 * jnp.maximum(jnp.abs(lo), jnp.abs(hi))  # covers rounding of lo and hi
    first = jnp.floor(lo) - margin
    end = jnp.floor(hi) + 1.0 + margin
    first = jnp.where(step > 0, jnp.clip(first, 0.0, g), 0.0)  # NaN -> empty below
    end = jnp.where(step > 0, jnp.clip(end, 0.0, g), 0.0)
    first, end = first.astype(jnp.int32), end.astype(jnp.int32)
    return first, jnp.maximum(end, first)


def _window_taps(ax: _Axis, first, end, chunk, size: int):
    """Taps of samples ``first + chunk*G + [0, G)`` (adaptive grid) in a window of G+1 rows.

    Returns the window's first row (R, P) int32 and the weights of its rows (R, P, K).
    """
    k_rows = min(_CHUNK + 1, size)
    i = (first + chunk * _CHUNK)[..., None] + jnp.arange(_CHUNK)
    lo, frac, valid = _samples(ax, i, end[..., None], size)
    row0 = jnp.clip(lo[..., 0], 0, size - k_rows)
    slot = (lo - row0[..., None])[..., None]  # (R, P, G, 1)
    k = jnp.arange(k_rows)
    w = jnp.where(slot == k, (1.0 - frac)[..., None], 0.0) + jnp.where(slot + 1 == k, frac[..., None], 0.0)
    w = jnp.where(valid[..., None], w, 0.0).sum(axis=-2)
    return row0, w


def _tap(row_off, rows_x, wy, wx, t):
    """Flat indices and weights (R, P, Q) of tap pair ``t = k * L + l`` (a traced scalar)."""
    k, m = t // rows_x.shape[-1], t % rows_x.shape[-1]
    pick = lambda a, i: lax.dynamic_index_in_dim(a, i, axis=-1, keepdims=False)
    idx = pick(row_off, k)[:, :, None] + pick(rows_x, m)[:, None, :]
    return idx, pick(wy, k)[:, :, None] * pick(wx, m)[:, None, :]


def _weighted_gather(flat, hw, bidx, rows_y, wy, rows_x, wx):
    """sum_{k,l} wy[r,p,k] * wx[r,q,l] * F[b_r, rows_y[r,p,k], rows_x[r,q,l]] -> (R, P, Q, C) float32.

    flat: (N*H*W, C) features; rows_*: (R, P|Q, K|L) int32 in range; w*: matching float32 weights.
    Unrolled over (k, l) so that XLA fuses all the gathers into one pass over the output.
    """
    h, w = hw
    row_off = (bidx[:, None, None] * h + rows_y) * w  # (R, P, K)
    acc = None
    for k in range(rows_y.shape[-1]):
        for m in range(rows_x.shape[-1]):
            idx = row_off[:, :, None, k] + rows_x[:, None, :, m]  # (R, P, Q)
            v = flat.at[idx].get(mode="promise_in_bounds").astype(jnp.float32)
            term = (wy[:, :, None, k] * wx[:, None, :, m])[..., None] * v
            acc = term if acc is None else acc + term
    return acc


def _scatter_weighted(dflat, hw, bidx, rows_y, wy, rows_x, wx, g):
    """Transpose of :func:`_weighted_gather`: adds the taps of ``g`` (R, P, Q, C) into ``dflat``.

    A rolled loop over the taps: scatters do not fuse anyway, and this keeps compile time down.
    """
    h, w = hw
    row_off = (bidx[:, None, None] * h + rows_y) * w

    def add_tap(t, dflat):
        idx, wgt = _tap(row_off, rows_x, wy, wx, t)
        return dflat.at[idx].add((wgt[..., None] * g).astype(dflat.dtype), mode="promise_in_bounds")

    return lax.fori_loop(0, rows_y.shape[-1] * rows_x.shape[-1], add_tap, dflat)


# ----------------------------------------------------------------------------------------------
# Adaptive grid: ROIs sorted by work, in groups, chunk loop per group


class _Group(NamedTuple):
    """ROIs sorted by decreasing work, reshaped to (groups, GROUP, ...); padding ROIs do no work."""

    roi: jax.Array  # (n, B) int32: output row of each ROI; R for padding (dropped)
    bidx: jax.Array  # (n, B)
    inv_count: jax.Array  # (n, B) float32: 1 / max(gh * gw, 1)
    y: _Axis
    x: _Axis
    y_first: jax.Array  # (n, B, P)
    y_end: jax.Array
    x_first: jax.Array  # (n, B, Q)
    x_end: jax.Array
    ny: jax.Array  # (n, B) chunks needed along y
    nx: jax.Array


def _chunk_taps(grp, chunk_y, chunk_x, hw):
    """Gather arguments of chunk (chunk_y, chunk_x) of one group."""
    (h, w) = hw
    y0, wy = _window_taps(grp.y, grp.y_first, grp.y_end, chunk_y, h)
    x0, wx = _window_taps(grp.x, grp.x_first, grp.x_end, chunk_x, w)
    rows_y = y0[..., None] + jnp.arange(wy.shape[-1])
    rows_x = x0[..., None] + jnp.arange(wx.shape[-1])
    return grp.bidx, rows_y, wy, rows_x, wx


def _chunk_loop(grp, body, init):
    """Runs ``body(chunk_y, chunk_x, carry)`` over the chunks that the group's ROIs need."""
    ny, nx = jnp.max(grp.ny), jnp.max(grp.nx)

    def step(state):
        j, carry = state
        return j + 1, body(j // nx, j % nx, carry)

    return lax.while_loop(lambda s: s[0] < ny * nx, step, (jnp.int32(0), init))[1]


def _group_loop(groups, body, init):
    """Runs ``body(group, carry)`` over the groups that have work (they come first)."""
    has_work = jnp.max(groups.ny, axis=1) > 0  # (n,)
    step = lambda s: (s[0] + 1, body(jax.tree.map(lambda a: a[s[0]], groups), s[1]))
    cond = lambda s: (s[0] < has_work.shape[0]) & has_work[jnp.minimum(s[0], has_work.shape[0] - 1)]
    return lax.while_loop(cond, step, (jnp.int32(0), init))[1]


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _adaptive_pool(flat, groups, hw, out_shape):
    """Pooled output (R, P, Q, C) in the dtype of ``flat`` (N*H*W, C)."""
    return _adaptive_pool_fwd(flat, groups, hw, out_shape)[0]


def _adaptive_pool_fwd(flat, groups, hw, out_shape):
    acc_shape = (groups.roi.shape[1], *out_shape[1:], flat.shape[-1])

    def one_group(grp, out):
        body = lambda cy, cx, acc: acc + _weighted_gather(flat, hw, *_chunk_taps(grp, cy, cx, hw))
        sums = _chunk_loop(grp, body, jnp.zeros(acc_shape, jnp.float32))
        vals = (sums * grp.inv_count[:, None, None, None]).astype(out.dtype)
        return out.at[grp.roi].set(vals, mode="drop", unique_indices=True)

    out = _group_loop(groups, one_group, jnp.zeros((*out_shape, flat.shape[-1]), flat.dtype))
    return out, (groups, jnp.zeros((flat.shape[0], 0), flat.dtype))


def _adaptive_pool_bwd(hw, out_shape, res, g):
    groups, flat_like = res  # flat_like: (N*H*W, 0), carries the row count and dtype of the features

    def one_group(grp, dflat):
        g_grp = g.at[grp.roi].get(mode="fill", fill_value=0).astype(jnp.float32)
        g_grp = g_grp * grp.inv_count[:, None, None, None]
        body = lambda cy, cx, d: _scatter_weighted(d, hw, *_chunk_taps(grp, cy, cx, hw), g_grp)
        return _chunk_loop(grp, body, dflat)

    dflat = _group_loop(groups, one_group, jnp.zeros((flat_like.shape[0], g.shape[-1]), jnp.float32))
    return dflat.astype(flat_like.dtype), jax.tree.map(_zero_cotangent, groups)


def _zero_cotangent(a):
    if jnp.issubdtype(a.dtype, jnp.floating):
        return jnp.zeros_like(a)
    return jnp.zeros(a.shape, jax.dtypes.float0)


_adaptive_pool.defvjp(_adaptive_pool_fwd, _adaptive_pool_bwd)


def _make_groups(bidx, count, ay: _Axis, ax: _Axis, hw) -> _Group:
    """Sorts ROIs by decreasing chunks needed and pads/reshapes them into groups."""
    (h, w) = hw
    y_first, y_end = _valid_range(ay, h)
    x_first, x_end = _valid_range(ax, w)
    ny = jnp.max(-(-(y_end - y_first) // _CHUNK), axis=-1)
    nx = jnp.max(-(-(x_end - x_first) // _CHUNK), axis=-1)
    ny = jnp.where(nx > 0, ny, 0)  # no work at all if either axis has no samples
    nx = jnp.where(ny > 0, nx, 0)
    r = bidx.shape[0]
    order = jnp.lexsort((-nx, -ny)).astype(jnp.int32)
    size = min(_GROUP, r)
    padded = -(-r // size) * size

    def arrange(a, fill=0):
        a = jnp.pad(a[order], [(0, padded - r)] + [(0, 0)] * (a.ndim - 1), constant_values=fill)
        return a.reshape(padded // size, size, *a.shape[1:])

    groups = _Group(None, bidx, 1.0 / count, ay, ax, y_first, y_end, x_first, x_end, ny, nx)
    groups = jax.tree.map(arrange, groups)
    return groups._replace(roi=arrange(jnp.arange(r, dtype=jnp.int32), fill=r))


def _adaptive(features, bidx, count, ay, ax, out_hw):
    n, h, w, c = features.shape
    groups = _make_groups(bidx, count, ay, ax, (h, w))
    return _adaptive_pool(features.reshape(n * h * w, c), groups, (h, w), (bidx.shape[0], *out_hw))


# ----------------------------------------------------------------------------------------------


@register("roi_align", "xla")
@partial(jax.jit, static_argnums=(3, 4, 5, 6))
def roi_align_xla(features, boxes, batch_index, out_hw, spatial_scale, sampling_ratio, aligned):
    """Pure-JAX ROIAlign (see the module docstring); ``out_hw`` is a (PH, PW) tuple."""
    n, h, w, c = features.shape
    r = boxes.shape[0]
    if r == 0 or n == 0:
        return jnp.zeros((r, *out_hw, c), features.dtype)
    bidx = jnp.clip(batch_index.astype(jnp.int32), 0, n - 1)
    ay, ax, count = _roi_axes(boxes, spatial_scale, out_hw, sampling_ratio, aligned)
    if sampling_ratio > 0:
        rows_y, wy = _static_taps(ay, sampling_ratio, h)
        rows_x, wx = _static_taps(ax, sampling_ratio, w)
        sums = _weighted_gather(features.reshape(n * h * w, c), (h, w), bidx, rows_y, wy, rows_x, wx)
        return (sums / count[:, None, None, None]).astype(features.dtype)
    return _adaptive(features, bidx, count, ay, ax, out_hw)
