"""Loss functions with detectron2's conventions (sums; the callers divide by detectron2's normalizers)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def smooth_l1(x: jax.Array, beta: float) -> jax.Array:
    """Elementwise smooth L1 of the difference x; beta < 1e-5 is plain L1 (detectron2's default, beta 0)."""
    ax = jnp.abs(x)
    if beta < 1e-5:
        return ax
    return jnp.where(ax < beta, 0.5 * ax * ax / beta, ax - 0.5 * beta)


def sigmoid_bce(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Elementwise binary cross-entropy with logits."""
    return optax.sigmoid_binary_cross_entropy(logits, targets.astype(logits.dtype))


def softmax_ce(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-row cross-entropy of (..., K) logits with integer labels (...)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
