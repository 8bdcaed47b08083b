"""load_weights: MODEL.WEIGHTS (a .pkl, a .pth, a converted directory or a zoo name) -> Flax variables.

Checkpoint files go through the model's checkpoint adapter (`model.checkpoint_adapter`, see
jaxseg.checkpoint.adapters); zoo names such as detectron2://... through jaxseg.checkpoint.catalog.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from jaxseg.checkpoint.adapters import convert_state_dict, get_adapter
from jaxseg.checkpoint.catalog import resolve_weights_path
from jaxseg.checkpoint.orbax_io import restore_variables
from jaxseg.checkpoint.readers import read_checkpoint
from jaxseg.errors import UserError


def abstract_variables(model) -> dict[str, Any]:
    """Shapes/dtypes of the model's variables, without running anything (jax.eval_shape of init)."""
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), *model.init_args())


def load_weights(cfg, path: str | None = None, model=None, initial: dict[str, Any] | None = None) -> dict[str, Any]:
    """Variables for the model of `cfg` (or `model`) from `path` (default cfg.MODEL.WEIGHTS).

    Strict (every model tensor must come from the file, with the model's class count) unless `initial`
    variables are given (training init): then tensors the file lacks keep their initial values and predictor
    layers of another class count are re-initialised, as detectron2 fine-tuning does, each with a warning.
    """
    from jaxseg.models.registry import build_model

    path = cfg.MODEL.WEIGHTS if path is None else path
    if not path:
        raise UserError("MODEL.WEIGHTS is empty: give a .pkl/.pth checkpoint or a converted directory, "
                        "e.g. MODEL.WEIGHTS model_final_f10217.pkl")
    local = resolve_weights_path(path)
    model = build_model(cfg) if model is None else model
    if os.path.isdir(local):
        return restore_variables(local, abstract_variables(model))
    if getattr(model, "checkpoint_adapter", None) is None:
        raise UserError(f"MODEL.WEIGHTS {path}: {type(model).__name__} reads no checkpoint files (it declares no "
                        "checkpoint adapter); give a converted or training checkpoint directory")
    adapter = get_adapter(model.checkpoint_adapter)
    target = abstract_variables(model) if initial is None else initial
    ckpt = read_checkpoint(local)
    check_pixel_statistics(ckpt["model"], model, path)
    training = initial is not None
    return convert_state_dict(ckpt["model"], target, adapter, source=local, ckpt=ckpt, allow_missing=training,
                              reinit_class_dependent=training, num_classes=getattr(model, "num_classes", None))


def check_pixel_statistics(state: dict[str, Any], model, path: str) -> None:
    """Files of detectron2 <= 0.1 (and repos built on it, e.g. gakkiri/EmbedMask) store the normalisation as
    `pixel_mean` / `pixel_std` buffers; the model uses the config's values, so a file made with others is refused."""
    spec = getattr(model, "input_spec", None)
    for name, key in (("pixel_mean", "MODEL.PIXEL_MEAN"), ("pixel_std", "MODEL.PIXEL_STD")):
        if name not in state or spec is None:
            continue
        have = np.asarray(state[name], np.float64).reshape(-1)
        want = np.asarray(getattr(spec, name), np.float64)
        if have.shape != want.shape or not np.allclose(have, want, rtol=1e-4, atol=1e-3):
            raise UserError(f"MODEL.WEIGHTS {path}: the checkpoint's {name} {have.round(4).tolist()} differs from "
                            f"{key} {want.round(4).tolist()}; set {key} to the checkpoint's values")
