"""Region Proposal Network: StandardRPNHead and detectron2's test-time proposal selection.

Per image and per level: top-k raw objectness logits, decode, clip to the image, drop empty boxes,
NMS (IoU 0.7) within the level; then the best POST_NMS_TOPK over all levels. Static shapes
throughout: every selection returns fixed-size arrays with a `valid` mask.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.kernels import nms
from jaxseg.models.backbones.backbone import ShapeSpec, feature_strides
from jaxseg.models.layers import Conv2d, normal_init
from jaxseg.models.ops import box_coder
from jaxseg.models.ops.anchors import multilevel_anchors, num_cell_anchors
from jaxseg.models.ops.losses import sigmoid_bce, smooth_l1
from jaxseg.models.ops.matcher import match, pairwise_iou
from jaxseg.models.ops.sampling import subsample_labels
from jaxseg.models.registry import PROPOSAL_GENERATOR_REGISTRY


class StandardRPNHead(nn.Module):
    """3x3 conv + ReLU shared by all levels, then 1x1 convs to A logits and 4A deltas."""

    num_anchors: int
    box_dim: int = 4
    conv_dims: tuple[int, ...] = (-1,)

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
        """features: per level (N, H, W, C) -> logits (N, H*W*A) and deltas (N, H*W*A, 4) per level."""
        in_ch = features[0].shape[-1]
        if len(self.conv_dims) != 1:
            raise ValueError("RPN.CONV_DIMS with more than one conv is not supported yet")
        dim = in_ch if self.conv_dims[0] == -1 else self.conv_dims[0]
        init = normal_init(0.01)
        conv = Conv2d(dim, 3, padding=1, activation=True, kernel_init=init, name="conv")
        cls = Conv2d(self.num_anchors, 1, kernel_init=init, name="objectness_logits")
        reg = Conv2d(self.num_anchors * self.box_dim, 1, kernel_init=init, name="anchor_deltas")
        logits, deltas = [], []
        for x in features:
            t = conv(x)
            n = x.shape[0]
            logits.append(cls(t).reshape(n, -1))                  # (N, H*W*A), order (H, W, A)
            deltas.append(reg(t).reshape(n, -1, self.box_dim))    # channel a*4 + coord
        return logits, deltas


def find_top_rpn_proposals(
    anchors: Sequence[np.ndarray],
    logits: Sequence[jax.Array],
    deltas: Sequence[jax.Array],
    image_hw: jax.Array,
    *,
    pre_nms_topk: int,
    post_nms_topk: int,
    nms_thresh: float,
    min_box_size: float = 0.0,
    box_reg_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    kernels: str | None = None,
) -> dict[str, jax.Array]:
    """Proposals of ONE image. logits[l]: (L_l,), deltas[l]: (L_l, 4), anchors[l]: (L_l, 4) numpy.

    Returns boxes (P, 4), logits (P,), levels (P,) int32, valid (P,) with P = min(post_nms_topk, total),
    sorted by logit descending (invalid rows last).
    """
    all_boxes, all_scores, all_levels = [], [], []
    for lvl, (anc, lg, dl) in enumerate(zip(anchors, logits, deltas)):
        k = min(lg.shape[0], pre_nms_topk)
        scores, idx = jax.lax.top_k(lg, k)
        boxes = box_coder.apply_deltas(dl[idx], jnp.asarray(anc)[idx], box_reg_weights)
        valid = jnp.all(jnp.isfinite(boxes), axis=-1) & jnp.isfinite(scores)
        boxes = box_coder.clip_boxes(boxes, image_hw)
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        valid &= (w > min_box_size) & (h > min_box_size)
        keep, keep_valid = nms(boxes, scores, nms_thresh, valid=valid, max_output=min(k, post_nms_topk),
                               implementation=kernels)
        all_boxes.append(boxes[keep])
        all_scores.append(jnp.where(keep_valid, scores[keep], -jnp.inf))
        all_levels.append(jnp.full(keep.shape, lvl, jnp.int32))
    boxes = jnp.concatenate(all_boxes)
    scores = jnp.concatenate(all_scores)
    levels = jnp.concatenate(all_levels)
    top_scores, top = jax.lax.top_k(scores, min(post_nms_topk, scores.shape[0]))
    valid = top_scores > -jnp.inf
    return {"boxes": boxes[top], "logits": top_scores, "levels": levels[top], "valid": valid}


class RPN(nn.Module):
    """The proposal generator: head + anchors + test-time selection, batched over images."""

    in_features: tuple[str, ...]
    strides: tuple[int, ...]
    anchor_sizes: tuple[tuple[float, ...], ...]
    aspect_ratios: tuple[tuple[float, ...], ...]
    anchor_offset: float = 0.0
    pre_nms_topk: int = 1000
    post_nms_topk: int = 1000
    nms_thresh: float = 0.7
    min_box_size: float = 0.0
    box_reg_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    # training
    pre_nms_topk_train: int = 2000
    post_nms_topk_train: int = 1000
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    iou_thresholds: tuple[float, ...] = (0.3, 0.7)
    iou_labels: tuple[int, ...] = (0, -1, 1)
    smooth_l1_beta: float = 0.0
    loss_weight: float = 1.0
    bbox_reg_loss_weight: float = 1.0
    kernels: str | None = None

    def setup(self):
        num_anchors = num_cell_anchors(self.anchor_sizes, self.aspect_ratios, len(self.in_features))
        self.rpn_head = StandardRPNHead(num_anchors)

    def head_outputs(self, features: dict[str, jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
        """Raw objectness logits (N, H*W*A) and deltas (N, H*W*A, 4) per level."""
        return self.rpn_head([features[f] for f in self.in_features])

    def __call__(self, features: dict[str, jax.Array], image_hw: jax.Array) -> dict[str, jax.Array]:
        """features {name: (N, H, W, C)}, image_hw (N, 2) -> proposals, each (N, P, ...)."""
        logits, deltas = self.head_outputs(features)
        return self._proposals(self._anchors(features), logits, deltas, image_hw, self.pre_nms_topk,
                               self.post_nms_topk)

    def _anchors(self, features: dict[str, jax.Array]) -> list[np.ndarray]:
        return multilevel_anchors_for(self, [features[f].shape[1:3] for f in self.in_features])

    def _proposals(self, anchors, logits, deltas, image_hw, pre_nms_topk: int, post_nms_topk: int):
        select = functools.partial(
            find_top_rpn_proposals, anchors, pre_nms_topk=pre_nms_topk, post_nms_topk=post_nms_topk,
            nms_thresh=self.nms_thresh, min_box_size=self.min_box_size, box_reg_weights=self.box_reg_weights,
            kernels=self.kernels)
        return jax.vmap(select)(logits, deltas, image_hw)

    def losses(self, key: jax.Array, features: dict[str, jax.Array], image_hw: jax.Array,
               targets: dict[str, jax.Array]) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        """Training: (losses, proposals). Proposals use the training top-k and carry no gradient."""
        logits, deltas = self.head_outputs(features)
        anchors = self._anchors(features)
        losses = rpn_losses(
            key, jnp.asarray(np.concatenate(anchors)), jnp.concatenate(logits, axis=1),
            jnp.concatenate(deltas, axis=1), targets["gt_boxes"], targets["gt_valid"],
            batch_size_per_image=self.batch_size_per_image, positive_fraction=self.positive_fraction,
            iou_thresholds=self.iou_thresholds, iou_labels=self.iou_labels, box_reg_weights=self.box_reg_weights,
            smooth_l1_beta=self.smooth_l1_beta)
        losses = {"loss_rpn_cls": losses["loss_rpn_cls"] * self.loss_weight,
                  "loss_rpn_loc": losses["loss_rpn_loc"] * self.bbox_reg_loss_weight}
        proposals = self._proposals(anchors, jax.lax.stop_gradient(logits), jax.lax.stop_gradient(deltas),
                                    image_hw, self.pre_nms_topk_train, self.post_nms_topk_train)
        return losses, jax.lax.stop_gradient(proposals)


def multilevel_anchors_for(rpn: RPN, feature_hws: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    return multilevel_anchors(rpn.anchor_sizes, rpn.aspect_ratios, rpn.strides, feature_hws, rpn.anchor_offset)


@PROPOSAL_GENERATOR_REGISTRY.register(name="RPN")
def build_rpn(cfg, input_shape: dict[str, ShapeSpec], kernels: str | None = None) -> RPN:
    """Config values -> RPN; input_shape: the backbone's output_shape()."""
    r, a = cfg.MODEL.RPN, cfg.MODEL.ANCHOR_GENERATOR
    strides = feature_strides(input_shape, r.IN_FEATURES, "MODEL.RPN.IN_FEATURES")
    if r.HEAD_NAME != "StandardRPNHead":
        raise ValueError(f"MODEL.RPN.HEAD_NAME {r.HEAD_NAME!r} is not supported (StandardRPNHead)")
    if a.NAME != "DefaultAnchorGenerator":
        raise ValueError(f"MODEL.ANCHOR_GENERATOR.NAME {a.NAME!r} is not supported (DefaultAnchorGenerator)")
    return RPN(
        in_features=tuple(r.IN_FEATURES), strides=tuple(strides),
        anchor_sizes=tuple(tuple(s) for s in a.SIZES), aspect_ratios=tuple(tuple(x) for x in a.ASPECT_RATIOS),
        anchor_offset=a.OFFSET, pre_nms_topk=r.PRE_NMS_TOPK_TEST, post_nms_topk=r.POST_NMS_TOPK_TEST,
        nms_thresh=r.NMS_THRESH, min_box_size=cfg.MODEL.PROPOSAL_GENERATOR.MIN_SIZE,
        box_reg_weights=tuple(r.BBOX_REG_WEIGHTS), pre_nms_topk_train=r.PRE_NMS_TOPK_TRAIN,
        post_nms_topk_train=r.POST_NMS_TOPK_TRAIN, batch_size_per_image=r.BATCH_SIZE_PER_IMAGE,
        positive_fraction=r.POSITIVE_FRACTION, iou_thresholds=tuple(r.IOU_THRESHOLDS),
        iou_labels=tuple(r.IOU_LABELS), smooth_l1_beta=r.SMOOTH_L1_BETA, loss_weight=r.LOSS_WEIGHT,
        bbox_reg_loss_weight=r.BBOX_REG_LOSS_WEIGHT, kernels=kernels, name="proposal_generator")


