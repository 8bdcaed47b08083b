"""TensorMask's SwapAlign2Nat on channels-last maps: aligned mask logits -> natural mask windows.

Layout (jaxseg is NHWC, upstream is NCHW):

* input ``x``: (N, H, W, S*S), the aligned representation (the output of TensorMask's 1x1
  ``mask_pred_S`` conv). Channel ``v*S + u`` holds mask pixel (row v, column u), exactly the channel
  order of upstream's (N, S*S, H, W) moved last: ``x_nhwc = x_nchw.transpose(0, 2, 3, 1)``.
* output: (N, ceil(H/L), ceil(W/L), (L*S)**2) with L = ``lambda_val``, the natural representation:
  at every output location the whole (L*S) x (L*S) mask window, channel ``v*(L*S) + u``
  (row-major (v, u)); again upstream's (N, (L*S)**2, H', W') with the channels moved last.

Semantics (those of upstream's CUDA kernel): for output location (y, x) and window pixel (v, u), with
``M = L*S``, four real coordinates

    oy = y*L + v - M/2 + 0.5      ox = x*L + u - M/2 + 0.5     (input rows / columns)
    ov = (v + 0.5)/L - 0.5        ou = (u + 0.5)/L - 0.5       (input mask rows / columns)

each split into a floor and a ceil corner with weights ``1 - frac`` and ``frac`` (float32, the kernel's
own roundings). The output is the sum of the 16 corner products ``((wy*wx)*wv)*wu * G`` in the
kernel's order (y corner outermost, then x, v, u; floor before ceil), where ``G`` is the input value
at (yy, xx, vv*S + uu), or ``pad_val`` when any of the four indices leaves the input. With L = 1 and
odd S this is the pure shift ``Y[y, x, (v, u)] = X[y + v - (S-1)/2, x + u - (S-1)/2, (v, u)]``; with
L = 2**l it also upsamples the window by L (half-pixel centres, blending with ``pad_val`` at its
border) and subsamples space by L.

Every corner reads a separable index: ``(yy*W + xx)*S*S + vv*S + uu = row(yy, vv) + col(xx, uu)``,
so the geometry is two small tables per call, one per axis pair ((y, v) and (x, u)), computed here
with numpy (:func:`pair_taps`; static shapes, cached). The op is affine in ``x``; its gradient is the
transpose of the 16-tap blend. The "xla" implementation gathers the 16 corners (one fused pass) and its
``custom_vjp`` scatter-adds them back. Corners are injective per tap (no two outputs send the same
corner to the same input element), which is what lets the "ffi" and "triton" backward passes gather
instead of scatter (:func:`inverse_taps`); their gradients equal the scatter-adds bit for bit.

Rounding: the "ffi" and "triton" forwards (no fused multiply-add) equal upstream's kernel as transcribed
in tests/data/tensormask_R_50_FPN_1x/swap_align2nat_cpu.py bit for bit. XLA on CPU contracts
``acc + w * g`` into fused multiply-adds, so the "xla" forward can differ from them in the last bit
(relative 1e-7).

:func:`swap_align2nat_at` evaluates the natural windows at a few chosen locations only (inference
keeps at most 100 detections), reading only the taps those windows need.
"""

from __future__ import annotations

import functools
import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxseg.kernels._dispatch import register, resolve

# The 16 terms in the kernel's summation order (ky, kx, kv, ku), as (row corner, column corner)
# with corner k = 2*k_spatial + k_mask of the (y, v) and (x, u) axis pairs.
TERMS: tuple[tuple[int, int], ...] = tuple(
    (2 * ky + kv, 2 * kx + ku) for ky in (0, 1) for kx in (0, 1) for kv in (0, 1) for ku in (0, 1)
)


