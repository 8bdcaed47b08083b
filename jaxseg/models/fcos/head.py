"""FCOSHead: the convolution towers and predictions FCOS shares over every FPN level.

Per level: an optional shared tower, then a class tower and a box tower (each NUM_*_CONVS x [conv3x3 + GroupNorm(32)
+ ReLU]); class logits from the class tower; centerness and the (l, t, r, b) regression (in units of the level's
stride, ReLU'd, times a learned per-level scale when USE_SCALE) from the box tower. The box-tower output is also
returned: BlendMask computes its attentions from it. Module names follow AdelaiDet's state dict
(`cls_tower.0` conv, `cls_tower.1` norm, ... `cls_logits`, `bbox_pred`, `ctrness`, `scales.0.scale`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models.layers import Conv2d, GroupNorm, normal_init


class Scale(nn.Module):
    """A learned scalar factor (AdelaiDet's `Scale`, parameter `scale` of shape (1,))."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x * self.param("scale", nn.initializers.ones, (1,), jnp.float32).astype(x.dtype)


class FCOSHead(nn.Module):
    num_classes: int
    num_levels: int
    num_cls_convs: int = 4
    num_box_convs: int = 4
    num_share_convs: int = 0
    norm: str = "GN"  # "GN" or "none"
    use_scale: bool = True
    prior_prob: float = 0.01
    channels: int = 256  # of every FPN level (the towers keep it)

    def setup(self) -> None:
        bias = -math.log((1 - self.prior_prob) / self.prior_prob)
        convs = (("share_tower", self.num_share_convs), ("cls_tower", self.num_cls_convs),
                 ("bbox_tower", self.num_box_convs))
        self.towers = {prefix: self._tower_layers(prefix, n) for prefix, n in convs}
        self.cls_logits = Conv2d(self.num_classes, 3, padding=1, kernel_init=normal_init(0.01),
                                 bias_init=nn.initializers.constant(bias))
        self.bbox_pred = Conv2d(4, 3, padding=1, kernel_init=normal_init(0.01))
        self.ctrness = Conv2d(1, 3, padding=1, kernel_init=normal_init(0.01))
        self.scales = [Scale(name=f"scales_{i}") for i in range(self.num_levels)] if self.use_scale else None

    def _tower_layers(self, prefix: str, n: int) -> list[tuple[nn.Module, nn.Module | None]]:
        """n x (conv, norm or None), named `<prefix>_<3i>` and `<prefix>_<3i+1>` (the ReLU is `3i+2`)."""
        return [(Conv2d(self.channels, 3, padding=1, kernel_init=normal_init(0.01), name=f"{prefix}_{3 * i}"),
                 GroupNorm(32, name=f"{prefix}_{3 * i + 1}") if self.norm == "GN" else None) for i in range(n)]

    def _tower(self, x: jax.Array, prefix: str) -> jax.Array:
        return self._run_tower(x, self.towers[prefix])

    @staticmethod
    def _run_tower(x: jax.Array, layers: Sequence[tuple[nn.Module, nn.Module | None]]) -> jax.Array:
        for conv, norm in layers:
            x = conv(x)
            x = nn.relu(norm(x) if norm is not None else x)
        return x

    def __call__(self, features: Sequence[jax.Array]) -> dict[str, list[jax.Array]]:
        """features: per level (N, H, W, C) -> per level logits (N, H, W, K), reg (N, H, W, 4) in stride units,
        ctrness (N, H, W, 1) logits, bbox_tower (N, H, W, C)."""
        out: dict[str, list[jax.Array]] = {"logits": [], "reg": [], "ctrness": [], "bbox_tower": []}
        for level, x in enumerate(features):
            x = self._tower(x, "share_tower")
            cls_t = self._tower(x, "cls_tower")
            box_t = self._tower(x, "bbox_tower")
            out["logits"].append(self.cls_logits(cls_t))
            reg = self.bbox_pred(box_t)
            if self.scales is not None:
                reg = self.scales[level](reg)
            out["reg"].append(nn.relu(reg))  # the improved FCOS: ReLU, not exp
            out["ctrness"].append(self.ctrness(box_t))
            out["bbox_tower"].append(box_t)
        return out
