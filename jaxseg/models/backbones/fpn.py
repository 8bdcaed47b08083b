"""Feature Pyramid Network on a bottom-up backbone (detectron2's FPN and its top blocks).

p5 = output5(lateral5(res5)); going down, prev = lateral_k(res_k) + upsample2x(prev), p_k = output_k(prev).
Top blocks add coarser levels on the last output:
* "maxpool" (detectron2's LastLevelMaxPool, Mask R-CNN): p6 = p5[::2, ::2] (max pool, kernel 1, stride 2);
* "p6p7" (AdelaiDet's LastLevelP6P7 on p5, FCOS.TOP_LEVELS 2): p6 = conv3x3/2(p5), p7 = conv3x3/2(relu(p6));
* "p6" (LastLevelP6, TOP_LEVELS 1): p6 only; "" (TOP_LEVELS 0): none.
`top_block_input` says what p6 is computed from: the last FPN output ("p5", AdelaiDet) or the last bottom-up
feature ("res5", detectron2's RetinaNet backbone, which TensorMask uses).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax

from jaxseg.models.backbones.backbone import Backbone, ShapeSpec
from jaxseg.models.backbones.resnet import resnet_from_config
from jaxseg.models.layers import Conv2d, c2_xavier_fill, check_norm, upsample_nearest2x
from jaxseg.models.registry import BACKBONE_REGISTRY

TOP_BLOCKS = {"maxpool": 1, "p6p7": 2, "p6": 1, "": 0}  # name -> levels it adds


class LastLevelP6P7(nn.Module):
    """Coarser levels from the last FPN output: p6 = conv3x3/2(p5), and p7 = conv3x3/2(relu(p6)) with_p7."""

    out_channels: int
    with_p7: bool = True
    level: int = 5  # the level of the input

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        conv = functools.partial(Conv2d, self.out_channels, 3, stride=2, padding=1, kernel_init=c2_xavier_fill)
        p6 = conv(name="p6")(x)  # AdelaiDet's module names, whatever the input level
        if not self.with_p7:
            return {f"p{self.level + 1}": p6}
        return {f"p{self.level + 1}": p6, f"p{self.level + 2}": conv(name="p7")(nn.relu(p6))}


class FPN(nn.Module, Backbone):
    """Returns {"p2": stride 4, ..., "p5", "p6"} for in_features res2..res5 (names from the strides)."""

    bottom_up: nn.Module
    in_features: tuple[str, ...] = ("res2", "res3", "res4", "res5")
    out_channels: int = 256
    norm: str = ""
    fuse_type: str = "sum"
    top_block: str = "maxpool"  # one of TOP_BLOCKS (see the module docstring)
    top_block_input: str = "p5"  # "p5" (the last output) or "res5" (the last bottom-up feature) for p6p7/p6

    def __post_init__(self) -> None:
        check_norm(self.norm, "MODEL.FPN.NORM")
        if self.top_block not in TOP_BLOCKS:
            raise ValueError(f"FPN top block {self.top_block!r} is not one of {TOP_BLOCKS}")
        if self.fuse_type not in ("sum", "avg"):
            raise ValueError(f"MODEL.FPN.FUSE_TYPE {self.fuse_type!r} is not 'sum' or 'avg'")
        super().__post_init__()

    @nn.nowrap
    def in_strides(self) -> list[int]:
        shapes = self.bottom_up.output_shape()
        missing = [f for f in self.in_features if f not in shapes]
        if missing:
            raise ValueError(f"MODEL.FPN.IN_FEATURES {missing} are not outputs of the bottom-up backbone "
                             f"({', '.join(shapes)})")
        return [shapes[f].stride for f in self.in_features]

    @nn.nowrap
    def output_shape(self) -> dict[str, ShapeSpec]:
        strides = self.in_strides()
        strides = strides + [strides[-1] * 2 ** (i + 1) for i in range(TOP_BLOCKS[self.top_block])]
        return {f"p{int(math.log2(s))}": ShapeSpec(self.out_channels, s) for s in strides}

    @property
    def size_divisibility(self) -> int:
        return self.in_strides()[-1]

    @property
    def stage_names(self) -> tuple[str, ...]:
        return self.bottom_up.stage_names

    @nn.nowrap
    def stage_of(self, path: tuple[str, ...]) -> str | None:
        """Parameters of the bottom-up network belong to its stages; the FPN's own to none."""
        return self.bottom_up.stage_of(path[1:]) if path and path[0] == "bottom_up" else None

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        feats = self.bottom_up(x)
        levels = [int(math.log2(s)) for s in self.in_strides()]  # stride 4 -> level 2
        results = {}
        prev = None
        for lvl, name in zip(levels[::-1], self.in_features[::-1]):
            lateral = Conv2d(self.out_channels, 1, use_bias=self.norm == "", norm=self.norm,
                             kernel_init=c2_xavier_fill, name=f"fpn_lateral{lvl}")(feats[name])
            if prev is None:
                prev = lateral
            else:
                prev = lateral + upsample_nearest2x(prev)
                if self.fuse_type == "avg":
                    prev = prev / 2
            results[f"p{lvl}"] = Conv2d(self.out_channels, 3, padding=1, use_bias=self.norm == "", norm=self.norm,
                                        kernel_init=c2_xavier_fill, name=f"fpn_output{lvl}")(prev)
        last = levels[-1]
        if self.top_block == "maxpool":
            results[f"p{last + 1}"] = results[f"p{last}"][:, ::2, ::2, :]
        elif self.top_block:
            source = feats[self.in_features[-1]] if self.top_block_input == "res5" else results[f"p{last}"]
            results.update(LastLevelP6P7(self.out_channels, with_p7=self.top_block == "p6p7", level=last,
                                         name="top_block")(source))
        return dict(sorted(results.items(), key=lambda kv: int(kv[0][1:])))


