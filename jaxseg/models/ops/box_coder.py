"""Box2BoxTransform: the (dx, dy, dw, dh) box parameterisation of R-CNN, detectron2 conventions (no +1)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

# detectron2 clamps dw, dh from above at log(1000 / 16) before exp
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def get_deltas(src: jax.Array, target: jax.Array, weights: Sequence[float]) -> jax.Array:
    """Deltas that turn `src` boxes (..., 4) into `target` boxes (..., 4)."""
    wx, wy, ww, wh = weights
    sw, sh = src[..., 2] - src[..., 0], src[..., 3] - src[..., 1]
    scx, scy = src[..., 0] + 0.5 * sw, src[..., 1] + 0.5 * sh
    tw, th = target[..., 2] - target[..., 0], target[..., 3] - target[..., 1]
    tcx, tcy = target[..., 0] + 0.5 * tw, target[..., 1] + 0.5 * th
    return jnp.stack([wx * (tcx - scx) / sw, wy * (tcy - scy) / sh,
                      ww * jnp.log(tw / sw), wh * jnp.log(th / sh)], axis=-1)


def apply_deltas(deltas: jax.Array, boxes: jax.Array, weights: Sequence[float],
                 scale_clamp: float = DEFAULT_SCALE_CLAMP) -> jax.Array:
    """deltas (..., K*4) laid out k*4 + coord; boxes (..., 4) -> decoded boxes (..., K*4)."""
    boxes = boxes.astype(deltas.dtype)
    wx, wy, ww, wh = weights
    widths = boxes[..., 2:3] - boxes[..., 0:1]
    heights = boxes[..., 3:4] - boxes[..., 1:2]
    cx = boxes[..., 0:1] + 0.5 * widths
    cy = boxes[..., 1:2] + 0.5 * heights
    dx, dy = deltas[..., 0::4] / wx, deltas[..., 1::4] / wy
    dw = jnp.minimum(deltas[..., 2::4] / ww, scale_clamp)
    dh = jnp.minimum(deltas[..., 3::4] / wh, scale_clamp)
    pcx, pcy = dx * widths + cx, dy * heights + cy
    pw, ph = jnp.exp(dw) * widths, jnp.exp(dh) * heights
    out = jnp.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], axis=-1)  # (..., K, 4)
    return out.reshape(deltas.shape)


def clip_boxes(boxes: jax.Array, image_hw: jax.Array) -> jax.Array:
    """Clip XYXY boxes (..., 4) to x in [0, w], y in [0, h]; image_hw may be traced."""
    h, w = image_hw[0].astype(boxes.dtype), image_hw[1].astype(boxes.dtype)
    x = jnp.clip(boxes[..., 0::2], 0, w)
    y = jnp.clip(boxes[..., 1::2], 0, h)
    return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def nonempty(boxes: jax.Array) -> jax.Array:
    """(x2 - x1) > 0 and (y2 - y1) > 0."""
    return (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