def swap_align2nat(x: jax.Array, lambda_val: int, pad_val: float, implementation: str | None = None) -> jax.Array:
    """SwapAlign2Nat of the aligned mask logits ``x`` (see the module docstring for the layout).

    Args:
      x: (N, H, W, S*S) float, channel ``v*S + u``.
      lambda_val: integer L >= 1, the ratio of the window's unit length to the map's (2**level in
        TensorMask's BiPyramid head, where ``x`` is at p2 resolution).
      pad_val: value read outside the map or the S x S window (TensorMask: -6.0).
      implementation: None (default), "xla", "ffi" (C++, CPU) or "triton" (GPU).

    Returns:
      (N, ceil(H/L), ceil(W/L), (L*S)**2) in the dtype of ``x``, channel ``v*L*S + u``.
      Differentiable w.r.t. ``x``.
    """
    lam, _ = check_args(x.shape, lambda_val)
    fn = resolve("swap_align2nat", implementation)
    return fn(x, lam, float(np.float32(pad_val)))


def swap_align2nat_at(
    x: jax.Array,
    lambda_val: int,
    pad_val: float,
    batch: jax.Array,
    rows: jax.Array,
    cols: jax.Array,
    implementation: str | None = None,
) -> jax.Array:
    """The natural windows of ``swap_align2nat(x, lambda_val, pad_val)`` at K locations only.

    Args:
      x: (N, H, W, S*S) as for :func:`swap_align2nat`.
      lambda_val, pad_val: as for :func:`swap_align2nat`.
      batch, rows, cols: (K,) int: image, row and column of each location on the output grid
        (ceil(H/L), ceil(W/L)); clamped into range.
      implementation: None or "xla" (the only implementation; any backend).

    Returns:
      (K, (L*S)**2) in the dtype of ``x``: ``swap_align2nat(x, ...)[batch, rows, cols]``, the window
      row-major (v, u). Differentiable w.r.t. ``x`` (plain JAX autodiff).
    """
    lam, _ = check_args(x.shape, lambda_val)
    fn = resolve("swap_align2nat_at", implementation)
    return fn(x, lam, float(np.float32(pad_val)), batch, rows, cols)


def check_args(shape: tuple[int, ...], lambda_val: int) -> tuple[int, int]:
    """(L, S) for an input of ``shape`` (..., H, W, S*S); ValueError unless S*S channels and L >= 1."""
    if len(shape) < 4:
        raise ValueError(f"swap_align2nat: input must be (N, H, W, S*S), got shape {tuple(shape)}")
    lam = int(lambda_val)
    if lam != lambda_val or lam < 1:
        raise ValueError(f"swap_align2nat: lambda_val must be an integer >= 1, got {lambda_val!r}")
    c = int(shape[-1])
    s = math.isqrt(c)
    if s * s != c or s == 0:
        raise ValueError(f"swap_align2nat: the channel count must be a positive square (S*S), got {c}")
    return lam, s


