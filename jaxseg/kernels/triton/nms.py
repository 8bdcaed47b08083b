"""Greedy NMS as two Triton kernels (a suppression bitmask, then a one-program greedy scan).

Same result as ``jaxseg.kernels.nms`` ("xla"): boxes are ranked on the JAX side exactly as there
(valid first, descending score, ties by lower index), so the kept set is identical.

Parallel decomposition:

* ``nms_mask_kernel`` -- grid ``(row tiles, word tiles)``. A program compares ``BLOCK_I`` ranked
  boxes ``i`` with ``32 * BLOCK_W`` ranked boxes ``j`` (one ``[BLOCK_I, 32 * BLOCK_W]`` IoU block),
  keeps ``j > i & IoU > threshold & same group`` and packs each run of 32 columns into one int32
  word: ``mask[i, w]`` bit ``k`` says "box i suppresses box 32 * w + k". All tiles are independent.
* ``nms_scan_kernel`` -- grid ``(1,)``. The greedy part is sequential by nature; one program walks
  the valid boxes in rank order with a ``BLOCK_W``-word "removed" bitset in registers: box ``i`` is
  kept iff its bit is clear, and then ORs its mask row (one coalesced load of ``n_words`` words)
  into the bitset. It stops after ``max_output`` kept boxes. Cost: ``n_valid`` steps of O(n_words).

The IoU is ``inter / (area_i + area_j - inter)`` with a correctly rounded division, in the same
operation order as the reference, so ties at the threshold are decided the same way.
"""

from __future__ import annotations

import numpy as np
import triton
import triton.language as tl

from jaxseg.kernels.triton.launch import Launch, Out, cdiv, next_pow2

WORD = 32  # boxes per mask word


