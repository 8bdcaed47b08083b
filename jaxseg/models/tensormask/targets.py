"""TensorMask's anchor assignment and training targets (detectron2 projects/TensorMask `_assignment_rule`).

An anchor is foreground for a GT box when three rules hold (no IoU anywhere):
* containment: the anchor box contains the GT box (borders included);
* scale: max(anchor w, h) - unit_length <= max(scale_thresh * max(GT w, h), min_anchor_size);
* centre: ||(GT centre - anchor centre) / unit_length||^2 <= spatial_thresh^2,
with unit_length the anchor's level stride. An anchor that satisfies them for several GTs is background (upstream's
uniqueness rule), as is every other anchor; nothing is ignored.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxseg.models.ops import box_coder


def assignment(gt_boxes: jax.Array, gt_valid: jax.Array, anchors: jax.Array, unit_lengths: jax.Array,
               min_anchor_size: float, scale_thresh: float = 2.0, spatial_thresh: float = 1.0
               ) -> tuple[jax.Array, jax.Array]:
    """ONE image: gt_boxes (G, 4), gt_valid (G,), anchors (M, 4), unit_lengths (M,) -> (matched GT index (M,)
    int32, foreground (M,) bool)."""
    g = gt_boxes[:, None, :]  # (G, 1, 4)
    a = anchors[None]  # (1, M, 4)
    contain = (a[..., 0] <= g[..., 0]) & (a[..., 1] <= g[..., 1]) & (a[..., 2] >= g[..., 2]) & (a[..., 3] >= g[..., 3])
    gt_size = jnp.max(gt_boxes[:, 2:] - gt_boxes[:, :2], axis=1) * scale_thresh  # (G,)
    gt_size = jnp.where(gt_size < min_anchor_size, jnp.float32(min_anchor_size), gt_size)
    anchor_size = jnp.max(anchors[:, 2:] - anchors[:, :2], axis=1) - unit_lengths  # (M,)
    scale = (gt_size[:, None] - anchor_size[None]) >= 0
    offset = ((gt_boxes[:, 2:] + gt_boxes[:, :2]) / 2)[:, None] - ((anchors[:, 2:] + anchors[:, :2]) / 2)[None]
    offset = offset / unit_lengths[None, :, None]
    spatial = jnp.sum(offset * offset, axis=2) <= spatial_thresh * spatial_thresh
    assign = contain & scale & spatial & gt_valid[:, None]  # (G, M)
    count = assign.sum(axis=0)
    return jnp.argmax(assign, axis=0).astype(jnp.int32), count == 1


def targets(gt_boxes: jax.Array, gt_classes: jax.Array, gt_valid: jax.Array, anchors: jax.Array,
            unit_lengths: jax.Array, *, num_classes: int, min_anchor_size: float,
            bbox_reg_weights: tuple[float, ...]) -> dict[str, jax.Array]:
    """Per batch: gt (N, G, ...), anchors (M, 4) -> labels (N, M) (num_classes = background), matched (N, M),
    foreground (N, M), deltas (N, M, 4) (anchor -> matched GT; zero where not foreground)."""
    def one(boxes, classes, valid):
        matched, fg = assignment(boxes, valid, anchors, unit_lengths, min_anchor_size)
        labels = jnp.where(fg, classes[matched], num_classes)
        deltas = box_coder.get_deltas(anchors, boxes[matched], bbox_reg_weights)
        return {"labels": labels.astype(jnp.int32), "matched": matched, "foreground": fg,
                "deltas": jnp.where(fg[:, None], deltas, 0.0)}

    return jax.vmap(one)(gt_boxes, gt_classes.astype(jnp.int32), gt_valid)
