"""TensorMask's config keys (detectron2 projects/TensorMask: MODEL.TENSOR_MASK.*), with upstream's defaults."""

from __future__ import annotations

from jaxseg.config import CfgNode, add_config


@add_config
def add_tensormask_config(cfg: CfgNode) -> None:
    cfg.MODEL.TENSOR_MASK = CfgNode({
        "IN_FEATURES": ["p2", "p3", "p4", "p5", "p6", "p7"],
        "NUM_CONVS": 4,  # convolutions of each tower
        "NUM_CLASSES": 80,
        "CLS_CHANNELS": 256,
        "SCORE_THRESH_TEST": 0.05,
        "TOPK_CANDIDATES_TEST": 6000,  # candidates over all levels jointly
        "NMS_THRESH_TEST": 0.5,
        "BBOX_CHANNELS": 128,
        "BBOX_REG_WEIGHTS": (1.5, 1.5, 0.75, 0.75),
        "FOCAL_LOSS_GAMMA": 3.0,
        "FOCAL_LOSS_ALPHA": 0.3,
        "MASK_CHANNELS": 128,
        "MASK_LOSS_WEIGHT": 2.0,
        "POSITIVE_WEIGHT": 1.5,  # weight of the foreground pixels in the mask loss
        "ALIGNED_ON": False,  # predict the aligned representation (SwapAlign2Nat to the natural one)
        "BIPYRAMID_ON": False,  # every level's masks at p2 resolution
    })
