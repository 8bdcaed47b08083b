"""AdelaiDet state dicts (FCOS, BlendMask) <-> Flax variables: the "adelaidet" adapter.

Names map as detectron2's (`jaxseg.checkpoint.detectron2`: `a.b.0.c.weight` -> params/a/b_0/c/kernel, OIHW ->
HWIO), with AdelaiDet's norms, which sit in `nn.Sequential`s rather than in a child called `norm`: the GroupNorms
of the FCOS towers (`cls_tower.1`, `.4`, ...) and the BatchNorms of the basis module (`refine.0.1`, `tower.2.1`,
`seg_head.1`, `seg_head.4`) keep `weight`/`bias` as parameters and `running_mean`/`running_var` as batch
statistics; `num_batches_tracked` is dropped.

What a file may carry beyond the model: checkpoints made before AdelaiDet's commit 281ee24 name the centerness conv
`fcos_head.centerness` (accepted as `ctrness`); the basis module's training-only `seg_head.*` is loaded when the
model has it (BASIS_MODULE.LOSS_ON, training) and ignored otherwise.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxseg.checkpoint.adapters import CheckpointAdapter, register_adapter
from jaxseg.checkpoint.detectron2 import d2_name_to_path, to_flax_layout

_NORM_MODULE = re.compile(
    r"(fcos_head\.(cls|bbox|share|pixel_embed)_tower\.(?P<tower>\d+)"
    r"|basis_module\.(refine|tower)\.\d+\.1"
    r"|basis_module\.seg_head\.[14])$")
_BN_BUFFERS = ("running_mean", "running_var")
IGNORED = (re.compile(r"\.num_batches_tracked$"), re.compile(r"^pixel_(mean|std)$"))
CLASS_DEPENDENT = re.compile(r"(fcos_head\.cls_logits|basis_module\.seg_head\.6)\.(weight|bias)$")
PRIOR_PROB = 0.01  # MODEL.FCOS.PRIOR_PROB's default: the class-logit bias of a re-initialised layer


def _is_norm(module: str) -> bool:
    m = _NORM_MODULE.search(module)
    return m is not None and (m.group("tower") is None or int(m.group("tower")) % 3 == 1)


def adelaidet_name_to_path(name: str) -> tuple[str, ...]:
    """`proposal_generator.fcos_head.cls_tower.1.weight` -> ("params", "proposal_generator", "fcos_head",
    "cls_tower_1", "weight"); other names as detectron2's rule."""
    module, _, leaf = name.rpartition(".")
    path = d2_name_to_path(name)
    if not _is_norm(module):
        return path
    collection = "batch_stats" if leaf in _BN_BUFFERS else "params"
    return (collection, *path[1:-1], leaf)


def adelaidet_path_to_name(path: tuple[str, ...]) -> str:
    """Inverse of adelaidet_name_to_path: `cls_tower_1` -> `cls_tower.1`, `refine_0_1` -> `refine.0.1`."""
    collection, *modules, leaf = path
    if leaf == "kernel":
        leaf = "weight"
    names = [re.sub(r"((?:_\d+)+)$", lambda m: m.group(1).replace("_", "."), mod) for mod in modules]
    return ".".join([*names, leaf])


def prepare(state: dict[str, np.ndarray], ckpt: Mapping[str, Any],
            target_paths: Sequence[tuple[str, ...]]) -> dict[str, np.ndarray]:
    """Legacy `centerness` -> `ctrness`; `seg_head.*` dropped when the model has no semantic head."""
    state = {re.sub(r"\.fcos_head\.centerness\.", ".fcos_head.ctrness.", k): v for k, v in state.items()}
    if not any("seg_head_6" in p for p in target_paths):
        state = {k: v for k, v in state.items() if ".seg_head." not in k}
    return state


def classes_in(name: str, shape: tuple[int, ...]) -> int | None:
    """cls_logits has one output per class, the semantic head one more (background)."""
    if not shape:
        return None
    return shape[0] - 1 if "seg_head" in name else shape[0]


def init_class_dependent(name: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """AdelaiDet's initialisation: N(0, 0.01) weights; the class-logit bias at the focal-loss prior."""
    if name.endswith(".bias"):
        value = -math.log((1 - PRIOR_PROB) / PRIOR_PROB) if "cls_logits" in name else 0.0
        return np.full(shape, value, np.float32)
    return np.random.default_rng(seed).normal(0.0, 0.01, shape).astype(np.float32)


ADELAIDET = register_adapter(CheckpointAdapter(
    name="adelaidet",
    to_path=adelaidet_name_to_path,
    to_name=adelaidet_path_to_name,
    to_layout=to_flax_layout,
    ignored=IGNORED,
    class_dependent=CLASS_DEPENDENT,
    init_class_dependent=init_class_dependent,
    classes_in=classes_in,
    num_classes_key="MODEL.FCOS.NUM_CLASSES",
    prepare=prepare,
))