def output_shape(shape: tuple[int, ...], lam: int) -> tuple[int, ...]:
    """(..., ceil(H/L), ceil(W/L), (L*S)**2) for an input of ``shape`` (..., H, W, S*S)."""
    *lead, h, w, c = shape
    s = math.isqrt(c)
    return (*lead, -(-h // lam), -(-w // lam), (lam * s) ** 2)


# ----------------------------------------------------------------------------------------------
# Geometry (numpy, static)


class PairTaps(NamedTuple):
    """The 4 corners of one (spatial, mask) axis pair at every output (p, m); corner k = 2*k_sp + k_mask.

    Arrays are (4, P, M) with P = ceil(size/L) output positions and M = L*S window rows (or columns).
    """

    sp: np.ndarray  # int64: input row (or column) of the corner
    mask: np.ndarray  # int64: input mask row (or column)
    w_sp: np.ndarray  # float32: spatial weight (floor: 1 - frac, ceil: frac)
    w_mask: np.ndarray  # float32: mask weight
    valid: np.ndarray  # bool: inside the input map and the S x S window (else the corner reads pad_val)


def _split(o: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(floor, ceil, w_floor, w_ceil) of float32 coordinates, rounded as the CUDA kernel rounds them."""
    f = np.floor(o).astype(np.int64)
    c = np.ceil(o).astype(np.int64)
    wc = (o - f.astype(np.float32)).astype(np.float32)  # float - int -> float
    wf = (1.0 - wc.astype(np.float64)).astype(np.float32)  # 1. (double) - float -> stored as float
    return f, c, wf, wc


@functools.lru_cache(maxsize=256)
def pair_taps(lam: int, s: int, size: int) -> PairTaps:
    """Corners of one axis pair: ``size`` input positions, window side S, ratio L (see the module doc)."""
    m_out, p_out = lam * s, -(-size // lam)
    p = np.arange(p_out, dtype=np.float64)[:, None]
    m = np.arange(m_out, dtype=np.float64)[None, :]
    half = np.float32(m_out / 2.0)
    # float32 in the kernel; every intermediate is a small multiple of 1/2, so float64 is exact here
    o_sp = (p * lam + m - np.float64(half) + 0.5).astype(np.float32)  # (P, M)
    o_mask = ((np.arange(m_out) + 0.5) / float(lam) - 0.5).astype(np.float32)  # (M,) double, then float
    sp_f, sp_c, sp_wf, sp_wc = _split(o_sp)
    mk_f, mk_c, mk_wf, mk_wc = (np.broadcast_to(a, o_sp.shape) for a in _split(o_mask))
    sp = np.stack([sp_f, sp_f, sp_c, sp_c])
    mask = np.stack([mk_f, mk_c, mk_f, mk_c])
    w_sp = np.stack([sp_wf, sp_wf, sp_wc, sp_wc])
    w_mask = np.stack([mk_wf, mk_wc, mk_wf, mk_wc])
    valid = (sp >= 0) & (sp < size) & (mask >= 0) & (mask < s)
    taps = PairTaps(sp, mask, w_sp, w_mask, valid)
    for a in taps:
        a.setflags(write=False)  # shared by the cache
    return taps


def term_weights(rows: PairTaps, cols: PairTaps, t: int) -> tuple[np.ndarray, ...]:
    """Factors (wy, wx, wv, wu) of term ``t`` broadcast to (P, Q, A, B) order: y, x, v, u."""
    r, c = TERMS[t]
    wy = rows.w_sp[r][:, None, :, None]
    wv = rows.w_mask[r][:, None, :, None]
    wx = cols.w_sp[c][None, :, None, :]
    wu = cols.w_mask[c][None, :, None, :]
    return wy, wx, wv, wu


def live_terms(rows: PairTaps, cols: PairTaps) -> list[int]:
    """The terms whose weight is nonzero somewhere (the others add exact zeros; L = 1 keeps 1 or 4)."""
    live = []
    for t, (r, c) in enumerate(TERMS):
        row_w = rows.w_sp[r] * rows.w_mask[r]
        col_w = cols.w_sp[c] * cols.w_mask[c]
        if np.any(row_w != 0) and np.any(col_w != 0):
            live.append(t)
    return live


class InverseTaps(NamedTuple):
    """For every input (position, mask index) and corner k: the output (p, m) whose corner k lands there.

    Arrays are (4, size, S); ``valid`` False where no output does. The weights are that output's.
    """

    p: np.ndarray  # int64
    m: np.ndarray  # int64
    w_sp: np.ndarray  # float32
    w_mask: np.ndarray  # float32
    valid: np.ndarray  # bool


@functools.lru_cache(maxsize=256)
def inverse_taps(lam: int, s: int, size: int) -> InverseTaps:
    """Transpose of :func:`pair_taps`. Each corner k maps outputs to inputs injectively (checked here)."""
    fwd = pair_taps(lam, s, size)
    shape = (4, size, s)
    p_idx = np.zeros(shape, np.int64)
    m_idx = np.zeros(shape, np.int64)
    w_sp = np.zeros(shape, np.float32)
    w_mask = np.zeros(shape, np.float32)
    hits = np.zeros(shape, np.int64)
    p_grid, m_grid = np.meshgrid(np.arange(fwd.sp.shape[1]), np.arange(fwd.sp.shape[2]), indexing="ij")
    for k in range(4):
        ok = fwd.valid[k]
        dest = (k, fwd.sp[k][ok], fwd.mask[k][ok])
        np.add.at(hits, dest, 1)
        p_idx[dest], m_idx[dest] = p_grid[ok], m_grid[ok]
        w_sp[dest], w_mask[dest] = fwd.w_sp[k][ok], fwd.w_mask[k][ok]
    if hits.max(initial=0) > 1:  # cannot happen (each corner is a step function of p*L + m); guard anyway
        raise AssertionError(f"swap_align2nat: corner collision for lambda={lam}, S={s}, size={size}")
    inv = InverseTaps(p_idx, m_idx, w_sp, w_mask, hits == 1)
    for a in inv:
        a.setflags(write=False)
    return inv


# ----------------------------------------------------------------------------------------------
# "xla"


def _offsets(rows: PairTaps, cols: PairTaps, t: int, hw: tuple[int, int], s: int) -> tuple[np.ndarray, ...]:
    """The two parts of the flat input index of term ``t``: row (P, A) and column (Q, B) int32, -1 outside."""
    r, c = TERMS[t]
    w = hw[1]
    row = np.where(rows.valid[r], rows.sp[r] * (w * s * s) + rows.mask[r] * s, -1)
    col = np.where(cols.valid[c], cols.sp[c] * (s * s) + cols.mask[c], -1)
    return row.astype(np.int32), col.astype(np.int32)


def _term_index(row: np.ndarray, col: np.ndarray, pad_index: int) -> jax.Array:
    """Flat index (P, Q, A, B) of every output of one term; ``pad_index`` where either part is outside.

    The small tables go through an optimization barrier so that XLA computes the full-size index
    inside the fused gather instead of folding it into a large constant.
    """
    row, col = lax.optimization_barrier((jnp.asarray(row), jnp.asarray(col)))
    row, col = row[:, None, :, None], col[None, :, None, :]  # (P, 1, A, 1), (1, Q, 1, B)
    return jnp.where((row >= 0) & (col >= 0), row + col, pad_index)


def _weight(rows: PairTaps, cols: PairTaps, t: int) -> jax.Array:
    """((wy*wx)*wv)*wu of term ``t``, (P, Q, A, B) float32, multiplied in the kernel's order."""
    wy, wx, wv, wu = (jnp.asarray(a) for a in term_weights(rows, cols, t))
    return ((wy * wx) * wv) * wu


def _geometry(shape: tuple[int, ...], lam: int):
    n, h, w, c = shape
    s = math.isqrt(c)
    return s, pair_taps(lam, s, h), pair_taps(lam, s, w)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _swap_xla(x: jax.Array, lam: int, pad: float) -> jax.Array:
    """(N, H, W, S*S) float32 -> (N, H', W', (L*S)**2) float32: the 16-term gather."""
    n, h, w, c = x.shape
    s, rows, cols = _geometry(x.shape, lam)
    flat = jnp.concatenate([x.reshape(n, h * w * c), jnp.full((n, 1), pad, x.dtype)], axis=1)  # (N, HWC + 1)
    acc = None
    for t in live_terms(rows, cols):
        idx = _term_index(*_offsets(rows, cols, t, (h, w), s), h * w * c)  # (P, Q, A, B)
        g = flat.at[:, idx].get(mode="promise_in_bounds")  # (N, P, Q, A, B)
        term = _weight(rows, cols, t) * g
        acc = term if acc is None else acc + term
    p, q, a, b = acc.shape[1:]
    return acc.reshape(n, p, q, a * b)


def _swap_xla_fwd(x, lam, pad):
    return _swap_xla(x, lam, pad), jnp.zeros((*x.shape[:-1], 0), x.dtype)


def _swap_xla_bwd(lam, pad, x_like, g):
    """Scatter-adds ``w * g`` of every term back onto the corner it read (the transpose)."""
    n, h, w, _ = x_like.shape
    s = math.isqrt(g.shape[-1]) // lam
    c = s * s
    _, rows, cols = _geometry((n, h, w, c), lam)
    p, q = g.shape[1:3]
    g = g.reshape(n, p, q, lam * s, lam * s)
    dflat = jnp.zeros((n, h * w * c + 1), g.dtype)  # the last slot collects the pad reads (dropped)
    for t in live_terms(rows, cols):
        idx = _term_index(*_offsets(rows, cols, t, (h, w), s), h * w * c)
        dflat = dflat.at[:, idx].add(_weight(rows, cols, t) * g, mode="promise_in_bounds")
    return (dflat[:, :-1].reshape(n, h, w, c).astype(x_like.dtype),)


_swap_xla.defvjp(_swap_xla_fwd, _swap_xla_bwd)


@register("swap_align2nat", "xla")
@partial(jax.jit, static_argnums=(1, 2))
def swap_align2nat_xla(x: jax.Array, lam: int, pad: float) -> jax.Array:
    """Pure-JAX SwapAlign2Nat (module docstring); float32 arithmetic, result in the dtype of ``x``."""
    out_shape = output_shape(x.shape, lam)
    if 0 in x.shape[:-1] or 0 in out_shape:
        return jnp.zeros(out_shape, x.dtype)
    x4 = x.reshape(-1, *x.shape[-3:]).astype(jnp.float32)
    return _swap_xla(x4, lam, pad).reshape(out_shape).astype(x.dtype)


@register("swap_align2nat_at", "xla")
@partial(jax.jit, static_argnums=(1, 2))
def swap_align2nat_at_xla(x, lam, pad, batch, rows_idx, cols_idx):
    """Pure-JAX :func:`swap_align2nat_at`: the 16 terms of K windows, (K, (L*S)**2)."""
    n, h, w, c = x.shape
    s, rows, cols = _geometry(x.shape, lam)
    k, m = batch.shape[0], lam * s
    if k == 0 or n == 0 or h == 0 or w == 0:
        return jnp.zeros((k, m * m), x.dtype)
    b = jnp.clip(batch.astype(jnp.int32), 0, n - 1)
    y = jnp.clip(rows_idx.astype(jnp.int32), 0, rows.sp.shape[1] - 1)
    xx = jnp.clip(cols_idx.astype(jnp.int32), 0, cols.sp.shape[1] - 1)
    flat = jnp.concatenate([x.astype(jnp.float32).reshape(-1), jnp.full((1,), pad, jnp.float32)])
    pad_index = n * h * w * c
    acc = None
    for t in live_terms(rows, cols):
        r, cc = TERMS[t]
        row, col = _offsets(rows, cols, t, (h, w), s)
        row_k = jnp.asarray(row)[y][:, :, None]  # (K, A, 1)
        col_k = jnp.asarray(col)[xx][:, None, :]  # (K, 1, B)
        idx = jnp.where((row_k >= 0) & (col_k >= 0), b[:, None, None] * (h * w * c) + row_k + col_k, pad_index)
        g = flat.at[idx].get(mode="promise_in_bounds")  # (K, A, B)
        wy = jnp.asarray(rows.w_sp[r])[y][:, :, None]
        wv = jnp.asarray(rows.w_mask[r])[y][:, :, None]
        wx = jnp.asarray(cols.w_sp[cc])[xx][:, None, :]
        wu = jnp.asarray(cols.w_mask[cc])[xx][:, None, :]
        term = (((wy * wx) * wv) * wu) * g
        acc = term if acc is None else acc + term
    return acc.reshape(k, m * m).astype(x.dtype)
