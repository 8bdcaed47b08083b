"""ResNet (detectron2 flavour): BasicStem + bottleneck stages res2..res5, FrozenBN, stride in the 1x1 conv.

Module names follow detectron2's state dict: `stem/conv1`, `res3_0/shortcut`, `res3_0/conv1` ...
"""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxseg.models.backbones.backbone import Backbone, ShapeSpec
from jaxseg.models.layers import Conv2d, check_norm, max_pool
from jaxseg.models.registry import BACKBONE_REGISTRY

# blocks per stage res2..res5
RESNET_DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


class BasicStem(nn.Module):
    """7x7/2 conv (pad 3) + norm + ReLU, then 3x3/2 max pool (pad 1): stride 4."""

    out_channels: int = 64
    norm: str = "FrozenBN"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = Conv2d(self.out_channels, 7, stride=2, padding=3, use_bias=False, norm=self.norm, activation=True,
                   name="conv1")(x)
        return max_pool(x, 3, 2, 1)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 -> 1x1 with a projection shortcut when the channel count changes."""

    out_channels: int
    bottleneck_channels: int
    stride: int = 1
    stride_in_1x1: bool = True
    dilation: int = 1
    norm: str = "FrozenBN"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s1, s3 = (self.stride, 1) if self.stride_in_1x1 else (1, self.stride)
        if x.shape[-1] != self.out_channels:
            shortcut = Conv2d(self.out_channels, 1, stride=self.stride, use_bias=False, norm=self.norm,
                              name="shortcut")(x)
        else:
            shortcut = x
        y = Conv2d(self.bottleneck_channels, 1, stride=s1, use_bias=False, norm=self.norm, activation=True,
                   name="conv1")(x)
        y = Conv2d(self.bottleneck_channels, 3, stride=s3, padding=self.dilation, dilation=self.dilation,
                   use_bias=False, norm=self.norm, activation=True, name="conv2")(y)
        y = Conv2d(self.out_channels, 1, use_bias=False, norm=self.norm, name="conv3")(y)
        return nn.relu(y + shortcut)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34), projection shortcut when the shape changes."""

    out_channels: int
    stride: int = 1
    norm: str = "FrozenBN"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != self.out_channels or self.stride != 1:
            shortcut = Conv2d(self.out_channels, 1, stride=self.stride, use_bias=False, norm=self.norm,
                              name="shortcut")(x)
        else:
            shortcut = x
        y = Conv2d(self.out_channels, 3, stride=self.stride, padding=1, use_bias=False, norm=self.norm,
                   activation=True, name="conv1")(x)
        y = Conv2d(self.out_channels, 3, padding=1, use_bias=False, norm=self.norm, name="conv2")(y)
        return nn.relu(y + shortcut)


class ResNet(nn.Module, Backbone):
    """Returns {"res2": stride 4, ..., "res5": stride 32} (only those in `out_features`)."""

    depth: int = 50
    out_features: tuple[str, ...] = ("res2", "res3", "res4", "res5")
    stem_out_channels: int = 64
    res2_out_channels: int = 256
    width_per_group: int = 64
    num_groups: int = 1
    stride_in_1x1: bool = True
    res5_dilation: int = 1
    norm: str = "FrozenBN"

    def __post_init__(self) -> None:
        check_resnet_config(self.depth, self.num_groups, self.res2_out_channels, self.res5_dilation, self.norm)
        super().__post_init__()

    @nn.nowrap
    def output_shape(self) -> dict[str, ShapeSpec]:
        shapes, stride, channels = {"stem": ShapeSpec(self.stem_out_channels, 4)}, 4, self.res2_out_channels
        for i in range(4):
            stage = f"res{i + 2}"
            if i > 0 and not (stage == "res5" and self.res5_dilation == 2):
                stride *= 2
            shapes[stage] = ShapeSpec(channels, stride)
            channels *= 2
        return {k: v for k, v in shapes.items() if k in self.out_features}

    @property
    def stage_names(self) -> tuple[str, ...]:
        return ("stem", "res2", "res3", "res4", "res5")

    @nn.nowrap
    def stage_of(self, path: tuple[str, ...]) -> str | None:
        """("res2_0", "conv1", "kernel") -> "res2"; ("stem", ...) -> "stem"."""
        stage = path[0].split("_")[0] if path else None
        return stage if stage in self.stage_names else None

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:  # x: (N, H, W, 3)
        x = BasicStem(self.stem_out_channels, self.norm, name="stem")(x)
        outputs = {}
        out_ch, bott_ch = self.res2_out_channels, self.width_per_group * self.num_groups
        for i, num_blocks in enumerate(RESNET_DEPTHS[self.depth]):
            stage = f"res{i + 2}"
            dilation = self.res5_dilation if stage == "res5" else 1
            first_stride = 1 if i == 0 or dilation == 2 else 2
            for b in range(num_blocks):
                stride = first_stride if b == 0 else 1
                if self.depth in (18, 34):
                    x = BasicBlock(out_ch, stride=stride, norm=self.norm, name=f"{stage}_{b}")(x)
                else:
                    x = BottleneckBlock(out_ch, bott_ch, stride=stride, stride_in_1x1=self.stride_in_1x1,
                                        dilation=dilation, norm=self.norm, name=f"{stage}_{b}")(x)
            if stage in self.out_features:
                outputs[stage] = x
            out_ch, bott_ch = out_ch * 2, bott_ch * 2
        return outputs


def check_resnet_config(depth: int, num_groups: int, res2_out_channels: int, res5_dilation: int, norm: str) -> None:
    """The MODEL.RESNETS values jaxseg's ResNet can build; a ValueError naming the key otherwise."""
    if num_groups != 1:
        raise ValueError("MODEL.RESNETS.NUM_GROUPS != 1 (ResNeXt) is not supported yet")
    if depth not in RESNET_DEPTHS:
        raise ValueError(f"MODEL.RESNETS.DEPTH {depth} is not one of {sorted(RESNET_DEPTHS)}")
    if depth in (18, 34) and res2_out_channels != 64:
        raise ValueError("MODEL.RESNETS.RES2_OUT_CHANNELS must be 64 for ResNet-18/34")
    if res5_dilation not in (1, 2):
        raise ValueError(f"MODEL.RESNETS.RES5_DILATION {res5_dilation} is not 1 or 2")
    check_norm(norm, "MODEL.RESNETS.NORM")


def resnet_from_config(cfg, name: str) -> ResNet:
    """The MODEL.RESNETS values -> ResNet (the bottom-up network of detectron2's backbones)."""
    r = cfg.MODEL.RESNETS
    if r.DEFORM_ON_PER_STAGE and any(r.DEFORM_ON_PER_STAGE):
        raise ValueError("MODEL.RESNETS.DEFORM_ON_PER_STAGE (deformable conv) is not supported yet")
    return ResNet(
        depth=r.DEPTH, out_features=tuple(r.OUT_FEATURES), stem_out_channels=r.STEM_OUT_CHANNELS,
        res2_out_channels=r.RES2_OUT_CHANNELS, width_per_group=r.WIDTH_PER_GROUP, num_groups=r.NUM_GROUPS,
        stride_in_1x1=r.STRIDE_IN_1X1, res5_dilation=r.RES5_DILATION, norm=r.NORM, name=name)


@BACKBONE_REGISTRY.register()
def build_resnet_backbone(cfg) -> ResNet:
    """detectron2's build_resnet_backbone: the ResNet alone, its MODEL.RESNETS.OUT_FEATURES as outputs."""
    return resnet_from_config(cfg, "backbone")
