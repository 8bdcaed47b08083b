"""TensorMask (detectron2 projects/TensorMask): dense sliding-window masks on a RetinaNet-style detector.

normalize -> ResNet + FPN (average fusion, p6/p7 from res5) -> TensorMaskHead on p2..p7 -> per image: the
class probabilities of every (location, anchor, class) of every level jointly above SCORE_THRESH_TEST, the best
TOPK_CANDIDATES_TEST of them, boxes decoded from their anchors (weights BBOX_REG_WEIGHTS, not clipped),
class-aware NMS (IoU > NMS_THRESH_TEST) and the DETECTIONS_PER_IMAGE best. Each detection's mask is the natural
(S * 2^l)^2 window at its location (BiPyramid: SwapAlign2Nat of the aligned logits), pasted into its ANCHOR box
(scaled to the original image, not clipped), as upstream's _postprocess does.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.data.input_spec import InputSpec
from jaxseg.data.target_spec import TargetSpec
from jaxseg.kernels.nms import batched_nms
from jaxseg.kernels.paste_masks import paste_masks_of_sizes
from jaxseg.models.backbones.backbone import Backbone, feature_strides
from jaxseg.models.meta_arch import MetaArch, backbone_is_frozen, kernels_from_config, precision_from_config
from jaxseg.models.ops import anchors as anchor_ops
from jaxseg.models.ops import box_coder
from jaxseg.models.rcnn.rcnn import mask_target_spec
from jaxseg.models.rcnn.roi_heads import mask_targets
from jaxseg.models.registry import META_ARCH_REGISTRY, build_backbone
from jaxseg.models.tensormask.head import TensorMaskHead
from jaxseg.models.tensormask.masks import natural_windows
from jaxseg.models.tensormask.targets import targets as assign_targets

PAD_VALUE = -6.0  # SwapAlign2Nat's value outside the map and the mask grid (upstream's default)


@META_ARCH_REGISTRY.register()
class TensorMask(nn.Module, MetaArch):
    backbone: Backbone
    head: TensorMaskHead
    input_spec: InputSpec
    target_spec: TargetSpec
    num_classes: int
    in_features: tuple[str, ...]
    strides: tuple[int, ...]
    anchor_sizes: tuple[tuple[float, ...], ...]  # per level
    aspect_ratios: tuple[tuple[float, ...], ...]
    score_thresh: float = 0.05
    topk_candidates: int = 6000
    nms_thresh: float = 0.5
    detections_per_image: int = 100
    bbox_reg_weights: tuple[float, ...] = (1.5, 1.5, 0.75, 0.75)
    focal_alpha: float = 0.3
    focal_gamma: float = 3.0
    mask_loss_weight: float = 2.0
    mask_pos_weight: float = 1.5
    freeze_at: int = 2
    mask_threshold: float = 0.5
    kernels: str | None = None
    precision: str = "highest"
    checkpoint_adapter: ClassVar[str] = "detectron2"

    @classmethod
    def from_config(cls, cfg) -> TensorMask:
        t = cfg.MODEL.TENSOR_MASK
        if not (t.ALIGNED_ON and t.BIPYRAMID_ON):
            raise ValueError("MODEL.TENSOR_MASK.ALIGNED_ON and BIPYRAMID_ON must be True (the released models); "
                             "the other TensorMask variants are not implemented")
        kernels = kernels_from_config(cfg)
        backbone = build_backbone(cfg)
        in_features = tuple(t.IN_FEATURES)
        strides = feature_strides(backbone.output_shape(), in_features, "MODEL.TENSOR_MASK.IN_FEATURES")
        ag = cfg.MODEL.ANCHOR_GENERATOR
        levels = anchor_ops.per_level(ag.SIZES, ag.ASPECT_RATIOS, len(in_features))
        num_anchors = anchor_ops.num_cell_anchors(ag.SIZES, ag.ASPECT_RATIOS, len(in_features))
        mask_sizes = tuple(int(s) // strides[0] for s in levels[0][0])  # 44 // 4, 60 // 4 = 11, 15
        if len(mask_sizes) != num_anchors:
            raise ValueError("TensorMask needs one aspect ratio per anchor size (MODEL.ANCHOR_GENERATOR)")
        head = TensorMaskHead(int(t.NUM_CLASSES), num_anchors, mask_sizes, int(t.NUM_CONVS), int(t.CLS_CHANNELS),
                              int(t.BBOX_CHANNELS), int(t.MASK_CHANNELS), bool(cfg.MODEL.MASK_ON), True)
        return cls(backbone, head, InputSpec.from_config(cfg, backbone.size_divisibility), mask_target_spec(cfg),
                   num_classes=int(t.NUM_CLASSES), in_features=in_features, strides=tuple(strides),
                   anchor_sizes=tuple(tuple(float(v) for v in s) for s, _ in levels),
                   aspect_ratios=tuple(tuple(float(v) for v in a) for _, a in levels),
                   score_thresh=float(t.SCORE_THRESH_TEST), topk_candidates=int(t.TOPK_CANDIDATES_TEST),
                   nms_thresh=float(t.NMS_THRESH_TEST), detections_per_image=int(cfg.TEST.DETECTIONS_PER_IMAGE),
                   bbox_reg_weights=tuple(float(w) for w in t.BBOX_REG_WEIGHTS),
                   focal_alpha=float(t.FOCAL_LOSS_ALPHA), focal_gamma=float(t.FOCAL_LOSS_GAMMA),
                   mask_loss_weight=float(t.MASK_LOSS_WEIGHT), mask_pos_weight=float(t.POSITIVE_WEIGHT),
                   freeze_at=int(cfg.MODEL.BACKBONE.FREEZE_AT), kernels=kernels, precision=precision_from_config(cfg))

    # -- anchors -----------------------------------------------------------------------------------

    @nn.nowrap
    def anchors(self, feature_hw: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        """All levels' anchors (sum H*W*A, 4) (centres at (x, y) * stride, no offset, (H, W, A) order) and each
        anchor's (level, h, w, a) (sum H*W*A, 4), on the host."""
        boxes = anchor_ops.multilevel_anchors(self.anchor_sizes, self.aspect_ratios, self.strides, feature_hw, 0.0)
        index = []
        for lvl, (h, w) in enumerate(feature_hw):
            a = len(self.anchor_sizes[lvl]) * len(self.aspect_ratios[lvl])
            hh, ww, aa = np.meshgrid(np.arange(h), np.arange(w), np.arange(a), indexing="ij")
            index.append(np.stack([np.full(hh.size, lvl), hh.reshape(-1), ww.reshape(-1), aa.reshape(-1)], 1))
        return np.concatenate(boxes), np.concatenate(index).astype(np.int32)

    # -- inference ---------------------------------------------------------------------------------

    def extract_features(self, images: jax.Array, image_hw: jax.Array) -> dict[str, jax.Array]:
        with jax.default_matmul_precision(self.precision):
            return self.backbone(self.input_spec.normalize(images, image_hw))

    def __call__(self, images: jax.Array, image_hw: jax.Array) -> dict[str, jax.Array]:
        """images (N, Hp, Wp, 3) -> detections (N, D, ...) in resized-image pixels: boxes (not clipped), scores,
        classes, valid, anchor_boxes (the paste boxes), index (level, h, w, a), mask_side (S * 2^l) and
        mask_probs (N, D, S_max, S_max), each window in the top-left corner of its buffer."""
        features = self.extract_features(images, image_hw)
        with jax.default_matmul_precision(self.precision):
            out = self.head([features[f] for f in self.in_features])
            det = self.detect(out)
            if self.head.mask_on:
                det.update(self.masks_at(out["mask_feats"], det))
        return det

    @nn.nowrap
    def detect(self, out: dict[str, list]) -> dict[str, jax.Array]:
        """Head outputs -> the per-image detections (candidates over all levels jointly, NMS, top D)."""
        hw = [tuple(m.shape[1:3]) for m in out["logits"]]
        anchors, index = self.anchors(hw)
        k = self.num_classes
        logits = jnp.concatenate([x.reshape(x.shape[0], -1, k) for x in out["logits"]], axis=1)  # (N, HWA, K)
        deltas = jnp.concatenate([x.reshape(x.shape[0], -1, 4) for x in out["deltas"]], axis=1)
        anchors_j, index_j = jnp.asarray(anchors), jnp.asarray(index)
        d = self.detections_per_image

        def one(lg, dl):
            prob = jax.nn.sigmoid(lg.reshape(-1))
            ranked = jnp.where(prob > self.score_thresh, prob, -1.0)
            score, flat = jax.lax.top_k(ranked, min(self.topk_candidates, prob.size))  # descending
            cand = score > -1.0
            cls, anchor = flat % k, flat // k
            boxes = box_coder.apply_deltas(dl[anchor], anchors_j[anchor], self.bbox_reg_weights)
            keep, kept = batched_nms(boxes, score, cls, self.nms_thresh, valid=cand, max_output=d,
                                     implementation=self.kernels)
            a = anchor[keep]
            return {"boxes": boxes[keep], "scores": jnp.where(kept, score[keep], 0.0),
                    "classes": cls[keep].astype(jnp.int32), "valid": kept, "anchor_boxes": anchors_j[a],
                    "index": index_j[a]}

        return jax.vmap(one)(logits, deltas)

    @nn.nowrap
    def window_sizes(self) -> tuple[np.ndarray, int]:
        """(levels, anchors) natural window sides S_a * 2^l, and their maximum."""
        sides = np.array([[s * 2 ** lvl for s in self.head.mask_sizes] for lvl in range(len(self.in_features))])
        return sides, int(sides.max())

    def masks_at(self, mask_feats: list[jax.Array], det: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """The detections' natural windows (sigmoid), from the aligned logits of every level and anchor."""
        num_a = len(self.head.mask_sizes)
        cmax = max(s * s for s in self.head.mask_sizes)
        aligned = jnp.stack([jnp.pad(self.head.aligned_masks(f, a), ((0, 0),) * 3 + ((0, cmax - s * s),))
                             for f in mask_feats for a, s in enumerate(self.head.mask_sizes)], axis=1)
        sides, s_max = self.window_sizes()
        lvl, y, x, a = (det["index"][..., i] for i in range(4))
        side = jnp.asarray(np.array(self.head.mask_sizes))[a]
        lam = 2 ** lvl
        windows = jax.vmap(lambda al, g, yy, xx, lm, sd: natural_windows(al, g, yy, xx, lm, sd, s_max, PAD_VALUE))(
            aligned, lvl * num_a + a, y, x, lam, side)
        out_side = side * lam
        inside = jnp.arange(s_max)[None, None, :] < out_side[..., None]
        probs = jnp.where(inside[..., :, None] & inside[..., None, :], jax.nn.sigmoid(windows), 0.0)
        return {"mask_probs": probs, "mask_side": out_side.astype(jnp.int32)}

    @nn.nowrap
    def postprocess(self, outputs: dict[str, jax.Array], image_hw: jax.Array, output_hw: jax.Array,
                    canvas_hw: tuple[int, int]) -> dict[str, jax.Array]:
        """Boxes scaled to the original size and clipped, empty ones dropped; masks pasted into the scaled (not
        clipped) anchor boxes, threshold 0.5."""

        def one(det, hw, ohw):
            scale = (ohw.astype(jnp.float32) / hw.astype(jnp.float32))[::-1]  # (sx, sy)
            s4 = jnp.tile(scale, 2)
            boxes = box_coder.clip_boxes(det["boxes"] * s4, ohw)
            out = {"boxes": boxes, "scores": det["scores"], "classes": det["classes"],
                   "valid": det["valid"] & box_coder.nonempty(boxes)}
            if "mask_probs" in det:
                out["masks"] = paste_masks_of_sizes(det["mask_probs"], det["mask_side"], det["anchor_boxes"] * s4,
                                                    canvas_hw, self.mask_threshold)
            return out

        return jax.vmap(one)(outputs, image_hw, output_hw)

    # -- training ----------------------------------------------------------------------------------

    def losses(self, key: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """FL* classification over every anchor, L1 box regression and the windows' mask loss on the foreground
        anchors, each divided by max(1, foreground anchors of the batch)."""
        features = self.extract_features(batch["images"], batch["image_hw"])
        with jax.default_matmul_precision(self.precision):
            out = self.head([features[f] for f in self.in_features])
            hw = [tuple(m.shape[1:3]) for m in out["logits"]]
            anchors, index = self.anchors(hw)
            unit = np.repeat(np.array(self.strides, np.float32), [h * w * len(self.head.mask_sizes) for h, w in hw])
            t = assign_targets(batch["gt_boxes"], batch["gt_classes"], batch["gt_valid"], jnp.asarray(anchors),
                               jnp.asarray(unit), num_classes=self.num_classes,
                               min_anchor_size=min(self.anchor_sizes[0]) - self.strides[0],
                               bbox_reg_weights=self.bbox_reg_weights)
            k = self.num_classes
            logits = jnp.concatenate([x.reshape(x.shape[0], -1, k) for x in out["logits"]], axis=1)  # (N, M, K)
            deltas = jnp.concatenate([x.reshape(x.shape[0], -1, 4) for x in out["deltas"]], axis=1)
            fg = t["foreground"]
            normalizer = jnp.maximum(fg.sum(), 1).astype(jnp.float32)
            onehot = jax.nn.one_hot(t["labels"], k, dtype=logits.dtype)  # background: zero row
            cls = focal_loss_star(logits, onehot, self.focal_alpha, self.focal_gamma)
            losses = {"loss_cls": cls.sum() / normalizer,
                      "loss_box_reg": jnp.where(fg[..., None], jnp.abs(deltas - t["deltas"]), 0.0).sum() / normalizer}
            if self.head.mask_on:
                losses["loss_mask"] = self.mask_loss(out["mask_feats"], hw, t, batch) / normalizer
        return losses

    @nn.nowrap
    def foreground_of_group(self, fg: jax.Array, hw: Sequence[tuple[int, int]], lvl: int, a: int,
                            cap: int) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The foreground anchors of (level, anchor a): (N, cap) location index y * W + x in the level, valid
        (N, cap) and the anchor's index into all anchors (N, cap)."""
        num_a = len(self.head.mask_sizes)
        start = sum(h * w * num_a for h, w in hw[:lvl])
        h, w = hw[lvl]
        here = fg[:, start:start + h * w * num_a].reshape(fg.shape[0], h * w, num_a)[..., a]  # (N, HW)
        loc = jax.vmap(lambda m: jnp.nonzero(m, size=cap, fill_value=0)[0])(here)
        valid = jnp.take_along_axis(here, loc, axis=1)
        return loc.astype(jnp.int32), valid, start + loc * num_a + a

    def mask_loss(self, mask_feats: list[jax.Array], hw: Sequence[tuple[int, int]], t: dict[str, jax.Array],
                  batch: dict[str, jax.Array]) -> jax.Array:
        """Σ over foreground anchors of Σ_window BCE(pos_weight) * MASK_LOSS_WEIGHT / side^2; targets: the matched
        GT's polygons rasterised in the ANCHOR box at the window's side (PolygonMasks.crop_and_resize)."""
        anchors, _ = self.anchors(hw)
        anchors = jnp.asarray(anchors)
        g = batch["gt_boxes"].shape[1]
        total = jnp.float32(0.0)
        for lvl, feats in enumerate(mask_feats):
            lam = 2 ** lvl
            for a, s in enumerate(self.head.mask_sizes):
                side = s * lam
                cap = min(hw[lvl][0] * hw[lvl][1], 5 * g)  # the centre rule admits <= 5 locations per GT
                loc, valid, anchor_index = self.foreground_of_group(t["foreground"], hw, lvl, a, cap)
                aligned = self.head.aligned_masks(feats, a)  # (N, H2, W2, S*S)
                logits = jax.vmap(functools.partial(windows_at, width=hw[lvl][1], lam=lam, size=s))(aligned, loc)
                matched = jnp.take_along_axis(t["matched"], anchor_index, axis=1)  # (N, cap)
                target = self.window_targets(batch, matched, anchors[anchor_index], side)
                bce = weighted_bce(logits, target, self.mask_pos_weight)
                total = total + jnp.where(valid[..., None, None], bce, 0.0).sum() * (self.mask_loss_weight / side ** 2)
        return total

    @nn.nowrap
    def window_targets(self, batch: dict[str, jax.Array], matched: jax.Array, boxes: jax.Array,
                       side: int) -> jax.Array:
        """(N, P) matched GT, (N, P, 4) anchor boxes -> (N, P, side, side) float 0/1 mask targets, as detectron2's
        crop_and_resize (polygons rasterised in the box, or bitmasks ROIAligned into it)."""
        return mask_targets(batch, boxes, matched, side, self.kernels)

    @nn.nowrap
    def is_frozen(self, path: tuple[str, ...]) -> bool:
        return backbone_is_frozen(self.backbone, self.freeze_at, path)


def focal_loss_star(logits: jax.Array, targets: jax.Array, alpha: float, gamma: float) -> jax.Array:
    """FL* (fvcore's sigmoid_focal_loss_star), elementwise: -log sigmoid(gamma * x * (2t - 1)) / gamma, weighted by
    alpha for targets 1 and 1 - alpha for targets 0."""
    shifted = logits * (targets * 2 - 1)
    loss = -jax.nn.log_sigmoid(gamma * shifted) / gamma
    return loss * (alpha * targets + (1 - alpha) * (1 - targets))


def weighted_bce(logits: jax.Array, targets: jax.Array, pos_weight: float) -> jax.Array:
    """torch's binary_cross_entropy_with_logits with pos_weight, elementwise."""
    return pos_weight * targets * jax.nn.softplus(-logits) + (1 - targets) * jax.nn.softplus(logits)


def windows_at(aligned: jax.Array, loc: jax.Array, *, width: int, lam: int, size: int) -> jax.Array:
    """ONE image, one (level, anchor size): aligned (H2, W2, S*S), locations (P,) y * W + x in the level ->
    window logits (P, S*lam, S*lam)."""
    return natural_windows(aligned[None], jnp.zeros_like(loc), loc // width, loc % width, jnp.full_like(loc, lam),
                           jnp.full_like(loc, size), size * lam, PAD_VALUE)
