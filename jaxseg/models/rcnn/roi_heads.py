"""StandardROIHeads: box head on the proposals, then the mask head on the final boxes."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.kernels import roi_align
from jaxseg.models.backbones.backbone import ShapeSpec, feature_strides
from jaxseg.models.ops import box_coder
from jaxseg.models.ops.losses import sigmoid_bce, smooth_l1, softmax_ce
from jaxseg.models.ops.matcher import match, pairwise_iou
from jaxseg.models.ops.rasterize import rasterize_polygons_within_boxes
from jaxseg.models.ops.sampling import subsample_labels
from jaxseg.models.rcnn.box_head import FastRCNNConvFCHead, FastRCNNOutputLayers, fast_rcnn_inference
from jaxseg.models.rcnn.mask_head import MaskRCNNConvUpsampleHead, mask_probs_for_classes
from jaxseg.models.rcnn.poolers import ROIPooler
from jaxseg.models.registry import ROI_HEADS_REGISTRY


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
    # training
    num_classes: int = 80
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    iou_thresholds: tuple[float, ...] = (0.5,)
    iou_labels: tuple[int, ...] = (0, 1)
    smooth_l1_beta: float = 0.0
    kernels: str | None = None

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
            nms_thresh=self.nms_thresh, topk_per_image=self.detections_per_image, kernels=self.kernels)
        det = jax.vmap(infer)(logits, deltas, proposals["boxes"], proposals["valid"], image_hw)
        if self.mask_head is not None:
            det["mask_probs"] = self.mask_outputs(features, det["boxes"], det["classes"])
        return det


    def losses(self, key: jax.Array, features: dict[str, jax.Array], proposals: dict[str, jax.Array],
               targets: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Box classification / regression and mask losses of a batch, with detectron2's normalisation."""
        n = proposals["boxes"].shape[0]
        sample = functools.partial(
            label_and_sample_proposals, num_classes=self.num_classes, batch_size_per_image=self.batch_size_per_image,
            positive_fraction=self.positive_fraction, iou_thresholds=self.iou_thresholds, iou_labels=self.iou_labels)
        s = jax.vmap(sample)(jax.random.split(key, n), proposals["boxes"], proposals["valid"], targets["gt_boxes"],
                             targets["gt_classes"], targets["gt_valid"])
        logits, deltas = self.box_outputs(features, s["boxes"])
        num_sampled = jnp.maximum(s["valid"].sum(), 1)
        loss_cls = jnp.sum(jnp.where(s["valid"], softmax_ce(logits, s["classes"]), 0.0)) / num_sampled
        deltas = deltas.reshape(*deltas.shape[:2], -1, 4)  # (N, S, K or 1, 4)
        cls = jnp.where(s["is_fg"], s["classes"], 0) if deltas.shape[2] > 1 else jnp.zeros_like(s["classes"])
        deltas = jnp.take_along_axis(deltas, cls[..., None, None], axis=2)[:, :, 0]
        gt = jnp.take_along_axis(targets["gt_boxes"], s["matches"][..., None], axis=1)
        target = jnp.where(s["is_fg"][..., None], box_coder.get_deltas(s["boxes"], gt, self.box_reg_weights), 0.0)
        reg = jnp.where(s["is_fg"][..., None], smooth_l1(deltas - target, self.smooth_l1_beta), 0.0)
        out = {"loss_cls": loss_cls, "loss_box_reg": reg.sum() / num_sampled}
        if self.mask_head is not None:
            out["loss_mask"] = self._mask_loss(features, s, targets)
        return out

    def _mask_loss(self, features, s, targets) -> jax.Array:
        """BCE over the foreground RoIs. The first batch_size * positive_fraction sampled rows hold them all;
        the mask head runs on the first 1/4, 1/2 or all of those rows, the fewest that hold every image's
        foreground (a switch between three static shapes: the same loss, less work when few RoIs are fg)."""
        nf = int(self.batch_size_per_image * self.positive_fraction)
        sizes = sorted({max(nf // 4, 1), max(nf // 2, 1), nf})
        count = jnp.max(jnp.sum(s["is_fg"][:, :nf], axis=1))
        branch = jnp.searchsorted(jnp.asarray(sizes), count)  # first size >= count
        branches = [functools.partial(StandardROIHeads._mask_loss_rows, rows=r) for r in sizes]
        return nn.switch(branch, branches, self, features, s, targets)

    def _mask_loss_rows(self, features, s, targets, rows: int) -> jax.Array:
        """The mask loss computed on the first `rows` sampled RoIs of each image."""
        boxes, fg = s["boxes"][:, :rows], s["is_fg"][:, :rows]
        boxes = jnp.where(fg[..., None], boxes, jnp.array([0.0, 0.0, 1.0, 1.0]))
        classes = jnp.where(fg, s["classes"][:, :rows], 0)
        pooled = self.mask_pooler([features[f] for f in self.in_features], *_flatten_boxes(boxes))
        logits = self.mask_head(pooled)  # (N*F, M, M, K)
        if logits.shape[-1] > 1:
            logits = jnp.take_along_axis(logits, classes.reshape(-1)[:, None, None, None], axis=-1)
        logits = logits[..., 0].reshape(*boxes.shape[:2], *logits.shape[1:3])
        target = mask_targets(targets, boxes, s["matches"][:, :rows], logits.shape[-1], kernels=self.kernels)
        bce = jnp.where(fg[..., None, None], sigmoid_bce(logits, target), 0.0)
        return bce.sum() / jnp.maximum(fg.sum() * logits.shape[-1] * logits.shape[-2], 1)


def _flatten_boxes(boxes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(N, R, 4) -> (N*R, 4) boxes and their (N*R,) image index."""
    n, r = boxes.shape[:2]
    return boxes.reshape(n * r, 4), jnp.repeat(jnp.arange(n, dtype=jnp.int32), r)


@ROI_HEADS_REGISTRY.register(name="StandardROIHeads")
def build_standard_roi_heads(cfg, input_shape: dict[str, ShapeSpec], kernels: str | None = None) -> StandardROIHeads:
    """Config values -> StandardROIHeads (detectron2's StandardROIHeads.from_config); input_shape: the
    backbone's output_shape()."""
    rh, bh, mh = cfg.MODEL.ROI_HEADS, cfg.MODEL.ROI_BOX_HEAD, cfg.MODEL.ROI_MASK_HEAD
    strides = feature_strides(input_shape, rh.IN_FEATURES, "MODEL.ROI_HEADS.IN_FEATURES")
    if bh.NAME != "FastRCNNConvFCHead":
        raise ValueError(f"MODEL.ROI_BOX_HEAD.NAME {bh.NAME!r} is not supported (FastRCNNConvFCHead)")
    box_head = FastRCNNConvFCHead(num_conv=bh.NUM_CONV, conv_dim=bh.CONV_DIM, num_fc=bh.NUM_FC, fc_dim=bh.FC_DIM,
                                  norm=bh.NORM, name="box_head")
    predictor = FastRCNNOutputLayers(rh.NUM_CLASSES, bh.CLS_AGNOSTIC_BBOX_REG, name="box_predictor")
    box_pooler = ROIPooler(bh.POOLER_RESOLUTION, strides, bh.POOLER_SAMPLING_RATIO, bh.POOLER_TYPE, kernels=kernels)
    mask_head = mask_pooler = None
    if cfg.MODEL.MASK_ON:
        if mh.NAME != "MaskRCNNConvUpsampleHead":
            raise ValueError(f"MODEL.ROI_MASK_HEAD.NAME {mh.NAME!r} is not supported (MaskRCNNConvUpsampleHead)")
        mask_head = MaskRCNNConvUpsampleHead(rh.NUM_CLASSES, mh.NUM_CONV, mh.CONV_DIM, mh.NORM,
                                             mh.CLS_AGNOSTIC_MASK, name="mask_head")
        mask_pooler = ROIPooler(mh.POOLER_RESOLUTION, strides, mh.POOLER_SAMPLING_RATIO, mh.POOLER_TYPE,
                                kernels=kernels)
    return StandardROIHeads(
        in_features=tuple(rh.IN_FEATURES), strides=strides, box_head=box_head, box_predictor=predictor,
        box_pooler=box_pooler, mask_head=mask_head, mask_pooler=mask_pooler,
        box_reg_weights=tuple(bh.BBOX_REG_WEIGHTS), score_thresh=rh.SCORE_THRESH_TEST,
        nms_thresh=rh.NMS_THRESH_TEST, detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
        num_classes=rh.NUM_CLASSES, batch_size_per_image=rh.BATCH_SIZE_PER_IMAGE,
        positive_fraction=rh.POSITIVE_FRACTION, iou_thresholds=tuple(rh.IOU_THRESHOLDS),
        iou_labels=tuple(rh.IOU_LABELS), smooth_l1_beta=bh.SMOOTH_L1_BETA, kernels=kernels, name="roi_heads")


def label_and_sample_proposals(
    key: jax.Array,
    proposals: jax.Array,
    proposal_valid: jax.Array,
    gt_boxes: jax.Array,
    gt_classes: jax.Array,
    gt_valid: jax.Array,
    *,
    num_classes: int,
    batch_size_per_image: int,
    positive_fraction: float,
    iou_thresholds: Sequence[float],
    iou_labels: Sequence[int],
    append_gt: bool = True,
) -> dict[str, jax.Array]:
    """ONE image: GT boxes appended to the proposals, matched by IoU, then a fixed-size random sample
    (foreground first). Background rows get class num_classes; ``index`` is each row's candidate (the
    proposals, then the GT rows)."""
    if append_gt:
        proposals = jnp.concatenate([proposals, gt_boxes])
        proposal_valid = jnp.concatenate([proposal_valid, gt_valid])
    matches, labels = match(pairwise_iou(gt_boxes, proposals), gt_valid, iou_thresholds, iou_labels, False)
    positive, negative = proposal_valid & (labels == 1), proposal_valid & (labels == 0)
    idx, is_fg, valid = subsample_labels(key, positive, negative, batch_size_per_image, positive_fraction)
    return {"boxes": proposals[idx], "classes": jnp.where(is_fg, gt_classes[matches[idx]], num_classes),
            "matches": matches[idx], "is_fg": is_fg, "valid": valid, "index": idx}


def mask_targets(targets: dict[str, jax.Array], boxes: jax.Array, matches: jax.Array, resolution: int,
                 kernels: str | None = None) -> jax.Array:
    """Each RoI's mask target, as detectron2 computes it: boxes (N, F, 4) matched to GT instances
    matches (N, F) -> (N, F, M, M) float 0/1 at M = resolution.

    Polygons (gt_polygon_*, INPUT.MASK_FORMAT polygon) are rasterised inside each box (PolygonMasks.
    crop_and_resize); full-image bitmasks (gt_bitmasks at stride 1, MASK_FORMAT bitmask) are ROIAligned
    into it (BitMasks.crop_and_resize: aligned, adaptive sampling, >= 0.5)."""
    n, f = matches.shape
    if "gt_polygon_xy" in targets:
        def gather(x):  # (N, G, ...) -> (N*F, ...) the matched instance's row
            return jax.vmap(lambda a, m: a[m])(x, matches).reshape(n * f, *x.shape[2:])

        masks = rasterize_polygons_within_boxes(gather(targets["gt_polygon_xy"]), gather(targets["gt_polygon_id"]),
                                                gather(targets["gt_polygon_start"]), boxes.reshape(n * f, 4),
                                                resolution)
        return masks.astype(jnp.float32).reshape(n, f, resolution, resolution)
    bitmasks = _edge_padded(targets["gt_bitmasks"], targets["image_hw"])  # (N, G, Hp, Wp)
    g, hp, wp = bitmasks.shape[1:]
    batch_index = (jnp.arange(n, dtype=jnp.int32)[:, None] * g + matches).reshape(-1)
    pooled = roi_align(bitmasks.reshape(n * g, hp, wp, 1), boxes.reshape(-1, 4), batch_index, resolution, 1.0,
                       0, True, implementation=kernels)
    return (pooled[..., 0] >= 0.5).astype(jnp.float32).reshape(n, f, resolution, resolution)


def _edge_padded(bitmasks: jax.Array, image_hw: jax.Array) -> jax.Array:
    """(N, G, Hp, Wp) uint8 masks zero-padded beyond image_hw (N, 2) -> float32 with the image's last row and
    column repeated once into the padding, so that ROIAlign reads at the image border what it reads from
    detectron2's image-sized BitMasks (it clamps samples in (h - 1, h] to row h - 1)."""
    hp, wp = bitmasks.shape[2:]

    def one(masks, hw):  # (G, Hp, Wp), (2,)
        rows, cols = jnp.arange(hp), jnp.arange(wp)
        rows, cols = jnp.where(rows == hw[0], hw[0] - 1, rows), jnp.where(cols == hw[1], hw[1] - 1, cols)
        return masks[:, rows][:, :, cols].astype(jnp.float32)

    return jax.vmap(one)(bitmasks, image_hw)
