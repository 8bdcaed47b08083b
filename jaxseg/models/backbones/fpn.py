"""Feature Pyramid Network on a bottom-up backbone (detectron2's FPN with LastLevelMaxPool).

p5 = output5(lateral5(res5)); going down, prev = lateral_k(res_k) + upsample2x(prev), p_k = output_k(prev);
p6 = p5[::2, ::2] (max pool, kernel 1, stride 2). No activations.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxseg.models.backbones.resnet import ResNet
from jaxseg.models.layers import Conv2d, c2_xavier_fill, upsample_nearest2x


class FPN(nn.Module):
    """Returns {"p2": stride 4, ..., "p5", "p6"} for in_features res2..res5."""

    bottom_up: nn.Module
    in_features: tuple[str, ...] = ("res2", "res3", "res4", "res5")
    out_channels: int = 256
    norm: str = ""
    fuse_type: str = "sum"
    top_block: str = "maxpool"  # "maxpool" (p6 from p5) or "" (none)

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        feats = self.bottom_up(x)
        levels = [int(f[-1]) for f in self.in_features]  # res2 -> 2
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
        if self.top_block == "maxpool":
            last = f"p{levels[-1]}"
            results[f"p{levels[-1] + 1}"] = results[last][:, ::2, ::2, :]
        return dict(sorted(results.items()))


def build_resnet_fpn_backbone(cfg) -> FPN:
    """detectron2's build_resnet_fpn_backbone from config values."""
    r = cfg.MODEL.RESNETS
    if r.DEFORM_ON_PER_STAGE and any(r.DEFORM_ON_PER_STAGE):
        raise ValueError("MODEL.RESNETS.DEFORM_ON_PER_STAGE (deformable conv) is not supported yet")
    bottom_up = ResNet(
        depth=r.DEPTH, out_features=tuple(r.OUT_FEATURES), stem_out_channels=cfg.MODEL.RESNETS.STEM_OUT_CHANNELS,
        res2_out_channels=r.RES2_OUT_CHANNELS, width_per_group=r.WIDTH_PER_GROUP, num_groups=r.NUM_GROUPS,
        stride_in_1x1=r.STRIDE_IN_1X1, res5_dilation=r.RES5_DILATION, norm=r.NORM, name="bottom_up")
    f = cfg.MODEL.FPN
    return FPN(bottom_up, in_features=tuple(f.IN_FEATURES), out_channels=f.OUT_CHANNELS, norm=f.NORM,
               fuse_type=f.FUSE_TYPE, top_block="maxpool", name="backbone")