@triton.jit
def nms_mask_kernel(
    boxes_ptr,  # (N, 4) float32, ranked
    groups_ptr,  # (N,) int32, ranked (all zero for plain nms)
    threshold,  # float32
    N,
    n_words,
    mask_ptr,  # (N, n_words) int32
    BLOCK_I: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    i = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    j = tl.program_id(1) * (BLOCK_W * 32) + tl.arange(0, BLOCK_W * 32)
    i_ok = i < N
    j_ok = j < N
    ax1 = tl.load(boxes_ptr + i * 4 + 0, mask=i_ok, other=0.0)
    ay1 = tl.load(boxes_ptr + i * 4 + 1, mask=i_ok, other=0.0)
    ax2 = tl.load(boxes_ptr + i * 4 + 2, mask=i_ok, other=0.0)
    ay2 = tl.load(boxes_ptr + i * 4 + 3, mask=i_ok, other=0.0)
    bx1 = tl.load(boxes_ptr + j * 4 + 0, mask=j_ok, other=0.0)
    by1 = tl.load(boxes_ptr + j * 4 + 1, mask=j_ok, other=0.0)
    bx2 = tl.load(boxes_ptr + j * 4 + 2, mask=j_ok, other=0.0)
    by2 = tl.load(boxes_ptr + j * 4 + 3, mask=j_ok, other=0.0)
    ga = tl.load(groups_ptr + i, mask=i_ok, other=0)
    gb = tl.load(groups_ptr + j, mask=j_ok, other=0)
    area_a = (ax2 - ax1) * (ay2 - ay1)
    area_b = (bx2 - bx1) * (by2 - by1)
    iw = tl.maximum(tl.minimum(ax2[:, None], bx2[None, :]) - tl.maximum(ax1[:, None], bx1[None, :]), 0.0)
    ih = tl.maximum(tl.minimum(ay2[:, None], by2[None, :]) - tl.maximum(ay1[:, None], by1[None, :]), 0.0)
    inter = iw * ih
    iou = tl.div_rn(inter, (area_a[:, None] + area_b[None, :]) - inter)
    sup = (iou > threshold) & (j[None, :] > i[:, None]) & j_ok[None, :] & (ga[:, None] == gb[None, :])
    bits = sup.to(tl.int32) << (j % 32).to(tl.int32)[None, :]
    # Distinct powers of two: their sum is their bitwise OR (bit 31 wraps to the sign, as intended).
    words = tl.sum(tl.reshape(bits, (BLOCK_I, BLOCK_W, 32)), axis=2)
    w = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    tl.store(mask_ptr + i[:, None] * n_words + w[None, :], words, mask=i_ok[:, None] & (w < n_words)[None, :])


@triton.jit
def nms_scan_kernel(
    mask_ptr,  # (N, n_words) int32 from nms_mask_kernel
    n_valid_ptr,  # (1,) int32: valid boxes, ranked first
    n_words,
    max_output,
    keep_ptr,  # (N,) int8, zeroed: 1 for kept boxes (rank order)
    BLOCK_W: tl.constexpr,
):
    w = tl.arange(0, BLOCK_W)
    w_ok = w < n_words
    n = tl.load(n_valid_ptr)
    removed = tl.zeros((BLOCK_W,), tl.int32)
    kept = n * 0
    i = n * 0
    while (i < n) & (kept < max_output):
        word = tl.sum(tl.where(w == i // 32, removed, 0), axis=0)
        alive = ((word >> (i % 32)) & 1) == 0
        row = tl.load(mask_ptr + i * n_words + w, mask=w_ok & alive, other=0)
        removed = removed | row
        tl.store(keep_ptr + i, alive.to(tl.int8))
        kept += alive.to(tl.int32)
        i += 1


def mask_launch(boxes, groups, iou_threshold: float) -> Launch:
    """Suppression bitmask of ranked boxes (N, 4) float32 and groups (N,) int32 -> (N, n_words) int32."""
    n = int(boxes.shape[0])
    n_words = cdiv(n, WORD)
    meta = dict(BLOCK_I=32, BLOCK_W=min(next_pow2(n_words), 4))
    return Launch(
        kernel=nms_mask_kernel,
        args=(boxes, groups, np.float32(iou_threshold), n, n_words),
        in_dtypes=("float32", "int32", None, None, None),
        outs=(Out((n, n_words), "int32"),),
        grid=(cdiv(n, meta["BLOCK_I"]), cdiv(n_words, meta["BLOCK_W"])),
        meta=meta,
        num_warps=8,  # a [32, 128] IoU tile: 16 elements per thread
        name="jaxseg_nms_mask",
    )


def scan_launch(mask, n_valid, max_output: int) -> Launch:
    """Greedy scan of a (N, n_words) mask with (1,) int32 ``n_valid`` -> (N,) int8 keep flags."""
    n, n_words = (int(d) for d in mask.shape)
    return Launch(
        kernel=nms_scan_kernel,
        args=(mask, n_valid, n_words, int(max_output)),
        in_dtypes=("int32", "int32", None, None),
        outs=(Out((n,), "int8", zeroed=True),),
        grid=(1,),
        meta=dict(BLOCK_W=next_pow2(n_words)),
        num_warps=1 if n_words <= 32 else 4,
        name="jaxseg_nms_scan",
    )


# ----------------------------------------------------------------------------------------------
# JAX side, shared by the GPU path and the interpreter tests


def prepare(boxes, scores, groups, valid):
    """Ranked float32 boxes, int32 groups, (1,) int32 count of valid boxes and the rank order."""
    import jax.numpy as jnp

    from jaxseg.kernels.nms import _rank

    n = boxes.shape[0]
    valid = jnp.ones((n,), bool) if valid is None else valid.astype(bool)
    order = _rank(scores, valid)
    groups = jnp.zeros((n,), jnp.int32) if groups is None else groups.astype(jnp.int32)
    ranked_boxes = boxes.astype(jnp.float32)[order]
    n_valid = jnp.sum(valid).astype(jnp.int32).reshape(1)
    return ranked_boxes, groups[order], n_valid, order


def finish(order, keep_flags, k_out: int):
    """(K,) int32 kept indices in rank order padded with 0, and (K,) validity."""
    from jaxseg.kernels.nms import _compact

    return _compact(order, keep_flags != 0, k_out)
