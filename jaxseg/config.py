"""Configuration: detectron2's key names and defaults, YAML files with `_BASE_`, `KEY VALUE` overrides.

A config is a tree of `CfgNode`s (a yacs node: a dict with attribute access that can be frozen). The
defaults below mirror detectron2's `config/defaults.py` key for key and value for value, so the YAML
files of detectron2 and its projects load unchanged. Mistakes in a file or on the command line (an
unknown key, a value of the wrong type, a missing or malformed file) raise `UserError` naming the key,
where it came from, and the closest known key.

Model families outside detectron2's core (TensorMask, FCOS, BlendMask, CenterMask, ...) add their keys
with `add_config`: a registered function receives the default tree and adds groups to it; `get_cfg`
applies every registered function.
"""

from __future__ import annotations

import ast
import difflib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml
from yacs.config import CfgNode as _YacsNode

from jaxseg.errors import UserError

__all__ = ["CfgNode", "add_config", "get_cfg", "setup_cfg"]

BASE_KEY = "_BASE_"
CONFIG_VERSION = 2
_LEAF_TYPES = (tuple, list, str, int, float, bool, type(None))


class CfgNode(_YacsNode):
    """A yacs config node whose merges check keys and types and raise `UserError` on a mistake."""

    def merge_from_file(self, cfg_filename: str) -> None:
        """Merge a YAML file; its `_BASE_` file (relative to it) is merged first, recursively."""
        self._merge_file(str(cfg_filename), ())

    def merge_from_list(self, cfg_list: Sequence[Any]) -> None:
        """Merge trailing command-line overrides `KEY VALUE KEY VALUE ...` (e.g. `SOLVER.BASE_LR 0.01`).

        A string value is read as a Python literal when it is one (`0.01`, `True`, `[1, 2]`, `(800,)`),
        otherwise kept as a string.
        """
        opts = list(cfg_list)
        if len(opts) % 2:
            raise UserError(
                f"config overrides on the command line come in KEY VALUE pairs; {opts[-1]!r} has no value"
            )
        for key, value in zip(opts[0::2], opts[1::2]):
            nested: Any = value
            for part in reversed(str(key).split(".")):
                nested = {part: nested}
            self._merge(nested, "on the command line")

    def merge_from_other_cfg(self, cfg_other: Mapping[str, Any]) -> None:
        """Merge another config (or plain nested dict) into this one, with the same checks."""
        self._merge(cfg_other, "in the merged config")

    def full_keys(self) -> list[str]:
        """The dotted key of every value in the tree, e.g. `SEED`, `MODEL.RPN.NMS_THRESH` (not groups)."""
        keys = []
        for name, value in self.items():
            if isinstance(value, CfgNode):
                keys.extend(f"{name}.{sub}" for sub in value.full_keys())
            else:
                keys.append(name)
        return keys

    # -- internals ---------------------------------------------------------------------------------

    def _merge_file(self, path: str, chain: tuple[str, ...]) -> None:
        """Merge `path` after its base; `chain` holds the files that include it (to catch cycles)."""
        real = os.path.realpath(path)
        if real in chain:
            raise UserError(f"config file {path} includes itself through {BASE_KEY}")
        data = _load_yaml(path)
        base = data.pop(BASE_KEY, None)
        if base is not None:
            self._merge_file(_base_path(base, path), chain + (real,))
        _check_version(data, path)
        self._merge(data, f"in {path}")

    def _merge(self, data: Mapping[str, Any], where: str) -> None:
        """Merge a nested mapping into the tree; `where` ("in FILE", "on the command line") goes in errors."""
        if self.is_frozen():
            raise AttributeError("the config is frozen; call cfg.defrost() before merging into it")
        _merge_into(self, data, [], self, where)


def _merge_into(node: CfgNode, data: Mapping[str, Any], prefix: list[str], root: CfgNode, where: str) -> None:
    """Recursively copy `data` into `node`, checking every key against the tree and every value's type."""
    for raw_key, raw_value in data.items():
        key = str(raw_key)
        full_key = ".".join(prefix + [key])
        if root.key_is_deprecated(full_key):
            continue
        if root.key_is_renamed(full_key):
            new_key = root.__dict__[CfgNode.RENAMED_KEYS][full_key]
            raise UserError(f"config key {full_key} {where} was renamed to {new_key}; please update it")
        value = _decode(raw_value)
        if key not in node:
            if not node.is_new_allowed():
                raise UserError(_unknown_key_message(root, _first_leaf(full_key, value), where))
            node[key] = CfgNode(value) if isinstance(value, Mapping) else _check_leaf(value, full_key, where)
        elif isinstance(node[key], CfgNode):
            if not isinstance(value, Mapping):
                raise UserError(
                    f"config key {full_key} {where} is a group of keys, but was given the value {value!r}"
                )
            _merge_into(node[key], value, prefix + [key], root, where)
        else:
            node[key] = _coerce(value, node[key], full_key, where)


