"""Caffe2 / Detectron1 blob names to detectron2 names, and detectron2's heuristic key matching.

:func:`convert_c2_names` renames the blobs of a Caffe2 ``.pkl`` (``res2_0_branch2a_w`` ->
``res2.0.conv1.weight``) and applies the value fixes detectron2 applies while renaming: the background
class of the box predictor moves from the first to the last row of ``cls_score``, and its rows are
dropped from ``bbox_pred`` (4 rows) and from the mask predictor (1 row).

:func:`align_to_model_keys` is detectron2's ``align_and_update_state_dicts`` matching, used when a
checkpoint has ``matching_heuristics``: a checkpoint key fills the model key that equals it or ends with
``"." + key``, the longest such key winning.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

from jaxseg.errors import UserError

__all__ = ["align_to_model_keys", "convert_c2_names", "rename_c2_key"]

# (pattern, replacement) pairs applied with re.sub, in this order, after "_" became ".".
_BASIC_RULES: tuple[tuple[str, str], ...] = (
    (r"\.b$", ".bias"),
    (r"\.w$", ".weight"),
    # batch norm (Caffe2 affine "s"/"bias" or unfused gamma/beta/running stats) and group norm -> "norm"
    (r"bn\.s$", "norm.weight"),
    (r"bn\.bias$", "norm.bias"),
    (r"bn\.rm", "norm.running_mean"),
    (r"bn\.running\.mean$", "norm.running_mean"),
    (r"bn\.riv$", "norm.running_var"),
    (r"bn\.running\.var$", "norm.running_var"),
    (r"bn\.gamma$", "norm.weight"),
    (r"bn\.beta$", "norm.bias"),
    (r"gn\.s$", "norm.weight"),
    (r"gn\.bias$", "norm.bias"),
    # the stem: its norm is "res_conv1_bn_*", its conv "conv1_*"
    (r"^res\.conv1\.norm\.", "conv1.norm."),
    (r"^conv1\.", "stem.conv1."),
    # bottleneck blocks
    (r"\.branch1\.", ".shortcut."),
    (r"\.branch2a\.", ".conv1."),
    (r"\.branch2b\.", ".conv2."),
    (r"\.branch2c\.", ".conv3."),
)

# Head renames, applied in this order after the FPN names were mapped.
_HEAD_RULES: tuple[tuple[str, str], ...] = (
    # RPN: the FPN variant shares the level-2 ("fpn2") conv across levels
    (r"conv\.rpn\.fpn2", "proposal_generator.rpn_head.conv"),
    (r"conv\.rpn", "proposal_generator.rpn_head.conv"),
    (r"rpn\.bbox\.pred\.fpn2", "proposal_generator.rpn_head.anchor_deltas"),
    (r"rpn\.cls\.logits\.fpn2", "proposal_generator.rpn_head.objectness_logits"),
    (r"rpn\.bbox\.pred", "proposal_generator.rpn_head.anchor_deltas"),
    (r"rpn\.cls\.logits", "proposal_generator.rpn_head.objectness_logits"),
    # Fast R-CNN box head and predictor
    (r"^bbox\.pred", "bbox_pred"),
    (r"^cls\.score", "cls_score"),
    (r"^fc6\.", "box_head.fc1."),
    (r"^fc7\.", "box_head.fc2."),
    (r"^head\.conv", "box_head.conv"),
)

_MASK_KEYPOINT_RULES: tuple[tuple[str, str], ...] = (
    (r"\.\[mask\]\.fcn", "mask_head.mask_fcn"),
    (r"^\.mask\.fcn", "mask_head.mask_fcn"),
    (r"mask\.fcn\.logits", "mask_head.predictor"),
    (r"conv5\.mask", "mask_head.deconv"),
    (r"conv\.fcn", "roi_heads.keypoint_head.conv_fcn"),
    (r"kps\.score\.lowres", "roi_heads.keypoint_head.score_lowres"),
    (r"kps\.score\.", "roi_heads.keypoint_head.score."),
)

_EXACT_RENAMES = {"pred_b": "linear_b", "pred_w": "linear_w"}


def _apply(rules: Sequence[tuple[str, str]], name: str) -> str:
    """Applies each (pattern, replacement) rule in turn."""
    for pattern, replacement in rules:
        name = re.sub(pattern, replacement, name)
    return name


def _fpn_name(name: str) -> str:
    """Maps FPN blobs to ``fpn_lateral{k}[.norm].{w}`` and ``fpn_output{k}[.norm].{w}``.

    Laterals are ``fpn.inner.res{k}.*.{w}``, outputs ``fpn.res{k}.*.{w}``.
    """
    parts = name.split(".")
    norm = ".norm" if "norm" in parts else ""
    if name.startswith("fpn.inner.res"):
        return f"fpn_lateral{parts[2][len('res') :]}{norm}.{parts[-1]}"
    if name.startswith("fpn.res"):
        return f"fpn_output{parts[1][len('res') :]}{norm}.{parts[-1]}"
    return name


def rename_c2_key(name: str) -> str:
    """The detectron2 name of a Caffe2 blob: ``res2_0_branch2a_bn_s`` -> ``res2.0.conv1.norm.weight``."""
    name = _EXACT_RENAMES.get(name, name).replace("_", ".")
    name = _apply(_BASIC_RULES, name)
    name = _apply(_HEAD_RULES, name)
    name = _fpn_name(name)
    return _apply(_MASK_KEYPOINT_RULES, name)


def _fix_value(name: str, value: np.ndarray) -> np.ndarray:
    """Drops or moves the background-class rows of the predictors, as detectron2 does for Caffe2 files."""
    if name.startswith("bbox_pred."):
        return value[4:]
    if name.startswith("mask_head.predictor."):
        return value[1:]
    if name.startswith("cls_score."):
        return np.concatenate([value[1:], value[:1]], axis=0)
    return value


def convert_c2_names(blobs: Mapping[str, np.ndarray], source: str = "checkpoint") -> dict[str, np.ndarray]:
    """Renames Caffe2 blobs to detectron2 names and fixes the predictor rows; keys come out sorted.

    Raises UserError (naming ``source``) when two blobs would get the same name.
    """
    renamed: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    for old in sorted(blobs):
        new = rename_c2_key(old)
        if new in renamed:
            raise UserError(f"{source}: Caffe2 blobs '{origin[new]}' and '{old}' both map to '{new}'")
        renamed[new], origin[new] = _fix_value(new, blobs[old]), old
    return renamed


def _best_match(model_key: str, ckpt_keys: Sequence[str]) -> str | None:
    """The longest checkpoint key equal to ``model_key`` or a suffix of it that starts after a dot."""
    found = [k for k in ckpt_keys if model_key == k or model_key.endswith("." + k)]
    return max(found, key=len) if found else None


def align_to_model_keys(
    model_keys: Sequence[str],
    ckpt: Mapping[str, np.ndarray],
    model_shapes: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, np.ndarray]:
    """Renames checkpoint keys to the model keys they match by detectron2's suffix heuristic.

    Each model key takes the longest checkpoint key equal to it or ending it at a ``.`` boundary (so
    ``res2.0.conv1.weight`` fills ``backbone.bottom_up.res2.0.conv1.weight``). With ``model_shapes``, a
    match of another shape is skipped, as detectron2 does. Checkpoint keys that match nothing are kept
    under their own names, to be reported as unexpected by the loader. Raises UserError when one
    checkpoint key would fill two model keys.
    """
    ckpt_keys = sorted(ckpt)
    result: dict[str, np.ndarray] = {}
    filled_by: dict[str, str] = {}
    for model_key in sorted(model_keys):
        ckpt_key = _best_match(model_key, ckpt_keys)
        if ckpt_key is None:
            continue
        value = ckpt[ckpt_key]
        if model_shapes is not None and tuple(model_shapes[model_key]) != tuple(np.shape(value)):
            continue
        if ckpt_key in filled_by:
            raise UserError(
                f"checkpoint key '{ckpt_key}' matches two model keys, '{filled_by[ckpt_key]}' and "
                f"'{model_key}'; the heuristic matching cannot tell them apart"
            )
        result[model_key], filled_by[ckpt_key] = value, model_key
    result.update((k, ckpt[k]) for k in ckpt_keys if k not in filled_by)
    return result
