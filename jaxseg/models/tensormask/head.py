"""TensorMaskHead: class, box and mask towers shared over the levels, and the BiPyramid mask fusion.

Every convolution is a 3x3 with bias and no norm (1x1 for the mask predictions). Per level l (features p2..p7):
class logits (N, H, W, A*K) (channel a*K + k), box deltas (N, H, W, A*4) (channel a*4 + coord) and, with
BiPyramid, the mask tower output of every level brought to p2 resolution (bilinear, align_corners False,
cropped), added to p2's and passed through `mask_fuse`; `mask_pred_%02d` (1x1) then gives the aligned mask logits
of each anchor size S at p2 resolution, (N, H2, W2, S*S) with channel v*S + u. Module names follow detectron2's
state dict (`head.cls_subnet.0`, `head.cls_score`, `head.mask_pred_11`, `head.mask_fuse.0`, ...).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax

from jaxseg.models.layers import Conv2d, normal_init, upsample_bilinear


class TensorMaskHead(nn.Module):
    num_classes: int
    num_anchors: int
    mask_sizes: tuple[int, ...]
    num_convs: int = 4
    cls_channels: int = 256
    bbox_channels: int = 128
    mask_channels: int = 128
    mask_on: bool = True
    bipyramid_on: bool = True

    def setup(self) -> None:
        def tower(prefix: str, channels: int) -> list[Conv2d]:
            return [Conv2d(channels, 3, padding=1, kernel_init=normal_init(0.01), name=f"{prefix}_{2 * i}")
                    for i in range(self.num_convs)]

        bias = -math.log((1 - 0.01) / 0.01)
        self.cls_subnet = tower("cls_subnet", self.cls_channels)
        self.cls_score = Conv2d(self.num_anchors * self.num_classes, 3, padding=1, kernel_init=normal_init(0.01),
                                bias_init=nn.initializers.constant(bias))
        self.bbox_subnet = tower("bbox_subnet", self.bbox_channels)
        self.bbox_pred = Conv2d(self.num_anchors * 4, 3, padding=1, kernel_init=normal_init(0.01))
        if self.mask_on:
            self.mask_subnet = tower("mask_subnet", self.mask_channels)
            self.mask_preds = [Conv2d(s * s, 1, kernel_init=normal_init(0.01), name=f"mask_pred_{s:02d}")
                               for s in self.mask_sizes]
            if self.bipyramid_on:
                self.mask_fuse = Conv2d(self.mask_channels, 3, padding=1, kernel_init=normal_init(0.01),
                                        name="mask_fuse_0")

    @staticmethod
    def _run(tower: Sequence[Conv2d], x: jax.Array) -> jax.Array:
        for conv in tower:
            x = nn.relu(conv(x))
        return x

    def __call__(self, features: Sequence[jax.Array]) -> dict[str, list]:
        """features p2..p7 (N, H_l, W_l, C) -> logits, deltas per level; mask_feats per level (N, H2, W2, Cm)."""
        out = {"logits": [self.cls_score(self._run(self.cls_subnet, x)) for x in features],
               "deltas": [self.bbox_pred(self._run(self.bbox_subnet, x)) for x in features]}
        if self.mask_on:
            feats = [self._run(self.mask_subnet, x) for x in features]
            if self.bipyramid_on:
                h, w = feats[0].shape[1:3]
                feats = [nn.relu(self.mask_fuse((f if lvl == 0 else upsample_bilinear(f, 2 ** lvl))[:, :h, :w]
                                                + feats[0])) for lvl, f in enumerate(feats)]
            out["mask_feats"] = feats
        return out

    def aligned_masks(self, mask_feats: jax.Array, anchor: int) -> jax.Array:
        """(N, H2, W2, Cm) fused mask features of one level -> (N, H2, W2, S*S) aligned logits of anchor size S."""
        return self.mask_preds[anchor](mask_feats)
