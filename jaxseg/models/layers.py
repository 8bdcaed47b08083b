"""Small layers shared by the models: detectron2-style Conv2d with an optional norm, FrozenBatchNorm, BatchNorm.

Parameter names follow the PyTorch modules so that checkpoints convert by renaming alone:
a conv's weight is `kernel` (HWIO), its norm lives in a child called `norm` whose four buffers
(`weight`, `bias`, `running_mean`, `running_var`) sit in the `batch_stats` collection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models.conv import conv2d


class FrozenBatchNorm(nn.Module):
    """BatchNorm with fixed statistics and affine: y = (x - mean) / sqrt(var + eps) * weight + bias."""

    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        weight = self.variable("batch_stats", "weight", jnp.ones, (c,), jnp.float32).value
        bias = self.variable("batch_stats", "bias", jnp.zeros, (c,), jnp.float32).value
        mean = self.variable("batch_stats", "running_mean", jnp.zeros, (c,), jnp.float32).value
        var = self.variable("batch_stats", "running_var", lambda s, d: jnp.full(s, 1.0 - self.eps, d),
                            (c,), jnp.float32).value
        scale = weight * jax.lax.rsqrt(var + self.eps)
        return x * scale.astype(x.dtype) + (bias - mean * scale).astype(x.dtype)


class GroupNorm(nn.Module):
    """nn.GroupNorm(32, C) with PyTorch's parameter names (`weight`, `bias`)."""

    num_groups: int = 32
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        if c % self.num_groups:
            raise ValueError(f"GroupNorm: {c} channels do not split into {self.num_groups} groups")
        weight = self.param("weight", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        g = x.reshape(*x.shape[:-1], self.num_groups, c // self.num_groups).astype(jnp.float32)
        axes = tuple(range(1, g.ndim - 2)) + (g.ndim - 1,)  # spatial and within-group channels
        mean = g.mean(axis=axes, keepdims=True)
        var = jnp.square(g - mean).mean(axis=axes, keepdims=True)
        g = (g - mean) * jax.lax.rsqrt(var + self.eps)
        return (g.reshape(x.shape) * weight + bias).astype(x.dtype)


class BatchNorm(nn.Module):
    """torch's BatchNorm2d (and SyncBatchNorm: the jitted step sees the global batch), PyTorch names.

    Inference normalises with the running statistics. Training (`train=True`) normalises with the batch's
    mean and biased variance over (N, H, W) and updates the running statistics as torch does: momentum 0.1,
    the unbiased variance. `weight`/`bias` are parameters, `running_mean`/`running_var` sit in `batch_stats`.
    """

    eps: float = 1e-5
    momentum: float = 0.1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = x.shape[-1]
        weight = self.param("weight", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        running_mean = self.variable("batch_stats", "running_mean", jnp.zeros, (c,), jnp.float32)
        running_var = self.variable("batch_stats", "running_var", jnp.ones, (c,), jnp.float32)
        if train:
            xf = x.astype(jnp.float32)
            axes = tuple(range(x.ndim - 1))
            mean = xf.mean(axes)
            var = jnp.square(xf - mean).mean(axes)  # biased, as the normalisation uses
            self.sow("intermediates", "batch_mean", mean)  # kept only when "intermediates" is mutable
            self.sow("intermediates", "batch_var", var)
            if not self.is_initializing():
                n = x.size // c
                m = self.momentum
                running_mean.value = (1 - m) * running_mean.value + m * jax.lax.stop_gradient(mean)
                running_var.value = (1 - m) * running_var.value + m * jax.lax.stop_gradient(var) * n / max(n - 1, 1)
        else:
            mean, var = running_mean.value, running_var.value
        scale = weight * jax.lax.rsqrt(var + self.eps)
        return (x * scale.astype(x.dtype) + (bias - mean * scale).astype(x.dtype))


NORMS = ("", "FrozenBN", "GN")


def check_norm(norm: str, key: str = "NORM") -> None:
    """A ValueError naming the config key when `norm` is not one jaxseg builds (at build time, not in init)."""
    if norm not in NORMS and norm is not None:
        raise ValueError(f"{key} {norm!r} is not supported; known: {', '.join(repr(n) for n in NORMS)}")


def get_norm(norm: str) -> nn.Module | None:
    """detectron2's NORM strings. Only those the ported models use are known."""
    check_norm(norm)
    if norm in ("", None):
        return None
    if norm == "FrozenBN":
        return FrozenBatchNorm(name="norm")
    if norm == "GN":
        return GroupNorm(name="norm")
    raise ValueError(f"unsupported NORM {norm!r}; known: '', 'FrozenBN', 'GN'")


# detectron2's initialisations (weight_init.c2_msra_fill / c2_xavier_fill; N(0, std) for predictors)
c2_msra_fill = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
c2_xavier_fill = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


def normal_init(std: float) -> Callable:
    return nn.initializers.normal(stddev=std)


class Conv2d(nn.Module):
    """nn.Conv with PyTorch-style symmetric padding, an optional norm (child `norm`) and activation."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    use_bias: bool = True
    norm: str = ""
    activation: bool = False
    kernel_init: Callable = c2_msra_fill
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _conv(self, x)
        norm = get_norm(self.norm)
        if norm is not None:
            x = norm(x)
        return nn.relu(x) if self.activation else x


def _conv(m: Conv2d, x: jax.Array) -> jax.Array:
    """The convolution itself, with `kernel`/`bias` directly on the Conv2d module (no extra scope)."""
    k, p, s, d = m.kernel_size, m.padding, m.stride, m.dilation
    kernel = m.param("kernel", m.kernel_init, (k, k, x.shape[-1], m.features), jnp.float32)
    y = conv2d(x, kernel.astype(x.dtype), stride=s, padding=p, dilation=d)
    if m.use_bias:
        y = y + m.param("bias", m.bias_init, (m.features,), jnp.float32).astype(x.dtype)
    return y


def max_pool(x: jax.Array, kernel: int, stride: int, padding: int = 0) -> jax.Array:
    """Max pooling with PyTorch semantics: symmetric padding with -inf, floor output size. x: (N, H, W, C)."""
    p = padding
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, kernel, kernel, 1), (1, stride, stride, 1),
                                 ((0, 0), (p, p), (p, p), (0, 0)))


def resize_bilinear(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
    """F.interpolate(size=hw, mode="bilinear", align_corners=False) on NHWC, for upsampling (no antialiasing, which
    jax.image.resize would apply when downscaling and torch does not)."""
    return jax.image.resize(x, (x.shape[0], *hw, x.shape[-1]), "bilinear", antialias=False)


def upsample_bilinear(x: jax.Array, factor: int) -> jax.Array:
    """F.interpolate(scale_factor=factor, mode="bilinear", align_corners=False) on NHWC."""
    return resize_bilinear(x, (x.shape[1] * factor, x.shape[2] * factor))


def upsample_nearest2x(x: jax.Array) -> jax.Array:
    """F.interpolate(scale_factor=2, mode="nearest") on NHWC."""
    n, h, w, c = x.shape  # a broadcast, not two repeats: its gradient is one reduction (2.5x faster on CPU)
    return jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, 2, w, 2, c)).reshape(n, 2 * h, 2 * w, c)


def dense(features: int, name: str, kernel_init: Callable = c2_xavier_fill) -> nn.Dense:
    """Linear layer with float32-exact matmuls (PyTorch nn.Linear, weight transposed to `kernel`)."""
    return nn.Dense(features, precision=jax.lax.Precision.HIGHEST, kernel_init=kernel_init, name=name)


def conv_names(prefix: str, n: int) -> Sequence[str]:
    """['prefix1', ..., 'prefixN'] as detectron2 names its repeated convs."""
    return [f"{prefix}{i + 1}" for i in range(n)]
