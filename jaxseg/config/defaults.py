"""detectron2's default config tree, key for key and value for value, plus the keys jaxseg adds.

`default_tree()` mirrors detectron2's `config/defaults.py` (192 keys), so detectron2's YAML files and
those of its projects load unchanged; `add_jaxseg_keys` adds jaxseg's own keys (docs/config_keys.md).
Whether jaxseg implements a detectron2 key's non-default values is `unsupported.py`'s business.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jaxseg.config.config import CfgNode

__all__ = ["CONFIG_VERSION", "add_jaxseg_keys", "default_tree"]

CONFIG_VERSION = 2  # detectron2's current config version; files of other versions are refused


def _model_defaults() -> dict[str, Any]:
    """MODEL.*: the meta-architecture, input normalization, and one group per component."""
    return {
        "LOAD_PROPOSALS": False,
        "MASK_ON": False,
        "KEYPOINT_ON": False,
        "DEVICE": "cuda",  # kept for detectron2 files; jaxseg picks the JAX backend itself
        "META_ARCHITECTURE": "GeneralizedRCNN",
        "WEIGHTS": "",  # a checkpoint path, as written by the user
        "PIXEL_MEAN": [103.530, 116.280, 123.675],  # per channel, in INPUT.FORMAT order (BGR)
        "PIXEL_STD": [1.0, 1.0, 1.0],
        # backbone: which builder, and how many leading stages stay frozen in training
        "BACKBONE": {"NAME": "build_resnet_backbone", "FREEZE_AT": 2},
        # feature pyramid on top of the backbone
        "FPN": {"IN_FEATURES": [], "OUT_CHANNELS": 256, "NORM": "", "FUSE_TYPE": "sum"},
        "PROPOSAL_GENERATOR": {"NAME": "RPN", "MIN_SIZE": 0},
        # anchors: one list of sizes / ratios per feature map (or one list shared by all)
        "ANCHOR_GENERATOR": {
            "NAME": "DefaultAnchorGenerator",
            "SIZES": [[32, 64, 128, 256, 512]],
            "ASPECT_RATIOS": [[0.5, 1.0, 2.0]],
            "ANGLES": [[-90, 0, 90]],
            "OFFSET": 0.0,
        },
        "RPN": _rpn_defaults(),
        "ROI_HEADS": _roi_heads_defaults(),
        "ROI_BOX_HEAD": _roi_box_head_defaults(),
        # cascade: one box-regression weight tuple and one IoU threshold per stage
        "ROI_BOX_CASCADE_HEAD": {
            "BBOX_REG_WEIGHTS": ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0)),
            "IOUS": (0.5, 0.6, 0.7),
        },
        "ROI_MASK_HEAD": {
            "NAME": "MaskRCNNConvUpsampleHead",
            "POOLER_RESOLUTION": 14,
            "POOLER_SAMPLING_RATIO": 0,
            "NUM_CONV": 0,
            "CONV_DIM": 256,
            "NORM": "",
            "CLS_AGNOSTIC_MASK": False,
            "POOLER_TYPE": "ROIAlignV2",
        },
        "ROI_KEYPOINT_HEAD": _roi_keypoint_head_defaults(),
        # semantic segmentation branch (Panoptic FPN)
        "SEM_SEG_HEAD": {
            "NAME": "SemSegFPNHead",
            "IN_FEATURES": ["p2", "p3", "p4", "p5"],
            "IGNORE_VALUE": 255,
            "NUM_CLASSES": 54,
            "CONVS_DIM": 128,
            "COMMON_STRIDE": 4,
            "NORM": "GN",
            "LOSS_WEIGHT": 1.0,
        },
        "PANOPTIC_FPN": {
            "INSTANCE_LOSS_WEIGHT": 1.0,
            "COMBINE": {
                "ENABLED": True,
                "OVERLAP_THRESH": 0.5,
                "STUFF_AREA_LIMIT": 4096,
                "INSTANCES_CONFIDENCE_THRESH": 0.5,
            },
        },
        "RETINANET": _retinanet_defaults(),
        "RESNETS": _resnets_defaults(),
    }


def _rpn_defaults() -> dict[str, Any]:
    """MODEL.RPN: head, anchor matching and sampling, loss, and proposal selection (top-k per level)."""
    return {
        "HEAD_NAME": "StandardRPNHead",
        "IN_FEATURES": ["res4"],
        "BOUNDARY_THRESH": -1,  # -1 keeps anchors that cross the image border
        "IOU_THRESHOLDS": [0.3, 0.7],
        "IOU_LABELS": [0, -1, 1],
        "BATCH_SIZE_PER_IMAGE": 256,
        "POSITIVE_FRACTION": 0.5,
        "BBOX_REG_LOSS_TYPE": "smooth_l1",
        "BBOX_REG_LOSS_WEIGHT": 1.0,
        "BBOX_REG_WEIGHTS": (1.0, 1.0, 1.0, 1.0),
        "SMOOTH_L1_BETA": 0.0,
        "LOSS_WEIGHT": 1.0,
        "PRE_NMS_TOPK_TRAIN": 12000,
        "PRE_NMS_TOPK_TEST": 6000,
        "POST_NMS_TOPK_TRAIN": 2000,
        "POST_NMS_TOPK_TEST": 1000,
        "NMS_THRESH": 0.7,
        "CONV_DIMS": [-1],  # -1: as many channels as the input
    }


def _roi_heads_defaults() -> dict[str, Any]:
    """MODEL.ROI_HEADS: proposal-to-ground-truth matching, sampling, and test-time filtering."""
    return {
        "NAME": "Res5ROIHeads",
        "NUM_CLASSES": 80,
        "IN_FEATURES": ["res4"],
        "IOU_THRESHOLDS": [0.5],
        "IOU_LABELS": [0, 1],
        "BATCH_SIZE_PER_IMAGE": 512,
        "POSITIVE_FRACTION": 0.25,
        "SCORE_THRESH_TEST": 0.05,
        "NMS_THRESH_TEST": 0.5,
        "PROPOSAL_APPEND_GT": True,
    }


def _roi_box_head_defaults() -> dict[str, Any]:
    """MODEL.ROI_BOX_HEAD: pooling, conv/fc tower, and box-regression loss of the box branch."""
    return {
        "NAME": "",
        "BBOX_REG_LOSS_TYPE": "smooth_l1",
        "BBOX_REG_LOSS_WEIGHT": 1.0,
        "BBOX_REG_WEIGHTS": (10.0, 10.0, 5.0, 5.0),
        "SMOOTH_L1_BETA": 0.0,
        "POOLER_RESOLUTION": 14,
        "POOLER_SAMPLING_RATIO": 0,
        "POOLER_TYPE": "ROIAlignV2",
        "NUM_FC": 0,
        "FC_DIM": 1024,
        "NUM_CONV": 0,
        "CONV_DIM": 256,
        "NORM": "",
        "CLS_AGNOSTIC_BBOX_REG": False,
        "TRAIN_ON_PRED_BOXES": False,
        # federated loss and sigmoid cross-entropy (LVIS)
        "USE_FED_LOSS": False,
        "USE_SIGMOID_CE": False,
        "FED_LOSS_FREQ_WEIGHT_POWER": 0.5,
        "FED_LOSS_NUM_CLASSES": 50,
    }


def _roi_keypoint_head_defaults() -> dict[str, Any]:
    """MODEL.ROI_KEYPOINT_HEAD: the keypoint branch (COCO person keypoints by default)."""
    return {
        "NAME": "KRCNNConvDeconvUpsampleHead",
        "POOLER_RESOLUTION": 14,
        "POOLER_SAMPLING_RATIO": 0,
        "CONV_DIMS": (512,) * 8,
        "NUM_KEYPOINTS": 17,
        "MIN_KEYPOINTS_PER_IMAGE": 1,
        "NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS": True,
        "LOSS_WEIGHT": 1.0,
        "POOLER_TYPE": "ROIAlignV2",
    }


def _retinanet_defaults() -> dict[str, Any]:
    """MODEL.RETINANET: the one-stage detector's head, matching, focal loss and test-time filtering."""
    return {
        "NUM_CLASSES": 80,
        "IN_FEATURES": ["p3", "p4", "p5", "p6", "p7"],
        "NUM_CONVS": 4,
        "IOU_THRESHOLDS": [0.4, 0.5],
        "IOU_LABELS": [0, -1, 1],
        "PRIOR_PROB": 0.01,
        "SCORE_THRESH_TEST": 0.05,
        "TOPK_CANDIDATES_TEST": 1000,
        "NMS_THRESH_TEST": 0.5,
        "BBOX_REG_WEIGHTS": (1.0, 1.0, 1.0, 1.0),
        "FOCAL_LOSS_GAMMA": 2.0,
        "FOCAL_LOSS_ALPHA": 0.25,
        "SMOOTH_L1_LOSS_BETA": 0.1,
        "BBOX_REG_LOSS_TYPE": "smooth_l1",
        "NORM": "",
    }


