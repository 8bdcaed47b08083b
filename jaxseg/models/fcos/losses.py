"""FCOS losses (AdelaiDet `FCOSOutputs.fcos_losses`, BOX_QUALITY "ctrness") as static-shape JAX.

* Classification: sigmoid focal loss over every location and class (one-hot target, all zeros at background),
  summed, divided by `num_pos_avg = max(#positives, 1)`.
* Box: an IoU loss between predicted and target (l, t, r, b) in stride units at the positives, each weighted by
  its centerness target, summed, divided by `loss_denorm = max(sum of centerness targets, 1e-6)`.
* Centerness: BCE-with-logits against the centerness target at the positives, summed, / `num_pos_avg`.

Normalisation is over the whole batch the function is given. AdelaiDet's GPU w divides its own sum S_w by the mean
over the W GPUs of the per-GPU counts (`reduce_mean`: T / W for a total count T) and DDP averages the gradients, so
the effective gradient is (1 / W) * sum_w grad S_w / (T / W) = grad(sum over all images) / T: the whole batch's sum
over the whole batch's count. Calling this on the global batch in one jitted (possibly sharded) step therefore
reproduces AdelaiDet's training; normalising each device's shard by its own count would not. (The clamps differ
only in a corner: upstream's max(T / W, 1) is max(T, W) / W, here max(T, 1).)

With no positive at all, the box and centerness losses are 0 (an empty sum over 1e-6 and over 1) and the class loss
is the focal loss of all-background targets over 1, as upstream.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LOC_LOSS_TYPES = ("giou", "iou", "linear_iou")


def bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Elementwise binary cross-entropy of sigmoid(logits) against targets in [0, 1] as
    t softplus(-x) + (1 - t) softplus(x): two non-negative terms, so no cancellation at large |x|, and the gradient
    is sigmoid(x) - t everywhere (x = 0 included, where a max(x, 0) + log1p(exp(-|x|)) form gets it wrong)."""
    return targets * jax.nn.softplus(-logits) + (1 - targets) * jax.nn.softplus(logits)


def sigmoid_focal_loss(logits: jax.Array, targets: jax.Array, alpha: float, gamma: float) -> jax.Array:
    """Elementwise focal loss (fvcore `sigmoid_focal_loss`, reduction "none"): `alpha_t * ce * (1 - p_t)^gamma` with
    p = sigmoid(x), p_t = p t + (1 - p)(1 - t), alpha_t = alpha t + (1 - alpha)(1 - t); alpha < 0 disables the
    alpha weighting. The caller sums."""
    p = jax.nn.sigmoid(logits)
    loss = bce_with_logits(logits, targets)
    if gamma != 0:
        p_t = p * targets + (1 - p) * (1 - targets)
        loss = loss * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def iou_and_giou(pred: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(..., 4) (l, t, r, b) distances from the same location -> (iou, giou), each (...).

    AdelaiDet's `compute_ious`: I = (min l + min r)(min t + min b), U = A_pred + A_target - I,
    iou = (I + 1) / (U + 1) (the +1 is in the units of the inputs: strides in FCOS), C = the enclosing box's area
    (max l + max r)(max t + max b), giou = iou - (C - U) / C. Inputs must be non-negative (relu'd predictions).
    """
    pl, pt, pr, pb = (pred[..., k] for k in range(4))
    tl, tt, tr, tb = (target[..., k] for k in range(4))
    target_area = (tl + tr) * (tt + tb)
    pred_area = (pl + pr) * (pt + pb)
    inter = (jnp.minimum(pl, tl) + jnp.minimum(pr, tr)) * (jnp.minimum(pb, tb) + jnp.minimum(pt, tt))
    enclose = (jnp.maximum(pl, tl) + jnp.maximum(pr, tr)) * (jnp.maximum(pb, tb) + jnp.maximum(pt, tt))
    union = target_area + pred_area - inter
    iou = (inter + 1.0) / (union + 1.0)
    return iou, iou - (enclose - union) / enclose


def loc_loss(iou: jax.Array, giou: jax.Array, loc_loss_type: str) -> jax.Array:
    """AdelaiDet's IOULoss per element: "giou" 1 - giou, "iou" -log(iou), "linear_iou" 1 - iou."""
    if loc_loss_type == "giou":
        return 1 - giou
    if loc_loss_type == "iou":
        return -jnp.log(iou)
    if loc_loss_type == "linear_iou":
        return 1 - iou
    raise ValueError(f"loc_loss_type {loc_loss_type!r} is not one of {LOC_LOSS_TYPES}")


def fcos_losses(logits: jax.Array, reg_pred: jax.Array, ctr_logits: jax.Array, targets: dict[str, jax.Array], *,
                num_classes: int, alpha: float = 0.25, gamma: float = 2.0, loc_loss_type: str = "giou"
                ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """FCOS losses of a batch (rules and normalisation in the module docstring).

    logits (N, L, C) class logits; reg_pred (N, L, 4) (l, t, r, b) in stride units, already non-negative;
    ctr_logits (N, L); targets from `fcos_targets`. Returns the losses {"loss_fcos_cls", "loss_fcos_loc",
    "loss_fcos_ctr"} (scalars, LOSS_WEIGHT_CLS not applied) and the extras BlendMask's mask loss reuses:
    num_pos_avg and loss_denorm (scalars), ctr_targets (N, L), positive (N, L), gt_index (N, L).
    """
    positive = targets["positive"]  # (N, L)
    ctr_targets = targets["ctr_targets"]  # (N, L), 0 where not positive
    num_pos_avg = jax.lax.stop_gradient(jnp.maximum(positive.sum().astype(jnp.float32), 1.0))
    loss_denorm = jax.lax.stop_gradient(jnp.maximum(ctr_targets.sum(), 1e-6))

    one_hot = jax.nn.one_hot(targets["labels"], num_classes, dtype=logits.dtype)  # background -> zero row
    cls = sigmoid_focal_loss(logits, one_hot, alpha, gamma).sum() / num_pos_avg

    # Elsewhere than at positives both boxes become the target's (unit boxes there), so nothing is NaN, even in
    # the gradient, whatever the predictions hold.
    reg_t = jnp.where(positive[..., None], targets["reg_targets"], 1.0)
    reg_p = jnp.where(positive[..., None], reg_pred, reg_t)
    iou, giou = iou_and_giou(reg_p, reg_t)  # (N, L)
    loc = jnp.where(positive, loc_loss(iou, giou, loc_loss_type) * ctr_targets, 0.0).sum() / loss_denorm

    ctr = jnp.where(positive, bce_with_logits(ctr_logits, ctr_targets), 0.0).sum() / num_pos_avg
    losses = {"loss_fcos_cls": cls, "loss_fcos_loc": loc, "loss_fcos_ctr": ctr}
    extras = {"num_pos_avg": num_pos_avg, "loss_denorm": loss_denorm, "ctr_targets": ctr_targets,
              "positive": positive, "gt_index": targets["gt_index"]}
    return losses, extras
