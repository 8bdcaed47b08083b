"""SwapAlign2Nat forward and backward as one Triton gather kernel (NHWC), semantics of ``swap_align2nat`` ("xla").

Both directions are the same computation, a separable 16-term gather

    dst[n, p, q, a, b] = sum over terms (ky, kx, kv, ku) of ((wy*wx)*wv)*wu * src[n][row(p, a) + col(q, b)]

with a corner table per axis pair: ``row`` over (p, a), ``col`` over (q, b), four corners each, every
corner an offset part (-1: outside, reads ``pad``) and its spatial and mask weights. The forward runs
it on the input with the forward tables (dst = the natural windows); the backward runs it on the
output gradient with the transposed tables of :func:`jaxseg.kernels.swap_align2nat.inverse_taps`
(dst = the input gradient, ``pad`` = 0). Each corner maps outputs to inputs one-to-one, so the
backward gathers at most one output per term: no atomics, deterministic, and the terms are added in
the same order as the "xla" scatter-adds. The tables are small numpy arrays built on the host.

Parallel decomposition: the grid is ``(N * P, element blocks)``; a program owns ``BLOCK`` consecutive
destination elements (flattened (q, a, b)) of one destination row (image n, spatial row p). Terms
whose weight is zero everywhere are dropped at compile time (``LIVE``, a bit mask): with L = 1 one or
four remain. Loads of the source are gathers (the corners of neighbouring elements are ``S*S`` floats
apart); the tables are small and stay in cache.

Flat offsets are int32: ``N * H * W * S*S`` and the output's element count must stay below 2**31.
"""

from __future__ import annotations

import math

import numpy as np
import triton
import triton.language as tl

from jaxseg.kernels.swap_align2nat import inverse_taps, live_terms, pair_taps
from jaxseg.kernels.triton.launch import Launch, Out, cdiv, next_pow2


