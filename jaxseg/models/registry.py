"""META_ARCHITECTURE name -> builder, as detectron2's META_ARCH_REGISTRY."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn

from jaxseg.errors import UserError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _BUILDERS[name] = fn
        return fn
    return deco


def build_model(cfg) -> nn.Module:
    """The Flax module for cfg.MODEL.META_ARCHITECTURE (config errors become UserError).

    Also applies cfg.MODEL.KERNELS ("" automatic, or "xla"/"ffi"/"triton") as the process-wide kernel choice.
    """
    from jaxseg.kernels import _dispatch

    _dispatch.set_default(cfg.MODEL.get("KERNELS", ""))
    _register_builtin()
    name = cfg.MODEL.META_ARCHITECTURE
    if name not in _BUILDERS:
        raise UserError(f"MODEL.META_ARCHITECTURE {name!r} is not known; known: {sorted(_BUILDERS)}")
    try:
        return _BUILDERS[name](cfg)
    except ValueError as e:
        raise UserError(f"config: {e}") from None


def _register_builtin() -> None:
    if _BUILDERS:
        return
    from jaxseg.models.mask_rcnn import build_mask_rcnn

    _BUILDERS["GeneralizedRCNN"] = build_mask_rcnn
