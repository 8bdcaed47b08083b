"""Checkpoint adapters: how one family's published PyTorch state dicts map onto its Flax variables.

An adapter is a set of rules, one per family (``"detectron2"`` for GeneralizedRCNN, see
:mod:`jaxseg.checkpoint.detectron2`): a rename of tensor names to Flax variable paths and its inverse, a
layout change per tensor, the tensors a file may carry that the model does not use, and the layers whose
shape follows the number of classes. A model names its adapter in ``checkpoint_adapter``;
:func:`convert_state_dict` is the one converter every family goes through::

    register_adapter(CheckpointAdapter("mine", to_path=..., to_name=...))
    variables = convert_state_dict(state_dict, jax.eval_shape(model.init, key, *model.init_args()),
                                   get_adapter("mine"), source="model.pth")

Every checkpoint tensor is consumed or explicitly ignored; what does not fit is reported in one UserError.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from jaxseg.errors import UserError

__all__ = ["CheckpointAdapter", "convert_state_dict", "get_adapter", "register_adapter", "adapter_names"]

logger = logging.getLogger(__name__)

Path = tuple[str, ...]
Pattern = str | re.Pattern[str]


def _same_layout(value: np.ndarray, path: Path) -> np.ndarray:
    return value


def default_init_class_dependent(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Zero biases, N(0, 0.01) for the rest (seeded, so a conversion is reproducible)."""
    if name.endswith("bias"):
        return np.zeros(shape, np.float32)
    return np.random.default_rng(0).normal(0.0, 0.01, shape).astype(np.float32)


@dataclass(frozen=True)
class CheckpointAdapter:
    """The rules that read one family's checkpoints.

    name: what models put in ``checkpoint_adapter``.
    to_path: checkpoint name -> Flax variable path, e.g. ``("params", "backbone", "res2_0", "conv1", "kernel")``.
        The collection (first element) is a guess the converter may correct: a path found in the model under
        exactly one other collection (a learned norm's weight in ``params`` rather than ``batch_stats``) is used.
    to_name: the inverse, for reports and for name-matching heuristics.
    to_layout: checkpoint (PyTorch) layout -> Flax layout of one tensor, given its Flax path.
    ignored: regexes (``re.search``) of names a checkpoint may carry that the model does not use.
    class_dependent: regex of the names whose shape follows the number of classes (predictor layers).
    init_class_dependent: (name, Flax shape) -> fresh values for such a layer when the class count differs
        at training init.
    classes_in: (name, checkpoint shape) -> the number of classes a class-dependent tensor encodes, or None;
        used to say "the checkpoint has 80 classes".
    num_classes_key: the config key that sets the model's class count (named in the error).
    prepare: (state_dict, checkpoint dict as read_checkpoint returns it, the model's Flax paths) -> state dict,
        run before the rename (e.g. detectron2's matching heuristics for Caffe2 files).
    """

    name: str
    to_path: Callable[[str], Path]
    to_name: Callable[[Path], str]
    to_layout: Callable[[np.ndarray, Path], np.ndarray] = _same_layout
    ignored: tuple[Pattern, ...] = ()
    class_dependent: Pattern | None = None
    init_class_dependent: Callable[[str, tuple[int, ...]], np.ndarray] = default_init_class_dependent
    classes_in: Callable[[str, tuple[int, ...]], int | None] | None = None
    num_classes_key: str = ""
    prepare: Callable[[dict[str, np.ndarray], Mapping[str, Any], Sequence[Path]], dict[str, np.ndarray]] | None = None

    def is_ignored(self, name: str) -> bool:
        return any(re.search(p, name) for p in self.ignored)

    def is_class_dependent(self, name: str) -> bool:
        return self.class_dependent is not None and re.search(self.class_dependent, name) is not None


_ADAPTERS: dict[str, CheckpointAdapter] = {}


def register_adapter(adapter: CheckpointAdapter) -> CheckpointAdapter:
    """Adds `adapter` under `adapter.name` (registering the same adapter twice is a no-op; another adapter
    under a taken name is a ValueError)."""
    old = _ADAPTERS.get(adapter.name)
    if old is not None and old != adapter:
        raise ValueError(f"checkpoint adapter {adapter.name!r} is already registered ({old!r})")
    _ADAPTERS[adapter.name] = adapter
    return adapter


def _import_builtin_adapters() -> None:
    import jaxseg.checkpoint.adelaidet  # noqa: F401  (registers "adelaidet")
    import jaxseg.checkpoint.detectron2  # noqa: F401  (registers "detectron2")


def adapter_names() -> list[str]:
    _import_builtin_adapters()
    return sorted(_ADAPTERS)


def get_adapter(name: str) -> CheckpointAdapter:
    """The adapter registered as `name`; UserError listing the known ones otherwise."""
    _import_builtin_adapters()
    if name not in _ADAPTERS:
        raise UserError(f"checkpoint adapter {name!r} (the model's checkpoint_adapter) is not known; known: "
                        f"{', '.join(sorted(_ADAPTERS))}")
    return _ADAPTERS[name]


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in np.shape(x))


def _listing(items: Sequence[str], sep: str = ", ", limit: int = 20) -> str:
    return sep.join(items[:limit]) + (" ..." if len(items) > limit else "")


def _layer(name: str) -> str:
    """`roi_heads.box_predictor.cls_score.weight` -> `roi_heads.box_predictor.cls_score`."""
    return name.rsplit(".", 1)[0] if "." in name else name


