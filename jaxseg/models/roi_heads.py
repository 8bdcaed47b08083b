"""StandardROIHeads: box head on the proposals, then the mask head on the final boxes."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models.box_head import FastRCNNConvFCHead, FastRCNNOutputLayers, fast_rcnn_inference
from jaxseg.models.mask_head import MaskRCNNConvUpsampleHead, mask_probs_for_classes
from jaxseg.models.poolers import ROIPooler


class StandardROIHeads(nn.Module):
    """Holds box_head, box_predictor and mask_head; pooling and selection are pure functions."""

    in_features: tuple[str, ...]
    strides: tuple[int, ...]
    box_head: FastRCNNConvFCHead
    box_predictor: FastRCNNOutputLayers
    box_pooler: ROIPooler
    mask_head: MaskRCNNConvUpsampleHead | None = None
    mask_pooler: ROIPooler | None = None
    box_reg_weights: tuple[float, ...] = (10.0, 10.0, 5.0, 5.0)
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_image: int = 100

    def box_outputs(self, features: dict[str, jax.Array], boxes: jax.Array) -> tuple[jax.Array, jax.Array]:
        """features {name: (N, H, W, C)}, boxes (N, R, 4) -> class logits (N, R, K+1), deltas (N, R, K*4)."""
        pooled = self.box_pooler([features[f] for f in self.in_features], *_flatten_boxes(boxes))
        logits, deltas = self.box_predictor(self.box_head(pooled))
        n, r = boxes.shape[:2]
        return logits.reshape(n, r, -1), deltas.reshape(n, r, -1)

    def mask_outputs(self, features: dict[str, jax.Array], boxes: jax.Array, classes: jax.Array) -> jax.Array:
        """boxes (N, R, 4), classes (N, R) -> mask probabilities (N, R, M, M) of each box's class."""
        pooled = self.mask_pooler([features[f] for f in self.in_features], *_flatten_boxes(boxes))
        probs = mask_probs_for_classes(self.mask_head(pooled), classes.reshape(-1))
        return probs.reshape(*boxes.shape[:2], *probs.shape[1:])

    def __call__(self, features: dict[str, jax.Array], proposals: dict[str, jax.Array],
                 image_hw: jax.Array) -> dict[str, jax.Array]:
        """Batched: proposals {boxes (N, R, 4), valid (N, R)}, image_hw (N, 2) -> detections, each (N, D, ...):
        {boxes, scores, classes, proposal_index, valid[, mask_probs]}."""
        logits, deltas = self.box_outputs(features, proposals["boxes"])
        infer = functools.partial(
            fast_rcnn_inference, box_reg_weights=self.box_reg_weights, score_thresh=self.score_thresh,
            nms_thresh=self.nms_thresh, topk_per_image=self.detections_per_image)
        det = jax.vmap(infer)(logits, deltas, proposals["boxes"], proposals["valid"], image_hw)
        if self.mask_head is not None:
            det["mask_probs"] = self.mask_outputs(features, det["boxes"], det["classes"])
        return det


def _flatten_boxes(boxes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(N, R, 4) -> (N*R, 4) boxes and their (N*R,) image index."""
    n, r = boxes.shape[:2]
    return boxes.reshape(n * r, 4), jnp.repeat(jnp.arange(n, dtype=jnp.int32), r)


def build_standard_roi_heads(cfg, strides: Sequence[int]) -> StandardROIHeads:
    """Config values -> StandardROIHeads (detectron2's StandardROIHeads.from_config)."""
    rh, bh, mh = cfg.MODEL.ROI_HEADS, cfg.MODEL.ROI_BOX_HEAD, cfg.MODEL.ROI_MASK_HEAD
    if rh.NAME != "StandardROIHeads":
        raise ValueError(f"MODEL.ROI_HEADS.NAME {rh.NAME!r} is not supported (StandardROIHeads)")
    if bh.NAME != "FastRCNNConvFCHead":
        raise ValueError(f"MODEL.ROI_BOX_HEAD.NAME {bh.NAME!r} is not supported (FastRCNNConvFCHead)")
    strides = tuple(strides)
    box_head = FastRCNNConvFCHead(num_conv=bh.NUM_CONV, conv_dim=bh.CONV_DIM, num_fc=bh.NUM_FC, fc_dim=bh.FC_DIM,
                                  norm=bh.NORM, name="box_head")
    predictor = FastRCNNOutputLayers(rh.NUM_CLASSES, bh.CLS_AGNOSTIC_BBOX_REG, name="box_predictor")
    box_pooler = ROIPooler(bh.POOLER_RESOLUTION, strides, bh.POOLER_SAMPLING_RATIO, bh.POOLER_TYPE)
    mask_head = mask_pooler = None
    if cfg.MODEL.MASK_ON:
        if mh.NAME != "MaskRCNNConvUpsampleHead":
            raise ValueError(f"MODEL.ROI_MASK_HEAD.NAME {mh.NAME!r} is not supported (MaskRCNNConvUpsampleHead)")
        mask_head = MaskRCNNConvUpsampleHead(rh.NUM_CLASSES, mh.NUM_CONV, mh.CONV_DIM, mh.NORM,
                                             mh.CLS_AGNOSTIC_MASK, name="mask_head")
        mask_pooler = ROIPooler(mh.POOLER_RESOLUTION, strides, mh.POOLER_SAMPLING_RATIO, mh.POOLER_TYPE)
    return StandardROIHeads(
        in_features=tuple(rh.IN_FEATURES), strides=strides, box_head=box_head, box_predictor=predictor,
        box_pooler=box_pooler, mask_head=mask_head, mask_pooler=mask_pooler,
        box_reg_weights=tuple(bh.BBOX_REG_WEIGHTS), score_thresh=rh.SCORE_THRESH_TEST,
        nms_thresh=rh.NMS_THRESH_TEST, detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE, name="roi_heads")
