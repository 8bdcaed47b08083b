"""2-D convolution (NHWC input, HWIO kernel, PyTorch padding) whose gradients are fast on XLA:CPU.

XLA:CPU computes a convolution's kernel gradient as a convolution whose window is the whole feature
map; that runs at 10–30 GFLOP/s where a matrix product runs at 100–300 (a 1x1 conv on a (2, 200, 336,
256) map: 0.47 s against 0.1 s). Training spends most of its time there, so on CPU:

- a 1x1 convolution is a strided slice and a matrix product (its gradients are matrix products too);
- a k x k convolution keeps XLA's forward and takes its kernel gradient as matrix products, dW[i, j] =
  X_ij^T dY with X_ij the input seen through tap (i, j): one product per kernel row at stride 1, one per
  tap otherwise; its stride-1 input gradient is a forward convolution with the turned kernel.

On other backends (cuDNN, TPU) the plain convolution is used: their kernel gradients are fast.
The results equal `lax.conv_general_dilated`'s to float rounding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0, dilation: int = 1,
           precision: jax.lax.Precision | None = jax.lax.Precision.HIGHEST, gemm_grads: bool | None = None
           ) -> jax.Array:
    """x (N, H, W, C), kernel (k, k, C, K) -> (N, Ho, Wo, K), symmetric zero padding as torch's Conv2d.

    gemm_grads: compute kernel gradients as matrix products (default: on CPU only).
    """
    if gemm_grads is None:
        gemm_grads = jax.default_backend() == "cpu"
    if not gemm_grads:
        return _conv(x, kernel, stride, padding, dilation, precision)
    if kernel.shape[:2] == (1, 1) and padding == 0:
        x = x[:, ::stride, ::stride]  # (N, Ho, Wo, C): what a 1x1 window of this stride sees
        return _pointwise(x, kernel[0, 0], precision)
    return _conv_gemm_grads(x, kernel, stride, padding, dilation, precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _pointwise(x, w, precision):
    """1x1 convolution as a product: x (N, H, W, C), w (C, K) -> (N, H, W, K)."""
    return jnp.einsum("nhwc,ck->nhwk", x, w, precision=precision)


def _pointwise_fwd(x, w, precision):
    return _pointwise(x, w, precision), (x, w)


def _pointwise_bwd(precision, res, dy):
    """dx = dy w^T; dW summed over all pixels, the product oriented so that the operand XLA lays out afresh
    is the one with fewer channels (an objectness 1x1 on p2 has C=256 inputs and K=3 outputs)."""
    x, w = res
    c, k = w.shape
    dx = jnp.einsum("nhwk,ck->nhwc", dy, w, precision=precision)
    x2, dy2 = x.reshape(-1, c), dy.reshape(-1, k)
    dw = _pixel_sum(x2, dy2, precision) if c <= k else _pixel_sum(dy2, x2, precision).T
    return dx, dw.astype(w.dtype)


def _pixel_sum(a: jax.Array, b: jax.Array, precision: jax.lax.Precision | None) -> jax.Array:
    """a^T b summed over pixels: a (M, A), b (M, B) -> (A, B)."""
    return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())), precision=precision)


_pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


def _conv(x, kernel, stride, padding, dilation, precision):
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding=((padding, padding), (padding, padding)),
        rhs_dilation=(dilation, dilation), dimension_numbers=DIMENSION_NUMBERS, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_gemm_grads(x, kernel, stride, padding, dilation, precision):
    return _conv(x, kernel, stride, padding, dilation, precision)


def _fwd(x, kernel, stride, padding, dilation, precision):
    return _conv(x, kernel, stride, padding, dilation, precision), (x, kernel)


def _bwd(stride, padding, dilation, precision, res, dy):
    x, kernel = res
    return (input_grad(dy, kernel, x.shape, stride, padding, dilation, precision),
            kernel_grad(x, dy, kernel.shape[:2], stride, padding, dilation, precision).astype(kernel.dtype))


def input_grad(dy: jax.Array, kernel: jax.Array, x_shape: tuple[int, ...], stride: int, padding: int,
               dilation: int, precision: jax.lax.Precision | None = None) -> jax.Array:
    """dL/dx. Stride 1: a plain forward convolution of dy with the kernel turned 180 degrees and its in/out
    swapped (XLA's own transpose rule reverses the kernel inside the graph, which XLA:CPU ran at ~16 GFLOP/s
    inside a conditional); other strides: XLA's transpose rule."""
    q = dilation * (kernel.shape[0] - 1) - padding
    if stride != 1 or q < 0 or kernel.shape[0] != kernel.shape[1]:
        conv = functools.partial(_conv, kernel=kernel, stride=stride, padding=padding, dilation=dilation,
                                 precision=precision)
        return jax.linear_transpose(conv, jax.ShapeDtypeStruct(x_shape, dy.dtype))(dy)[0]
    turned = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)  # (kh, kw, K, C)
    return _conv(dy, turned, 1, q, dilation, precision)


