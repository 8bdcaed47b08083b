"""AdelaiDet's config keys: MODEL.FCOS.* and the few keys AdelaiDet adds to detectron2's tree.

Values are AdelaiDet's defaults (adet/config/defaults.py), so AdelaiDet's YAML files load unchanged. The keys
of AdelaiDet's other families (SOLOv2, CondInst, BAText, MEInst, ...) are not added: a file that sets them is
refused by the merge as an unknown key, which names it.
"""

from __future__ import annotations

from jaxseg.config import CfgNode, add_config, register_unsupported


@add_config
def add_adelaidet_config(cfg: CfgNode) -> None:
    """AdelaiDet's additions outside its family groups, and MODEL.FCOS."""
    cfg.MODEL.MOBILENET = False
    cfg.MODEL.BACKBONE.ANTI_ALIAS = False
    cfg.MODEL.RESNETS.DEFORM_INTERVAL = 1
    cfg.INPUT.HFLIP_TRAIN = True  # AdelaiDet's mapper flips horizontally when True (INPUT.RANDOM_FLIP unused)
    cfg.INPUT.CROP.CROP_INSTANCE = True
    cfg.INPUT.IS_ROTATE = False
    cfg.MODEL.FCOS = CfgNode({
        "NUM_CLASSES": 80,  # foreground classes
        "IN_FEATURES": ["p3", "p4", "p5", "p6", "p7"],
        "FPN_STRIDES": [8, 16, 32, 64, 128],
        "PRIOR_PROB": 0.01,  # initial foreground probability (bias of cls_logits)
        "INFERENCE_TH_TRAIN": 0.05,
        "INFERENCE_TH_TEST": 0.05,  # candidate threshold on the (centerness-weighted) class probability
        "NMS_TH": 0.6,
        "PRE_NMS_TOPK_TRAIN": 1000,
        "PRE_NMS_TOPK_TEST": 1000,  # candidates per level
        "POST_NMS_TOPK_TRAIN": 100,
        "POST_NMS_TOPK_TEST": 100,  # detections per image (ties at the cut are all kept)
        "TOP_LEVELS": 2,  # FPN levels above p5: 2 = p6, p7; 1 = p6; 0 = none
        "NORM": "GN",  # tower norm: "GN" or "none"
        "USE_SCALE": True,  # a learned scalar per level on the box regression
        "BOX_QUALITY": "ctrness",
        "THRESH_WITH_CTR": False,  # threshold cls * ctr (True) or cls alone (False)
        "LOSS_ALPHA": 0.25,
        "LOSS_GAMMA": 2.0,
        "LOSS_NORMALIZER_CLS": "fg",
        "LOSS_WEIGHT_CLS": 1.0,
        "SIZES_OF_INTEREST": [64, 128, 256, 512],
        "USE_RELU": True,  # read by no FCOS code upstream either
        "USE_DEFORMABLE": False,
        "NUM_CLS_CONVS": 4,
        "NUM_BOX_CONVS": 4,
        "NUM_SHARE_CONVS": 0,
        "CENTER_SAMPLE": True,
        "POS_RADIUS": 1.5,
        "LOC_LOSS_TYPE": "giou",
        "YIELD_PROPOSAL": False,
        "YIELD_BOX_FEATURES": False,
    })


register_unsupported("MODEL.MOBILENET", [False], "the MobileNet backbone is not implemented")
register_unsupported("MODEL.BACKBONE.ANTI_ALIAS", [False], "anti-aliased (blur-pool) ResNets are not implemented")
register_unsupported("INPUT.IS_ROTATE", [False], "rotation augmentation is not implemented")
register_unsupported("MODEL.FCOS.NORM", ["GN", "none"], "per-level BatchNorm heads are not implemented yet")
register_unsupported("MODEL.FCOS.USE_DEFORMABLE", [False], "deformable tower convolutions are not implemented")
register_unsupported("MODEL.FCOS.BOX_QUALITY", ["ctrness"], "the IoU box-quality branch is not implemented")
register_unsupported("MODEL.FCOS.LOSS_NORMALIZER_CLS", ["fg"], "the 'moving_fg' and 'all' normalisers are not "
                     "implemented")
register_unsupported("MODEL.FCOS.LOC_LOSS_TYPE", ["giou", "iou", "linear_iou"])
register_unsupported("MODEL.FCOS.YIELD_PROPOSAL", [False], "FCOS as an R-CNN proposal generator is not "
                     "implemented")
register_unsupported("MODEL.FCOS.YIELD_BOX_FEATURES", [False])