def _decode(value: Any) -> Any:
    """Read a string as a Python literal when it is one (as yacs does for YAML and the command line)."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value


def _check_leaf(value: Any, full_key: str, where: str) -> Any:
    """Reject values a config cannot hold (a set, a mapping, any other object)."""
    if not isinstance(value, _LEAF_TYPES):
        raise UserError(
            f"bad value for config key {full_key} {where}: {value!r} is {_type_name(value)}, "
            "which a config cannot hold"
        )
    return value


def _coerce(value: Any, default: Any, full_key: str, where: str) -> Any:
    """Return `value` as the type of `default`, allowing what detectron2 allows, else raise `UserError`.

    Allowed: the same type; None on either side; list <-> tuple; an int where a float is expected.
    """
    if value is None:
        return value
    if default is None:
        return _check_leaf(value, full_key, where)
    if _is_sequence(value) and _is_sequence(default):
        return _same_containers(value, default)
    if isinstance(value, int) and not isinstance(value, bool) and isinstance(default, float):
        return float(value)
    if type(value) is type(default):
        return value
    raise UserError(
        f"bad value for config key {full_key} {where}: {value!r} is {_type_name(value)}, "
        f"expected {_type_name(default)} (default {default!r})"
    )


def _same_containers(value: Any, default: Any) -> Any:
    """`value` with the list/tuple types of `default`, also nested: [[1, 2]] against ((0, 0),) is ((1, 2),).

    Items are left as they are (an int in a list of floats stays an int, as in detectron2).
    """
    if not (_is_sequence(value) and _is_sequence(default)):
        return value
    inner = default[0] if default else None
    return type(default)(_same_containers(item, inner) for item in value)


def _is_sequence(value: Any) -> bool:
    """A list or a tuple."""
    return isinstance(value, (list, tuple))


def _type_name(value: Any) -> str:
    """A readable type name with its article: 'a string', 'an int', 'a mapping of keys'."""
    names = {bool: "a bool", int: "an int", float: "a float", str: "a string"}
    names.update({list: "a list", tuple: "a tuple"})
    if isinstance(value, Mapping):
        return "a mapping of keys"
    return names.get(type(value), f"a {type(value).__name__}")


def _first_leaf(full_key: str, value: Any) -> str:
    """For an unknown group given as a mapping, the full key of its first leaf (the key the user typed)."""
    while isinstance(value, Mapping) and value:
        name, value = next(iter(value.items()))
        full_key = f"{full_key}.{name}"
    return full_key


def _unknown_key_message(root: CfgNode, full_key: str, where: str) -> str:
    """'unknown config key K WHERE; did you mean M?' with M the closest known key, when one is close."""
    message = f"unknown config key {full_key} {where}"
    close = difflib.get_close_matches(full_key, root.full_keys(), n=1, cutoff=0.5)
    if close:
        return f"{message}; did you mean {close[0]}?"
    return f"{message}; no known key is close to it (jaxseg.config.get_cfg() lists them all)"


def _load_yaml(path: str) -> dict[str, Any]:
    """Read and parse one YAML config file into a dict; every failure is a `UserError` naming the file."""
    if not os.path.isfile(path):
        raise UserError(f"config file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read config file {path}: {e}") from e
    try:
        data = yaml.load(text, Loader=_ConfigLoader)
    except yaml.YAMLError as e:
        raise UserError(f"cannot parse config file {path}: {_yaml_problem(e)}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of KEY: value, not {_type_name(data)}")
    return data


# Arithmetic on literals with list comprehensions: enough for detectron2's `!!python/object/apply:eval`
# anchor sizes (Base-RetinaNet.yaml), with no names but the loop variables, no calls, no attributes.
_EVAL_NODES = (
    ast.Expression, ast.ListComp, ast.comprehension, ast.List, ast.Tuple, ast.Constant, ast.Name,
    ast.Load, ast.Store, ast.BinOp, ast.UnaryOp, ast.operator, ast.unaryop,
)  # fmt: skip


class _ConfigLoader(yaml.SafeLoader):
    """YAML's safe loader plus detectron2's one unsafe idiom, `!!python/object/apply:eval [EXPR]`."""


def _construct_eval(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    """Evaluate the expression of an `eval` tag if it only does arithmetic on literals (see _EVAL_NODES)."""
    args = loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode) else []
    if len(args) != 1 or not isinstance(args[0], str):
        raise _eval_error("eval takes one expression string", node)
    try:
        tree = ast.parse(args[0], mode="eval")
    except SyntaxError as e:
        raise _eval_error(f"eval: {e.msg}", node) from e
    for part in ast.walk(tree):
        if not isinstance(part, _EVAL_NODES):
            raise _eval_error(f"eval may only do arithmetic on literals, not {type(part).__name__}", node)
    try:
        return eval(compile(tree, "<config>", "eval"), {"__builtins__": {}})  # noqa: S307 (checked above)
    except (ArithmeticError, NameError, TypeError, ValueError, MemoryError) as e:
        raise _eval_error(f"eval: {e}", node) from e


def _eval_error(problem: str, node: yaml.Node) -> yaml.YAMLError:
    """A YAML error pointing at the `eval` tag's line."""
    return yaml.constructor.ConstructorError(None, None, problem, node.start_mark)


