"""EmbedMask's masks: embedding distances to probabilities, the box masks, and the two bilinear resizes.

All pure functions on one image. Upstream (gakkiri `fcos_outputs.forward_for_mask` and `postprocessing.py`):

    prob = exp(-margin * ||E - q||^2) * box_mask        # (D, H4, W4), E the stride-4 pixel embedding
    prob = interpolate(prob, (4 H4, 4 W4))[:, :h, :w]   # bilinear, align_corners False; crop to the resized image
    mask = interpolate(prob, (H, W)) > 0.5              # to the original size, bilinear, no antialias

Both resizes are linear along each axis, so their composition is one (H, H4) matrix on the rows and one (W, W4)
matrix on the columns: `mask = (A_y @ prob @ A_x^T) > 0.5`, which never builds the padded full-resolution maps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


def mask_probabilities(pixel_embed: jax.Array, embeds: jax.Array, margins: jax.Array) -> jax.Array:
    """pixel_embed (H4, W4, E), embeds (D, E), margins (D,) -> exp(-margin * squared distance) (D, H4, W4)."""
    dist = jnp.sum(jnp.square(pixel_embed[None] - embeds[:, None, None, :]), axis=-1)
    return jnp.exp(-margins[:, None, None] * dist)


def box_masks(boxes_s4: jax.Array, h4: int, w4: int, x_max: float, y_max: float) -> jax.Array:
    """boxes (D, 4) in stride-4 pixels (box / 4) -> (D, h4, w4) bool: pixel (x, y) with x >= max(x1 - 1, 0),
    x < min(x2 + 1, x_max) and the same for y (inference: x_max = w4; the training crop: w4 - 1)."""
    x1 = jnp.maximum(boxes_s4[:, 0] - 1, 0.0)[:, None, None]
    y1 = jnp.maximum(boxes_s4[:, 1] - 1, 0.0)[:, None, None]
    x2 = jnp.minimum(boxes_s4[:, 2] + 1, x_max)[:, None, None]
    y2 = jnp.minimum(boxes_s4[:, 3] + 1, y_max)[:, None, None]
    xs = jnp.arange(w4, dtype=jnp.float32)[None, None, :]
    ys = jnp.arange(h4, dtype=jnp.float32)[None, :, None]
    return (xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)


def bilinear_matrix(out_size: jax.Array, in_size: jax.Array, out_slots: int, in_slots: int) -> jax.Array:
    """(out_slots, in_slots) float32: torch's bilinear resize (align_corners False, no antialias) of a length
    `in_size` signal to `out_size` as a matrix; sizes may be traced, rows >= out_size and columns >= in_size are 0."""
    in_f = jnp.asarray(in_size, jnp.float32)
    scale = in_f / jnp.asarray(out_size, jnp.float32)
    src = jnp.maximum((jnp.arange(out_slots, dtype=jnp.float32) + 0.5) * scale - 0.5, 0.0)
    i0 = jnp.floor(src).astype(jnp.int32)
    i0 = jnp.minimum(i0, jnp.asarray(in_size, jnp.int32) - 1)
    i1 = jnp.minimum(i0 + 1, jnp.asarray(in_size, jnp.int32) - 1)
    lam = src - i0.astype(jnp.float32)
    cols = jnp.arange(in_slots)[None, :]
    m = (1.0 - lam)[:, None] * (cols == i0[:, None]) + lam[:, None] * (cols == i1[:, None])
    return jnp.where(jnp.arange(out_slots)[:, None] < out_size, m, 0.0)


def output_masks(probs: jax.Array, resized_hw: jax.Array, output_hw: jax.Array, canvas_hw: tuple[int, int],
                 threshold: float = 0.5) -> jax.Array:
    """probs (D, H4, W4) at stride 4 of the padded input -> (D, canvas_h, canvas_w) bool masks of the original
    image (valid in the top-left output_hw; False beyond): x4 to the padded size, crop to resized_hw, resize to
    output_hw, > threshold."""
    h4, w4 = probs.shape[1:]
    ys = [bilinear_matrix(4 * h4, h4, 4 * h4, h4), bilinear_matrix(output_hw[0], resized_hw[0], canvas_hw[0], 4 * h4)]
    xs = [bilinear_matrix(4 * w4, w4, 4 * w4, w4), bilinear_matrix(output_hw[1], resized_hw[1], canvas_hw[1], 4 * w4)]
    a_y = jnp.matmul(ys[1], ys[0], precision=HIGHEST)  # (canvas_h, H4)
    a_x = jnp.matmul(xs[1], xs[0], precision=HIGHEST)  # (canvas_w, W4)
    full = jnp.einsum("yh,dhw,xw->dyx", a_y, probs, a_x, precision=HIGHEST)
    return full > threshold