def _resnets_defaults() -> dict[str, Any]:
    """MODEL.RESNETS: depth, width, grouping, norm, stride placement and deformable stages."""
    return {
        "DEPTH": 50,
        "OUT_FEATURES": ["res4"],
        "NUM_GROUPS": 1,
        "NORM": "FrozenBN",
        "WIDTH_PER_GROUP": 64,
        "STRIDE_IN_1X1": True,  # MSRA weights stride in the 1x1 conv; torchvision ones in the 3x3
        "RES5_DILATION": 1,
        "RES2_OUT_CHANNELS": 256,
        "STEM_OUT_CHANNELS": 64,
        "DEFORM_ON_PER_STAGE": [False, False, False, False],  # res2..res5
        "DEFORM_MODULATED": False,
        "DEFORM_NUM_GROUPS": 1,
    }


def _input_defaults() -> dict[str, Any]:
    """INPUT.*: resizing, flipping and cropping, and the pixel and mask formats."""
    return {
        "MIN_SIZE_TRAIN": (800,),
        "MIN_SIZE_TRAIN_SAMPLING": "choice",
        "MAX_SIZE_TRAIN": 1333,
        "MIN_SIZE_TEST": 800,
        "MAX_SIZE_TEST": 1333,
        "RANDOM_FLIP": "horizontal",
        "CROP": {"ENABLED": False, "TYPE": "relative_range", "SIZE": [0.9, 0.9]},
        "FORMAT": "BGR",
        "MASK_FORMAT": "polygon",
    }


