"""BlendMask (AdelaiDet): FCOS detections whose masks blend global bases with per-detection attentions.

normalize -> backbone (ResNet + FPN, P3..P7) -> FCOS head -> detections; `top_layer` (conv3x3 on the box tower)
gives each detection NUM_BASES x ATTN_SIZE x ATTN_SIZE attentions; the basis module gives the bases; the blender
turns both into a BOTTOM_RESOLUTION mask per detection, pooled with the unclipped box and pasted (postprocess)
with the clipped one, as AdelaiDet does.

Inference computes `top_layer` only at the detections' locations (a 3x3 patch of the box tower times the
kernel), not on every location of every level as upstream does: the same numbers for a fraction of the work.
"""

from __future__ import annotations

import functools
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxseg.data.input_spec import InputSpec
from jaxseg.data.target_spec import TargetSpec
from jaxseg.models.backbones.backbone import Backbone
from jaxseg.models.blendmask.basis_module import ProtoNet
from jaxseg.models.blendmask.blender import merge_bases, pool_bases
from jaxseg.models.fcos.fcos import FCOS, flatten_levels, patches_at
from jaxseg.models.layers import Conv2d, normal_init
from jaxseg.models.meta_arch import MetaArch, backbone_is_frozen, kernels_from_config, precision_from_config
from jaxseg.models.rcnn.postprocessing import detector_postprocess
from jaxseg.models.rcnn.roi_heads import mask_targets
from jaxseg.models.registry import META_ARCH_REGISTRY, PROPOSAL_GENERATOR_REGISTRY, build_backbone


def blendmask_target_spec(cfg) -> TargetSpec:
    """Boxes and classes; the instances' polygons (INPUT.MASK_FORMAT polygon) or full-image bitmasks (bitmask)
    for the mask targets; the thing-semantic map at BASIS_MODULE.COMMON_STRIDE with BASIS_MODULE.LOSS_ON."""
    polygons = cfg.INPUT.MASK_FORMAT == "polygon"
    stride = int(cfg.MODEL.BASIS_MODULE.COMMON_STRIDE) if cfg.MODEL.BASIS_MODULE.LOSS_ON else 0
    return TargetSpec(polygons=polygons, bitmask_stride=0 if polygons else 1, thing_semantic_stride=stride)


