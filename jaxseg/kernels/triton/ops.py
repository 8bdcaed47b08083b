"""JAX entry points of the Triton kernels (GPU): casts, launches through jax-triton, custom_vjp.

Imported only when a "triton" implementation is called (it imports ``triton``). Every launch goes
through :func:`jaxseg.kernels.triton.launch.run_jax`; under ``jax.vmap`` the kernel call runs once
per batch element (``jax.custom_batching.sequential_vmap``), since a Triton call has no batching
rule of its own.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp

from jaxseg.kernels.swap_align2nat import output_shape
from jaxseg.kernels.triton import launch as _launch
from jaxseg.kernels.triton import nms as _nms
from jaxseg.kernels.triton import paste_masks as _paste
from jaxseg.kernels.triton import roi_align as _roi
from jaxseg.kernels.triton import swap_align2nat as _swap


def _run(build, *arrays, **static):
    """Launches ``build(*arrays, **static)``; batched arrays are handled by a loop over the batch."""

    def call(*arrays):
        return tuple(_launch.run_jax(build(*arrays, **static)))

    return jax.custom_batching.sequential_vmap(call)(*arrays)


# ----------------------------------------------------------------------------------------------
# roi_align


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _roi_align(features, boxes, batch_index, out_hw, spatial_scale, sampling_ratio, aligned):
    return _roi_align_fwd(features, boxes, batch_index, out_hw, spatial_scale, sampling_ratio, aligned)[0]


def _roi_align_fwd(features, boxes, batch_index, out_hw, spatial_scale, sampling_ratio, aligned):
    (out,) = _run(
        _roi.forward_launch,
        features.astype(jnp.float32),
        boxes.astype(jnp.float32),
        batch_index.astype(jnp.int32),
        out_hw=out_hw,
        spatial_scale=spatial_scale,
        sampling_ratio=sampling_ratio,
        aligned=aligned,
    )
    shape_like = jnp.zeros((*features.shape[:3], 0), features.dtype)  # carries N, H, W and the dtype
    return out.astype(features.dtype), (boxes, batch_index, shape_like)


def _roi_align_bwd(out_hw, spatial_scale, sampling_ratio, aligned, res, g):
    boxes, batch_index, shape_like = res
    feature_shape = (*shape_like.shape[:3], g.shape[-1])

    def build(grad, boxes, batch_index):
        return _roi.backward_launch(grad, boxes, batch_index, feature_shape, spatial_scale, sampling_ratio, aligned)

    (dfeat,) = _run(build, g.astype(jnp.float32), boxes.astype(jnp.float32), batch_index.astype(jnp.int32))
    return dfeat.astype(shape_like.dtype), jnp.zeros_like(boxes), _int_zero(batch_index)


def _int_zero(a):
    if jnp.issubdtype(a.dtype, jnp.floating):
        return jnp.zeros_like(a)
    return jnp.zeros(a.shape, jax.dtypes.float0)


_roi_align.defvjp(_roi_align_fwd, _roi_align_bwd)


@partial(jax.jit, static_argnums=(3, 4, 5, 6))
def roi_align(features, boxes, batch_index, out_hw, spatial_scale, sampling_ratio, aligned):
    """Triton ROIAlign, same contract as ``roi_align_xla``; differentiable w.r.t. ``features``."""
    n, _, _, c = features.shape
    r = boxes.shape[0]
    if r == 0 or n == 0:
        return jnp.zeros((r, *out_hw, c), features.dtype)
    return _roi_align(
        features, boxes, batch_index, tuple(out_hw), float(spatial_scale), int(sampling_ratio), bool(aligned)
    )


# ----------------------------------------------------------------------------------------------
# nms


def _greedy_nms(boxes, scores, groups, threshold, valid, max_output):
    n = boxes.shape[0]
    k_out = n if max_output is None else int(max_output)
    if n == 0 or k_out == 0:
        return jnp.zeros((k_out,), jnp.int32), jnp.zeros((k_out,), bool)
    ranked, ranked_groups, n_valid, order = _nms.prepare(boxes, scores, groups, valid)
    # The threshold is traced in the xla version; here it is a kernel scalar, so it must be static.
    (mask,) = _run(_nms.mask_launch, ranked, ranked_groups, iou_threshold=float(threshold))
    (keep,) = _run(_nms.scan_launch, mask, n_valid, max_output=k_out)
    return _nms.finish(order, keep, k_out)


@partial(jax.jit, static_argnames=("iou_threshold", "max_output"))
def _nms_jit(boxes, scores, groups, valid, *, iou_threshold, max_output):
    return _greedy_nms(boxes, scores, groups, iou_threshold, valid, max_output)


def nms(boxes, scores, iou_threshold, *, valid=None, max_output=None):
    """Triton :func:`jaxseg.kernels.nms` (``iou_threshold`` must be a Python number)."""
    return _nms_jit(boxes, scores, None, valid, iou_threshold=float(iou_threshold), max_output=max_output)


def batched_nms(boxes, scores, idxs, iou_threshold, *, valid=None, max_output=None):
    """Triton :func:`jaxseg.kernels.batched_nms` (``iou_threshold`` must be a Python number)."""
    return _nms_jit(boxes, scores, idxs, valid, iou_threshold=float(iou_threshold), max_output=max_output)


# ----------------------------------------------------------------------------------------------
# paste_masks


@partial(jax.jit, static_argnums=(2, 3))
def paste_masks(masks, boxes, image_shape, threshold):
    """Triton :func:`jaxseg.kernels.paste_masks`: bool (N, H, W), or float32 when ``threshold`` is None."""
    h, w = image_shape
    n, mh, mw = masks.shape
    if mh != mw:
        raise ValueError(f"paste_masks: masks must be square, got {mh}x{mw}")
    if n == 0:
        return jnp.zeros((0, h, w), jnp.float32 if threshold is None else bool)
    (out,) = _run(
        _paste.paste_launch,
        masks.astype(jnp.float32),
        boxes.astype(jnp.float32),
        image_shape=(h, w),
        threshold=threshold,
    )
    return out if threshold is None else out != 0


# ----------------------------------------------------------------------------------------------
# swap_align2nat


def _tables(make, shape, lam):
    return tuple(jnp.asarray(a) for a in make(shape, lam))


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _swap_align2nat(x, lam, pad):
    return _swap_align2nat_fwd(x, lam, pad)[0]


def _swap_align2nat_fwd(x, lam, pad):
    build = lambda x, *tables: _swap.forward_launch(x, *tables, lam=lam, pad=pad)
    (y,) = _run(build, x, *_tables(_swap.forward_tables, x.shape, lam))
    return y, jnp.zeros((*x.shape[:-1], 0), x.dtype)  # carries (N, H, W)


def _swap_align2nat_bwd(lam, pad, x_like, g):
    """The transposed gather (see the kernel module): deterministic, no atomics."""
    s = math.isqrt(g.shape[-1]) // lam
    input_shape = (*x_like.shape[:-1], s * s)
    build = lambda g, *tables: _swap.backward_launch(g, *tables, lam=lam, input_shape=input_shape)
    (dx,) = _run(build, g.astype(jnp.float32), *_tables(_swap.backward_tables, input_shape, lam))
    return (dx.astype(x_like.dtype),)


_swap_align2nat.defvjp(_swap_align2nat_fwd, _swap_align2nat_bwd)


@partial(jax.jit, static_argnums=(1, 2))
def swap_align2nat(x, lam, pad):
    """Triton SwapAlign2Nat, same contract as ``swap_align2nat_xla``; differentiable w.r.t. ``x``."""
    out_shape = output_shape(x.shape, lam)
    if 0 in x.shape[:-1] or 0 in out_shape:
        return jnp.zeros(out_shape, x.dtype)
    x4 = x.reshape(-1, *x.shape[-3:]).astype(jnp.float32)
    return _swap_align2nat(x4, int(lam), float(pad)).reshape(out_shape).astype(x.dtype)
