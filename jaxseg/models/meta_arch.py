"""The interface every model family implements (docs/model_interface.md says it in prose).

A family's model is a Flax module that also derives from `MetaArch` and is registered in
`META_ARCH_REGISTRY` under its cfg.MODEL.META_ARCHITECTURE name. The engine (predictor, evaluation,
training loop, loaders, converter) talks to models only through this interface:

* ``from_config(cfg)``: the config is read there and nowhere below (modules see plain values).
* Fields every family has: ``input_spec`` (how pictures are prepared: `InputSpec`), ``target_spec``
  (which ground truth training needs: `TargetSpec`), ``num_classes``, ``kernels`` (the kernel
  implementation: None automatic, "xla", "ffi", "triton") and ``precision`` (float32 matmul/conv
  precision: "highest", "high", "default").
* Inference in two jitted stages: ``__call__(images, image_hw)`` -> fixed-size detections plus the
  family's own mask representation (compiled once per padded input size), then
  ``postprocess(outputs, image_hw, output_hw, canvas_hw)`` -> ``boxes`` (N, D, 4) in original-image
  pixels, ``scores``, ``classes``, ``valid`` and ``masks`` (N, D, Hc, Wc) bool on a canvas that holds the
  original image (compiled once per canvas size; it uses no variables).
* ``losses(key, batch)``: a dict of scalar losses; ``batch`` holds ``images``, ``image_hw`` and the keys
  of ``target_spec.keys()``.
* ``is_frozen(path)``: whether a parameter (a path in the ``params`` tree) stays fixed in training
  (FREEZE_AT is decided by the stage names the backbone declares); ``train_collections()``: the
  variable collections training updates besides ``params`` (e.g. "batch_stats" for trainable
  BatchNorm: batch statistics of the global batch, so averaged over devices).
* ``checkpoint_adapter``: the name of the adapter in `jaxseg.checkpoint.adapters` that reads the
  family's published checkpoints (None: the family reads only orbax directories).
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp

PRECISIONS = {"": "highest", "highest": "highest", "high": "high", "medium": "default", "default": "default"}


def precision_from_config(cfg) -> str:
    """FLOAT32_PRECISION as detectron2 names it ("", "highest", "high", "medium") -> a jax matmul precision."""
    value = str(cfg.FLOAT32_PRECISION).lower()
    if value not in PRECISIONS:
        raise ValueError(f"FLOAT32_PRECISION {cfg.FLOAT32_PRECISION!r} is not one of '', highest, high, medium")
    return PRECISIONS[value]


def kernels_from_config(cfg) -> str | None:
    """MODEL.KERNELS: "" (automatic) -> None, else the implementation name (checked against the registry)."""
    from jaxseg.kernels import _dispatch

    name = cfg.MODEL.get("KERNELS", "") or None
    _dispatch.check_name(name)
    return name


def backbone_is_frozen(backbone, freeze_at: int, path: tuple[str, ...]) -> bool:
    """FREEZE_AT for a model whose backbone is its `backbone` submodule: the first `freeze_at` stages the backbone
    declares (stem, res2, ...) stay fixed; nothing outside the backbone does."""
    if not path or path[0] != "backbone":
        return False
    return backbone.stage_of(path[1:]) in backbone.frozen_stages(freeze_at)


class MetaArch:
    """Mixin for a family's top-level nn.Module; see the module docstring for the contract."""

    checkpoint_adapter: ClassVar[str | None] = None  # a family that reads published files names its adapter

    @classmethod
    def from_config(cls, cfg) -> MetaArch:
        raise NotImplementedError

    def postprocess(self, outputs: dict[str, jax.Array], image_hw: jax.Array, output_hw: jax.Array,
                    canvas_hw: tuple[int, int]) -> dict[str, jax.Array]:
        raise NotImplementedError

    def losses(self, key: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        raise NotImplementedError

    def init_args(self, size: int = 64) -> tuple[jax.Array, jax.Array]:
        """Inputs for `model.init` (parameter shapes do not depend on the picture size)."""
        channels = len(self.input_spec.pixel_mean)
        size = max(size, self.input_spec.size_divisibility)
        return jnp.zeros((1, size, size, channels), jnp.float32), jnp.array([[size, size]], jnp.int32)

    def is_frozen(self, path: tuple[str, ...]) -> bool:
        return False

    def train_collections(self) -> tuple[str, ...]:
        return ()

    def class_names(self) -> Any:
        return None
