"""The "ffi" kernels: C++ XLA FFI custom calls on CPU (sources in ``csrc/``, built by ``pip install``).

Same signatures and semantics as the pure-JAX "xla" implementations (roi_align, nms, batched_nms,
paste_masks, swap_align2nat), which stay the reference. The C++ handlers run multithreaded (``$JAXSEG_FFI_THREADS``
threads, default: all cores) and handle leading batch dimensions, so every op works under ``jit`` and
``vmap`` (``vmap_method="expand_dims"``: an unbatched operand is not copied per batch element).
roi_align's and swap_align2nat's input gradients are ``jax.custom_vjp``s whose backward is a second C++
kernel.

The compiled module ``jaxseg.kernels._ffi_cpu`` is optional: when the install could not build it,
importing this module warns once and the ops are registered as unavailable, so the dispatcher picks
"xla".
"""

from __future__ import annotations

import importlib
import math
import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.kernels._dispatch import register
from jaxseg.kernels.swap_align2nat import output_shape

try:
    _ffi_cpu = importlib.import_module("jaxseg.kernels._ffi_cpu")
except ImportError as _error:  # not built: no compiler at install time, or a source checkout
    _ffi_cpu = None
    warnings.warn(
        f"jaxseg: the C++ FFI kernels are not built ({_error}); CPU kernels fall back to the pure-JAX 'xla' "
        "implementations. Reinstall with a C++17 compiler (pip install -e .) to build them.",
        RuntimeWarning,
        stacklevel=2,
    )
else:
    for _name, _capsule in _ffi_cpu.registrations().items():
        jax.ffi.register_ffi_target(_name, _capsule, platform="cpu")

_VMAP = "expand_dims"


def is_built() -> bool:
    """True when the C++ module was compiled and loaded."""
    return _ffi_cpu is not None


def is_available() -> bool:
    """True when the kernels can run here: built, and JAX's default backend is the CPU."""
    return _ffi_cpu is not None and jax.default_backend() == "cpu"


# ----------------------------------------------------------------------------------------------
# roi_align


