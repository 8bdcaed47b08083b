"""conv2d with matrix-product gradients (the CPU training path) against XLA's convolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxseg.models.conv import conv2d, kernel_grad

# (kernel, stride, padding, dilation): every form the models use, plus odd sizes and padded 1x1
CASES = [(1, 1, 0, 1), (1, 2, 0, 1), (3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 2, 2), (7, 2, 3, 1), (1, 1, 1, 1),
         (5, 3, 2, 1)]


@pytest.mark.parametrize("k,stride,pad,dil", CASES)
def test_conv2d_value_and_grads_match_xla(k, stride, pad, dil):
    rng = np.random.default_rng(k * 100 + stride * 10 + pad)
    x = jnp.asarray(rng.normal(size=(2, 17, 23, 6)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, 6, 5)), jnp.float32)

    def loss(x, w, gemm):
        return jnp.sum(jnp.sin(conv2d(x, w, stride, pad, dil, gemm_grads=gemm)))

    (va, (dxa, dwa)) = jax.jit(jax.value_and_grad(loss, (0, 1)), static_argnums=2)(x, w, True)
    (vb, (dxb, dwb)) = jax.jit(jax.value_and_grad(loss, (0, 1)), static_argnums=2)(x, w, False)
    np.testing.assert_allclose(va, vb, rtol=1e-5)
    np.testing.assert_allclose(dxa, dxb, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dwa, dwb, rtol=1e-4, atol=1e-4)


def test_conv2d_matches_torch_conv2d_and_its_weight_grad():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 13, 15, 4)).astype(np.float32)
    w = rng.normal(size=(3, 3, 4, 8)).astype(np.float32)
    dy = rng.normal(size=(2, 7, 8, 8)).astype(np.float32)
    y = conv2d(jnp.asarray(x), jnp.asarray(w), stride=2, padding=1, gemm_grads=True)
    dw = kernel_grad(jnp.asarray(x), jnp.asarray(dy), (3, 3), stride=2, padding=1, dilation=1)
    tx = torch.from_numpy(x).permute(0, 3, 1, 2)
    tw = torch.from_numpy(w).permute(3, 2, 0, 1).requires_grad_()
    ty = torch.nn.functional.conv2d(tx, tw, stride=2, padding=1)
    ty.backward(torch.from_numpy(dy).permute(0, 3, 1, 2))
    np.testing.assert_allclose(np.asarray(y), ty.detach().permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(dw), tw.grad.permute(2, 3, 1, 0).numpy(), rtol=1e-4, atol=1e-4)


def test_conv2d_bfloat16_keeps_dtypes():
    x = jnp.ones((1, 8, 8, 4), jnp.bfloat16)
    w = jnp.ones((3, 3, 4, 2), jnp.bfloat16)
    dx, dw = jax.grad(lambda x, w: conv2d(x, w, 1, 1, gemm_grads=True).astype(jnp.float32).sum(), (0, 1))(x, w)
    assert dx.dtype == dw.dtype == jnp.bfloat16
    assert float(dw[1, 1, 0, 0]) == 64.0  # centre tap sees all 8x8 ones