def rpn_losses(
    key: jax.Array,
    anchors: jax.Array,
    logits: jax.Array,
    deltas: jax.Array,
    gt_boxes: jax.Array,
    gt_valid: jax.Array,
    *,
    batch_size_per_image: int,
    positive_fraction: float,
    iou_thresholds: Sequence[float],
    iou_labels: Sequence[int],
    box_reg_weights: Sequence[float],
    smooth_l1_beta: float,
) -> dict[str, jax.Array]:
    """RPN objectness and box losses of a batch (detectron2 normalisation: sums / (batch_size_per_image * N)).

    anchors (A, 4) all levels; logits (N, A); deltas (N, A, 4); gt_boxes (N, G, 4); gt_valid (N, G).
    """
    n = logits.shape[0]

    def one_image(k, lg, dl, gt, gv):
        matches, labels = match(pairwise_iou(gt, anchors), gv, iou_thresholds, iou_labels, True)
        idx, is_pos, valid = subsample_labels(k, labels == 1, labels == 0, batch_size_per_image, positive_fraction)
        obj = jnp.sum(jnp.where(valid, sigmoid_bce(lg[idx], is_pos), 0.0))
        target = box_coder.get_deltas(anchors[idx], gt[matches[idx]], box_reg_weights)
        target = jnp.where(is_pos[:, None], target, 0.0)  # no inf/NaN (e.g. from padding GT) in the graph
        reg = jnp.sum(jnp.where(is_pos[:, None], smooth_l1(dl[idx] - target, smooth_l1_beta), 0.0))
        return obj, reg

    obj, reg = jax.vmap(one_image)(jax.random.split(key, n), logits, deltas, gt_boxes, gt_valid)
    normalizer = batch_size_per_image * n
    return {"loss_rpn_cls": obj.sum() / normalizer, "loss_rpn_loc": reg.sum() / normalizer}
