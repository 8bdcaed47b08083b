"""FCOS (AdelaiDet's proposal generator "FCOS"): the shared head on FPN levels, its locations and its decoding.

`FCOS` is the `proposal_generator` submodule of the meta-architectures that use it (OneStageDetector for plain
box detection, BlendMask). Config values are read once, in `fcos_from_config`.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.models.backbones.backbone import ShapeSpec, feature_strides
from jaxseg.models.fcos.head import FCOSHead
from jaxseg.models.fcos.inference import predict_instances
from jaxseg.models.fcos.losses import fcos_losses
from jaxseg.models.fcos.targets import fcos_locations, fcos_targets, level_ranges, location_levels
from jaxseg.models.registry import PROPOSAL_GENERATOR_REGISTRY


def flatten_levels(maps: Sequence[jax.Array]) -> jax.Array:
    """Per level (N, H, W, C) -> (N, sum HW, C), each level row-major (AdelaiDet's location order)."""
    return jnp.concatenate([m.reshape(m.shape[0], -1, m.shape[-1]) for m in maps], axis=1)


def patches_at(maps: list[jax.Array], level: jax.Array, location: jax.Array) -> jax.Array:
    """ONE image. maps: per level (H, W, C); level, location (D,) (index y * W + x in the level) -> the 3x3
    zero-padded neighbourhoods (D, 3, 3, C)."""
    out = None
    for lvl, m in enumerate(maps):
        h, w, _ = m.shape
        padded = jnp.pad(m, ((1, 1), (1, 1), (0, 0)))
        y, x = location // w, location % w
        dy, dx = jnp.meshgrid(jnp.arange(3), jnp.arange(3), indexing="ij")
        rows = jnp.clip(y, 0, h - 1)[:, None, None] + dy  # (D, 3, 3) in the padded map
        cols = jnp.clip(x, 0, w - 1)[:, None, None] + dx
        patch = padded[rows, cols]  # (D, 3, 3, C)
        out = patch if out is None else jnp.where((level == lvl)[:, None, None, None], patch, out)
    return out


class FCOS(nn.Module):
    num_classes: int
    in_features: tuple[str, ...]
    strides: tuple[int, ...]
    num_cls_convs: int = 4
    num_box_convs: int = 4
    num_share_convs: int = 0
    norm: str = "GN"
    use_scale: bool = True
    prior_prob: float = 0.01
    channels: int = 256  # of the input levels
    # inference
    threshold: float = 0.05
    pre_nms_topk: int = 1000
    post_nms_topk: int = 100
    nms_thresh: float = 0.6
    thresh_with_ctr: bool = False
    # training
    sizes_of_interest: tuple[float, ...] = (64, 128, 256, 512)
    center_sample: bool = True
    pos_radius: float = 1.5
    loss_alpha: float = 0.25
    loss_gamma: float = 2.0
    loss_weight_cls: float = 1.0
    loc_loss_type: str = "giou"
    kernels: str | None = None

    def setup(self) -> None:
        self.fcos_head = FCOSHead(self.num_classes, len(self.in_features), self.num_cls_convs, self.num_box_convs,
                                  self.num_share_convs, self.norm, self.use_scale, self.prior_prob,
                                  self.channels)

    @property
    def max_detections(self) -> int:
        """Output slots per image: twice the post-NMS cut (room for ties at it), at least 1."""
        return max(2 * self.post_nms_topk, 1) if self.post_nms_topk > 0 else len(self.in_features) * self.pre_nms_topk

    def head_outputs(self, features: dict[str, jax.Array]) -> dict[str, list[jax.Array]]:
        """Per level (in_features order): logits, reg (stride units), ctrness logits, bbox_tower."""
        return self.fcos_head([features[f] for f in self.in_features])

    @nn.nowrap
    def locations(self, head: dict[str, list[jax.Array]]) -> list[np.ndarray]:
        """(H_l * W_l, 2) float32 (x, y) per level over the padded feature maps."""
        hw = self.feature_hw(head)
        return np.split(fcos_locations(hw, self.strides), np.cumsum([h * w for h, w in hw])[:-1])

    @staticmethod
    def feature_hw(head: dict[str, list[jax.Array]]) -> list[tuple[int, int]]:
        return [tuple(m.shape[1:3]) for m in head["logits"]]

    @nn.nowrap
    def predict(self, head: dict[str, list[jax.Array]]) -> dict[str, jax.Array]:
        """Head outputs -> per-image detections (N, D, ...) in padded-image pixels (see predict_instances)."""
        locations = [jnp.asarray(loc) for loc in self.locations(head)]

        def one(per_level):
            return predict_instances(per_level, locations, self.strides, threshold=self.threshold,
                                     pre_nms_topk=self.pre_nms_topk, thresh_with_ctr=self.thresh_with_ctr,
                                     nms_thresh=self.nms_thresh, post_nms_topk=self.post_nms_topk,
                                     max_detections=self.max_detections, kernels=self.kernels)

        per_level = [{"logits": lg.reshape(lg.shape[0], -1, lg.shape[-1]), "reg": r.reshape(r.shape[0], -1, 4),
                      "ctrness": c.reshape(c.shape[0], -1)}
                     for lg, r, c in zip(head["logits"], head["reg"], head["ctrness"])]
        return jax.vmap(one)(per_level)

    @nn.nowrap
    def losses(self, head: dict[str, list[jax.Array]], batch: dict[str, jax.Array]
               ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        """FCOS losses of a batch (gt_boxes, gt_classes, gt_valid) and the assignment BlendMask reuses."""
        hw = self.feature_hw(head)
        ranges = level_ranges(self.sizes_of_interest, len(self.in_features))
        targets = fcos_targets(fcos_locations(hw, self.strides), location_levels(hw), self.strides, ranges,
                               batch["gt_boxes"],
                               batch["gt_classes"], batch["gt_valid"], num_classes=self.num_classes,
                               center_sample=self.center_sample, pos_radius=self.pos_radius)
        logits = flatten_levels(head["logits"])
        reg = flatten_levels(head["reg"])
        ctr = flatten_levels(head["ctrness"])[..., 0]
        losses, extras = fcos_losses(logits, reg, ctr, targets, num_classes=self.num_classes, alpha=self.loss_alpha,
                                     gamma=self.loss_gamma, loc_loss_type=self.loc_loss_type)
        losses["loss_fcos_cls"] = losses["loss_fcos_cls"] * self.loss_weight_cls
        return losses, extras


def fcos_from_config(cfg, input_shape: dict[str, ShapeSpec], kernels: str | None = None) -> FCOS:
    """MODEL.FCOS.* -> FCOS (the config is read here only). Strides come from the backbone's output shapes and must
    equal FCOS.FPN_STRIDES."""
    return FCOS(**fcos_kwargs(cfg, input_shape, kernels), name="proposal_generator")


def fcos_kwargs(cfg, input_shape: dict[str, ShapeSpec], kernels: str | None = None) -> dict:
    """The FCOS fields MODEL.FCOS.* sets (shared by the FCOS variants of other families)."""
    f = cfg.MODEL.FCOS
    in_features = tuple(f.IN_FEATURES)
    strides = feature_strides(input_shape, in_features, "MODEL.FCOS.IN_FEATURES")
    if tuple(int(s) for s in f.FPN_STRIDES) != tuple(strides):
        raise ValueError(f"MODEL.FCOS.FPN_STRIDES {list(f.FPN_STRIDES)} do not match the strides of "
                         f"MODEL.FCOS.IN_FEATURES {list(in_features)} ({list(strides)})")
    if len(f.SIZES_OF_INTEREST) != len(in_features) - 1:
        raise ValueError(f"MODEL.FCOS.SIZES_OF_INTEREST {list(f.SIZES_OF_INTEREST)} needs one value fewer than "
                         f"MODEL.FCOS.IN_FEATURES ({len(in_features)} levels)")
    channels = {input_shape[name].channels for name in in_features}
    if len(channels) != 1:
        raise ValueError(f"MODEL.FCOS.IN_FEATURES {list(in_features)} have different channel counts {channels}")
    return dict(
        num_classes=int(f.NUM_CLASSES), channels=channels.pop(), in_features=in_features, strides=tuple(strides),
        num_cls_convs=int(f.NUM_CLS_CONVS), num_box_convs=int(f.NUM_BOX_CONVS), num_share_convs=int(f.NUM_SHARE_CONVS),
        norm=str(f.NORM), use_scale=bool(f.USE_SCALE), prior_prob=float(f.PRIOR_PROB),
        threshold=float(f.INFERENCE_TH_TEST), pre_nms_topk=int(f.PRE_NMS_TOPK_TEST),
        post_nms_topk=int(f.POST_NMS_TOPK_TEST), nms_thresh=float(f.NMS_TH), thresh_with_ctr=bool(f.THRESH_WITH_CTR),
        sizes_of_interest=tuple(float(s) for s in f.SIZES_OF_INTEREST), center_sample=bool(f.CENTER_SAMPLE),
        pos_radius=float(f.POS_RADIUS), loss_alpha=float(f.LOSS_ALPHA), loss_gamma=float(f.LOSS_GAMMA),
        loss_weight_cls=float(f.LOSS_WEIGHT_CLS), loc_loss_type=str(f.LOC_LOSS_TYPE), kernels=kernels)


PROPOSAL_GENERATOR_REGISTRY.register(fcos_from_config, name="FCOS")
