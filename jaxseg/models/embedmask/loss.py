"""EmbedMask's mask loss (gakkiri `FCOSOutputs.fcos_losses`, the part after the FCOS losses).

Per GT, one mask proposal: among the candidate locations (MODEL.EMBEDMASK.PROPOSAL_FROM: "matched" = every
location whose assigned GT index equals the GT's, upstream's rule, under which the background, assigned index 0,
competes for GT 0; "positive" = the GT's FCOS positives), the first with the largest legacy IoU (+1 on the
intersection's sides) between its predicted box (detached) and the GT box. Its embedding and margin give the mask
probabilities over the stride-4 map; the loss is the Lovász hinge of their logits inside the GT box / 4 +- 1 px
(the last row and column excluded), against the GT mask resized to stride 4 (> 0), averaged over the image's GTs
that have a proposal, summed over images / N, times MASK_LOSS_WEIGHT.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxseg.models.embedmask.masks import bilinear_matrix, box_masks

HIGHEST = jax.lax.Precision.HIGHEST


def legacy_iou(boxes: jax.Array, gt: jax.Array) -> jax.Array:
    """Elementwise IoU of (..., 4) boxes with (..., 4) GT boxes: intersection sides + 1, areas without."""
    area1 = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    area2 = (gt[..., 2] - gt[..., 0]) * (gt[..., 3] - gt[..., 1])
    lt = jnp.maximum(boxes[..., :2], gt[..., :2])
    rb = jnp.minimum(boxes[..., 2:], gt[..., 2:])
    wh = jnp.maximum(rb - lt + 1.0, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1 + area2 - inter)


def mask_proposals(pred_boxes: jax.Array, gt_index: jax.Array, positive: jax.Array, gt_boxes: jax.Array,
                   gt_valid: jax.Array, from_positives: bool) -> tuple[jax.Array, jax.Array]:
    """ONE image. pred_boxes (L, 4) pixels, gt_index (L,) (0 where not positive), positive (L,), gt_boxes (G, 4),
    gt_valid (G,) -> proposal location (G,) (flat over all levels) and has_proposal (G,)."""
    g = gt_boxes.shape[0]
    iou = legacy_iou(jax.lax.stop_gradient(pred_boxes), gt_boxes[gt_index])  # (L,)
    cand = gt_index[None, :] == jnp.arange(g)[:, None]  # (G, L)
    if from_positives:
        cand = cand & positive[None, :]
    score = jnp.where(cand, iou[None, :], -jnp.inf)
    best = jnp.max(score, axis=1, keepdims=True)
    first = jnp.argmax(cand & (score == best), axis=1)  # first location at the maximum
    return first.astype(jnp.int32), cand.any(axis=1) & gt_valid


def lovasz_hinge(logits: jax.Array, labels: jax.Array, valid: jax.Array) -> jax.Array:
    """Binary Lovász hinge of ONE target over the pixels where `valid` (all flat (P,)): errors 1 - logit * (2y - 1)
    sorted descending, dotted (after ReLU) with the Lovász gradient of the sorted labels. Pixels outside `valid`
    sort last with zero error weight, so they change nothing."""
    signs = 2.0 * labels - 1.0
    errors = jnp.where(valid, 1.0 - logits * signs, -jnp.inf)
    order = jnp.argsort(-jax.lax.stop_gradient(errors), stable=True)
    errors_sorted = errors[order]
    gt_sorted = jnp.where(valid, labels, 0.0)[order]
    gts = gt_sorted.sum()
    intersection = gts - jnp.cumsum(gt_sorted)
    union = gts + jnp.cumsum(1.0 - gt_sorted)
    jaccard = 1.0 - intersection / union
    grad = jnp.concatenate([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jnp.dot(jax.nn.relu(errors_sorted), jax.lax.stop_gradient(grad), precision=HIGHEST)


def mask_targets_s4(bitmasks: jax.Array, h4: int, w4: int) -> jax.Array:
    """(G, Hp, Wp) 0/1 full-image masks (zero-padded) -> (G, h4, w4) bool: bilinear resize (align_corners False)
    > 0, as upstream's prepare_masks."""
    hp, wp = bitmasks.shape[1:]
    ry = bilinear_matrix(h4, hp, h4, hp)
    rx = bilinear_matrix(w4, wp, w4, wp)
    resized = jnp.einsum("yh,ghw,xw->gyx", ry, bitmasks.astype(jnp.float32), rx, precision=HIGHEST)
    return resized > 0


def mask_logits(log_p: jax.Array) -> jax.Array:
    """log p -> log p - log(1 - p), computed from log p (p = exp(-margin * distance) never underflows here)."""
    return log_p - jnp.log(-jnp.expm1(jnp.minimum(log_p, -1e-30)))


def target_losses(pixel_embed: jax.Array, embeds: jax.Array, margins: jax.Array, gt_boxes: jax.Array,
                  targets: jax.Array) -> jax.Array:
    """ONE image. pixel_embed (H4, W4, E), embeds (G, E), margins (G,), gt_boxes (G, 4) pixels, targets
    (G, H4, W4) bool -> (G,) each GT's Lovász hinge inside its crop."""
    h4, w4 = pixel_embed.shape[:2]
    dist = jnp.sum(jnp.square(pixel_embed[None] - embeds[:, None, None, :]), axis=-1)  # (G, H4, W4)
    logits = mask_logits(-margins[:, None, None] * dist)
    crop = box_masks(gt_boxes / 4.0, h4, w4, x_max=w4 - 1.0, y_max=h4 - 1.0)
    flat = lambda x: x.reshape(x.shape[0], -1)  # noqa: E731
    return jax.vmap(lovasz_hinge)(flat(logits), flat(targets).astype(jnp.float32), flat(crop))


def image_mean(per_target: jax.Array, has_proposal: jax.Array) -> jax.Array:
    """(G,) losses -> their mean over the GTs with a proposal (0 when none)."""
    count = has_proposal.sum()
    return jnp.where(has_proposal, per_target, 0.0).sum() / jnp.maximum(count, 1)
