"""TensorMask's masks at the detections: SwapAlign2Nat evaluated only where it is needed.

The aligned logits of level l and anchor size S live at p2 resolution, (H2, W2, S*S) with channel v*S + u.
SwapAlign2Nat(lambda = 2^l, pad) turns them into the natural S*lambda x S*lambda window at each level-l location
(y, x): output pixel (v, u) blends 16 taps, at input position (y*lambda + v - S*lambda/2 + 0.5,
x*lambda + u - S*lambda/2 + 0.5) and mask position ((v + 0.5)/lambda - 0.5, (u + 0.5)/lambda - 0.5), each axis
bilinearly (floor / ceil with weights 1 - frac / frac), taps outside the map or the S x S grid reading `pad`
(jaxseg/kernels/swap_align2nat.py has the full op). Detections differ in level and anchor, so here lambda and S
are per-detection values and every window is computed in one (S_max x S_max) buffer, the window in its top-left
corner (probabilities, zero beyond it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _axis_taps(centre: jax.Array, lam: jax.Array, side: jax.Array, size: int, s_max: int):
    """One axis of the windows of D detections: centre (D,) level-grid coordinate, lam (D,) lambda, side (D,) S.

    Returns spatial taps (D, s_max, 4), mask taps (D, s_max, 4), weights (D, s_max, 4) (zero beyond S*lambda)
    and whether each tap lies inside the map and the mask grid, for the 4 (spatial floor/ceil) x (mask
    floor/ceil) combinations."""
    lam_f, side_f = lam.astype(jnp.float32)[:, None], side.astype(jnp.float32)[:, None]
    out_side = side_f * lam_f
    v = jnp.arange(s_max, dtype=jnp.float32)[None]  # (1, s_max)
    pos = centre.astype(jnp.float32)[:, None] * lam_f + v - out_side / 2 + 0.5  # input spatial coordinate
    mpos = (v + 0.5) / lam_f - 0.5  # input mask coordinate
    taps, mtaps, weights, inside = [], [], [], []
    for p_lo in (True, False):
        p0 = jnp.floor(pos) if p_lo else jnp.ceil(pos)
        wp = 1.0 - (pos - jnp.floor(pos)) if p_lo else pos - jnp.floor(pos)
        for m_lo in (True, False):
            m0 = jnp.floor(mpos) if m_lo else jnp.ceil(mpos)
            wm = 1.0 - (mpos - jnp.floor(mpos)) if m_lo else mpos - jnp.floor(mpos)
            taps.append(p0.astype(jnp.int32))
            mtaps.append(m0.astype(jnp.int32))
            weights.append(wp * wm)
            inside.append((p0 >= 0) & (p0 < size) & (m0 >= 0) & (m0 < side_f))
    in_window = (v < out_side)[..., None]
    stack = lambda xs: jnp.stack(xs, axis=-1)  # noqa: E731  (D, s_max, 4)
    return stack(taps), stack(mtaps), jnp.where(in_window, stack(weights), 0.0), stack(inside)


def natural_windows(aligned: jax.Array, group: jax.Array, y: jax.Array, x: jax.Array, lam: jax.Array,
                    side: jax.Array, s_max: int, pad: float) -> jax.Array:
    """ONE image. aligned (G, H2, W2, C) the aligned logits of every (level, anchor) group (channels zero-padded
    to C = max S*S); per detection (D,): its group, level-grid location y, x, lambda and S -> the window logits
    (D, s_max, s_max), valid in the top-left (S*lambda)^2 corner."""
    h2, w2 = aligned.shape[1:3]
    ty, tv, wy, iy = _axis_taps(y, lam, side, h2, s_max)  # (D, s_max, 4)
    tx, tu, wx, ix = _axis_taps(x, lam, side, w2, s_max)

    def one(args):  # one detection: (V, 4, U, 4) taps, a few MB at s_max 480
        g, s, ty, tv, wy, iy, tx, tu, wx, ix = args
        rows = jnp.clip(ty, 0, h2 - 1)[:, :, None, None]
        cols = jnp.clip(tx, 0, w2 - 1)[None, None]
        chan = jnp.clip(tv, 0, None)[:, :, None, None] * s + jnp.clip(tu, 0, None)[None, None]
        values = aligned[g, rows, cols, jnp.clip(chan, 0, aligned.shape[-1] - 1)]
        values = jnp.where(iy[:, :, None, None] & ix[None, None], values, jnp.float32(pad))
        return (values * (wy[:, :, None, None] * wx[None, None])).sum(axis=(1, 3))

    # rematerialised in the backward: the (V, 4, U, 4) gathered taps are not kept for every window
    return jax.lax.map(jax.checkpoint(one), (group, side, ty, tv, wy, iy, tx, tu, wx, ix), batch_size=4)
