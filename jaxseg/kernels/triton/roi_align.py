"""ROIAlign forward and backward as Triton kernels (NHWC), same semantics as ``jaxseg.kernels.roi_align``.

Parallel decomposition (both directions): the grid is ``(R, bin tiles, channel tiles)``. A program
owns one ROI, ``BLOCK_BINS`` of its ``PH * PW`` output bins and ``BLOCK_C`` channels, i.e. a
``[BLOCK_BINS, BLOCK_C]`` tile of the output. It computes the ROI's geometry (a few scalars), then
walks the bilinear samples of its bins: every loop step handles one sample of *each* bin of the
tile at once and gathers four ``[BLOCK_BINS, BLOCK_C]`` blocks of features; along ``C`` those loads
are contiguous (NHWC), so they coalesce.

Sample loops are bounded by the data, never capped: per bin, the sample indices that can land in
``[-1, size]`` form a range ``[first, end)`` (a superset, widened by a rounding margin; each sample
is still tested exactly). Step ``t`` of the loop visits sample ``first + t`` of every bin, so a tile
loops ``max(end - first)`` times per axis: the whole adaptive grid ``ceil(bin_size)`` of a long thin
box, but only the in-map part of a huge box. The forward accumulates in registers and writes its
tile once; the backward scatters ``weight * grad / count`` into a zeroed float32 feature gradient
with ``tl.atomic_add`` (several bins, ROIs and channel tiles can hit the same pixel).

Positions are computed in the reference's operation order with correctly rounded divisions
(``tl.div_rn``) and without fused multiply-adds (see ``Launch.enable_fp_fusion``), so a sample lying
exactly on the bound ``-1`` or ``size`` is in or out exactly as in torchvision.

Flat offsets are int32: ``N * H * W * C`` and ``R * PH * PW * C`` must stay below 2**31.
"""

from __future__ import annotations

import numpy as np
import triton
import triton.language as tl

from jaxseg.kernels.triton.launch import Launch, Out, cdiv, next_pow2

_MAX_GRID = 2**30  # the same bound on the adaptive grid as the XLA implementation (only NaN-like boxes)


@triton.jit
def _axis_geometry(lo, hi, scale, p, size, P: tl.constexpr, SAMPLING: tl.constexpr, ALIGNED: tl.constexpr):
    """One axis of one ROI for bins ``p`` (a vector): bin starts, bin size, samples per bin, sample range."""
    offset = 0.5 if ALIGNED else 0.0
    start = lo * scale - offset
    extent = (hi * scale - offset) - start
    if not ALIGNED:
        extent = tl.maximum(extent, 1.0)
    bin_size = tl.div_rn(extent, tl.full(extent.shape, P, tl.float32))
    if SAMPLING > 0:
        grid = tl.full(bin_size.shape, SAMPLING, tl.int32)
    else:
        g = tl.ceil(bin_size)
        grid = tl.where(g > 0.0, tl.minimum(g, 1073741824.0), 0.0).to(tl.int32)
    bin_start = start + p.to(tl.float32) * bin_size
    # [first, end): a superset of the samples inside [-1, size], widened by a rounding margin. The
    # step is negative for inverted boxes and zero for empty ones (only with a fixed sampling ratio:
    # the adaptive grid of such a box is empty); then every sample is at the same place.
    gf = grid.to(tl.float32)
    step = bin_size / tl.maximum(gf, 1.0)
    moving = (step > 0.0) | (step < 0.0)  # False for 0 and NaN
    safe = tl.where(moving, step, 1.0)
    to_low = (-1.0 - bin_start) / safe - 0.5
    to_high = (size - bin_start) / safe - 0.5
    a = tl.minimum(to_low, to_high)
    c = tl.maximum(to_low, to_high)
    margin = 1.0 + 1e-5 * tl.maximum(tl.abs(a), tl.abs(c))
    first = tl.minimum(tl.maximum(tl.floor(a) - margin, 0.0), gf)
    end = tl.minimum(tl.maximum(tl.floor(c) + 1.0 + margin, 0.0), gf)
    first = tl.where(moving, first, 0.0).to(tl.int32)
    end = tl.where(moving, end, tl.where(step == 0.0, gf, 0.0)).to(tl.int32)
    end = tl.maximum(end, first)
    return bin_start, bin_size, grid, first, end


@triton.jit
def _sample(i, end, bin_start, bin_size, divisor, size, size_i):
    """Taps of sample ``i`` (per bin): lower row, upper row, upper weight, validity.

    ``divisor`` is ``max(grid, 1)`` as float32, ``size`` the axis length as float32 and int32.
    """
    pos = bin_start + tl.div_rn((i.to(tl.float32) + 0.5) * bin_size, divisor)
    valid = (i < end) & (pos >= -1.0) & (pos <= size)
    pos = tl.minimum(tl.maximum(tl.where(valid, pos, 0.0), 0.0), size - 1.0)
    low = tl.floor(pos)
    lo_row = low.to(tl.int32)
    hi_row = tl.minimum(lo_row + 1, size_i - 1)
    return lo_row, hi_row, pos - low, valid


