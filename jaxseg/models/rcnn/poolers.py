"""ROIPooler: assign each box to an FPN level (FPN paper eq. 1) and ROIAlign it there."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxseg.kernels import roi_align


def assign_boxes_to_levels(boxes: jax.Array, min_level: int, max_level: int, canonical_box_size: int = 224,
                           canonical_level: int = 4) -> jax.Array:
    """boxes (R, 4) -> (R,) int32 index into the levels (0 = min_level)."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    size = jnp.sqrt(area)
    level = jnp.floor(canonical_level + jnp.log2(size / canonical_box_size + 1e-8))
    return (jnp.clip(level, min_level, max_level) - min_level).astype(jnp.int32)


class ROIPooler:
    """Multi-level ROIAlign. Plain (parameter-free) object: config values in, a pure function out."""

    def __init__(self, output_size: int, strides: Sequence[int], sampling_ratio: int, pooler_type: str,
                 canonical_box_size: int = 224, canonical_level: int = 4, kernels: str | None = None):
        if pooler_type not in ("ROIAlign", "ROIAlignV2"):
            raise ValueError(f"POOLER_TYPE {pooler_type!r} is not supported (ROIAlign, ROIAlignV2)")
        self.output_size = output_size
        self.scales = [1.0 / s for s in strides]
        self.levels = [int(round(math.log2(s))) for s in strides]
        self.sampling_ratio = sampling_ratio
        self.aligned = pooler_type == "ROIAlignV2"
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level
        self.kernels = kernels

    def __call__(self, features: Sequence[jax.Array], boxes: jax.Array, batch_index: jax.Array) -> jax.Array:
        """features: per level (N, H, W, C); boxes (R, 4); batch_index (R,) int -> (R, S, S, C)."""
        if len(features) == 1:
            return self._align(features[0], boxes, batch_index, self.scales[0])
        level = assign_boxes_to_levels(boxes, self.levels[0], self.levels[-1], self.canonical_box_size,
                                       self.canonical_level)
        out = None
        for i, (feat, scale) in enumerate(zip(features, self.scales)):
            here = level == i
            # boxes of other levels become empty boxes, which cost the kernel no samples
            pooled = self._align(feat, jnp.where(here[:, None], boxes, 0.0), batch_index, scale)
            out = pooled if out is None else jnp.where(here[:, None, None, None], pooled, out)
        return out

    def _align(self, feat: jax.Array, boxes: jax.Array, batch_index: jax.Array, scale: float) -> jax.Array:
        return roi_align(feat, boxes, batch_index, self.output_size, scale, self.sampling_ratio, self.aligned,
                          implementation=self.kernels)
