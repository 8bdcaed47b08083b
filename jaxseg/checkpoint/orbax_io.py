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


def restore_variables(path: str, target: Mapping[str, Any]) -> dict:
    """Restore into the structure of `target` (ShapeDtypeStructs); a mismatch is a UserError naming the path."""
    import orbax.checkpoint as ocp

    if not is_orbax_checkpoint(path):
        raise UserError(f"{path} is a directory but not a jaxseg checkpoint (no 'variables' inside)")
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), dict(target))
    try:
        with ocp.StandardCheckpointer() as ckptr:
            return ckptr.restore(os.path.join(path, "variables"), abstract)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} does not fit this model: {str(e).splitlines()[0][:500]}") from None
