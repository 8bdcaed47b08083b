"""What a backbone declares to the heads above it and to the trainer (detectron2's Backbone interface).

* ``output_shape()``: per output feature name, its channels and stride (``ShapeSpec``); heads read the
  strides from here, never from the feature names.
* ``size_divisibility``: padded inputs must be multiples of it.
* ``stage_names`` and ``stage_of(path)``: the stages in input-to-output order and which stage a
  parameter (its path inside the backbone) belongs to; FREEZE_AT = k freezes the first k stages.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ShapeSpec:
    channels: int
    stride: int


class Backbone:
    """Mixin for backbone modules."""

    def output_shape(self) -> dict[str, ShapeSpec]:
        raise NotImplementedError

    @property
    def size_divisibility(self) -> int:
        return max(s.stride for s in self.output_shape().values())

    @property
    def stage_names(self) -> tuple[str, ...]:
        return ()

    def stage_of(self, path: tuple[str, ...]) -> str | None:
        return None

    def frozen_stages(self, freeze_at: int) -> tuple[str, ...]:
        return self.stage_names[:max(int(freeze_at), 0)]


def feature_strides(input_shape: dict[str, ShapeSpec], names, key: str) -> tuple[int, ...]:
    """The strides of the named features; a ValueError naming the config key if one is not produced."""
    missing = [n for n in names if n not in input_shape]
    if missing:
        raise ValueError(f"{key} {list(names)}: {missing} not among the backbone's outputs ({', '.join(input_shape)})")
    return tuple(input_shape[n].stride for n in names)
