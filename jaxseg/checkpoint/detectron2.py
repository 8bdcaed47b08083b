"""detectron2 state dict <-> Flax variables: a mechanical rename plus layout transposes.

`backbone.bottom_up.res2.0.conv1.weight` (OIHW)  ->  params/backbone/bottom_up/res2_0/conv1/kernel (HWIO)
`....conv1.norm.running_mean`                    ->  batch_stats/backbone/bottom_up/res2_0/conv1/norm/running_mean
Linear weights are transposed; 4-D weights go OIHW -> HWIO (a ConvTranspose2d weight (in, out, kh, kw)
becomes (kh, kw, out, in), the layout of flax's ConvTranspose with transpose_kernel=True).
The converter itself is the generic one of :mod:`jaxseg.checkpoint.adapters`; this module holds detectron2's
rules and registers them as the "detectron2" adapter (GeneralizedRCNN's `checkpoint_adapter`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxseg.checkpoint.adapters import CheckpointAdapter, register_adapter
from jaxseg.checkpoint.c2_names import align_to_model_keys

NORM_BUFFERS = ("weight", "bias", "running_mean", "running_var")
# tensors a detectron2 checkpoint may carry that the model does not use
IGNORED = (
    re.compile(r"^pixel_(mean|std)$"),
    re.compile(r"(^|\.)anchor_generator\.cell_anchors\.\d+$"),
    re.compile(r"\.num_batches_tracked$"),
    re.compile(r"^fc1000\.(weight|bias)$"),  # the ImageNet classifier of ImageNetPretrained/MSRA/R-*.pkl
)
# layers whose shape follows NUM_CLASSES: re-initialised (with a warning) at training init when the class count
# differs, an error at inference
CLASS_DEPENDENT = re.compile(r"(box_predictor\.(cls_score|bbox_pred)|mask_head\.predictor)\.(weight|bias)$")


def d2_name_to_path(name: str) -> tuple[str, ...]:
    """`a.res2.0.conv1.norm.running_var` -> ("batch_stats", "a", "res2_0", "conv1", "norm", "running_var")."""
    parts = name.split(".")
    modules: list[str] = []
    for p in parts[:-1]:
        if p.isdigit() and modules:
            modules[-1] = f"{modules[-1]}_{p}"
        else:
            modules.append(p)
    leaf = parts[-1]
    if modules and modules[-1] == "norm" and leaf in NORM_BUFFERS:
        return ("batch_stats", *modules, leaf)
    return ("params", *modules, {"weight": "kernel"}.get(leaf, leaf))


def path_to_d2_name(path: tuple[str, ...]) -> str:
    """Inverse of d2_name_to_path (also for learned norms, whose weight/bias sit in `params`)."""
    collection, *modules, leaf = path
    if collection == "params":
        leaf = {"kernel": "weight"}.get(leaf, leaf)
    return ".".join([re.sub(r"_(\d+)$", r".\1", m) for m in modules] + [leaf])


def to_flax_layout(value: np.ndarray, path: tuple[str, ...]) -> np.ndarray:
    """PyTorch layout -> Flax layout for one tensor."""
    if path[0] == "params" and path[-1] == "kernel":
        if value.ndim == 4:
            return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
        if value.ndim == 2:
            return np.ascontiguousarray(value.T)
    return value


def init_class_dependent(name: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """detectron2's initialisation of a predictor layer: N(0, 0.01) for cls_score, N(0, 0.001) for the box and
    mask regressors, zero biases."""
    if name.endswith(".bias"):
        return np.zeros(shape, np.float32)
    std = 0.01 if "cls_score" in name else 0.001
    return np.random.default_rng(seed).normal(0.0, std, shape).astype(np.float32)


def classes_in(name: str, shape: tuple[int, ...]) -> int | None:
    """The class count a predictor tensor (PyTorch layout: outputs first) encodes: cls_score K + 1 (background),
    bbox_pred 4 K, the mask predictor K."""
    if not shape:
        return None
    if "cls_score" in name:
        return shape[0] - 1
    if "bbox_pred" in name:
        return shape[0] // 4 if shape[0] % 4 == 0 else None
    if "mask_head.predictor" in name:
        return shape[0]
    return None


def align_c2_names(state_dict: dict[str, np.ndarray], ckpt: Mapping[str, Any],
                   target_paths: Sequence[tuple[str, ...]]) -> dict[str, np.ndarray]:
    """detectron2's matching heuristics (Caffe2 / pycls files, `?matching_heuristics=True`): checkpoint keys
    fill the model keys they end."""
    if not ckpt.get("matching_heuristics"):
        return state_dict
    return align_to_model_keys([path_to_d2_name(p) for p in target_paths], state_dict)


DETECTRON2 = register_adapter(CheckpointAdapter(
    name="detectron2",
    to_path=d2_name_to_path,
    to_name=path_to_d2_name,
    to_layout=to_flax_layout,
    ignored=IGNORED,
    class_dependent=CLASS_DEPENDENT,
    init_class_dependent=init_class_dependent,
    classes_in=classes_in,
    num_classes_key="MODEL.ROI_HEADS.NUM_CLASSES",
    prepare=align_c2_names,
))
