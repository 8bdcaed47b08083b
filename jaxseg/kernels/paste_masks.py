"""Pasting of per-box mask probabilities into the full image (detectron2 ``paste_masks_in_image``).

Each image pixel centre ``(Y + 0.5, X + 0.5)`` is mapped into the box's normalised coordinates
``g = (p - lo) / (hi - lo) * 2 - 1`` and sampled from the M x M mask like ``grid_sample`` with
``align_corners=False`` and zero padding: source position ``u = ((g + 1) * M - 1) / 2``, taps
``floor(u)`` and ``floor(u) + 1`` with weights ``1 - frac`` and ``frac``, taps outside ``[0, M)``
read 0. The weights separate by axis, so every mask is ``Wy (H, M) @ mask (M, M) @ Wx^T (M, W)``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jaxseg.kernels._dispatch import register, resolve

_HIGHEST = lax.Precision.HIGHEST
_MASKS_PER_STEP = 16  # masks pasted together; bounds the (n, H, W) float32 temporary


def paste_masks(
    masks: jax.Array,
    boxes: jax.Array,
    image_shape: tuple[int, int],
    threshold: float | None = 0.5,
    implementation: str | None = None,
) -> jax.Array:
    """Pastes ``masks`` into an image of ``image_shape`` at ``boxes``.

    Args:
      masks: (N, M, M) probabilities.
      boxes: (N, 4) XYXY in output-image pixels.
      image_shape: (H, W), static Python ints.
      threshold: output ``value >= threshold`` as bool; None returns the float32 values.
      implementation: None (default), "xla", or a registered faster implementation.

    Returns:
      (N, H, W) bool, or float32 when ``threshold`` is None.
    """
    fn = resolve("paste_masks", implementation)
    h, w = image_shape
    return fn(masks, boxes, (int(h), int(w)), None if threshold is None else float(threshold))


def _axis_weights(lo, hi, m: int, size: int, mask_side=None):
    """Interpolation weights (size, m) of one axis for a box spanning [lo, hi) (scalars).

    `mask_side` (a traced scalar <= m, default m): the mask's own side when it sits in the top-left corner of an
    m x m buffer that is zero beyond it (masks of several sizes pasted by one program)."""
    centre = jnp.arange(size, dtype=jnp.float32) + 0.5
    # A full-shape divisor behind a barrier: XLA would otherwise multiply by an inexact 1 / (hi - lo).
    extent = lax.optimization_barrier(jnp.broadcast_to(hi - lo, centre.shape))
    g = (centre - lo) / extent * 2.0 - 1.0
    side = jnp.float32(m) if mask_side is None else jnp.asarray(mask_side, jnp.float32)
    u = ((g + 1.0) * side - 1.0) / 2.0  # (size,)
    finite = jnp.isfinite(u)  # degenerate boxes give inf/NaN: no taps
    u = jnp.clip(jnp.where(finite, u, -2.0), -2.0, m + 1.0)  # outside the mask either way; no int overflow
    u0 = jnp.floor(u)
    frac = u - u0
    tap = jnp.arange(m)
    u0 = u0.astype(jnp.int32)[:, None]
    w = jnp.where(tap == u0, (1.0 - frac)[:, None], 0.0) + jnp.where(tap == u0 + 1, frac[:, None], 0.0)
    return jnp.where(finite[:, None], w, 0.0)


def _paste_values(mask, box, image_shape, mask_side=None):
    """Interpolated values (H, W) float32 of one mask (M, M) at one box (4,); `mask_side` as in _axis_weights."""
    h, w = image_shape
    m = mask.shape[-1]
    b = box.astype(jnp.float32)
    wy = _axis_weights(b[1], b[3], m, h, mask_side)  # (H, M)
    wx = _axis_weights(b[0], b[2], m, w, mask_side)  # (W, M)
    rows = jnp.dot(wy, mask.astype(jnp.float32), precision=_HIGHEST)  # (H, M)
    return jnp.dot(rows, wx.T, precision=_HIGHEST)


def paste_masks_of_sizes(masks: jax.Array, sides: jax.Array, boxes: jax.Array, image_shape: tuple[int, int],
                         threshold: float | None = 0.5) -> jax.Array:
    """Like :func:`paste_masks` for masks of different sizes: mask i is masks[i, :sides[i], :sides[i]] of an
    (N, M, M) buffer that is zero beyond it (pure JAX; one program for every size)."""
    h, w = int(image_shape[0]), int(image_shape[1])

    def paste(args):
        values = _paste_values(args[0], args[2], (h, w), args[1])
        return values if threshold is None else values >= threshold

    if masks.shape[0] == 0:
        return jnp.zeros((0, h, w), jnp.float32 if threshold is None else bool)
    return lax.map(paste, (masks, sides, boxes), batch_size=min(_MASKS_PER_STEP, masks.shape[0]))


@register("paste_masks", "xla")
@partial(jax.jit, static_argnums=(2, 3))
def paste_masks_xla(masks, boxes, image_shape, threshold):
    """Pure-JAX :func:`paste_masks`: separable matmuls, a few masks at a time."""
    h, w = image_shape
    n, mh, mw = masks.shape
    if mh != mw:
        raise ValueError(f"paste_masks: masks must be square, got {mh}x{mw}")

    def paste(args):  # one mask; lax.map vmaps it over steps of _MASKS_PER_STEP masks
        values = _paste_values(*args, (h, w))
        return values if threshold is None else values >= threshold

    if n == 0:
        return jnp.zeros((0, h, w), jnp.float32 if threshold is None else bool)
    return lax.map(paste, (masks, boxes), batch_size=min(_MASKS_PER_STEP, n))