@register("roi_align", "ffi", available=is_available)
def roi_align_ffi(
    features: jax.Array,
    boxes: jax.Array,
    batch_index: jax.Array,
    out_hw: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> jax.Array:
    """C++ :func:`jaxseg.kernels.roi_align` (arguments as ``roi_align_xla``)."""
    n, _, _, c = features.shape
    r = boxes.shape[0]
    if r == 0 or n == 0:
        return jnp.zeros((r, *out_hw, c), features.dtype)
    out = _roi_align(
        features,
        boxes.astype(jnp.float32),
        batch_index.astype(jnp.int32),
        tuple(out_hw),
        float(spatial_scale),
        int(sampling_ratio),
        bool(aligned),
    )
    return out.astype(features.dtype)


def _roi_align_attrs(spatial_scale: float, sampling_ratio: int, aligned: bool) -> dict:
    return {
        "spatial_scale": np.float32(spatial_scale),
        "sampling_ratio": np.int64(sampling_ratio),
        "aligned": bool(aligned),
    }


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _roi_align(features, boxes, batch_index, out_hw, spatial_scale, sampling_ratio, aligned):
    shape = jax.ShapeDtypeStruct((boxes.shape[0], *out_hw, features.shape[-1]), jnp.float32)
    call = jax.ffi.ffi_call("jaxseg_roi_align_fwd", shape, vmap_method=_VMAP)
    attrs = _roi_align_attrs(spatial_scale, sampling_ratio, aligned)
    return call(features.astype(jnp.float32), boxes, batch_index, **attrs)


def _roi_align_fwd(features, boxes, batch_index, out_hw, spatial_scale, sampling_ratio, aligned):
    out = _roi_align(features, boxes, batch_index, out_hw, spatial_scale, sampling_ratio, aligned)
    # (N, H, W, 0): carries the shape and dtype of the features, not their values
    features_like = jnp.zeros((*features.shape[:-1], 0), features.dtype)
    return out, (boxes, batch_index, features_like)


def _roi_align_bwd(out_hw, spatial_scale, sampling_ratio, aligned, res, g):
    boxes, batch_index, features_like = res
    shape = jax.ShapeDtypeStruct((*features_like.shape[:-1], g.shape[-1]), jnp.float32)
    call = jax.ffi.ffi_call("jaxseg_roi_align_bwd", shape, vmap_method=_VMAP)
    attrs = _roi_align_attrs(spatial_scale, sampling_ratio, aligned)
    dfeatures = call(g.astype(jnp.float32), boxes, batch_index, **attrs)
    return dfeatures.astype(features_like.dtype), jnp.zeros_like(boxes), None


_roi_align.defvjp(_roi_align_fwd, _roi_align_bwd)


# ----------------------------------------------------------------------------------------------
# nms, batched_nms


@register("nms", "ffi", available=is_available)
def nms_ffi(
    boxes: jax.Array,
    scores: jax.Array,
    iou_threshold: float | jax.Array,
    *,
    valid: jax.Array | None = None,
    max_output: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """C++ :func:`jaxseg.kernels.nms`."""
    return _nms(boxes, scores, None, iou_threshold, valid, max_output)


@register("batched_nms", "ffi", available=is_available)
def batched_nms_ffi(
    boxes: jax.Array,
    scores: jax.Array,
    idxs: jax.Array,
    iou_threshold: float | jax.Array,
    *,
    valid: jax.Array | None = None,
    max_output: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """C++ :func:`jaxseg.kernels.batched_nms`."""
    return _nms(boxes, scores, idxs, iou_threshold, valid, max_output)


def _nms(boxes, scores, groups, threshold, valid, max_output):
    n = boxes.shape[0]
    k = n if max_output is None else int(max_output)
    if n == 0 or k == 0:
        return jnp.zeros((k,), jnp.int32), jnp.zeros((k,), bool)
    valid = jnp.ones((n,), bool) if valid is None else jnp.asarray(valid).astype(bool)
    use_groups = groups is not None
    groups = jnp.zeros((n,), jnp.int32) if groups is None else jnp.asarray(groups).astype(jnp.int32)
    shapes = (jax.ShapeDtypeStruct((k,), jnp.int32), jax.ShapeDtypeStruct((k,), jnp.bool_))
    call = jax.ffi.ffi_call("jaxseg_nms", shapes, vmap_method=_VMAP)
    keep, keep_valid = call(
        jnp.asarray(boxes, jnp.float32),
        jnp.asarray(scores, jnp.float32),
        valid,
        groups,
        jnp.asarray(threshold, jnp.float32),
        use_groups=use_groups,
    )
    return keep, keep_valid


# ----------------------------------------------------------------------------------------------
# paste_masks


@register("paste_masks", "ffi", available=is_available)
def paste_masks_ffi(
    masks: jax.Array, boxes: jax.Array, image_shape: tuple[int, int], threshold: float | None
) -> jax.Array:
    """C++ :func:`jaxseg.kernels.paste_masks` (arguments as ``paste_masks_xla``)."""
    h, w = image_shape
    n, mh, mw = masks.shape
    if mh != mw:
        raise ValueError(f"paste_masks: masks must be square, got {mh}x{mw}")
    dtype = jnp.float32 if threshold is None else jnp.bool_
    if n == 0:
        return jnp.zeros((0, h, w), dtype)
    args = (jnp.asarray(masks, jnp.float32), jnp.asarray(boxes, jnp.float32))
    shape = jax.ShapeDtypeStruct((n, h, w), dtype)
    if threshold is None:
        return jax.ffi.ffi_call("jaxseg_paste_masks_values", shape, vmap_method=_VMAP)(*args)
    call = jax.ffi.ffi_call("jaxseg_paste_masks_binary", shape, vmap_method=_VMAP)
    return call(*args, threshold=np.float32(threshold))


# ----------------------------------------------------------------------------------------------
# swap_align2nat


@register("swap_align2nat", "ffi", available=is_available)
def swap_align2nat_ffi(x: jax.Array, lam: int, pad: float) -> jax.Array:
    """C++ :func:`jaxseg.kernels.swap_align2nat` (arguments as ``swap_align2nat_xla``)."""
    out_shape = output_shape(x.shape, lam)
    if 0 in x.shape[:-1] or 0 in out_shape:
        return jnp.zeros(out_shape, x.dtype)
    return _swap_align2nat(x.astype(jnp.float32), int(lam), float(pad)).astype(x.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _swap_align2nat(x, lam, pad):
    shape = jax.ShapeDtypeStruct(output_shape(x.shape, lam), jnp.float32)
    call = jax.ffi.ffi_call("jaxseg_swap_align2nat_fwd", shape, vmap_method=_VMAP)
    return call(x, lambda_val=np.int64(lam), pad_val=np.float32(pad))


def _swap_align2nat_fwd(x, lam, pad):
    return _swap_align2nat(x, lam, pad), jnp.zeros((*x.shape[:-1], 0), x.dtype)  # carries (..., H, W)


def _swap_align2nat_bwd(lam, pad, x_like, g):
    s = math.isqrt(g.shape[-1]) // lam
    shape = jax.ShapeDtypeStruct((*x_like.shape[:-1], s * s), jnp.float32)
    call = jax.ffi.ffi_call("jaxseg_swap_align2nat_bwd", shape, vmap_method=_VMAP)
    return (call(g.astype(jnp.float32), lambda_val=np.int64(lam)).astype(x_like.dtype),)


_swap_align2nat.defvjp(_swap_align2nat_fwd, _swap_align2nat_bwd)