@META_ARCH_REGISTRY.register()
class BlendMask(nn.Module, MetaArch):
    backbone: Backbone
    proposal_generator: FCOS
    basis_module: ProtoNet
    input_spec: InputSpec
    target_spec: TargetSpec
    num_classes: int
    attn_size: int = 14
    bottom_resolution: int = 56
    pooler_sampling_ratio: int = 1
    pooler_aligned: bool = True
    top_interp: str = "bilinear"
    instance_loss_weight: float = 1.0
    basis_loss_weight: float = 0.3
    freeze_at: int = 2
    mask_threshold: float = 0.5
    kernels: str | None = None
    precision: str = "highest"
    checkpoint_adapter: ClassVar[str] = "adelaidet"

    @classmethod
    def from_config(cls, cfg) -> BlendMask:
        kernels = kernels_from_config(cfg)
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        fcos = PROPOSAL_GENERATOR_REGISTRY.get(cfg.MODEL.PROPOSAL_GENERATOR.NAME)(cfg, shapes, kernels)
        b, bm = cfg.MODEL.BASIS_MODULE, cfg.MODEL.BLENDMASK
        if b.NUM_CLASSES != fcos.num_classes:
            raise ValueError(f"MODEL.BASIS_MODULE.NUM_CLASSES {b.NUM_CLASSES} differs from MODEL.FCOS.NUM_CLASSES "
                             f"{fcos.num_classes}")
        basis = ProtoNet(tuple(b.IN_FEATURES), int(b.NUM_BASES), int(b.CONVS_DIM), int(b.NUM_CONVS), bool(b.LOSS_ON),
                         int(b.NUM_CLASSES))
        input_spec = InputSpec.from_config(cfg, backbone.size_divisibility, hflip_train=bool(cfg.INPUT.HFLIP_TRAIN))
        return cls(backbone, fcos, basis, input_spec,
                   blendmask_target_spec(cfg), num_classes=fcos.num_classes, attn_size=int(bm.ATTN_SIZE),
                   bottom_resolution=int(bm.BOTTOM_RESOLUTION), pooler_sampling_ratio=int(bm.POOLER_SAMPLING_RATIO),
                   pooler_aligned=bm.POOLER_TYPE == "ROIAlignV2", top_interp=str(bm.TOP_INTERP),
                   instance_loss_weight=float(bm.INSTANCE_LOSS_WEIGHT), basis_loss_weight=float(b.LOSS_WEIGHT),
                   freeze_at=int(cfg.MODEL.BACKBONE.FREEZE_AT), kernels=kernels, precision=precision_from_config(cfg))

    def setup(self) -> None:
        attn_len = self.basis_module.num_bases * self.attn_size ** 2
        self.top_layer = Conv2d(attn_len, 3, padding=1, kernel_init=normal_init(0.01))

    # -- inference ---------------------------------------------------------------------------------

    def extract_features(self, images: jax.Array, image_hw: jax.Array) -> dict[str, jax.Array]:
        with jax.default_matmul_precision(self.precision):
            return self.backbone(self.input_spec.normalize(images, image_hw))

    def attentions_at(self, bbox_towers: list[jax.Array], level: jax.Array, location: jax.Array) -> jax.Array:
        """top_layer at the given locations only: per level (N, H, W, C) box towers, level / location (N, D) ->
        (N, D, NUM_BASES * A * A)."""
        patches = jax.vmap(patches_at, in_axes=(0, 0, 0))(bbox_towers, level, location)  # (N, D, 3, 3, C)
        kernel = self.top_layer.variables["params"]["kernel"]  # (3, 3, C, K*A*A)
        bias = self.top_layer.variables["params"]["bias"]
        return jnp.einsum("ndijc,ijco->ndo", patches, kernel, precision=jax.lax.Precision.HIGHEST) + bias

    def blend(self, bases: jax.Array, boxes: jax.Array, attns: jax.Array) -> jax.Array:
        """bases (N, Hb, Wb, K), boxes (N, D, 4) image pixels, attns (N, D, K*A*A) -> mask logits (N, D, M, M)."""
        n, d = boxes.shape[:2]
        batch_index = jnp.repeat(jnp.arange(n, dtype=jnp.int32), d)
        rois = pool_bases(bases, boxes.reshape(n * d, 4), batch_index, self.bottom_resolution,
                          self.pooler_sampling_ratio, self.pooler_aligned, kernels=self.kernels)
        logits = merge_bases(rois, attns.reshape(n * d, -1), self.attn_size, self.top_interp)
        return logits.reshape(n, d, *logits.shape[1:])

    def __call__(self, images: jax.Array, image_hw: jax.Array) -> dict[str, jax.Array]:
        """images (N, Hp, Wp, 3) -> detections (N, D, ...) in resized-image pixels (boxes unclipped): boxes,
        scores, classes, valid, level, location, flat_location, attns (N, D, K*A*A) and mask_probs (N, D, M, M)."""
        features = self.extract_features(images, image_hw)
        with jax.default_matmul_precision(self.precision):
            fcos = self.proposal_generator
            head = fcos.head_outputs(features)
            det = fcos.predict(head)
            if self.is_initializing():
                self.top_layer(head["bbox_tower"][0])  # creates the parameters attentions_at reads
            attns = self.attentions_at(head["bbox_tower"], det["level"], det["location"])
            bases = self.basis_module(features)["bases"]
            logits = self.blend(bases, det["boxes"], attns)
        return dict(det, attns=attns, mask_probs=jax.nn.sigmoid(logits))

    @nn.nowrap
    def postprocess(self, outputs: dict[str, jax.Array], image_hw: jax.Array, output_hw: jax.Array,
                    canvas_hw: tuple[int, int]) -> dict[str, jax.Array]:
        """Boxes scaled to the original size and clipped; masks pasted into the clipped boxes (threshold 0.5)."""
        post = functools.partial(detector_postprocess, canvas_hw=canvas_hw, mask_threshold=self.mask_threshold,
                                 kernels=self.kernels)
        keep = ("boxes", "scores", "classes", "valid", "mask_probs")
        return jax.vmap(post)({k: outputs[k] for k in keep}, image_hw, output_hw)

    # -- training ----------------------------------------------------------------------------------

    @nn.nowrap
    def max_positives(self, num_locations: int, num_gt: int) -> int:
        """Static bound on the positives of one image: with center sampling a GT has at most 3 x 3 candidate
        locations per level (the centre region is 2 * POS_RADIUS strides wide, POS_RADIUS <= 1.5)."""
        fcos = self.proposal_generator
        if fcos.center_sample and fcos.pos_radius <= 1.5:
            return min(num_locations, 9 * len(fcos.in_features) * num_gt)
        return num_locations

    def losses(self, key: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """FCOS losses, the blender's mask loss on every FCOS positive and (LOSS_ON) the basis semantic loss."""
        features = self.extract_features(batch["images"], batch["image_hw"])
        with jax.default_matmul_precision(self.precision):
            fcos = self.proposal_generator
            head = fcos.head_outputs(features)
            losses, assigned = fcos.losses(head, batch)
            basis = self.basis_module(features, train=True)
            attns = flatten_levels([self.top_layer(t) for t in head["bbox_tower"]])  # (N, L, K*A*A)
            losses["loss_mask"] = self.mask_loss(basis["bases"], attns, assigned, batch) * self.instance_loss_weight
            if self.basis_module.loss_on:
                losses["loss_basis_sem"] = semantic_loss(basis["seg_logits"], batch["gt_thing_semantic"]) \
                    * self.basis_loss_weight
        return losses

    @nn.nowrap
    def mask_loss(self, bases: jax.Array, attns: jax.Array, assigned: dict[str, jax.Array],
                  batch: dict[str, jax.Array]) -> jax.Array:
        """Σ over positives of mean_{M x M} BCE(blend(bases at its GT box, its attentions), GT mask crop) times
        its centerness target, / loss_denorm. The GT crops are the polygons rasterised in the GT box (or the
        bitmask ROIAligned into it), as AdelaiDet's crop_and_resize."""
        n, g = batch["gt_classes"].shape
        m = self.bottom_resolution
        p = self.max_positives(attns.shape[1], g)
        pos = jax.vmap(lambda a: jnp.nonzero(a, size=p, fill_value=0)[0])(assigned["positive"])  # (N, P)
        pos_valid = jnp.take_along_axis(assigned["positive"], pos, axis=1)
        gt_index = jnp.take_along_axis(assigned["gt_index"], pos, axis=1)  # (N, P)
        ctr = jnp.where(pos_valid, jnp.take_along_axis(assigned["ctr_targets"], pos, axis=1), 0.0)
        pos_attns = jnp.take_along_axis(attns, pos[..., None], axis=1)  # (N, P, K*A*A)
        gt_boxes = batch["gt_boxes"]
        rois = jax.vmap(lambda bx, gi: bx[gi])(gt_boxes, gt_index)  # (N, P, 4) the positives' GT boxes
        logits = self.blend(bases, rois, pos_attns)  # (N, P, M, M)
        targets = mask_targets(batch, gt_boxes, jnp.broadcast_to(jnp.arange(g), (n, g)), m, self.kernels)
        target = jax.vmap(lambda t, gi: t[gi])(targets, gt_index)  # (N, P, M, M)
        bce = optax.sigmoid_binary_cross_entropy(logits, target).mean(axis=(2, 3))
        return (bce * ctr).sum() / assigned["loss_denorm"]

    @nn.nowrap
    def is_frozen(self, path: tuple[str, ...]) -> bool:
        return backbone_is_frozen(self.backbone, self.freeze_at, path)

    @nn.nowrap
    def train_collections(self) -> tuple[str, ...]:
        return ("batch_stats",)  # the basis module's BatchNorm statistics


def semantic_loss(logits: jax.Array, target: jax.Array) -> jax.Array:
    """Mean cross-entropy over every pixel (padding included, label 0): logits (N, H, W, K+1), target (N, H, W)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, target[..., None].astype(jnp.int32), axis=-1).mean()