def _class_counts(adapter: CheckpointAdapter, mismatched: Sequence[tuple[str, tuple[int, ...]]],
                  num_classes: int | None) -> tuple[int, list[str]] | None:
    """The class count most mismatched tensors encode (as the adapter tells it), other than the model's, and the
    layers that encode it; None when the adapter cannot tell."""
    if adapter.classes_in is None:
        return None
    layers: dict[int, list[str]] = {}
    for name, shape in mismatched:
        n = adapter.classes_in(name, shape)
        if n is not None and n != num_classes and _layer(name) not in layers.setdefault(n, []):
            layers[n].append(_layer(name))
    if not any(layers.values()):
        return None
    n = max(layers, key=lambda k: len(layers[k]))
    return n, layers[n]


def _class_error(source: str, adapter: CheckpointAdapter, mismatched: list[tuple[str, tuple[int, ...]]],
                 details: list[str], num_classes: int | None) -> UserError:
    key = adapter.num_classes_key or "the model's number of classes"
    counts = _class_counts(adapter, mismatched, num_classes)
    if counts is not None and num_classes is not None:
        n, layers = counts
        head = (f"{source} has {n} classes in {', '.join(layers)} but the config's model has {num_classes} "
                f"({key}); set {key} {n} to run it as it is")
    else:
        head = f"{source} was made for another number of classes than the config's model ({key})"
    return UserError(f"{head}. Class-dependent layers that do not fit: {'; '.join(details)}. Training from this "
                     "checkpoint (MODEL.WEIGHTS of a training run) re-initialises them instead, as detectron2 "
                     "fine-tuning does.")


def convert_state_dict(
    state_dict: Mapping[str, Any],
    target: Mapping,
    adapter: CheckpointAdapter | str,
    *,
    source: str,
    ckpt: Mapping[str, Any] | None = None,
    allow_missing: bool = False,
    reinit_class_dependent: bool = False,
    num_classes: int | None = None,
) -> dict:
    """Fill the variable tree `target` (ShapeDtypeStructs from jax.eval_shape(model.init, ...), or the initial
    arrays of a training run) from a state dict, by the rules of `adapter` (an adapter or its name).

    Returns a nested dict of numpy float32 arrays with the structure of `target`; variables the file lacks keep
    their `target` value when `allow_missing`. `ckpt` (as read_checkpoint returns it) is passed to the adapter's
    `prepare` hook. A class-count mismatch in the class-dependent layers re-initialises them, with a warning,
    when `reinit_class_dependent` (training init); otherwise it is a UserError naming the layers and, with
    `num_classes` (the model's), both class counts. Missing (unless allow_missing), unexpected or mis-shaped
    tensors raise one UserError, naming `source`, that lists them all.
    """
    adapter = get_adapter(adapter) if isinstance(adapter, str) else adapter
    want = flatten_dict(dict(target))
    by_rest: dict[Path, list[Path]] = {}
    for p in want:
        by_rest.setdefault(p[1:], []).append(p)
    state = dict(state_dict)
    if adapter.prepare is not None:
        state = adapter.prepare(state, ckpt if ckpt is not None else {"model": state}, list(want))

    got: dict[Path, np.ndarray | None] = {}
    unexpected: list[str] = []
    misshaped: list[str] = []
    class_mismatch: list[tuple[str, tuple[int, ...]]] = []
    class_details: list[str] = []
    for name, value in state.items():
        if adapter.is_ignored(name):
            continue
        path = adapter.to_path(name)
        if path not in want and len(by_rest.get(path[1:], ())) == 1:
            path = by_rest[path[1:]][0]  # e.g. a learned norm: its weight/bias are parameters
        if path not in want:
            unexpected.append(f"{name} {_shape(value)}")
            continue
        value = adapter.to_layout(np.asarray(value), path)
        model_shape = _shape(want[path])
        if tuple(value.shape) == model_shape:
            got[path] = value.astype(np.float32)
            continue
        detail = f"{name}: checkpoint {tuple(value.shape)} vs model {model_shape} (Flax layout)"
        if adapter.is_class_dependent(name):
            if all(_layer(n) != _layer(name) for n, _ in class_mismatch):  # one example per layer
                class_details.append(detail)
            class_mismatch.append((name, _shape(state[name])))
            if reinit_class_dependent:
                got[path] = np.asarray(adapter.init_class_dependent(name, model_shape), np.float32)
                continue
        got[path] = None  # present, but unusable: reported as mis-shaped, not missing
        misshaped.append(detail)

    missing = [adapter.to_name(p) for p in want if p not in got]
    problems = []
    if missing and not allow_missing:
        problems.append(f"{len(missing)} missing: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_listing(unexpected)}")
    if class_mismatch and not reinit_class_dependent and not problems and len(misshaped) == len(class_mismatch):
        raise _class_error(source, adapter, class_mismatch, class_details, num_classes)
    if misshaped:
        problems.append(f"{len(misshaped)} with the wrong shape: {_listing(misshaped, '; ')}")
    if problems:
        raise UserError(f"{source} does not fit this model ({'; '.join(problems)}). Is it a checkpoint of the "
                        "architecture in the config?")
    if class_mismatch:
        counts = _class_counts(adapter, class_mismatch, num_classes)
        what = f" (checkpoint {counts[0]}, model {num_classes})" if counts and num_classes is not None else ""
        layers = ", ".join(dict.fromkeys(_layer(n) for n, _ in class_mismatch))
        logger.warning("%s: class count differs%s; re-initialising %s", source, what, layers)
    if missing:
        logger.warning("%s: %d model tensors not in the checkpoint keep their initial values: %s",
                       source, len(missing), _listing(missing, limit=10))
    return unflatten_dict({p: want[p] if got.get(p) is None else got[p] for p in want})
