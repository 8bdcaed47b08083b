"""subsample_labels: a random, fixed-size subset of positives and negatives (detectron2 semantics).

Take min(#positives, num_samples * positive_fraction) positives and fill up with negatives. Static
shapes: returns the indices of a fixed-size sample plus a validity mask, positives first.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def subsample_labels(key: jax.Array, positive: jax.Array, negative: jax.Array, num_samples: int,
                     positive_fraction: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """positive, negative: (N,) bool, disjoint. Returns (index (S,), is_positive (S,), valid (S,)),
    S = min(num_samples, N).

    A uniformly random subset: positives and negatives are each ranked by a random key and the lowest
    keys are taken (top-k, not a sort: the RPN samples from ~270k anchors per image).
    """
    n = positive.shape[0]
    max_pos = min(int(num_samples * positive_fraction), n)
    num_samples = min(num_samples, n)  # static output size
    num_pos = jnp.minimum(positive.sum(), max_pos)
    num_neg = jnp.minimum(negative.sum(), num_samples - num_pos)
    r = jax.random.uniform(key, (n,))
    pos_idx = _lowest(r, positive, max_pos)      # (max_pos,) the positives with the lowest keys first
    neg_idx = _lowest(r, negative, num_samples)  # (S,)
    slot = jnp.arange(num_samples)
    is_pos = slot < num_pos
    # chosen positives first, then chosen negatives; the remaining slots are invalid
    idx = jnp.where(is_pos, pos_idx[jnp.minimum(slot, max(max_pos - 1, 0))] if max_pos else 0,
                    neg_idx[jnp.clip(slot - num_pos, 0, num_samples - 1)])
    return idx, is_pos, slot < num_pos + num_neg


def _lowest(r: jax.Array, member: jax.Array, k: int) -> jax.Array:
    """Indices of the k members with the lowest keys, lowest first (non-members after them)."""
    if k == 0:
        return jnp.zeros((0,), jnp.int32)
    return jax.lax.top_k(jnp.where(member, -r, -jnp.inf), k)[1]
