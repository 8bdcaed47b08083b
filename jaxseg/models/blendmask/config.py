"""BlendMask's config keys (AdelaiDet's MODEL.BLENDMASK.*, MODEL.BASIS_MODULE.*, MODEL.TOP_MODULE.*), AdelaiDet's
defaults."""

from __future__ import annotations

from jaxseg.config import CfgNode, add_config, register_unsupported


@add_config
def add_blendmask_config(cfg: CfgNode) -> None:
    cfg.MODEL.BLENDMASK = CfgNode({
        "ATTN_SIZE": 14,  # attentions per detection: NUM_BASES x ATTN_SIZE x ATTN_SIZE
        "TOP_INTERP": "bilinear",  # attention upsampling to BOTTOM_RESOLUTION: "bilinear" or "nearest"
        "BOTTOM_RESOLUTION": 56,  # the bases are ROIAligned at this size per detection
        "POOLER_TYPE": "ROIAlignV2",
        "POOLER_SAMPLING_RATIO": 1,
        "POOLER_SCALES": (0.25,),
        "INSTANCE_LOSS_WEIGHT": 1.0,
        "VISUALIZE": False,
    })
    cfg.MODEL.BASIS_MODULE = CfgNode({
        "NAME": "ProtoNet",
        "NUM_BASES": 4,
        "LOSS_ON": False,  # the auxiliary semantic loss on the thing classes (its target is built on the fly)
        "ANN_SET": "coco",
        "CONVS_DIM": 128,
        "IN_FEATURES": ["p3", "p4", "p5"],
        "NORM": "SyncBN",  # "SyncBN" or "BN": BatchNorm over the (global) batch
        "NUM_CONVS": 3,
        "COMMON_STRIDE": 8,  # stride of the semantic target
        "NUM_CLASSES": 80,
        "LOSS_WEIGHT": 0.3,
    })
    cfg.MODEL.TOP_MODULE = CfgNode({"NAME": "conv", "DIM": 16})  # read by AdelaiDet's OneStageDetector only


register_unsupported("MODEL.BASIS_MODULE.NAME", ["ProtoNet"])
register_unsupported("MODEL.BASIS_MODULE.NORM", ["SyncBN", "BN"], "the basis module is built with BatchNorm")
register_unsupported("MODEL.BLENDMASK.POOLER_TYPE", ["ROIAlignV2", "ROIAlign"])
register_unsupported("MODEL.BLENDMASK.TOP_INTERP", ["bilinear", "nearest"])
register_unsupported("MODEL.BLENDMASK.VISUALIZE", [False], "the basis visualisation output is not implemented")
register_unsupported("MODEL.BLENDMASK.POOLER_SCALES", [(0.25,)], "the bases are at stride 4")