_conv_gemm_grads.defvjp(_fwd, _bwd)


def kernel_grad(x: jax.Array, dy: jax.Array, window: tuple[int, int], stride: int, padding: int, dilation: int,
                precision: jax.lax.Precision | None = None) -> jax.Array:
    """dL/dW of a convolution: x (N, H, W, C), dy (N, Ho, Wo, K) -> (kh, kw, C, K), one product per kernel
    row at stride 1, one per tap otherwise."""
    n, _, _, c = x.shape
    _, ho, wo, k = dy.shape
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    if stride == 1:
        return _kernel_grad_by_rows(xp, dy, window, dilation, precision)
    dy2 = dy.reshape(-1, k)  # (M, K)
    taps = []
    for i in range(window[0]):
        for j in range(window[1]):
            r, s = i * dilation, j * dilation
            tap = jax.lax.slice(xp, (0, r, s, 0), (n, r + (ho - 1) * stride + 1, s + (wo - 1) * stride + 1, c),
                                (1, stride, stride, 1))  # (N, Ho, Wo, C)
            taps.append(_pixel_sum(tap.reshape(-1, c), dy2, precision))  # (C, K)
    return jnp.stack(taps).reshape(*window, c, k)


def _kernel_grad_by_rows(xp: jax.Array, dy: jax.Array, window: tuple[int, int], dilation: int,
                         precision: jax.lax.Precision | None) -> jax.Array:
    """Stride 1: one product per kernel row instead of per tap. dy is laid at each column offset j of the
    padded width, side by side (N, Ho, Wp, kw*K), so that kernel row i needs only the input rows i*d.. as
    they are: dW[i, j] = sum_{n,h,w'} xp[n, h + i*d, w', :]^T dy[n, h, w' - j*d, :]. Copies kh inputs and kw
    output gradients where the per-tap form copies kh*kw inputs, and each product is kw times wider."""
    n, _, wp, c = xp.shape
    _, ho, wo, k = dy.shape
    d = dilation
    e = wp - wo  # = d * (kw - 1)
    wide = jnp.pad(dy, ((0, 0), (0, 0), (e, e), (0, 0)))  # one padded copy; each shift is a window of it
    shifted = jnp.stack([wide[:, :, e - j * d: e - j * d + wp] for j in range(window[1])],
                        axis=3).reshape(-1, window[1] * k)  # (M', kw*K)
    rows = []
    for i in range(window[0]):
        xi = jax.lax.slice_in_dim(xp, i * d, i * d + ho, axis=1).reshape(-1, c)  # (M', C)
        g = _pixel_sum(xi, shifted, precision)  # (C, kw*K)
        rows.append(g.reshape(c, window[1], k).transpose(1, 0, 2))  # (kw, C, K)
    return jnp.stack(rows)
