"""Datasets by name, as detectron2's ``DatasetCatalog`` and ``MetadataCatalog`` do it.

A dataset is a name bound to a *loader*, a function of no arguments that returns the dataset as a
list of detectron2-style records (``file_name``, ``height``, ``width``, ``image_id``,
``annotations``). Configs refer to datasets by name (``DATASETS.TRAIN: ("coco_2017_train",)``).
Loaders run on first use and their result is cached, so registering is cheap and a missing file only
matters for the datasets a run actually uses.

Metadata (``thing_classes``, ``thing_dataset_id_to_contiguous_id``, ``evaluator_type``, ...) is a plain
dict per name; loaders may add to it (``load_coco_json`` fills in the classes read from the json).

The builtin names (COCO, shapes) are registered when :mod:`jaxseg.data.coco` is imported, which
every lookup here does first, so ``get_dataset_dicts("coco_2017_val")`` works without that import.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Callable
from typing import Any

from jaxseg.errors import UserError

__all__ = [
    "register_dataset",
    "get_dataset_dicts",
    "get_metadata",
    "list_datasets",
    "remove_dataset",
    "update_metadata",
]

_LOADERS: dict[str, Callable[[], list[dict]]] = {}
_METADATA: dict[str, dict[str, Any]] = {}
_CACHE: dict[str, list[dict]] = {}
_LOCK = threading.RLock()


def _ensure_builtin() -> None:
    """Import :mod:`jaxseg.data.coco`, which registers the builtin names (once; later calls are free)."""
    import jaxseg.data.coco  # noqa: F401


def register_dataset(name: str, loader: Callable[[], list[dict]], **metadata: Any) -> None:
    """Bind ``name`` to ``loader`` (called with no arguments on first use) and set its metadata.

    Raises:
        UserError: ``name`` is already registered (call :func:`remove_dataset` first to replace it).
    """
    if not isinstance(name, str) or not name:
        raise UserError(f"a dataset name must be a non-empty string, got {name!r}")
    if not callable(loader):
        raise UserError(f"the loader registered for dataset {name!r} must be callable, got {type(loader).__name__}")
    with _LOCK:
        if name in _LOADERS:
            raise UserError(f"dataset {name!r} is already registered; pick another name or call remove_dataset first")
        _LOADERS[name] = loader
        _METADATA.setdefault(name, {}).update(metadata, name=name)


def remove_dataset(name: str) -> None:
    """Forget a dataset: its loader, cached records and metadata. Unknown names are ignored."""
    with _LOCK:
        _LOADERS.pop(name, None)
        _CACHE.pop(name, None)
        _METADATA.pop(name, None)


def get_dataset_dicts(name: str) -> list[dict]:
    """The records of dataset ``name``, loaded on the first call and cached.

    The same list is returned on every call: treat it as read-only (``copy.deepcopy`` it to edit).

    Raises:
        UserError: no dataset of that name (the message lists close names), or the loader failed
            with a UserError (e.g. a missing annotation file).
    """
    _ensure_builtin()
    with _LOCK:
        loader = _LOADERS.get(name)
        if loader is None:
            raise UserError(_unknown_message(name))
        if name not in _CACHE:
            records = loader()
            if not isinstance(records, list):
                raise UserError(f"the loader of dataset {name!r} returned {type(records).__name__}, expected a list")
            _CACHE[name] = records
        return _CACHE[name]


def get_metadata(name: str) -> dict[str, Any]:
    """The metadata dict of dataset ``name`` (live: loaders add to it when they run).

    Raises:
        UserError: no dataset of that name.
    """
    _ensure_builtin()
    with _LOCK:
        if name not in _METADATA:
            raise UserError(_unknown_message(name))
        return _METADATA[name]


def update_metadata(name: str, **values: Any) -> dict[str, Any]:
    """Set metadata fields of ``name`` (creating its entry if needed); return the metadata dict.

    A field that is already set may only be set again to an equal value, as in detectron2, so a json
    whose classes disagree with a builtin dataset's is caught.

    Raises:
        UserError: a field already holds a different value.
    """
    with _LOCK:
        meta = _METADATA.setdefault(name, {"name": name})
        for key, value in values.items():
            if key in meta and meta[key] != value:
                raise UserError(
                    f"metadata {key!r} of dataset {name!r} is already {_short(meta[key])}; "
                    f"cannot change it to {_short(value)}"
                )
            meta[key] = value
        return meta


def list_datasets() -> list[str]:
    """The registered dataset names, sorted."""
    _ensure_builtin()
    with _LOCK:
        return sorted(_LOADERS)


def _unknown_message(name: str) -> str:
    """'dataset X is not registered; did you mean ...' with the closest registered names."""
    close = difflib.get_close_matches(str(name), list(_LOADERS), n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"registered: {', '.join(sorted(_LOADERS)) or 'none'}"
    return (
        f"dataset {name!r} is not registered; {hint} "
        "(register your own with jaxseg.data.coco.register_coco_instances(name, json_file, image_root))"
    )


def _short(value: Any, limit: int = 80) -> str:
    """repr of ``value`` cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
