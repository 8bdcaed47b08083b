"""EmbedMask (gakkiri/EmbedMask): FCOS detections whose masks come from embedding distances.

normalize -> backbone (ResNet + FPN, P3..P7) -> FCOS head with the embedding branches -> detections; each detection
carries the proposal embedding and margin of its location; its mask is exp(-margin * ||E - q||^2) over the stride-4
pixel embedding E (p3's, x2 bilinear) inside its box / 4 +- 1 px, resized to the original image (not pasted into
the box) and thresholded at 0.5 (the repo's own postprocessing.py).

Upstream decodes batch size 1 only: for image >= 1 it indexes an already-selected embedding tensor. jaxseg
handles every image of a batch on its own (vmap), so a batch gives each image the instances it gets alone.

Config files: upstream's are `META_ARCHITECTURE: "OneStageDetector"` with `MASK_ON: True` (its FCOS always has the
embedding branches); jaxseg builds EmbedMask for that combination, and the box-only FCOS detector otherwise.
"""

from __future__ import annotations

import functools
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.data.input_spec import InputSpec
from jaxseg.data.target_spec import TargetSpec
from jaxseg.errors import UserError
from jaxseg.models.backbones.backbone import Backbone
from jaxseg.models.embedmask.head import EmbedMaskHead
from jaxseg.models.embedmask.loss import image_mean, mask_proposals, mask_targets_s4, target_losses
from jaxseg.models.embedmask.masks import box_masks, mask_probabilities, output_masks
from jaxseg.models.fcos.fcos import FCOS, fcos_kwargs, flatten_levels
from jaxseg.models.fcos.targets import fcos_locations, location_levels
from jaxseg.models.layers import upsample_bilinear
from jaxseg.models.meta_arch import MetaArch, backbone_is_frozen, kernels_from_config, precision_from_config
from jaxseg.models.rcnn.postprocessing import detector_postprocess
from jaxseg.models.registry import META_ARCH_REGISTRY, build_backbone


class EmbedMaskFCOS(FCOS):
    """FCOS whose head has EmbedMask's embedding branches (upstream's `proposal_generator`)."""

    embed_dim: int = 64
    box_to_margin_scale: float = 800.0

    def setup(self) -> None:
        self.fcos_head = EmbedMaskHead(self.num_classes, len(self.in_features), self.num_cls_convs,
                                       self.num_box_convs, self.num_share_convs, self.norm, self.use_scale,
                                       self.prior_prob, self.channels, embed_dim=self.embed_dim,
                                       strides=tuple(self.strides), box_to_margin_scale=self.box_to_margin_scale)


