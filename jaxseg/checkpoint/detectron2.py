"""detectron2 state dict <-> Flax variables: a mechanical rename plus layout transposes.

`backbone.bottom_up.res2.0.conv1.weight` (OIHW)  ->  params/backbone/bottom_up/res2_0/conv1/kernel (HWIO)
`....conv1.norm.running_mean`                    ->  batch_stats/backbone/bottom_up/res2_0/conv1/norm/running_mean
Linear weights are transposed; 4-D weights go OIHW -> HWIO (a ConvTranspose2d weight (in, out, kh, kw)
becomes (kh, kw, out, in), the layout of flax's ConvTranspose with transpose_kernel=True).
Every checkpoint tensor is consumed or explicitly ignored; anything else is reported in one UserError.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from jaxseg.errors import UserError

logger = logging.getLogger(__name__)

NORM_BUFFERS = ("weight", "bias", "running_mean", "running_var")
# tensors a detectron2 checkpoint may carry that the model does not use
IGNORED = (
    re.compile(r"^pixel_(mean|std)$"),
    re.compile(r"(^|\.)anchor_generator\.cell_anchors\.\d+$"),
    re.compile(r"\.num_batches_tracked$"),
)
# layers whose shape follows NUM_CLASSES: re-initialised (with a warning) when the class count differs
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


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray],
    target: Mapping,  # ShapeDtypeStructs, or initial arrays when allow_missing
    *,
    source: str,
    allow_missing: bool = False,
) -> dict:
    """Fill the variable tree `target` (arrays or ShapeDtypeStructs, e.g. from jax.eval_shape(model.init, ...))
    from a detectron2-named state dict. Returns a nested dict of numpy float32 arrays with the structure of target.

    Missing (unless allow_missing), unexpected or mis-shaped tensors raise one UserError that lists them all.
    A class-count mismatch in the predictor layers re-initialises those layers, with a warning, as detectron2 does.
    """
    want = flatten_dict(dict(target))
    got: dict[tuple[str, ...], np.ndarray] = {}
    unexpected, misshaped, reinit = [], [], []
    for name, value in state_dict.items():
        if any(p.search(name) for p in IGNORED):
            continue
        path = d2_name_to_path(name)
        if path not in want and path[0] == "batch_stats" and ("params", *path[1:]) in want:
            path = ("params", *path[1:])  # a learned norm (GroupNorm): weight/bias are parameters
        if path not in want:
            unexpected.append(f"{name} {tuple(np.shape(value))}")
            continue
        value = to_flax_layout(np.asarray(value), path)
        if tuple(value.shape) != tuple(want[path].shape):
            if CLASS_DEPENDENT.search(name):
                reinit.append(name)
                got[path] = init_class_dependent(name, tuple(want[path].shape))
                continue
            got[path] = None  # present, but unusable: reported as mis-shaped, not missing
            misshaped.append(f"{name}: checkpoint {tuple(value.shape)} vs model {tuple(want[path].shape)} "
                             f"(Flax layout)")
            continue
        got[path] = value.astype(np.float32)
    missing = [path_to_d2_name(p) for p in want if p not in got]
    problems = []
    if missing and not allow_missing:
        problems.append(f"{len(missing)} missing: " + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: " + ", ".join(unexpected[:20])
                        + (" ..." if len(unexpected) > 20 else ""))
    if misshaped:
        problems.append(f"{len(misshaped)} with the wrong shape: " + "; ".join(misshaped[:20]))
    if problems:
        raise UserError(f"{source} does not fit this model ({'; '.join(problems)}). Is it a checkpoint of the "
                        "architecture in the config?")
    if reinit:
        logger.warning("%s: class count differs; re-initialising %s", source, ", ".join(reinit))
    if missing:
        logger.warning("%s: %d model tensors not in the checkpoint keep their initial values: %s",
                       source, len(missing), ", ".join(missing[:10]))
    out = {p: got.get(p, want[p]) for p in want}
    return unflatten_dict(out)
