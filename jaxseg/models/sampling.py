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

    A uniformly random subset: positives and negatives are each ranked by a random key.
    """
    n = positive.shape[0]
    num_pos = jnp.minimum(positive.sum(), int(num_samples * positive_fraction))
    num_neg = jnp.minimum(negative.sum(), num_samples - num_pos)
    num_samples = min(num_samples, n)  # static output size
    r = jax.random.uniform(key, (n,))
    chosen_pos = positive & (_rank_within(r, positive) < num_pos)
    chosen_neg = negative & (_rank_within(r, negative) < num_neg)
    # chosen positives first, then chosen negatives, then the rest
    group = jnp.where(chosen_pos, 0, jnp.where(chosen_neg, 1, 2))
    order = jnp.argsort(group, stable=True)[:num_samples]
    return order, chosen_pos[order], (chosen_pos | chosen_neg)[order]


def _rank_within(r: jax.Array, member: jax.Array) -> jax.Array:
    """Rank of r among the members (0 = smallest); non-members rank after all members."""
    order = jnp.argsort(jnp.where(member, r, 2.0))
    return jnp.zeros_like(order).at[order].set(jnp.arange(r.shape[0]))
