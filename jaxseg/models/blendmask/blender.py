"""The blender: each detection's mask from the bases and its attentions (AdelaiDet's Blender).

For R boxes: the bases are ROIAligned in each box (ROIAlignV2, POOLER_SAMPLING_RATIO samples, scale 1/4) at
M x M (BOTTOM_RESOLUTION); the box's attentions (NUM_BASES x A x A, A = ATTN_SIZE, channel order (k, i, j)) are
upsampled to M x M (TOP_INTERP, align_corners False) and softmaxed over the bases; the mask logit of a pixel is
the attention-weighted sum of the pooled bases.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxseg.kernels import roi_align


def merge_bases(rois: jax.Array, attns: jax.Array, attn_size: int, interp: str = "bilinear") -> jax.Array:
    """rois (R, M, M, K) pooled bases, attns (R, K * A * A) -> mask logits (R, M, M)."""
    r, m, _, k = rois.shape
    a = attns.reshape(r, k, attn_size, attn_size).transpose(0, 2, 3, 1)  # (R, A, A, K)
    if interp == "bilinear":
        a = jax.image.resize(a, (r, m, m, k), "bilinear", antialias=False)
    else:  # F.interpolate "nearest": source index floor(i * A / M)
        idx = (jnp.arange(m) * attn_size) // m
        a = a[:, idx][:, :, idx]
    return (rois * jax.nn.softmax(a, axis=-1)).sum(-1)


def pool_bases(bases: jax.Array, boxes: jax.Array, batch_index: jax.Array, resolution: int, sampling_ratio: int,
               aligned: bool = True, scale: float = 0.25, kernels: str | None = None) -> jax.Array:
    """bases (N, Hb, Wb, K), boxes (R, 4) in image pixels, batch_index (R,) -> (R, M, M, K)."""
    return roi_align(bases, boxes, batch_index, resolution, scale, sampling_ratio, aligned, implementation=kernels)
