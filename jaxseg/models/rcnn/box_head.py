"""Fast R-CNN box head (FastRCNNConvFCHead), its predictor, and test-time detection selection."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.kernels import nms
from jaxseg.models.layers import Conv2d, c2_msra_fill, dense, normal_init
from jaxseg.models.ops import box_coder


class FastRCNNConvFCHead(nn.Module):
    """NUM_CONV 3x3 convs, a flatten in PyTorch's (C, H, W) order, then NUM_FC fully connected layers."""

    num_conv: int = 0
    conv_dim: int = 256
    num_fc: int = 2
    fc_dim: int = 1024
    norm: str = ""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # (R, S, S, C) -> (R, fc_dim)
        for i in range(self.num_conv):
            x = Conv2d(self.conv_dim, 3, padding=1, use_bias=not self.norm, norm=self.norm, activation=True,
                       kernel_init=c2_msra_fill, name=f"conv{i + 1}")(x)
        x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # C-major flatten, as torch.flatten on NCHW
        for i in range(self.num_fc):
            x = nn.relu(dense(self.fc_dim, name=f"fc{i + 1}")(x))
        return x


class FastRCNNOutputLayers(nn.Module):
    """cls_score: K+1 logits (background LAST); bbox_pred: 4 deltas per class (or 4 if class-agnostic)."""

    num_classes: int
    cls_agnostic_bbox_reg: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        scores = dense(self.num_classes + 1, name="cls_score", kernel_init=normal_init(0.01))(x)
        num_reg = 1 if self.cls_agnostic_bbox_reg else self.num_classes
        deltas = dense(num_reg * 4, name="bbox_pred", kernel_init=normal_init(0.001))(x)
        return scores, deltas


def fast_rcnn_inference(
    logits: jax.Array,
    deltas: jax.Array,
    proposals: jax.Array,
    proposal_valid: jax.Array,
    image_hw: jax.Array,
    *,
    box_reg_weights: Sequence[float],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
    kernels: str | None = None,
) -> dict[str, jax.Array]:
    """Detections of ONE image: softmax, per-class decode and clip, score threshold, per-class NMS, top k.

    logits (R, K+1), deltas (R, K*4 or 4), proposals (R, 4). Returns boxes (D, 4), scores (D,),
    classes (D,), proposal_index (D,), valid (D,) with D = topk_per_image, sorted by score.
    """
    num_props, num_classes = logits.shape[0], logits.shape[1] - 1
    probs = jax.nn.softmax(logits, axis=-1)
    boxes = box_coder.apply_deltas(deltas, proposals, box_reg_weights).reshape(num_props, -1, 4)
    row_ok = proposal_valid & jnp.all(jnp.isfinite(boxes), axis=(1, 2)) & jnp.all(jnp.isfinite(probs), axis=1)
    boxes = box_coder.clip_boxes(boxes, image_hw)
    boxes = jnp.broadcast_to(boxes, (num_props, num_classes, 4))
    scores = probs[:, :-1]                                           # (R, K)
    candidate = (scores > score_thresh) & row_ok[:, None]
    per_class = min(topk_per_image, num_props)

    def class_nms(b, s, v):  # (R, 4), (R,), (R,) of one class
        keep, keep_valid = nms(b, s, nms_thresh, valid=v, max_output=per_class, implementation=kernels)
        return keep, keep_valid

    keep, keep_valid = jax.vmap(class_nms)(boxes.transpose(1, 0, 2), scores.T, candidate.T)  # (K, per_class)
    kept_scores = jnp.where(keep_valid, jnp.take_along_axis(scores.T, keep, axis=1), -jnp.inf)
    top_scores, flat = jax.lax.top_k(kept_scores.reshape(-1), min(topk_per_image, kept_scores.size))
    cls = (flat // per_class).astype(jnp.int32)
    prop = keep.reshape(-1)[flat]
    return {
        "boxes": boxes[prop, cls],
        "scores": top_scores,
        "classes": cls,
        "proposal_index": prop,
        "valid": top_scores > -jnp.inf,
    }