@triton.jit
def tap_gather_kernel(
    src_ptr,  # (N, SRC) float32
    row_off_ptr,  # (P, A, 4) int32: row part of each corner's source offset, -1 outside
    row_w_ptr,  # (P, A, 4, 2) float32: (spatial, mask) weights of each corner
    col_off_ptr,  # (Q, B, 4) int32
    col_w_ptr,  # (Q, B, 4, 2) float32
    pad,  # float32: value of a corner outside
    SRC,  # source elements per image
    P,
    Q,
    A,
    B,
    dst_ptr,  # (N, P, Q, A, B) float32
    LIVE: tl.constexpr,  # bit t set: term t (in (ky, kx, kv, ku) order) has a nonzero weight somewhere
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    n = row // P
    p = row % P
    e = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = e < Q * A * B
    q = e // (A * B)
    a = (e // B) % A
    b = e % B
    r0 = (p * A + a) * 4
    c0 = (q * B + b) * 4
    src = src_ptr + n * SRC
    acc = tl.zeros((BLOCK,), tl.float32)
    for ky in tl.static_range(2):
        for kx in tl.static_range(2):
            for kv in tl.static_range(2):
                for ku in tl.static_range(2):
                    if (LIVE >> (8 * ky + 4 * kx + 2 * kv + ku)) & 1:
                        r = r0 + (2 * ky + kv)
                        c = c0 + (2 * kx + ku)
                        roff = tl.load(row_off_ptr + r, mask=ok, other=-1)
                        coff = tl.load(col_off_ptr + c, mask=ok, other=-1)
                        wy = tl.load(row_w_ptr + 2 * r, mask=ok, other=0.0)
                        wv = tl.load(row_w_ptr + 2 * r + 1, mask=ok, other=0.0)
                        wx = tl.load(col_w_ptr + 2 * c, mask=ok, other=0.0)
                        wu = tl.load(col_w_ptr + 2 * c + 1, mask=ok, other=0.0)
                        inside = ok & (roff >= 0) & (coff >= 0)
                        g = tl.load(src + roff + coff, mask=inside, other=pad)
                        acc += (((wy * wx) * wv) * wu) * g
    tl.store(dst_ptr + row * (Q * A * B) + e, acc, mask=ok)


def _live_mask(lam: int, s: int, h: int, w: int) -> int:
    return sum(1 << t for t in live_terms(pair_taps(lam, s, h), pair_taps(lam, s, w)))


def _table(offset: np.ndarray, w_sp: np.ndarray, w_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(4, P, M) corner arrays -> offsets (P, M, 4) int32 and weights (P, M, 4, 2) float32."""
    off = np.ascontiguousarray(np.moveaxis(offset, 0, -1).astype(np.int32))
    wgt = np.ascontiguousarray(np.stack([np.moveaxis(w_sp, 0, -1), np.moveaxis(w_mask, 0, -1)], -1))
    return off, wgt.astype(np.float32)


def forward_tables(shape: tuple[int, ...], lam: int) -> tuple[np.ndarray, ...]:
    """Corner tables of the forward for an input of ``shape`` (N, H, W, S*S): row_off, row_w, col_off, col_w."""
    _, h, w, c = (int(d) for d in shape)
    s = math.isqrt(c)
    rows, cols = pair_taps(lam, s, h), pair_taps(lam, s, w)
    row = _table(np.where(rows.valid, rows.sp * (w * c) + rows.mask * s, -1), rows.w_sp, rows.w_mask)
    col = _table(np.where(cols.valid, cols.sp * c + cols.mask, -1), cols.w_sp, cols.w_mask)
    return (*row, *col)


def backward_tables(shape: tuple[int, ...], lam: int) -> tuple[np.ndarray, ...]:
    """Transposed corner tables for an input of ``shape`` (N, H, W, S*S): offsets into the output gradient."""
    _, h, w, c = (int(d) for d in shape)
    s = math.isqrt(c)
    m = lam * s
    wo = -(-w // lam)
    rows, cols = inverse_taps(lam, s, h), inverse_taps(lam, s, w)
    row = _table(np.where(rows.valid, rows.p * (wo * m * m) + rows.m * m, -1), rows.w_sp, rows.w_mask)
    col = _table(np.where(cols.valid, cols.p * (m * m) + cols.m, -1), cols.w_sp, cols.w_mask)
    return (*row, *col)


def _gather_launch(src, tables, pad: float, dst_shape: tuple[int, ...], live: int, name: str) -> Launch:
    n, p, q, ab = (int(d) for d in dst_shape)
    a = int(tables[0].shape[1])
    per_row = q * ab
    block = min(next_pow2(per_row, 16), 1024)
    return Launch(
        kernel=tap_gather_kernel,
        args=(src, *tables, np.float32(pad), int(np.prod(src.shape[1:])), p, q, a, ab // a),
        in_dtypes=("float32", "int32", "float32", "int32", "float32", None, None, None, None, None, None),
        outs=(Out((n, p, q, ab), "float32"),),
        grid=(n * p, cdiv(per_row, block)),
        meta=dict(LIVE=live, BLOCK=block),
        name=name,
    )


def forward_launch(x, row_off, row_w, col_off, col_w, lam: int, pad: float) -> Launch:
    """Launch of the forward: x (N, H, W, S*S) float32 and its :func:`forward_tables` -> (N, H', W', (L*S)**2)."""
    n, h, w, c = (int(d) for d in x.shape)
    s = math.isqrt(c)
    dst = (n, -(-h // lam), -(-w // lam), (lam * s) ** 2)
    tables = (row_off, row_w, col_off, col_w)
    return _gather_launch(x, tables, pad, dst, _live_mask(lam, s, h, w), "jaxseg_swap_align2nat_fwd")


def backward_launch(grad, row_off, row_w, col_off, col_w, lam: int, input_shape: tuple[int, ...]) -> Launch:
    """Launch of the backward: grad (N, H', W', (L*S)**2) float32 and :func:`backward_tables` -> (N, H, W, S*S)."""
    n, h, w, c = (int(d) for d in input_shape)
    s = math.isqrt(c)
    tables = (row_off, row_w, col_off, col_w)
    return _gather_launch(grad, tables, 0.0, (n, h, w, c), _live_mask(lam, s, h, w), "jaxseg_swap_align2nat_bwd")