def _solver_defaults() -> dict[str, Any]:
    """SOLVER.*: learning-rate schedule, SGD settings, batch size, checkpointing, clipping, AMP."""
    return {
        "LR_SCHEDULER_NAME": "WarmupMultiStepLR",
        "MAX_ITER": 40000,
        "BASE_LR": 0.001,
        "BASE_LR_END": 0.0,
        "MOMENTUM": 0.9,
        "NESTEROV": False,
        "WEIGHT_DECAY": 0.0001,
        "WEIGHT_DECAY_NORM": 0.0,
        "GAMMA": 0.1,
        "STEPS": (30000,),
        "NUM_DECAYS": 3,
        "WARMUP_FACTOR": 0.001,
        "WARMUP_ITERS": 1000,
        "WARMUP_METHOD": "linear",
        "RESCALE_INTERVAL": False,
        "CHECKPOINT_PERIOD": 5000,
        "IMS_PER_BATCH": 16,  # over all devices
        "REFERENCE_WORLD_SIZE": 0,
        "BIAS_LR_FACTOR": 1.0,
        "WEIGHT_DECAY_BIAS": None,  # None: same as WEIGHT_DECAY
        "CLIP_GRADIENTS": {"ENABLED": False, "CLIP_TYPE": "value", "CLIP_VALUE": 1.0, "NORM_TYPE": 2.0},
        "AMP": {"ENABLED": False},
    }


def _test_defaults() -> dict[str, Any]:
    """TEST.*: evaluation period, detections kept per image, test-time augmentation, precise BN."""
    return {
        "EXPECTED_RESULTS": [],
        "EVAL_PERIOD": 0,
        "KEYPOINT_OKS_SIGMAS": [],
        "DETECTIONS_PER_IMAGE": 100,
        "AUG": {
            "ENABLED": False,
            "MIN_SIZES": (400, 500, 600, 700, 800, 900, 1000, 1100, 1200),
            "MAX_SIZE": 4000,
            "FLIP": True,
        },
        "PRECISE_BN": {"ENABLED": False, "NUM_ITER": 200},
    }


def default_tree() -> dict[str, Any]:
    """detectron2's whole default tree as nested dicts (a fresh copy each call)."""
    return {
        "VERSION": CONFIG_VERSION,
        "MODEL": _model_defaults(),
        "INPUT": _input_defaults(),
        # dataset names (registered in jaxseg.data) and optional precomputed proposal files
        "DATASETS": {
            "TRAIN": (),
            "PROPOSAL_FILES_TRAIN": (),
            "PRECOMPUTED_PROPOSAL_TOPK_TRAIN": 2000,
            "TEST": (),
            "PROPOSAL_FILES_TEST": (),
            "PRECOMPUTED_PROPOSAL_TOPK_TEST": 1000,
        },
        # data loading: workers, aspect-ratio batching, sampling and filtering
        "DATALOADER": {
            "NUM_WORKERS": 4,
            "ASPECT_RATIO_GROUPING": True,
            "SAMPLER_TRAIN": "TrainingSampler",
            "REPEAT_THRESHOLD": 0.0,
            "REPEAT_SQRT": True,
            "FILTER_EMPTY_ANNOTATIONS": True,
        },
        "SOLVER": _solver_defaults(),
        "TEST": _test_defaults(),
        # run-level settings
        "OUTPUT_DIR": "./output",
        "SEED": -1,  # negative: a fresh seed per run
        "CUDNN_BENCHMARK": False,
        "FLOAT32_PRECISION": "",  # "" leaves the backend's matmul precision alone
        "VIS_PERIOD": 0,
        "GLOBAL": {"HACK": 1.0},
    }


def add_jaxseg_keys(cfg: CfgNode) -> None:
    """Add the keys jaxseg adds to detectron2's tree (detectron2 has no equivalent of them)."""
    # training loop
    cfg.SOLVER.LOG_PERIOD = 20  # iterations between metrics.json / TensorBoard entries (1: every step)
    # model placement and kernels
    cfg.MODEL.FSDP = False  # shard parameters and optimizer state over the `data` axis
    cfg.MODEL.KERNELS = ""  # force a kernel implementation: "" (automatic), "xla", "ffi" or "triton"
    # static shapes of the training batch (XLA compiles one program per shape)
    cfg.DATALOADER.MAX_GT_INSTANCES = 100  # instances per training image (more are dropped, with a warning)
    # padded test-time input sizes: ((height, width), ...). An image is padded to the smallest bucket that
    # holds it, else each side to the backbone's size divisibility; fewer compiles for more padding.
    # Read by jaxseg.data.input_spec.InputSpec.from_config; () pads to the size divisibility only.
    cfg.TEST.BUCKETS = ()