_ConfigLoader.add_constructor("tag:yaml.org,2002:python/object/apply:eval", _construct_eval)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """'line N: what went wrong' for a YAML parse error."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    if mark is None:
        return problem
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _base_path(base: Any, including_file: str) -> str:
    """Resolve a `_BASE_` value: `~` is expanded; a relative path is relative to the including file."""
    if not isinstance(base, str) or not base:
        raise UserError(f"{BASE_KEY} in config file {including_file} must be a file path, not {base!r}")
    base = os.path.expanduser(base)
    if os.path.isabs(base):
        return base
    return os.path.normpath(os.path.join(os.path.dirname(including_file), base))


def _check_version(data: Mapping[str, Any], path: str) -> None:
    """Only detectron2's current config version (2) is understood; older files need upgrading."""
    version = _decode(data.get("VERSION", CONFIG_VERSION))
    if version != CONFIG_VERSION:
        raise UserError(
            f"config file {path} has VERSION {version!r}; only version {CONFIG_VERSION} configs are "
            "supported (upgrade it with detectron2's config.compat.upgrade_config)"
        )


# -- defaults ---------------------------------------------------------------------------------------


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


def _default_tree() -> dict[str, Any]:
    """The whole default tree as nested dicts."""
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


def _add_jaxseg_keys(cfg: CfgNode) -> None:
    """Keys jaxseg adds to detectron2's tree (detectron2 has no equivalent)."""
    cfg.SOLVER.LOG_PERIOD = 20  # iterations between metrics.json / TensorBoard entries (1: every step)
    cfg.MODEL.FSDP = False  # shard parameters and optimizer state over the `data` axis
    cfg.MODEL.KERNELS = ""  # force a kernel implementation: "" (automatic), "xla", "ffi" or "triton"
    cfg.DATALOADER.MAX_GT_INSTANCES = 100  # instances per training image (more are dropped, with a warning)
    cfg.INPUT.GT_MASK_RESOLUTION = 56  # side of the box-aligned GT mask crops fed to the device


# -- public entry points ----------------------------------------------------------------------------

_EXTENSIONS: list[Callable[[CfgNode], None]] = []


def add_config(fn: Callable[[CfgNode], None]) -> Callable[[CfgNode], None]:
    """Register `fn(cfg)`, which adds a model family's default keys to the tree; usable as a decorator.

    `get_cfg` calls every registered function in registration order, so the family's module must be
    imported before `get_cfg` (importing `jaxseg.models` imports them all). Registering twice is a no-op.
    """
    if fn not in _EXTENSIONS:
        _EXTENSIONS.append(fn)
    return fn


def get_cfg() -> CfgNode:
    """A fresh, mutable copy of the default config (detectron2's keys plus the registered families')."""
    cfg = CfgNode(_default_tree())
    _add_jaxseg_keys(cfg)
    for extend in _EXTENSIONS:
        extend(cfg)
    return cfg


def setup_cfg(config_file: str | None, opts: Sequence[str] = ()) -> CfgNode:
    """Defaults, then `config_file` (if any), then `KEY VALUE` overrides; returned frozen."""
    cfg = get_cfg()
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    cfg.freeze()
    return cfg
