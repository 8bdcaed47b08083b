"""The basis module (AdelaiDet's ProtoNet): NUM_BASES global bases at stride 4 from P3..P5.

refine_i = conv3x3 (no bias) + BatchNorm + ReLU on each input level; the coarser ones are resized (bilinear,
align_corners False) to the first's size and summed; then NUM_CONVS conv blocks, x2 bilinear upsampling, one
more conv block and a 1x1 conv to the bases (no activation). With LOSS_ON, training adds `seg_head` on the first
input level: conv3x3 + BN + ReLU, conv3x3 + BN + ReLU, 1x1 conv to NUM_CLASSES + 1 thing-semantic logits.
Module names follow AdelaiDet's state dict (`refine.0.0` conv, `refine.0.1` norm, `tower.5`, `seg_head.6`).
"""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxseg.models.layers import BatchNorm, Conv2d, resize_bilinear

# kaiming_uniform_(a=1) of AdelaiDet's conv_with_kaiming_uniform: U(+-sqrt(3 / fan_in))
kaiming_uniform_a1 = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


class ProtoNet(nn.Module):
    in_features: tuple[str, ...] = ("p3", "p4", "p5")
    num_bases: int = 4
    convs_dim: int = 128
    num_convs: int = 3
    loss_on: bool = False
    num_classes: int = 80  # thing classes of the semantic head (plus background)

    def _block(self, x: jax.Array, name: str, train: bool) -> jax.Array:
        x = Conv2d(self.convs_dim, 3, padding=1, use_bias=False, kernel_init=kaiming_uniform_a1, name=f"{name}_0")(x)
        return nn.relu(BatchNorm(name=f"{name}_1")(x, train))

    @nn.compact
    def __call__(self, features: dict[str, jax.Array], train: bool = False) -> dict[str, jax.Array]:
        """features {p3: (N, H, W, C), ...} -> {"bases": (N, 2H, 2W, NUM_BASES)} (+ "seg_logits" (N, H, W, K + 1)
        when training with the semantic loss)."""
        x = None
        for i, f in enumerate(self.in_features):
            y = self._block(features[f], f"refine_{i}", train)
            x = y if x is None else x + resize_bilinear(y, x.shape[1:3])
        for i in range(self.num_convs):
            x = self._block(x, f"tower_{i}", train)
        x = resize_bilinear(x, (2 * x.shape[1], 2 * x.shape[2]))  # tower.{num_convs}: nn.Upsample
        x = self._block(x, f"tower_{self.num_convs + 1}", train)
        bases = Conv2d(self.num_bases, 1, kernel_init=kaiming_uniform_a1, name=f"tower_{self.num_convs + 2}")(x)
        out = {"bases": bases}
        if self.loss_on and (train or self.is_initializing()):
            out["seg_logits"] = self._seg_head(features[self.in_features[0]], train)
        return out

    def _seg_head(self, x: jax.Array, train: bool) -> jax.Array:
        for conv, norm in ((0, 1), (3, 4)):
            x = Conv2d(self.convs_dim, 3, padding=1, use_bias=False, name=f"seg_head_{conv}")(x)
            x = nn.relu(BatchNorm(name=f"seg_head_{norm}")(x, train))
        return Conv2d(self.num_classes + 1, 1, name="seg_head_6")(x)
