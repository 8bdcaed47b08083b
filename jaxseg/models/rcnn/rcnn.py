"""GeneralizedRCNN (Mask R-CNN, Faster R-CNN): normalize -> backbone (ResNet+FPN) -> RPN -> ROI heads.

Inference is the two stages of the model interface (jaxseg.models.meta_arch): `__call__` gives the fixed-size
detections and, with a mask head, each detection's mask probabilities (N, D, M, M) in its box; `postprocess`
scales the boxes to the original image and pastes the masks into a canvas. The other methods expose the
stages for parity tests and for the training step.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax

from jaxseg.data.input_spec import InputSpec
from jaxseg.data.target_spec import TargetSpec
from jaxseg.models.backbones.backbone import Backbone
from jaxseg.models.meta_arch import MetaArch, backbone_is_frozen, kernels_from_config, precision_from_config
from jaxseg.models.rcnn.postprocessing import detector_postprocess
from jaxseg.models.rcnn.roi_heads import StandardROIHeads
from jaxseg.models.rcnn.rpn import RPN
from jaxseg.models.registry import (
    META_ARCH_REGISTRY,
    PROPOSAL_GENERATOR_REGISTRY,
    ROI_HEADS_REGISTRY,
    build_backbone,
)


def mask_target_spec(cfg) -> TargetSpec:
    """The ground truth Mask R-CNN trains on: boxes and classes, plus with MODEL.MASK_ON the instances'
    polygons (INPUT.MASK_FORMAT polygon) or their full-image bitmasks (bitmask), as detectron2."""
    if not cfg.MODEL.MASK_ON:
        return TargetSpec()
    return TargetSpec(polygons=True) if cfg.INPUT.MASK_FORMAT == "polygon" else TargetSpec(bitmask_stride=1)


@META_ARCH_REGISTRY.register()
class GeneralizedRCNN(nn.Module, MetaArch):
    backbone: Backbone
    proposal_generator: RPN
    roi_heads: StandardROIHeads
    input_spec: InputSpec
    target_spec: TargetSpec
    num_classes: int
    freeze_at: int = 2
    mask_threshold: float = 0.5
    kernels: str | None = None
    precision: str = "highest"
    checkpoint_adapter: ClassVar[str] = "detectron2"

    @classmethod
    def from_config(cls, cfg) -> GeneralizedRCNN:
        """Config values -> GeneralizedRCNN (read once here; the modules only see plain values)."""
        kernels = kernels_from_config(cfg)
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        rpn = PROPOSAL_GENERATOR_REGISTRY.get(cfg.MODEL.PROPOSAL_GENERATOR.NAME)(cfg, shapes, kernels)
        roi_heads = ROI_HEADS_REGISTRY.get(cfg.MODEL.ROI_HEADS.NAME)(cfg, shapes, kernels)
        return cls(
            backbone, rpn, roi_heads,
            input_spec=InputSpec.from_config(cfg, backbone.size_divisibility),
            target_spec=mask_target_spec(cfg),
            num_classes=int(cfg.MODEL.ROI_HEADS.NUM_CLASSES), freeze_at=int(cfg.MODEL.BACKBONE.FREEZE_AT),
            kernels=kernels, precision=precision_from_config(cfg))

    def preprocess(self, images: jax.Array, image_hw: jax.Array) -> jax.Array:
        """(N, Hp, Wp, 3) padded images in the model's channel order (any dtype) -> normalized float32."""
        return self.input_spec.normalize(images, image_hw)

    def extract_features(self, images: jax.Array, image_hw: jax.Array) -> dict[str, jax.Array]:
        with jax.default_matmul_precision(self.precision):
            return self.backbone(self.preprocess(images, image_hw))

    def __call__(self, images: jax.Array, image_hw: jax.Array) -> dict[str, jax.Array]:
        """images (N, Hp, Wp, 3) resized + padded; image_hw (N, 2) resized sizes.

        Returns per-image detections (N, D, ...) in resized-image pixels: boxes, scores, classes, valid,
        proposal_index and, with a mask head, mask_probs (N, D, M, M) of each box's class.
        """
        features = self.extract_features(images, image_hw)
        with jax.default_matmul_precision(self.precision):
            proposals = self.proposal_generator(features, image_hw)
            return self.roi_heads(features, proposals, image_hw)

    @nn.nowrap
    def postprocess(self, outputs: dict[str, jax.Array], image_hw: jax.Array, output_hw: jax.Array,
                    canvas_hw: tuple[int, int]) -> dict[str, jax.Array]:
        """Detections at the original sizes output_hw (N, 2); masks (N, D, Hc, Wc) bool on a canvas_hw canvas
        (crop to output_hw on the host). Uses no variables."""
        post = functools.partial(detector_postprocess, canvas_hw=canvas_hw, mask_threshold=self.mask_threshold,
                                 kernels=self.kernels)
        return jax.vmap(post)(outputs, image_hw, output_hw)

    def losses(self, key: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Training losses of a batch: images, image_hw, gt_boxes (N, G, 4), gt_classes (N, G), gt_valid (N, G)
        and, with a mask head, the polygons (INPUT.MASK_FORMAT polygon) or full-image bitmasks (bitmask)."""
        k_rpn, k_roi = jax.random.split(key)
        features = self.extract_features(batch["images"], batch["image_hw"])
        with jax.default_matmul_precision(self.precision):
            rpn_losses, proposals = self.proposal_generator.losses(k_rpn, features, batch["image_hw"], batch)
            return {**rpn_losses, **self.roi_heads.losses(k_roi, features, proposals, batch)}

    @nn.nowrap
    def is_frozen(self, path: tuple[str, ...]) -> bool:
        """FREEZE_AT: the first `freeze_at` stages the backbone declares (stem, res2, ...) stay fixed."""
        return backbone_is_frozen(self.backbone, self.freeze_at, path)

    @nn.nowrap
    def class_names(self) -> Any:
        return None