@triton.jit
def _roi_setup(
    boxes_ptr,
    bidx_ptr,
    scale,
    r,
    bins,
    N,
    H,
    W,
    PH: tl.constexpr,
    PW: tl.constexpr,
    SAMPLING: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    """Geometry of ROI ``r`` for the bins of this tile (y and x axes), its image and its sample count."""
    x1 = tl.load(boxes_ptr + r * 4 + 0)
    y1 = tl.load(boxes_ptr + r * 4 + 1)
    x2 = tl.load(boxes_ptr + r * 4 + 2)
    y2 = tl.load(boxes_ptr + r * 4 + 3)
    b = tl.minimum(tl.maximum(tl.load(bidx_ptr + r), 0), N - 1)
    ph = bins // PW
    pw = bins % PW
    ys, yb, yg, yf, ye = _axis_geometry(y1, y2, scale, ph, H.to(tl.float32), PH, SAMPLING, ALIGNED)
    xs, xb, xg, xf, xe = _axis_geometry(x1, x2, scale, pw, W.to(tl.float32), PW, SAMPLING, ALIGNED)
    count = tl.maximum(yg.to(tl.float32) * xg.to(tl.float32), 1.0)
    yd = tl.maximum(yg, 1).to(tl.float32)
    xd = tl.maximum(xg, 1).to(tl.float32)
    return b, ys, yb, yd, yf, ye, xs, xb, xd, xf, xe, count


@triton.jit
def roi_align_fwd_kernel(
    feat_ptr,  # (N, H, W, C) float32
    boxes_ptr,  # (R, 4) float32, XYXY in image coordinates
    bidx_ptr,  # (R,) int32
    scale,  # float32
    N,
    H,
    W,
    C,
    out_ptr,  # (R, PH, PW, C) float32
    PH: tl.constexpr,
    PW: tl.constexpr,
    SAMPLING: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK_BINS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    r = tl.program_id(0)
    bins = tl.program_id(1) * BLOCK_BINS + tl.arange(0, BLOCK_BINS)
    chans = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    bin_ok = bins < PH * PW
    chan_ok = chans < C
    b, ys, yb, yd, yf, ye, xs, xb, xd, xf, xe, count = _roi_setup(
        boxes_ptr, bidx_ptr, scale, r, bins, N, H, W, PH, PW, SAMPLING, ALIGNED
    )
    ny = tl.max(tl.where(bin_ok, ye - yf, 0), axis=0)
    nx = tl.max(tl.where(bin_ok, xe - xf, 0), axis=0)
    hf = H.to(tl.float32)
    wf = W.to(tl.float32)
    acc = tl.zeros((BLOCK_BINS, BLOCK_C), tl.float32)
    base = feat_ptr + chans[None, :]  # (1, BLOCK_C) pointers; + a pixel's offset * C per bin
    chan_ok2 = chan_ok[None, :]
    for ty in range(0, ny):
        y_lo, y_hi, ly, vy = _sample(yf + ty, ye, ys, yb, yd, hf, H)
        row_lo = (b * H + y_lo) * W
        row_hi = (b * H + y_hi) * W
        hy = 1.0 - ly
        vy = vy & bin_ok
        for tx in range(0, nx):
            x_lo, x_hi, lx, vx = _sample(xf + tx, xe, xs, xb, xd, wf, W)
            ok = (vy & vx)[:, None] & chan_ok2
            hx = 1.0 - lx
            v1 = tl.load(base + ((row_lo + x_lo) * C)[:, None], mask=ok, other=0.0)
            v2 = tl.load(base + ((row_lo + x_hi) * C)[:, None], mask=ok, other=0.0)
            v3 = tl.load(base + ((row_hi + x_lo) * C)[:, None], mask=ok, other=0.0)
            v4 = tl.load(base + ((row_hi + x_hi) * C)[:, None], mask=ok, other=0.0)
            acc += (hy * hx)[:, None] * v1 + (hy * lx)[:, None] * v2 + (ly * hx)[:, None] * v3 + (ly * lx)[:, None] * v4
    out = tl.div_rn(acc, tl.full(acc.shape, 1.0, tl.float32) * count)
    dst = out_ptr + ((r * (PH * PW) + bins) * C)[:, None] + chans[None, :]
    tl.store(dst, out, mask=bin_ok[:, None] & chan_ok[None, :])


@triton.jit
def roi_align_bwd_kernel(
    grad_ptr,  # (R, PH, PW, C) float32: cotangent of the output
    boxes_ptr,  # (R, 4) float32
    bidx_ptr,  # (R,) int32
    scale,  # float32
    N,
    H,
    W,
    C,
    dfeat_ptr,  # (N, H, W, C) float32, zeroed: accumulated with atomics
    PH: tl.constexpr,
    PW: tl.constexpr,
    SAMPLING: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK_BINS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    r = tl.program_id(0)
    bins = tl.program_id(1) * BLOCK_BINS + tl.arange(0, BLOCK_BINS)
    chans = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    bin_ok = bins < PH * PW
    chan_ok = chans < C
    b, ys, yb, yd, yf, ye, xs, xb, xd, xf, xe, count = _roi_setup(
        boxes_ptr, bidx_ptr, scale, r, bins, N, H, W, PH, PW, SAMPLING, ALIGNED
    )
    ny = tl.max(tl.where(bin_ok, ye - yf, 0), axis=0)
    nx = tl.max(tl.where(bin_ok, xe - xf, 0), axis=0)
    hf = H.to(tl.float32)
    wf = W.to(tl.float32)
    tile_ok = bin_ok[:, None] & chan_ok[None, :]
    g = tl.load(grad_ptr + ((r * (PH * PW) + bins) * C)[:, None] + chans[None, :], mask=tile_ok, other=0.0)
    g = tl.div_rn(g, tl.full(g.shape, 1.0, tl.float32) * count)
    base = dfeat_ptr + chans[None, :]
    for ty in range(0, ny):
        y_lo, y_hi, ly, vy = _sample(yf + ty, ye, ys, yb, yd, hf, H)
        row_lo = (b * H + y_lo) * W
        row_hi = (b * H + y_hi) * W
        hy = 1.0 - ly
        for tx in range(0, nx):
            x_lo, x_hi, lx, vx = _sample(xf + tx, xe, xs, xb, xd, wf, W)
            ok = (vy & vx)[:, None] & tile_ok
            hx = 1.0 - lx
            tl.atomic_add(base + ((row_lo + x_lo) * C)[:, None], (hy * hx)[:, None] * g, mask=ok)
            tl.atomic_add(base + ((row_lo + x_hi) * C)[:, None], (hy * lx)[:, None] * g, mask=ok)
            tl.atomic_add(base + ((row_hi + x_lo) * C)[:, None], (ly * hx)[:, None] * g, mask=ok)
            tl.atomic_add(base + ((row_hi + x_hi) * C)[:, None], (ly * lx)[:, None] * g, mask=ok)


def _meta(out_hw: tuple[int, int], channels: int, sampling_ratio: int, aligned: bool) -> dict:
    bins = out_hw[0] * out_hw[1]
    block_c = min(next_pow2(channels, 4), 32)
    block_bins = min(next_pow2(bins, 4), 64)
    return dict(
        PH=int(out_hw[0]),
        PW=int(out_hw[1]),
        SAMPLING=max(int(sampling_ratio), 0),
        ALIGNED=bool(aligned),
        BLOCK_BINS=block_bins,
        BLOCK_C=block_c,
    )


def _grid(rois: int, out_hw: tuple[int, int], channels: int, meta: dict) -> tuple[int, int, int]:
    return (rois, cdiv(out_hw[0] * out_hw[1], meta["BLOCK_BINS"]), cdiv(channels, meta["BLOCK_C"]))


def forward_launch(features, boxes, batch_index, out_hw, spatial_scale, sampling_ratio, aligned) -> Launch:
    """Launch of the forward kernel. features (N, H, W, C) float32, boxes (R, 4) float32, batch_index (R,) int32."""
    n, h, w, c = (int(d) for d in features.shape)
    r = int(boxes.shape[0])
    meta = _meta(out_hw, c, sampling_ratio, aligned)
    return Launch(
        kernel=roi_align_fwd_kernel,
        args=(features, boxes, batch_index, np.float32(spatial_scale), n, h, w, c),
        in_dtypes=("float32", "float32", "int32", None, None, None, None, None),
        outs=(Out((r, *out_hw, c), "float32"),),
        grid=_grid(r, out_hw, c, meta),
        meta=meta,
        name="jaxseg_roi_align_fwd",
    )


def backward_launch(grad, boxes, batch_index, feature_shape, spatial_scale, sampling_ratio, aligned) -> Launch:
    """Launch of the backward kernel. grad (R, PH, PW, C) float32; returns the (N, H, W, C) float32 gradient."""
    n, h, w, c = (int(d) for d in feature_shape)
    r, ph, pw = (int(d) for d in grad.shape[:3])
    meta = _meta((ph, pw), c, sampling_ratio, aligned)
    return Launch(
        kernel=roi_align_bwd_kernel,
        args=(grad, boxes, batch_index, np.float32(spatial_scale), n, h, w, c),
        in_dtypes=("float32", "float32", "int32", None, None, None, None, None),
        outs=(Out((n, h, w, c), "float32", zeroed=True),),
        grid=_grid(r, (ph, pw), c, meta),
        meta=meta,
        name="jaxseg_roi_align_bwd",
    )
