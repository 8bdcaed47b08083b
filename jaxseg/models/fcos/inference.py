"""FCOS inference as AdelaiDet's FCOSOutputs.predict_proposals computes it, with static shapes.

Per level and image: class probabilities (times the centerness probability when THRESH_WITH_CTR) above
INFERENCE_TH_TEST are the candidates; the PRE_NMS_TOPK_TEST best by sigmoid(cls) * sigmoid(ctr) are kept; a
candidate's box is its location minus / plus the regression times the stride (not clipped), its score the square
root of that product. Over all levels: class-aware NMS (suppress IoU > NMS_TH), sorted by score; then, when more
than POST_NMS_TOPK_TEST remain, those scoring at least the POST_NMS_TOPK_TEST-th best score are kept (torch's
kthvalue cut: ties at the cut are all kept, so there can be more). The output holds `max_detections` slots (twice
the cut, room for ties), with a `valid` mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxseg.kernels.nms import batched_nms


def level_candidates(logits: jax.Array, reg: jax.Array, ctrness: jax.Array, locations: jax.Array, stride: int, *,
                     threshold: float, topk: int, thresh_with_ctr: bool) -> dict[str, jax.Array]:
    """ONE image, one level. logits (HW, K), reg (HW, 4) in stride units, ctrness (HW,) logits, locations (HW, 2)
    -> the level's k = min(topk, HW * K) best candidates: boxes (k, 4), scores (k,) (sqrt), classes, location (k,)
    index into the level, valid (k,)."""
    cls = jax.nn.sigmoid(logits)
    ctr = jax.nn.sigmoid(ctrness)[:, None]
    product = cls * ctr
    candidate = (product if thresh_with_ctr else cls) > threshold
    k = min(topk, product.size)
    ranked = jnp.where(candidate, product, -1.0).reshape(-1)
    value, flat = jax.lax.top_k(ranked, k)
    num_classes = logits.shape[-1]
    loc, cls_id = flat // num_classes, flat % num_classes
    r = reg[loc] * jnp.float32(stride)  # (k, 4) pixels
    xy = locations[loc]
    boxes = jnp.stack([xy[:, 0] - r[:, 0], xy[:, 1] - r[:, 1], xy[:, 0] + r[:, 2], xy[:, 1] + r[:, 3]], axis=1)
    valid = value > -1.0
    return {"boxes": boxes, "scores": jnp.sqrt(jnp.maximum(value, 0.0)), "classes": cls_id.astype(jnp.int32),
            "location": loc.astype(jnp.int32), "valid": valid}


def select_over_levels(cands: dict[str, jax.Array], *, nms_thresh: float, post_nms_topk: int,
                       max_detections: int, kernels: str | None = None) -> tuple[jax.Array, jax.Array]:
    """ONE image; candidates of all levels concatenated (C,) -> (indices (D,) into them in descending score order,
    valid (D,)), D = max_detections, after class-aware NMS and the kthvalue cut at post_nms_topk."""
    keep, kept = batched_nms(cands["boxes"], cands["scores"], cands["classes"], nms_thresh, valid=cands["valid"],
                             max_output=max_detections, implementation=kernels)
    if post_nms_topk > 0:
        n = kept.sum()
        scores = cands["scores"][keep]
        cut = scores[min(post_nms_topk, max_detections) - 1]  # the post_nms_topk-th best kept score
        kept = kept & ((n <= post_nms_topk) | (scores >= cut))
    return keep, kept


def predict_instances(per_level: Sequence[dict[str, jax.Array]], locations: Sequence[jax.Array],
                      strides: Sequence[int], *, threshold: float, pre_nms_topk: int, thresh_with_ctr: bool,
                      nms_thresh: float, post_nms_topk: int, max_detections: int,
                      kernels: str | None = None) -> dict[str, jax.Array]:
    """ONE image. per_level: {"logits" (HW, K), "reg" (HW, 4), "ctrness" (HW,)} per level -> detections (D, ...):
    boxes (unclipped, resized-image pixels), scores, classes, valid, level, location (index in the level) and
    flat_location (index over all levels' locations concatenated)."""
    cands, offset = [], 0
    for lvl, (out, loc, s) in enumerate(zip(per_level, locations, strides)):
        c = level_candidates(out["logits"], out["reg"], out["ctrness"], loc, s, threshold=threshold,
                             topk=pre_nms_topk, thresh_with_ctr=thresh_with_ctr)
        c["level"] = jnp.full(c["scores"].shape, lvl, jnp.int32)
        c["flat_location"] = c["location"] + offset
        offset += loc.shape[0]
        cands.append(c)
    cands = {k: jnp.concatenate([c[k] for c in cands]) for k in cands[0]}
    keep, valid = select_over_levels(cands, nms_thresh=nms_thresh, post_nms_topk=post_nms_topk,
                                     max_detections=max_detections, kernels=kernels)
    det = {k: v[keep] for k, v in cands.items()}
    det["valid"] = valid
    det["scores"] = jnp.where(valid, det["scores"], 0.0)
    return det
