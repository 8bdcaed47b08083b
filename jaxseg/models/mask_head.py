"""Mask R-CNN mask head (MaskRCNNConvUpsampleHead): 4 convs, a 2x deconv, per-class mask logits."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models.layers import Conv2d, c2_msra_fill, normal_init


class MaskRCNNConvUpsampleHead(nn.Module):
    num_classes: int
    num_conv: int = 4
    conv_dim: int = 256
    norm: str = ""
    cls_agnostic_mask: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # (R, S, S, C) -> mask logits (R, 2S, 2S, num_mask_classes)
        for i in range(self.num_conv):
            x = Conv2d(self.conv_dim, 3, padding=1, use_bias=not self.norm, norm=self.norm, activation=True,
                       name=f"mask_fcn{i + 1}")(x)
        # ConvTranspose2d(k=2, s=2): with transpose_kernel=True the kernel is PyTorch's (in, out, kh, kw)
        # weight transposed to (kh, kw, out, in), with no spatial flip.
        x = nn.ConvTranspose(self.conv_dim, (2, 2), strides=(2, 2), padding="VALID", transpose_kernel=True,
                             precision=jax.lax.Precision.HIGHEST, kernel_init=c2_msra_fill, name="deconv")(x)
        x = nn.relu(x)
        n = 1 if self.cls_agnostic_mask else self.num_classes
        return Conv2d(n, 1, kernel_init=normal_init(0.001), name="predictor")(x)


def mask_probs_for_classes(mask_logits: jax.Array, classes: jax.Array) -> jax.Array:
    """(R, M, M, K) logits and (R,) classes -> (R, M, M) sigmoid probabilities of each box's class."""
    if mask_logits.shape[-1] == 1:
        return jax.nn.sigmoid(mask_logits[..., 0])
    picked = jnp.take_along_axis(mask_logits, classes[:, None, None, None], axis=-1)[..., 0]
    return jax.nn.sigmoid(picked)
