"""Matcher: assign each prediction (anchor / proposal) to its best ground-truth box by IoU.

detectron2 semantics: labels by thresholds (e.g. [0.3, 0.7] -> [0, -1, 1]); with low-quality matches
allowed, every prediction whose IoU equals some GT's best IoU (ties included) is labelled positive.
Invalid (padding) GT rows never match.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def pairwise_iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """IoU of XYXY boxes a (M, 4) and b (N, 4) -> (M, N); 0 where the union is empty."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    wh = jnp.clip(jnp.minimum(a[:, None, 2:], b[None, :, 2:]) - jnp.maximum(a[:, None, :2], b[None, :, :2]), 0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return jnp.where(inter > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def match(quality: jax.Array, gt_valid: jax.Array, thresholds: Sequence[float], labels: Sequence[int],
          allow_low_quality_matches: bool) -> tuple[jax.Array, jax.Array]:
    """quality (G, N) IoU of each GT with each prediction; gt_valid (G,).

    Returns matches (N,) int32 index of the best GT and match_labels (N,) int32 from `labels`
    (len(thresholds) + 1 values for the intervals [-inf, t0), [t0, t1), ..., [t_last, inf)).
    With no valid GT every prediction gets labels[0].
    """
    quality = jnp.where(gt_valid[:, None], quality, -1.0)
    matched_vals = quality.max(axis=0)
    matches = quality.argmax(axis=0).astype(jnp.int32)
    bounds = jnp.asarray(thresholds, quality.dtype)
    interval = jnp.sum(matched_vals[:, None] >= bounds[None, :], axis=1)  # 0 .. len(thresholds)
    match_labels = jnp.asarray(labels, jnp.int32)[interval]
    if allow_low_quality_matches:
        best = quality.max(axis=1, keepdims=True)  # (G, 1)
        is_best = (quality == best) & gt_valid[:, None] & (best > 0)
        match_labels = jnp.where(is_best.any(axis=0), 1, match_labels)
    none_valid = ~gt_valid.any()
    match_labels = jnp.where(none_valid, labels[0], match_labels)
    return matches, match_labels
