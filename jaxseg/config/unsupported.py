"""Config keys jaxseg does not implement: refused at setup, not silently ignored.

detectron2's tree has keys whose non-default values select behaviour jaxseg has no code for (GIoU box
losses, deformable convolutions, test-time augmentation, ...). A config that sets one of them would
otherwise train or evaluate something else than the user asked for. `check_supported`, called by
`setup_cfg` before the config is frozen, raises a one-line `UserError` naming the key, the value given
and the values jaxseg supports, e.g.

    config key MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE 'giou' is not implemented by jaxseg
    (supported: 'smooth_l1')

The table maps a full key to the values jaxseg implements (usually just detectron2's default). Model
families add rows for their own keys with `register_unsupported`; a row is only checked when its key
is in the tree, so a family's rows cost nothing when its keys are absent. When jaxseg comes to
implement a key, its row goes (or gains the new values).

Every other key of detectron2's default tree is read by jaxseg (`grep -rn KEY jaxseg` shows where;
names such as MODEL.META_ARCHITECTURE, MODEL.BACKBONE.NAME or SOLVER.LR_SCHEDULER_NAME are checked by
their reader) or deliberately accepted without being read:

* harmless for jaxseg: CUDNN_BENCHMARK (XLA chooses convolution algorithms itself; there is no cuDNN
  autotuner to switch), MODEL.DEVICE (JAX picks the backend), GLOBAL.HACK (unused by detectron2
  itself), VERSION (checked when a file is loaded);
* inert while a key of the table keeps its supported value: MODEL.ROI_BOX_HEAD.FED_LOSS_* (only with
  USE_FED_LOSS), MODEL.RESNETS.DEFORM_MODULATED and DEFORM_NUM_GROUPS (only with DEFORM_ON_PER_STAGE),
  MODEL.ROI_KEYPOINT_HEAD.* and TEST.KEYPOINT_OKS_SIGMAS (only with KEYPOINT_ON),
  DATASETS.PRECOMPUTED_PROPOSAL_TOPK_* (only with LOAD_PROPOSALS / PROPOSAL_FILES_*), INPUT.CROP.TYPE
  and SIZE (only with CROP.ENABLED), TEST.AUG.MIN_SIZES, MAX_SIZE and FLIP (only with AUG.ENABLED),
  TEST.PRECISE_BN.NUM_ITER (only with PRECISE_BN.ENABLED);
* inert while the component that reads them is not registered (its registry refuses the name, and the
  family that registers it adds its rows): MODEL.RETINANET.* (META_ARCHITECTURE RetinaNet),
  MODEL.SEM_SEG_HEAD.* and MODEL.PANOPTIC_FPN.* (SemanticSegmentor, PanopticFPN),
  MODEL.ROI_BOX_CASCADE_HEAD.* (ROI_HEADS.NAME CascadeROIHeads), MODEL.ANCHOR_GENERATOR.ANGLES
  (ANCHOR_GENERATOR.NAME RotatedAnchorGenerator), SOLVER.NUM_DECAYS (LR_SCHEDULER_NAME
  WarmupStepWithFixedGammaLR, which the schedule refuses).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jaxseg.errors import UserError

__all__ = ["check_supported", "register_unsupported", "supported_values"]


@dataclass(frozen=True)
class _Row:
    supported: tuple[Any, ...]
    note: str = ""


_TABLE: dict[str, _Row] = {}


def register_unsupported(key: str, supported_values: Sequence[Any], note: str = "") -> None:
    """Refuse config key `key` (full dotted name) unless its value is one of `supported_values`.

    For a list-valued key, give a sequence of lists (`[[-1]]`); lists and tuples compare equal. `note`
    (optional) is appended to the error message, e.g. what to do instead. Registering a key again
    replaces its row.
    """
    if isinstance(supported_values, (str, bytes)) or not isinstance(supported_values, Sequence):
        raise TypeError(f"supported_values of {key} must be a list or tuple of values, not {supported_values!r}")
    if not supported_values:
        raise ValueError(f"supported_values of {key} is empty; a key must support at least one value")
    _TABLE[str(key)] = _Row(tuple(supported_values), note)


def supported_values(key: str) -> tuple[Any, ...] | None:
    """The values jaxseg supports for `key`, or None when the key is not in the table (not restricted)."""
    row = _TABLE.get(key)
    return None if row is None else row.supported


# -- detectron2's keys jaxseg does not implement -----------------------------------------------------

# model components and inputs
register_unsupported("MODEL.LOAD_PROPOSALS", [False], "precomputed proposals are not implemented")
register_unsupported("MODEL.KEYPOINT_ON", [False], "keypoint detection is not implemented")
register_unsupported("MODEL.RESNETS.DEFORM_ON_PER_STAGE", [[False, False, False, False]],
                     "deformable convolutions are not implemented")
register_unsupported("DATASETS.PROPOSAL_FILES_TRAIN", [()], "precomputed proposals are not implemented")
register_unsupported("DATASETS.PROPOSAL_FILES_TEST", [()], "precomputed proposals are not implemented")
# RPN: every anchor is kept (-1), one 3x3 conv as wide as its input, smooth L1 on the deltas
register_unsupported("MODEL.RPN.BOUNDARY_THRESH", [-1])
register_unsupported("MODEL.RPN.CONV_DIMS", [[-1]])
register_unsupported("MODEL.RPN.BBOX_REG_LOSS_TYPE", ["smooth_l1"])
# ROI heads: ground-truth boxes join the proposals; one box-regression loss, weight 1, softmax CE;
# the box head runs once on the proposals
register_unsupported("MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", [True])
register_unsupported("MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", ["smooth_l1"])
register_unsupported("MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT", [1.0])
register_unsupported("MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE", [False])
register_unsupported("MODEL.ROI_BOX_HEAD.USE_FED_LOSS", [False])
register_unsupported("MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES", [False])
# data: no random crop; masks are detectron2's "polygon" or "bitmask" format
register_unsupported("INPUT.CROP.ENABLED", [False], "random cropping is not implemented by the training loader")
register_unsupported("INPUT.MASK_FORMAT", ["polygon", "bitmask"], "detectron2 knows only these two formats")
# solver
register_unsupported("SOLVER.RESCALE_INTERVAL", [False], "the schedule after warmup is not rescaled")
register_unsupported("SOLVER.REFERENCE_WORLD_SIZE", [0],
                     "batch size and schedule are not rescaled for the device count; set them directly")
register_unsupported("SOLVER.CLIP_GRADIENTS.NORM_TYPE", [2.0], "gradient norms are L2 norms")
register_unsupported("SOLVER.AMP.ENABLED", [False],
                     "mixed-precision (bf16) training is not implemented yet, and jaxseg does not silently "
                     "train in float32 instead: set it to False for float32")
# evaluation and logging
register_unsupported("TEST.AUG.ENABLED", [False], "test-time augmentation is not implemented")
register_unsupported("TEST.PRECISE_BN.ENABLED", [False], "precise BatchNorm statistics are not implemented")
register_unsupported("TEST.EXPECTED_RESULTS", [[]], "results are not checked against expected values")
register_unsupported("VIS_PERIOD", [0], "training visualizations are not implemented")


# -- values checked beyond a fixed list ---------------------------------------------------------------

# FLOAT32_PRECISION, any case, as jaxseg.models.meta_arch.PRECISIONS reads it (detectron2's "", "highest",
# "high", "medium" for torch.set_float32_matmul_precision, plus jaxseg's "default" = "medium")
FLOAT32_PRECISIONS = ("", "highest", "high", "medium", "default")


def _check_float32_precision(cfg: Mapping[str, Any]) -> tuple[str, str] | None:
    """FLOAT32_PRECISION must be one of FLOAT32_PRECISIONS (case-insensitive)."""
    found, value = _lookup(cfg, "FLOAT32_PRECISION")
    if not found or (isinstance(value, str) and value.lower() in FLOAT32_PRECISIONS):
        return None
    return "FLOAT32_PRECISION", _message("FLOAT32_PRECISION", value, FLOAT32_PRECISIONS)


def _check_buckets(cfg: Mapping[str, Any]) -> tuple[str, str] | None:
    """TEST.BUCKETS (jaxseg's) must be a sequence of (height, width) pairs of positive ints."""
    found, value = _lookup(cfg, "TEST.BUCKETS")
    if not found:
        return None
    for hw in value:
        if not (isinstance(hw, (list, tuple)) and len(hw) == 2 and all(_positive_int(v) for v in hw)):
            return "TEST.BUCKETS", (f"config key TEST.BUCKETS {value!r} must be (height, width) pairs of "
                                    f"positive ints, e.g. ((800, 1344), (1344, 800)); {hw!r} is not one")
    return None


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# each returns (key, one-line message) when the value is refused, else None
_VALIDATORS: list[Callable[[Mapping[str, Any]], tuple[str, str] | None]] = [_check_float32_precision, _check_buckets]


# -- the check ----------------------------------------------------------------------------------------


def check_supported(cfg: Mapping[str, Any]) -> None:
    """Raise `UserError` when `cfg` sets a key to a value jaxseg does not implement (keys absent from the
    tree are skipped). The message names the first such key; further ones are listed after it."""
    problems = []
    for key, row in _TABLE.items():
        found, value = _lookup(cfg, key)
        if found and not any(_canonical(value) == _canonical(v) for v in row.supported):
            message = _message(key, value, row.supported)
            problems.append((key, f"{message}; {row.note}" if row.note else message))
    for validate in _VALIDATORS:
        problem = validate(cfg)
        if problem is not None:
            problems.append(problem)
    if problems:
        first = problems[0][1]
        if len(problems) > 1:
            first += f" (also unsupported: {', '.join(key for key, _ in problems[1:])})"
        raise UserError(first)


def _message(key: str, value: Any, supported: Sequence[Any]) -> str:
    """'config key K V is not implemented by jaxseg (supported: A, B)'."""
    return f"config key {key} {value!r} is not implemented by jaxseg (supported: {', '.join(map(repr, supported))})"


def _lookup(cfg: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    """(True, value) of a dotted key in the tree, or (False, None) when the tree has no such key."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _canonical(value: Any) -> Any:
    """Lists and tuples (also nested) as tuples, so [False] * 4 and (False,) * 4 compare equal."""
    if isinstance(value, (list, tuple)):
        return tuple(_canonical(v) for v in value)
    return value
