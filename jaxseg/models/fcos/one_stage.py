"""OneStageDetector (AdelaiDet): backbone + FPN + FCOS, boxes only (configs/FCOS-Detection). With MODEL.MASK_ON
(gakkiri/EmbedMask's configs, whose FCOS carries the embedding branches) the EmbedMask model is built instead."""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax

from jaxseg.data.input_spec import InputSpec
from jaxseg.data.target_spec import TargetSpec
from jaxseg.models.backbones.backbone import Backbone
from jaxseg.models.fcos.fcos import FCOS
from jaxseg.models.meta_arch import MetaArch, backbone_is_frozen, kernels_from_config, precision_from_config
from jaxseg.models.rcnn.postprocessing import detector_postprocess
from jaxseg.models.registry import META_ARCH_REGISTRY, PROPOSAL_GENERATOR_REGISTRY, build_backbone


@META_ARCH_REGISTRY.register()
class OneStageDetector(nn.Module, MetaArch):
    backbone: Backbone
    proposal_generator: FCOS
    input_spec: InputSpec
    target_spec: TargetSpec
    num_classes: int
    freeze_at: int = 2
    kernels: str | None = None
    precision: str = "highest"
    checkpoint_adapter: ClassVar[str] = "adelaidet"

    @classmethod
    def from_config(cls, cfg) -> OneStageDetector:
        if cfg.MODEL.MASK_ON:  # gakkiri/EmbedMask's configs: a OneStageDetector whose FCOS makes masks
            return META_ARCH_REGISTRY.get("EmbedMask").from_config(cfg)
        kernels = kernels_from_config(cfg)
        backbone = build_backbone(cfg)
        fcos = PROPOSAL_GENERATOR_REGISTRY.get(cfg.MODEL.PROPOSAL_GENERATOR.NAME)(cfg, backbone.output_shape(),
                                                                                 kernels)
        input_spec = InputSpec.from_config(cfg, backbone.size_divisibility, hflip_train=bool(cfg.INPUT.HFLIP_TRAIN))
        return cls(backbone, fcos, input_spec, TargetSpec(),
                   num_classes=fcos.num_classes, freeze_at=int(cfg.MODEL.BACKBONE.FREEZE_AT), kernels=kernels,
                   precision=precision_from_config(cfg))

    def __call__(self, images: jax.Array, image_hw: jax.Array) -> dict[str, jax.Array]:
        """images (N, Hp, Wp, 3) -> detections (N, D, ...) in resized-image pixels (boxes not clipped)."""
        with jax.default_matmul_precision(self.precision):
            features = self.backbone(self.input_spec.normalize(images, image_hw))
            return self.proposal_generator.predict(self.proposal_generator.head_outputs(features))

    @nn.nowrap
    def postprocess(self, outputs: dict[str, jax.Array], image_hw: jax.Array, output_hw: jax.Array,
                    canvas_hw: tuple[int, int]) -> dict[str, jax.Array]:
        return jax.vmap(lambda d, hw, ohw: detector_postprocess(d, hw, ohw, canvas_hw))(outputs, image_hw, output_hw)

    def losses(self, key: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        with jax.default_matmul_precision(self.precision):
            features = self.backbone(self.input_spec.normalize(batch["images"], batch["image_hw"]))
            fcos = self.proposal_generator
            return fcos.losses(fcos.head_outputs(features), batch)[0]

    @nn.nowrap
    def is_frozen(self, path: tuple[str, ...]) -> bool:
        return backbone_is_frozen(self.backbone, self.freeze_at, path)