@META_ARCH_REGISTRY.register()
class EmbedMask(nn.Module, MetaArch):
    backbone: Backbone
    proposal_generator: EmbedMaskFCOS
    input_spec: InputSpec
    target_spec: TargetSpec
    num_classes: int
    proposal_from_positives: bool = False
    mask_loss_weight: float = 0.5
    freeze_at: int = 2
    mask_threshold: float = 0.5
    kernels: str | None = None
    precision: str = "highest"
    checkpoint_adapter: ClassVar[str] = "adelaidet"

    @classmethod
    def from_config(cls, cfg) -> EmbedMask:
        if cfg.MODEL.PROPOSAL_GENERATOR.NAME != "FCOS":
            raise UserError(f"MODEL.PROPOSAL_GENERATOR.NAME {cfg.MODEL.PROPOSAL_GENERATOR.NAME!r}: EmbedMask is "
                            "built on 'FCOS'")
        if not cfg.INPUT.HFLIP_TRAIN:
            raise UserError("INPUT.HFLIP_TRAIN False: EmbedMask trains with detectron2's mapper, whose flip is "
                            "INPUT.RANDOM_FLIP (set INPUT.RANDOM_FLIP none instead)")
        if cfg.INPUT.MASK_FORMAT != "bitmask":
            raise UserError(f"INPUT.MASK_FORMAT {cfg.INPUT.MASK_FORMAT!r}: EmbedMask's mask targets are bitmasks "
                            "(upstream's configs set 'bitmask')")
        kernels = kernels_from_config(cfg)
        backbone = build_backbone(cfg)
        e = cfg.MODEL.EMBEDMASK
        fcos = EmbedMaskFCOS(**fcos_kwargs(cfg, backbone.output_shape(), kernels), embed_dim=int(e.EMBED_DIM),
                             box_to_margin_scale=float(e.BOX_TO_MARGIN_SCALE), name="proposal_generator")
        if fcos.strides[0] != 8:
            raise UserError(f"MODEL.FCOS.IN_FEATURES {list(fcos.in_features)}: EmbedMask's pixel embedding is on the "
                            f"first level and must have stride 8 (it has {fcos.strides[0]})")
        input_spec = InputSpec.from_config(cfg, backbone.size_divisibility)
        return cls(backbone, fcos, input_spec, TargetSpec(bitmask_stride=1), num_classes=fcos.num_classes,
                   proposal_from_positives=e.PROPOSAL_FROM == "positive", mask_loss_weight=float(e.MASK_LOSS_WEIGHT),
                   freeze_at=int(cfg.MODEL.BACKBONE.FREEZE_AT), kernels=kernels, precision=precision_from_config(cfg))

    # -- inference ---------------------------------------------------------------------------------

    def extract_features(self, images: jax.Array, image_hw: jax.Array) -> dict[str, jax.Array]:
        with jax.default_matmul_precision(self.precision):
            return self.backbone(self.input_spec.normalize(images, image_hw))

    def __call__(self, images: jax.Array, image_hw: jax.Array) -> dict[str, jax.Array]:
        """images (N, Hp, Wp, 3) -> detections (N, D, ...) in resized-image pixels (boxes unclipped): boxes,
        scores, classes, valid, level, location, flat_location, proposal_embeds (N, D, E), margins (N, D) and
        mask_probs_s4 (N, D, Hp/4, Wp/4), the box-masked probabilities at stride 4."""
        features = self.extract_features(images, image_hw)
        with jax.default_matmul_precision(self.precision):
            fcos = self.proposal_generator
            head = fcos.head_outputs(features)
            det = fcos.predict(head)
            embeds, margins = fcos.fcos_head.proposals_at(head, det["level"], det["location"])
            pixel = upsample_bilinear(head["pixel_embed"], 2)  # (N, H4, W4, E)
            h4, w4 = pixel.shape[1:3]

            def masks(p, e, m, boxes):
                box = box_masks(boxes / 4.0, h4, w4, x_max=float(w4), y_max=float(h4))
                return mask_probabilities(p, e, m) * box

            probs = jax.vmap(masks)(pixel, embeds, margins, det["boxes"])
        return dict(det, proposal_embeds=embeds, margins=margins, mask_probs_s4=probs)

    @nn.nowrap
    def postprocess(self, outputs: dict[str, jax.Array], image_hw: jax.Array, output_hw: jax.Array,
                    canvas_hw: tuple[int, int]) -> dict[str, jax.Array]:
        """Boxes scaled to the original size and clipped (empty ones dropped); each mask resized from stride 4 to
        the original image and thresholded, as the repo's postprocessing.py (no pasting into the box)."""
        def one(det, hw, ohw):
            out = detector_postprocess({k: det[k] for k in ("boxes", "scores", "classes", "valid")}, hw, ohw,
                                       canvas_hw)
            out["masks"] = output_masks(det["mask_probs_s4"], hw, ohw, canvas_hw, self.mask_threshold)
            return out

        return jax.vmap(one)(outputs, image_hw, output_hw)

    # -- training ----------------------------------------------------------------------------------

    def losses(self, key: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """FCOS losses and the embedding mask loss (module docstring of jaxseg.models.embedmask.loss)."""
        features = self.extract_features(batch["images"], batch["image_hw"])
        with jax.default_matmul_precision(self.precision):
            fcos = self.proposal_generator
            head = fcos.head_outputs(features)
            losses, assigned = fcos.losses(head, batch)
            losses["loss_mask"] = self.mask_loss(head, assigned, batch) * self.mask_loss_weight
        return losses

    @nn.nowrap
    def level_offsets(self, head: dict[str, list[jax.Array]]) -> np.ndarray:
        hw = self.proposal_generator.feature_hw(head)
        return np.concatenate([[0], np.cumsum([h * w for h, w in hw])]).astype(np.int32)

    def predicted_boxes(self, head: dict[str, list[jax.Array]]) -> jax.Array:
        """(N, L, 4) every location's predicted box in pixels (all levels, AdelaiDet's location order)."""
        fcos = self.proposal_generator
        hw = fcos.feature_hw(head)
        locations = jnp.asarray(fcos_locations(hw, fcos.strides))  # (L, 2)
        stride = jnp.asarray(np.asarray(fcos.strides, np.float32)[location_levels(hw)])  # (L,)
        r = flatten_levels(head["reg"]) * stride[None, :, None]
        xy = locations[None]
        return jnp.concatenate([xy - r[..., :2], xy + r[..., 2:]], axis=-1)

    def mask_loss_terms(self, head: dict[str, list[jax.Array]], assigned: dict[str, jax.Array],
                        batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Per image and GT slot (N, G): the mask proposal (flat location), has_proposal, its embedding, margin and
        predicted box, and the Lovász hinge; the stride-4 pixel embedding (N, H4, W4, E) and mask targets."""
        pick = functools.partial(mask_proposals, from_positives=self.proposal_from_positives)
        boxes = self.predicted_boxes(head)
        flat, has = jax.vmap(pick)(boxes, assigned["gt_index"], assigned["positive"], batch["gt_boxes"],
                                   batch["gt_valid"])
        offsets = jnp.asarray(self.level_offsets(head))
        level = (jnp.searchsorted(offsets, flat, side="right") - 1).astype(jnp.int32)
        embeds, margins = self.proposal_generator.fcos_head.proposals_at(head, level, flat - offsets[level])
        pixel = upsample_bilinear(head["pixel_embed"], 2)  # (N, H4, W4, E)
        h4, w4 = pixel.shape[1:3]
        targets = jax.vmap(lambda m: mask_targets_s4(m, h4, w4))(batch["gt_bitmasks"])
        per_target = jax.vmap(target_losses)(pixel, embeds, margins, batch["gt_boxes"], targets)
        return {"proposal": flat, "has_proposal": has, "embeds": embeds, "margins": margins,
                "boxes": jnp.take_along_axis(boxes, flat[..., None], axis=1), "pixel_embed": pixel,
                "targets": targets, "per_target": per_target}

    def mask_loss(self, head: dict[str, list[jax.Array]], assigned: dict[str, jax.Array],
                  batch: dict[str, jax.Array]) -> jax.Array:
        t = self.mask_loss_terms(head, assigned, batch)
        return jax.vmap(image_mean)(t["per_target"], t["has_proposal"]).sum() / batch["images"].shape[0]

    @nn.nowrap
    def is_frozen(self, path: tuple[str, ...]) -> bool:
        return backbone_is_frozen(self.backbone, self.freeze_at, path)
