"""GeneralizedRCNN (Mask R-CNN): normalize -> backbone (ResNet+FPN) -> RPN -> ROI heads -> postprocess.

The whole test-time path is one pure function of (variables, padded images, sizes): `__call__`.
The other methods expose the stages for parity tests and for the training step.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models.backbones.fpn import FPN, build_resnet_fpn_backbone
from jaxseg.models.postprocessing import detector_postprocess
from jaxseg.models.roi_heads import StandardROIHeads, build_standard_roi_heads
from jaxseg.models.rpn import RPN, build_rpn


class GeneralizedRCNN(nn.Module):
    backbone: FPN
    proposal_generator: RPN
    roi_heads: StandardROIHeads
    pixel_mean: tuple[float, ...]
    pixel_std: tuple[float, ...]
    mask_threshold: float = 0.5

    def preprocess(self, images: jax.Array, image_hw: jax.Array) -> jax.Array:
        """(N, Hp, Wp, 3) padded images in the model's channel order (any dtype) -> normalized float32,
        zero outside each image's (h, w), as detectron2 pads after normalization."""
        x = (images.astype(jnp.float32) - jnp.asarray(self.pixel_mean, jnp.float32)) / jnp.asarray(
            self.pixel_std, jnp.float32)
        rows = jnp.arange(x.shape[1])[None, :, None] < image_hw[:, 0, None, None]
        cols = jnp.arange(x.shape[2])[None, None, :] < image_hw[:, 1, None, None]
        return jnp.where((rows & cols)[..., None], x, 0.0)

    def extract_features(self, images: jax.Array, image_hw: jax.Array) -> dict[str, jax.Array]:
        return self.backbone(self.preprocess(images, image_hw))

    def __call__(self, images: jax.Array, image_hw: jax.Array, output_hw: jax.Array,
                 canvas_hw: tuple[int, int] | None = None) -> dict[str, jax.Array]:
        """images (N, Hp, Wp, 3) resized + padded; image_hw (N, 2) resized sizes; output_hw (N, 2) original sizes.

        Returns per-image detections (N, D, ...): boxes in output coords, scores, classes, valid and, with a
        mask head, `masks` (N, D, Hc, Wc) bool pasted into a canvas_hw canvas (crop to output_hw on the host).
        """
        features = self.extract_features(images, image_hw)
        proposals = self.proposal_generator(features, image_hw)
        det = self.roi_heads(features, proposals, image_hw)
        if canvas_hw is None:
            return det
        post = functools.partial(detector_postprocess, canvas_hw=canvas_hw, mask_threshold=self.mask_threshold)
        return jax.vmap(post)(det, image_hw, output_hw)


    def losses(self, key: jax.Array, images: jax.Array, image_hw: jax.Array,
               targets: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Training losses of a batch. targets: gt_boxes (N, G, 4), gt_classes (N, G), gt_valid (N, G),
        gt_masks (N, G, S, S) box-aligned."""
        k_rpn, k_roi = jax.random.split(key)
        features = self.extract_features(images, image_hw)
        rpn_losses, proposals = self.proposal_generator.losses(k_rpn, features, image_hw, targets)
        return {**rpn_losses, **self.roi_heads.losses(k_roi, features, proposals, targets)}


def build_mask_rcnn(cfg) -> GeneralizedRCNN:
    """Config values -> GeneralizedRCNN (read once here; the modules only see plain values)."""
    if cfg.MODEL.BACKBONE.NAME != "build_resnet_fpn_backbone":
        raise ValueError(f"MODEL.BACKBONE.NAME {cfg.MODEL.BACKBONE.NAME!r} is not supported "
                         "(build_resnet_fpn_backbone)")
    if cfg.MODEL.PROPOSAL_GENERATOR.NAME != "RPN":
        raise ValueError(f"MODEL.PROPOSAL_GENERATOR.NAME {cfg.MODEL.PROPOSAL_GENERATOR.NAME!r} is not supported")
    backbone = build_resnet_fpn_backbone(cfg)
    level_strides = {f"p{k}": 2 ** k for k in range(2, 8)}
    rpn = build_rpn(cfg, [level_strides[f] for f in cfg.MODEL.RPN.IN_FEATURES])
    roi_heads = build_standard_roi_heads(cfg, [level_strides[f] for f in cfg.MODEL.ROI_HEADS.IN_FEATURES])
    mean, std = tuple(cfg.MODEL.PIXEL_MEAN), tuple(cfg.MODEL.PIXEL_STD)
    return GeneralizedRCNN(backbone, rpn, roi_heads, mean, std)
