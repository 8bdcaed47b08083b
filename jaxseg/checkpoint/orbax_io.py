"""Converted weights as orbax checkpoints: a directory MODEL.WEIGHTS can point at."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxseg.errors import UserError


def save_variables(path: str, variables: Mapping[str, Any]) -> None:
    """Write `variables` (a pytree of arrays) to the new directory `path`, atomically: a temp sibling, then rename."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(path)
    if os.path.exists(path):
        raise UserError(f"{path} already exists; remove it or choose another output directory")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=parent)
    try:
        ckpt_dir = os.path.join(tmp, "variables")
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(ckpt_dir, jax.tree.map(np.asarray, dict(variables)))
            ckptr.wait_until_finished()
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_orbax_checkpoint(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "variables"))


def training_checkpoint_dir(path: str) -> str | None:
    """The train-state item of a training checkpoint: OUTPUT_DIR/checkpoints (latest step) or one step's dir."""
    steps = sorted((int(d) for d in os.listdir(path) if d.isdigit()), reverse=True) if os.path.isdir(path) else []
    for candidate in [os.path.join(path, str(s)) for s in steps] + [path]:
        if os.path.isdir(os.path.join(candidate, "default")):
            return os.path.join(candidate, "default")
    return None


def restore_variables(path: str, target: Mapping[str, Any]) -> dict:
    """Restore a converted directory, or the params of a training checkpoint, into the structure of `target`
    (ShapeDtypeStructs); a mismatch is a UserError naming the path."""
    import orbax.checkpoint as ocp

    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), dict(target))
    try:
        with ocp.StandardCheckpointer() as ckptr:
            if is_orbax_checkpoint(path):
                return ckptr.restore(os.path.join(os.path.abspath(path), "variables"), abstract)
            train_dir = training_checkpoint_dir(os.path.abspath(path))
            if train_dir is None:
                raise UserError(f"{path} is a directory but neither a converted checkpoint (no 'variables' inside) "
                                "nor a training checkpoint")
            state = ckptr.restore(train_dir, _here(ckptr.metadata(train_dir)))  # a TrainState as nested dicts
            state = {**state, **state.get("model_state", {})}  # TrainState.model_state holds the collections
            variables = {k: state[k] for k in abstract if k in state}
            return ckptr_restore_check(variables, abstract, path)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} does not fit this model: {str(e).splitlines()[0][:500]}") from None


def _here(metadata: Any) -> Any:
    """Abstract arrays of a saved tree, placed on this process's first device: a checkpoint written by a run
    on another device count (8 devices, several hosts) restores here without a topology mismatch."""
    tree = getattr(metadata, "item_metadata", metadata)
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=here), tree)


def ckptr_restore_check(variables: dict, abstract: dict, path: str) -> dict:
    """Same tree structure and shapes as the model's variables, else a UserError."""
    if jax.tree.structure(variables) != jax.tree.structure(abstract):
        raise UserError(f"{path}: the checkpoint's variables do not match this model's (another architecture?)")
    bad = [f"{a.shape} vs {b.shape}" for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(abstract))
           if a.shape != b.shape]
    if bad:
        raise UserError(f"{path}: {len(bad)} variables have the wrong shape, e.g. {bad[0]}")
    return jax.tree.map(np.asarray, variables)