@BACKBONE_REGISTRY.register()
def build_resnet_fpn_backbone(cfg) -> FPN:
    """detectron2's build_resnet_fpn_backbone from config values."""
    bottom_up = resnet_from_config(cfg, "bottom_up")
    f = cfg.MODEL.FPN
    return FPN(bottom_up, in_features=tuple(f.IN_FEATURES), out_channels=f.OUT_CHANNELS, norm=f.NORM,
               fuse_type=f.FUSE_TYPE, top_block="maxpool", name="backbone")


@BACKBONE_REGISTRY.register()
def build_fcos_resnet_fpn_backbone(cfg) -> FPN:
    """AdelaiDet's FCOS backbone: ResNet + FPN with MODEL.FCOS.TOP_LEVELS coarser levels computed from p5."""
    top_levels = int(cfg.MODEL.FCOS.TOP_LEVELS)
    blocks = {2: "p6p7", 1: "p6", 0: ""}
    if top_levels not in blocks:
        raise ValueError(f"MODEL.FCOS.TOP_LEVELS must be 0, 1 or 2, got {top_levels}")
    bottom_up = resnet_from_config(cfg, "bottom_up")
    f = cfg.MODEL.FPN
    return FPN(bottom_up, in_features=tuple(f.IN_FEATURES), out_channels=f.OUT_CHANNELS, norm=f.NORM,
               fuse_type=f.FUSE_TYPE, top_block=blocks[top_levels], name="backbone")


@BACKBONE_REGISTRY.register()
def build_retinanet_resnet_fpn_backbone(cfg) -> FPN:
    """detectron2's RetinaNet backbone: ResNet + FPN with p6 = conv(res5), p7 = conv(relu(p6))."""
    bottom_up = resnet_from_config(cfg, "bottom_up")
    f = cfg.MODEL.FPN
    return FPN(bottom_up, in_features=tuple(f.IN_FEATURES), out_channels=f.OUT_CHANNELS, norm=f.NORM,
               fuse_type=f.FUSE_TYPE, top_block="p6p7", top_block_input="res5", name="backbone")
