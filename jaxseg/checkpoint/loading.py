"""load_weights: MODEL.WEIGHTS (a .pkl, a .pth or a converted directory) -> Flax variables for the model."""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
from flax.traverse_util import flatten_dict

from jaxseg.checkpoint.c2_names import align_to_model_keys
from jaxseg.checkpoint.detectron2 import convert_state_dict, path_to_d2_name
from jaxseg.checkpoint.orbax_io import restore_variables
from jaxseg.checkpoint.readers import read_checkpoint
from jaxseg.errors import UserError


def abstract_variables(model) -> dict[str, Any]:
    """Shapes/dtypes of the model's variables, without running anything (jax.eval_shape of init)."""
    images = jnp.zeros((1, 64, 64, 3), jnp.float32)
    hw = jnp.array([[64, 64]], jnp.int32)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images, hw, hw))


def load_weights(cfg, path: str | None = None, model=None, initial: dict[str, Any] | None = None) -> dict[str, Any]:
    """Variables for the model of `cfg` from `path` (default cfg.MODEL.WEIGHTS).

    Strict (every model tensor must come from the file) unless `initial` variables are given: then tensors
    the file lacks keep their initial values (training from ImageNet weights), with a warning.
    """
    from jaxseg.models.registry import build_model

    path = cfg.MODEL.WEIGHTS if path is None else path
    model = build_model(cfg) if model is None else model
    target = abstract_variables(model) if initial is None else initial
    if not path:
        raise UserError("MODEL.WEIGHTS is empty: give a .pkl/.pth checkpoint or a converted directory, "
                        "e.g. MODEL.WEIGHTS model_final_f10217.pkl")
    if "://" in path:
        raise UserError(f"MODEL.WEIGHTS {path!r} is a URL; jaxseg does not download: fetch the file and give "
                        "its local path")
    if os.path.isdir(path):
        return restore_variables(path, abstract_variables(model))
    ckpt = read_checkpoint(path)
    state_dict = ckpt["model"]
    if ckpt.get("matching_heuristics"):
        names = [path_to_d2_name(p) for p in flatten_dict(dict(target))]
        state_dict = align_to_model_keys(names, state_dict)
    return convert_state_dict(state_dict, target, source=path, allow_missing=initial is not None)
