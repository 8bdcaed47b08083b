"""FCOS (AdelaiDet): the head, its decoding and training targets, and the box-only OneStageDetector.

Importing this package registers AdelaiDet's config keys, the "FCOS" proposal generator, the
"build_fcos_resnet_fpn_backbone" backbone and the "OneStageDetector" meta-architecture.
"""

from jaxseg.models.fcos import config, fcos, one_stage  # noqa: F401
