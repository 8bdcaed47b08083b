"""Registries as in detectron2: name -> builder, for meta-architectures, backbones, proposal generators
and ROI heads. A family module registers its builders when imported; `jaxseg.models` imports every
built-in family, so the built-ins are always there, whatever a user registers first.

    @META_ARCH_REGISTRY.register()
    class MyModel(nn.Module, MetaArch): ...     # cfg.MODEL.META_ARCHITECTURE "MyModel"

    @BACKBONE_REGISTRY.register()
    def build_my_backbone(cfg) -> nn.Module: ...  # cfg.MODEL.BACKBONE.NAME "build_my_backbone"
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jaxseg.errors import UserError


class Registry:
    """A name -> object table; `register()` as a decorator, or `register(obj)` / `register(obj, name=...)`."""

    def __init__(self, name: str, config_key: str) -> None:
        self.name, self.config_key = name, config_key
        self._objects: dict[str, Any] = {}

    def register(self, obj: Any = None, *, name: str | None = None) -> Any:
        def deco(o: Any) -> Any:
            key = name or o.__name__
            if key in self._objects and self._objects[key] is not o:
                raise ValueError(f"{self.name}: {key!r} is already registered ({self._objects[key]!r})")
            self._objects[key] = o
            return o

        return deco if obj is None else deco(obj)

    def get(self, key: str) -> Any:
        _import_builtin_families()
        if key not in self._objects:
            raise UserError(f"{self.config_key} {key!r} is not known; known: {', '.join(sorted(self._objects))}")
        return self._objects[key]

    def __contains__(self, key: str) -> bool:
        _import_builtin_families()
        return key in self._objects

    def names(self) -> list[str]:
        _import_builtin_families()
        return sorted(self._objects)


META_ARCH_REGISTRY = Registry("META_ARCH", "MODEL.META_ARCHITECTURE")
BACKBONE_REGISTRY = Registry("BACKBONE", "MODEL.BACKBONE.NAME")
PROPOSAL_GENERATOR_REGISTRY = Registry("PROPOSAL_GENERATOR", "MODEL.PROPOSAL_GENERATOR.NAME")
ROI_HEADS_REGISTRY = Registry("ROI_HEADS", "MODEL.ROI_HEADS.NAME")


def _import_builtin_families() -> None:
    import jaxseg.models  # noqa: F401  (registers every built-in family)


def build_model(cfg) -> Any:
    """The model of cfg.MODEL.META_ARCHITECTURE, built by its `from_config(cfg)`.

    Config mistakes found while building (ValueError from a builder) become a UserError.
    """
    arch: Callable = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    try:
        return arch.from_config(cfg)
    except ValueError as e:
        raise UserError(f"config: {e}") from None


def build_backbone(cfg) -> Any:
    """The backbone of cfg.MODEL.BACKBONE.NAME (a module with `output_shape()` and `size_divisibility`)."""
    return BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME)(cfg)
