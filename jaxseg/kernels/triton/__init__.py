"""The "triton" implementations (GPU): ``@triton.jit`` kernels launched from JAX by jax-triton.

Importing this package only registers the implementations; ``triton`` and ``jax_triton`` are
imported on the first call. They are available when JAX's default backend is a GPU and
``jax_triton`` imports (it needs a GPU build of jaxlib).

Layout: one module per op (``roi_align``, ``nms``, ``paste_masks``, ``swap_align2nat``) holding its kernels and a
function per kernel that returns its :class:`~jaxseg.kernels.triton.launch.Launch` (grid, block
sizes, argument order, outputs); ``launch.run_jax`` runs a ``Launch`` through
``jax_triton.triton_call`` and the tests run the same ``Launch`` in Triton's CPU interpreter.
``ops`` holds the JAX side (casts, ``custom_vjp``, batching).
"""

from __future__ import annotations

import functools
import warnings

import jax

from jaxseg.kernels._dispatch import register

_GPU_BACKENDS = ("gpu", "cuda", "rocm")


@functools.cache
def _jax_triton_importable() -> bool:
    """Whether jax_triton imports; on a GPU backend a failure is said once (as the FFI fallback is)."""
    try:
        import jax_triton  # noqa: F401
    except Exception as error:  # ImportError without a GPU jaxlib; anything else means unusable too
        warnings.warn(
            f"jaxseg: jax_triton cannot be imported ({type(error).__name__}: {error}); GPU kernels fall back to "
            "the pure-JAX 'xla' implementations. Install jaxseg[cuda] to use the Triton kernels.",
            RuntimeWarning, stacklevel=2)
        return False
    return True


def available() -> bool:
    """True when the Triton kernels can run: a GPU backend and an importable jax_triton (only then is the
    import tried, so a CPU run says nothing)."""
    return jax.default_backend() in _GPU_BACKENDS and _jax_triton_importable()


def _ops():
    from jaxseg.kernels.triton import ops

    return ops


@register("roi_align", "triton", available=available)
def roi_align_triton(features, boxes, batch_index, out_hw, spatial_scale, sampling_ratio, aligned):
    """Triton :func:`jaxseg.kernels.roi_align`."""
    return _ops().roi_align(features, boxes, batch_index, out_hw, spatial_scale, sampling_ratio, aligned)


@register("nms", "triton", available=available)
def nms_triton(boxes, scores, iou_threshold, *, valid=None, max_output=None):
    """Triton :func:`jaxseg.kernels.nms`."""
    return _ops().nms(boxes, scores, iou_threshold, valid=valid, max_output=max_output)


@register("batched_nms", "triton", available=available)
def batched_nms_triton(boxes, scores, idxs, iou_threshold, *, valid=None, max_output=None):
    """Triton :func:`jaxseg.kernels.batched_nms`."""
    return _ops().batched_nms(boxes, scores, idxs, iou_threshold, valid=valid, max_output=max_output)


@register("paste_masks", "triton", available=available)
def paste_masks_triton(masks, boxes, image_shape, threshold):
    """Triton :func:`jaxseg.kernels.paste_masks`."""
    return _ops().paste_masks(masks, boxes, image_shape, threshold)


@register("swap_align2nat", "triton", available=available)
def swap_align2nat_triton(x, lam, pad):
    """Triton :func:`jaxseg.kernels.swap_align2nat`."""
    return _ops().swap_align2nat(x, lam, pad)
