"""Mask pasting as a Triton kernel, same semantics as ``jaxseg.kernels.paste_masks`` ("xla").

Parallel decomposition: the grid is ``(masks, row tiles, column tiles)``; a program fills one
``[BLOCK_H, BLOCK_W]`` tile of one pasted mask. The interpolation separates by axis, so it first maps
its ``BLOCK_H`` pixel rows and ``BLOCK_W`` pixel columns into the mask (two taps and a weight each,
vectors), then gathers the four ``M x M`` mask values of every pixel (the mask is small and stays in
cache) and blends them: ``wx0 * (wy0 * m[y0, x0] + wy1 * m[y1, x0]) + wx1 * (wy0 * m[y0, x1] +
wy1 * m[y1, x1])``, the order of the reference's two matmuls. Taps outside the mask read 0; a
degenerate box (zero or negative extent, non-finite coordinates) has no taps. The tile is written as
float32 values or, with ``BINARY``, as int8 ``value >= threshold``.
"""

from __future__ import annotations

import numpy as np
import triton
import triton.language as tl

from jaxseg.kernels.triton.launch import Launch, Out, cdiv, next_pow2


@triton.jit
def _axis_taps(pix, lo, hi, M):
    """Mask taps of pixel centres ``pix + 0.5`` for a box spanning [lo, hi): index, weights of both taps."""
    mf = M.to(tl.float32)
    centre = pix.to(tl.float32) + 0.5
    g = tl.div_rn(centre - lo, (hi - lo) + tl.zeros(centre.shape, tl.float32)) * 2.0 - 1.0
    u = tl.div_rn((g + 1.0) * mf - 1.0, tl.full(g.shape, 2.0, tl.float32))
    finite = (u > -3.0e38) & (u < 3.0e38)  # False for NaN and +-inf
    u = tl.minimum(tl.maximum(tl.where(finite, u, -2.0), -2.0), mf + 1.0)
    low = tl.floor(u)
    frac = u - low
    i0 = low.to(tl.int32)
    w0 = tl.where(finite & (i0 >= 0) & (i0 < M), 1.0 - frac, 0.0)
    w1 = tl.where(finite & (i0 + 1 >= 0) & (i0 + 1 < M), frac, 0.0)
    return i0, w0, w1


@triton.jit
def paste_masks_kernel(
    masks_ptr,  # (N, M, M) float32
    boxes_ptr,  # (N, 4) float32, XYXY in image pixels
    threshold,  # float32 (unused unless BINARY)
    M,
    H,
    W,
    out_ptr,  # (N, H, W) float32, or int8 when BINARY
    BINARY: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    n = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)
    x1 = tl.load(boxes_ptr + n * 4 + 0)
    y1 = tl.load(boxes_ptr + n * 4 + 1)
    x2 = tl.load(boxes_ptr + n * 4 + 2)
    y2 = tl.load(boxes_ptr + n * 4 + 3)
    ty, wy0, wy1 = _axis_taps(rows, y1, y2, M)
    tx, wx0, wx1 = _axis_taps(cols, x1, x2, M)
    # Tap indices clamped into the mask: a tap outside has weight 0, and its load is masked off.
    y0 = tl.minimum(tl.maximum(ty, 0), M - 1)[:, None]
    y1i = tl.minimum(tl.maximum(ty + 1, 0), M - 1)[:, None]
    x0 = tl.minimum(tl.maximum(tx, 0), M - 1)[None, :]
    x1i = tl.minimum(tl.maximum(tx + 1, 0), M - 1)[None, :]
    a0 = (wy0 != 0.0)[:, None]
    a1 = (wy1 != 0.0)[:, None]
    b0 = (wx0 != 0.0)[None, :]
    b1 = (wx1 != 0.0)[None, :]
    base = masks_ptr + n * M * M
    m00 = tl.load(base + y0 * M + x0, mask=a0 & b0, other=0.0)
    m10 = tl.load(base + y1i * M + x0, mask=a1 & b0, other=0.0)
    m01 = tl.load(base + y0 * M + x1i, mask=a0 & b1, other=0.0)
    m11 = tl.load(base + y1i * M + x1i, mask=a1 & b1, other=0.0)
    wy0c = wy0[:, None]
    wy1c = wy1[:, None]
    col0 = wy0c * m00 + wy1c * m10
    col1 = wy0c * m01 + wy1c * m11
    value = col0 * wx0[None, :] + col1 * wx1[None, :]
    dst = out_ptr + n * H * W + rows[:, None] * W + cols[None, :]
    inside = (rows < H)[:, None] & (cols < W)[None, :]
    if BINARY:
        tl.store(dst, (value >= threshold).to(tl.int8), mask=inside)
    else:
        tl.store(dst, value, mask=inside)


def paste_launch(masks, boxes, image_shape: tuple[int, int], threshold: float | None) -> Launch:
    """Launch pasting masks (N, M, M) float32 at boxes (N, 4) float32 into (N, H, W) images.

    The output is float32 values, or int8 0/1 for ``value >= threshold`` when ``threshold`` is set.
    """
    n, m = int(masks.shape[0]), int(masks.shape[-1])
    h, w = (int(d) for d in image_shape)
    binary = threshold is not None
    meta = dict(BINARY=binary, BLOCK_H=min(next_pow2(h, 4), 16), BLOCK_W=min(next_pow2(w, 16), 64))
    return Launch(
        kernel=paste_masks_kernel,
        args=(masks, boxes, np.float32(threshold if binary else 0.0), m, h, w),
        in_dtypes=("float32", "float32", None, None, None, None),
        outs=(Out((n, h, w), "int8" if binary else "float32"),),
        grid=(n, cdiv(h, meta["BLOCK_H"]), cdiv(w, meta["BLOCK_W"])),
        meta=meta,
        name="jaxseg_paste_masks",
    )
