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
        x = nn.relu(ConvTranspose2x2(self.conv_dim, name="deconv")(x))
        n = 1 if self.cls_agnostic_mask else self.num_classes
        return Conv2d(n, 1, kernel_init=normal_init(0.001), name="predictor")(x)


class ConvTranspose2x2(nn.Module):
    """ConvTranspose2d(kernel 2, stride 2, padding 0) as one matmul: each input pixel fills a 2x2 output block,
    out[n, 2y+i, 2x+j, o] = b[o] + sum_c x[n, y, x, c] * kernel[i, j, o, c].

    `kernel` (2, 2, out, in) is PyTorch's (in, out, kh, kw) weight transposed (2, 3, 1, 0), no spatial flip
    (the layout of flax's ConvTranspose with transpose_kernel=True, which is much slower on CPU).
    """

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # (N, H, W, C) -> (N, 2H, 2W, features)
        n, h, w, c = x.shape
        kernel = self.param("kernel", c2_msra_fill, (2, 2, self.features, c), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        k = kernel.astype(x.dtype).reshape(4 * self.features, c)  # rows (i, j, o)
        y = jax.lax.dot_general(x.reshape(-1, c), k, (((1,), (1,)), ((), ())),
                                precision=jax.lax.Precision.HIGHEST)  # (N*H*W, 4*features)
        # pixel shuffle (n, y, x, i, j, o) -> (n, y, i, x, j, o); kept apart from the product, so that the
        # kernel gradient transposes the input rather than the 4x larger output gradient
        y = y.reshape(n, h, w, 2, 2, self.features).transpose(0, 1, 3, 2, 4, 5)
        return y.reshape(n, 2 * h, 2 * w, self.features) + bias.astype(x.dtype)


def mask_probs_for_classes(mask_logits: jax.Array, classes: jax.Array) -> jax.Array:
    """(R, M, M, K) logits and (R,) classes -> (R, M, M) sigmoid probabilities of each box's class."""
    if mask_logits.shape[-1] == 1:
        return jax.nn.sigmoid(mask_logits[..., 0])
    picked = jnp.take_along_axis(mask_logits, classes[:, None, None, None], axis=-1)[..., 0]
    return jax.nn.sigmoid(picked)
