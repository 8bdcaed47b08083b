"""SwapAlign2Nat: "xla", "ffi" (C++) and "triton" (Triton's CPU interpreter) against each other and references.

References: the research notes' test vectors; the vectorised torch CPU implementation and its line-by-line
transcription of the CUDA kernel (tests/data/tensormask_R_50_FPN_1x/swap_align2nat_cpu.py); detectron2's own
TensorMask outputs (tests/data/tensormask_R_50_FPN_1x/swap_align2nat_fixture.npz: stored SwapAlign2Nat crops and
windows with exactly the aligned logits they read, NaN everywhere else, so an implementation that reads anything
else fails). Gradients: finite differences and the adjoint identity <J v, w> = <v, J^T w>.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.errors import UserError
from jaxseg.kernels import _dispatch, ffi, swap_align2nat, swap_align2nat_at
from jaxseg.kernels.swap_align2nat import inverse_taps, live_terms, pair_taps

torch = pytest.importorskip("torch")
HAVE_TRITON = importlib.util.find_spec("triton") is not None
if HAVE_TRITON:
    from test_kernels_triton import (  # noqa: F401  (cuda_lowering is a fixture)
        _check_ptx,
        _lower_cuda,
        cuda_lowering,
        interpreter_mode,
        run_interpreted,
    )

    from jaxseg.kernels.triton import launch as launch_lib

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "tensormask_R_50_FPN_1x")
FIXTURE = os.path.join(HERE, "swap_align2nat_fixture.npz")


def _load_torch_reference():
    spec = importlib.util.spec_from_file_location("swap_align2nat_cpu", os.path.join(HERE, "swap_align2nat_cpu.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cpu = _load_torch_reference()
NATIVE = ["xla", "ffi"] if ffi.is_built() else ["xla"]
needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed (pip install -e .[test])")

# (N, S, H, W, lambda, pad): mask sizes 1..15, lambda 1..32 (powers of two as TensorMask uses them, and others),
# ragged H / W (not multiples of lambda), pad 0 and -6.
CASES = [
    (2, 1, 5, 4, 1, -6.0),
    (2, 2, 5, 7, 1, -6.0),
    (2, 3, 6, 5, 1, 0.0),
    (1, 11, 9, 7, 1, -6.0),
    (1, 15, 7, 9, 1, -6.0),
    (2, 2, 7, 10, 2, -6.0),
    (2, 3, 9, 7, 2, 0.0),
    (1, 11, 7, 5, 2, -6.0),
    (1, 15, 5, 6, 2, -6.0),
    (1, 3, 13, 10, 4, -6.0),
    (1, 11, 6, 9, 4, 0.0),
    (1, 15, 5, 4, 4, -6.0),
    (1, 5, 17, 9, 8, -6.0),
    (1, 4, 9, 12, 8, 0.0),
    (1, 3, 7, 9, 16, -6.0),
    (1, 2, 5, 33, 32, -6.0),
    (1, 1, 3, 40, 32, 0.0),
    (2, 3, 7, 8, 3, -6.0),
    (1, 5, 11, 10, 5, 0.0),
    (1, 2, 9, 13, 6, -6.0),
    (1, 4, 8, 7, 7, -6.0),
    (1, 6, 16, 21, 12, -6.0),
    (1, 7, 12, 5, 1, -6.0),
    (1, 8, 10, 11, 2, 0.0),
]


def case_id(case) -> str:
    n, s, h, w, lam, pad = case
    return f"n{n}-s{s}-{h}x{w}-l{lam}-pad{pad:g}"


def power_of_two(lam: int) -> bool:
    return lam & (lam - 1) == 0


def random_input(rng, n, s, h, w) -> np.ndarray:
    """Full-mantissa values (not small integers) so that every rounding is exercised. (N, H, W, S*S)."""
    return (rng.standard_normal((n, h, w, s * s)) * 3.0).astype(np.float32)


def out_hw(h: int, w: int, lam: int) -> tuple[int, int]:
    return -(-h // lam), -(-w // lam)


def nchw(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(a, -1, 1))


def nhwc(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(a, 1, -1))


def value_and_grad(impl: str, x: np.ndarray, lam: int, pad: float, cot: np.ndarray):
    """Output and input gradient for cotangent ``cot`` of one implementation, as numpy."""
    y, vjp = jax.vjp(lambda a: swap_align2nat(a, lam, pad, implementation=impl), jnp.asarray(x))
    return np.asarray(y), np.asarray(vjp(jnp.asarray(cot))[0])


def torch_reference(x: np.ndarray, lam: int, pad: float, cot: np.ndarray):
    """swap_align2nat_cpu.py (NCHW) on NHWC arrays: output, and input gradient for ``cot``."""
    n, h, w, c = x.shape
    y = cpu.swap_align2nat_forward(torch.from_numpy(nchw(x)), lam, pad).numpy()
    g = cpu.swap_align2nat_backward(torch.from_numpy(nchw(cot)), lam, n, c, h, w).numpy()
    return nhwc(y), nhwc(g)


def assert_close(ours, ref, tol=1e-6):
    """|ours - ref| <= tol * max(1, max |ref|), shapes and dtypes equal."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype, (ours.shape, ref.shape, ours.dtype, ref.dtype)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=tol * max(1.0, float(np.abs(ref).max(initial=0.0))))


# ---------------------------------------------------------------------------------------------
# Geometry


@pytest.mark.parametrize("lam, s, size", [(1, 11, 9), (1, 2, 5), (2, 15, 7), (3, 4, 11), (8, 5, 17), (32, 2, 33)])
def test_inverse_taps_are_the_transpose(lam, s, size):
    """Every valid corner appears once in the inverse table, at its input element, with its weights."""
    fwd, inv = pair_taps(lam, s, size), inverse_taps(lam, s, size)
    assert fwd.sp.shape == (4, -(-size // lam), lam * s) and inv.p.shape == (4, size, s)
    assert inv.valid.sum() == fwd.valid.sum()
    for k in range(4):
        p, m = np.nonzero(fwd.valid[k])
        i, j = fwd.sp[k][p, m], fwd.mask[k][p, m]
        assert inv.valid[k][i, j].all()
        np.testing.assert_array_equal(inv.p[k][i, j], p)
        np.testing.assert_array_equal(inv.m[k][i, j], m)
        np.testing.assert_array_equal(inv.w_sp[k][i, j], fwd.w_sp[k][p, m])


def test_live_terms():
    odd = pair_taps(1, 11, 9)
    assert live_terms(odd, odd) == [0]  # lambda 1, odd S: a pure shift
    even = pair_taps(1, 4, 9)
    assert len(live_terms(even, even)) == 4  # spatial half-pixel, mask integral
    assert len(live_terms(pair_taps(2, 11, 9), pair_taps(2, 11, 9))) == 16


# ---------------------------------------------------------------------------------------------
# Test vectors of the research notes (section 6), NCHW there


VECTORS_LAM1 = [
    [[0, 0, 0], [0, 0, 1], [0, 3, 4]], [[0, 0, 0], [9, 10, 11], [12, 13, 14]], [[0, 0, 0], [19, 20, 0], [22, 23, 0]],
    [[0, 27, 28], [0, 30, 31], [0, 33, 34]], [[36, 37, 38], [39, 40, 41], [42, 43, 44]],
    [[46, 47, 0], [49, 50, 0], [52, 53, 0]], [[0, 57, 58], [0, 60, 61], [0, 0, 0]],
    [[66, 67, 68], [69, 70, 71], [0, 0, 0]], [[76, 77, 0], [79, 80, 0], [0, 0, 0]],
]
VECTORS_LAM2 = {
    0: [[0, 0], [0, 1.40625]], 5: [[3, 6.75], [9, 19.5]], 10: [[38.5, 40.5], [46.5, 48.5]],
    15: [[31.21875, 16.03125], [17.296875, 8.859375]],
}
VECTOR_PAD = [-6, -6, -6, -6, -6, -4.5, -3, -3.75, -6, -3, 0, -1.5, -6, -3.75, -1.5, -2.625]


def research_vector_inputs():
    """(x NHWC, lambda, pad, check(y NHWC)) of the three vectors."""
    c, y, x = np.meshgrid(np.arange(9), np.arange(3), np.arange(3), indexing="ij")
    x1 = nhwc((9 * c + 3 * y + x)[None].astype(np.float32))
    x2 = nhwc(np.arange(64, dtype=np.float32).reshape(1, 4, 4, 4))

    def check1(out):
        np.testing.assert_array_equal(nchw(out)[0], np.array(VECTORS_LAM1, np.float32))

    def check2(out):
        assert out.shape == (1, 2, 2, 16)
        for ch, v in VECTORS_LAM2.items():
            np.testing.assert_array_equal(nchw(out)[0, ch], np.array(v, np.float32))

    def check3(out):
        np.testing.assert_array_equal(out[0, 0, 0], np.array(VECTOR_PAD, np.float32))

    return [(x1, 1, 0.0, check1), (x2, 2, 0.0, check2), (np.zeros((1, 4, 4, 4), np.float32), 2, -6.0, check3)]


@pytest.mark.parametrize("impl", NATIVE)
def test_research_vectors(impl):
    for x, lam, pad, check in research_vector_inputs():
        check(np.asarray(swap_align2nat(jnp.asarray(x), lam, pad, implementation=impl)))


def test_lambda1_odd_is_a_shift():
    rng = np.random.default_rng(1)
    for s in (1, 3, 11, 15):
        x = random_input(rng, 1, s, 13, 17)
        r = (s - 1) // 2
        padded = np.pad(x[0], [(r, r), (r, r), (0, 0)], constant_values=-6.0)
        expected = np.empty_like(x[0])
        for v in range(s):
            for u in range(s):
                expected[:, :, v * s + u] = padded[v : v + 13, u : u + 17, v * s + u]
        for impl in NATIVE:
            np.testing.assert_array_equal(np.asarray(swap_align2nat(x, 1, -6.0, implementation=impl))[0], expected)


# ---------------------------------------------------------------------------------------------
# Random cases: the implementations against each other and against the torch CPU reference


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_implementations_agree_with_torch_reference(case):
    n, s, h, w, lam, pad = case
    rng = np.random.default_rng(abs(hash(case_id(case))) % 2**32)
    x = random_input(rng, n, s, h, w)
    cot = rng.standard_normal((n, *out_hw(h, w, lam), (lam * s) ** 2)).astype(np.float32)
    results = {impl: value_and_grad(impl, x, lam, pad, cot) for impl in NATIVE}
    y_xla, g_xla = results["xla"]
    for y, g in results.values():
        assert_close(y, y_xla)
        np.testing.assert_array_equal(g, g_xla)  # scatter-add ("xla") and transposed gather: same sums
    if power_of_two(lam):  # the torch reference needs exact (dyadic) weights
        y_t, g_t = torch_reference(x, lam, pad, cot)
        assert_close(y_xla, y_t)
        assert_close(g_xla, g_t)
        if "ffi" in results:
            np.testing.assert_array_equal(results["ffi"][0], y_t)  # same products, same order: bitwise
    if y_xla.size <= 6000:  # the line-by-line transcription of the CUDA kernel (slow: Python scalars)
        loop = nhwc(cpu.swap_align2nat_loop(nchw(x), lam, pad))
        assert_close(y_xla, loop)
        if "ffi" in results:
            np.testing.assert_array_equal(results["ffi"][0], loop)


def test_float64_rounding_is_small():
    """float32 against the transcription in float64: the op rounds once per term and once per addition."""
    rng = np.random.default_rng(5)
    x = random_input(rng, 1, 5, 10, 10)
    exact = nhwc(cpu.swap_align2nat_loop(nchw(x).astype(np.float64), 4, -6.0))
    ours = np.asarray(swap_align2nat(x, 4, -6.0, implementation="xla")).astype(np.float64)
    assert np.abs(ours - exact).max() < 1e-5


# ---------------------------------------------------------------------------------------------
# Gradients


def pad0_forward(impl, lam):
    return lambda v: swap_align2nat(v, lam, 0.0, implementation=impl)  # the linear part of the affine op


@pytest.mark.parametrize("impl", NATIVE)
@pytest.mark.parametrize("case", [(2, 2, 10, 10, 2), (1, 3, 9, 7, 2), (1, 11, 6, 5, 1), (1, 3, 13, 10, 4),
                                  (1, 4, 11, 9, 3), (1, 15, 12, 14, 2)])
def test_adjoint_identity(impl, case):
    """<J v, w> = <v, J^T w>, J^T from the custom vjp (pad -6), J v from the pad-0 forward."""
    n, s, h, w, lam = case
    rng = np.random.default_rng(sum(case))
    v = rng.standard_normal((n, h, w, s * s)).astype(np.float32)
    wt = rng.standard_normal((n, *out_hw(h, w, lam), (lam * s) ** 2)).astype(np.float32)
    jv = np.asarray(pad0_forward(impl, lam)(jnp.asarray(v)), np.float64)
    _, vjp = jax.vjp(lambda a: swap_align2nat(a, lam, -6.0, implementation=impl), jnp.asarray(v))
    jtw = np.asarray(vjp(jnp.asarray(wt))[0], np.float64)
    lhs, rhs = float(np.sum(jv * wt)), float(np.sum(v * jtw))
    assert abs(lhs - rhs) <= 1e-5 * max(1.0, abs(lhs)), (lhs, rhs)


@pytest.mark.parametrize("impl", NATIVE)
def test_gradient_matches_finite_differences(impl):
    """The op is affine in x: a central difference along a random direction is exact up to rounding."""
    rng = np.random.default_rng(9)
    for n, s, h, w, lam in [(1, 3, 9, 8, 2), (2, 5, 7, 6, 1), (1, 2, 10, 9, 4)]:
        x = jnp.asarray(random_input(rng, n, s, h, w))
        cot = jnp.asarray(rng.standard_normal((n, *out_hw(h, w, lam), (lam * s) ** 2)), jnp.float32)
        d = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
        loss = lambda a: jnp.sum(cot * swap_align2nat(a, lam, -6.0, implementation=impl))  # noqa: B023
        eps = 0.5
        fd = (loss(x + eps * d) - loss(x - eps * d)) / (2 * eps)
        np.testing.assert_allclose(float(jnp.vdot(jax.grad(loss)(x), d)), float(fd), rtol=1e-4, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# detectron2's TensorMask outputs (reference.npz of tests/data/tensormask_R_50_FPN_1x, via the fixture)

LEVELS = {"p2": 1, "p3": 2, "p4": 4, "p5": 8}


@pytest.fixture(scope="module")
def d2_fixture():
    if not os.path.exists(FIXTURE):
        pytest.skip(f"{FIXTURE} is missing (make_swap_fixture.py writes it)")
    return dict(np.load(FIXTURE))


def stored_index(fx, level, s) -> np.ndarray:
    """Flat NCHW indices of the stored logits (kept as increasing differences, which compress well)."""
    return np.cumsum(fx[f"in_{level}_s{s}_index_delta"].astype(np.int64))


def d2_targets(fx, level, s):
    """[(name, (y0, x0), expected NHWC (h, w, C') block)] of the stored outputs of one level and mask size."""
    out = [(f"win {level} s{s}", tuple(fx[f"swap_{level}_s{s}_win_yx"]), fx[f"swap_{level}_s{s}_win"][None, None])]
    if level == "p3":
        for tag in ("", "_tl", "_br"):
            block = np.moveaxis(fx[f"swap_p3_s{s}_crop{tag}"], 0, -1)  # (C', 4, 4) -> (4, 4, C')
            out.append((f"crop{tag} p3 s{s}", tuple(fx[f"swap_p3_s{s}_crop{tag}_yx"]), block))
    return out


def d2_map(fx, level, s) -> np.ndarray:
    """The aligned logits (1, H, W, S*S), NaN wherever none of the stored outputs reads."""
    shape = tuple(fx[f"in_{level}_s{s}_shape"])  # (1, S*S, H, W)
    flat = np.full(int(np.prod(shape)), np.nan, np.float32)
    flat[stored_index(fx, level, s)] = fx[f"in_{level}_s{s}_value"]
    return nhwc(flat.reshape(shape))


def crop_for(x: np.ndarray, lam: int, s: int, yx: tuple[int, int], hw: tuple[int, int]):
    """The part of ``x`` that output block ``hw`` at ``yx`` can read, starting at a multiple of lambda (so the
    output grid only shifts by whole cells), and that shift. Outputs y..y+h-1 read rows within M/2 + 1 of
    [L*y, L*(y+h)); where the crop stops short of the map's edge nothing beyond it is read."""
    m = lam * s
    lo, hi = [], []
    for axis in (0, 1):
        start = max(0, lam * yx[axis] - m // 2 - 1) // lam * lam
        lo.append(start)
        hi.append(min(x.shape[1 + axis], lam * (yx[axis] + hw[axis]) + m // 2 + 1))
    return x[:, lo[0] : hi[0], lo[1] : hi[1]], (lo[0] // lam, lo[1] // lam)


def check_d2_level(run, fx, level, s):
    """``run(x, lam)`` -> NHWC output; every stored output within the fixture's tolerance (and 1e-6)."""
    x_full, lam = d2_map(fx, level, s), LEVELS[level]
    std = float(fx[f"swap_p3_s{s}_std"])
    for name, (y0, x0), want in d2_targets(fx, level, s):
        x, (dy, dx) = crop_for(x_full, lam, s, (y0, x0), want.shape[:2])
        y = np.asarray(run(x, lam))[0]
        got = y[y0 - dy : y0 - dy + want.shape[0], x0 - dx : x0 - dx + want.shape[1]]
        assert np.isfinite(got).all(), f"{name}: read an element detectron2's output does not depend on"
        err = np.abs(got - want)
        assert np.all(err <= 1e-4 * std + 1e-4 * np.abs(want)), (name, float(err.max()))
        assert_close(got, want)


@pytest.mark.parametrize("impl", NATIVE)
@pytest.mark.parametrize("s", [11, 15])
@pytest.mark.parametrize("level", list(LEVELS))
def test_detectron2_outputs(d2_fixture, impl, level, s):
    check_d2_level(lambda x, lam: swap_align2nat(x, lam, -6.0, implementation=impl), d2_fixture, level, s)


@pytest.mark.parametrize("s", [11, 15])
@pytest.mark.parametrize("level", list(LEVELS))
def test_detectron2_windows_at_locations(d2_fixture, level, s):
    """swap_align2nat_at on the whole NaN-filled map reads only the window's taps."""
    x = jnp.asarray(d2_map(d2_fixture, level, s))
    y, xx = (int(v) for v in d2_fixture[f"swap_{level}_s{s}_win_yx"])
    got = swap_align2nat_at(x, LEVELS[level], -6.0, jnp.array([0]), jnp.array([y]), jnp.array([xx]))
    assert_close(np.asarray(got)[0], d2_fixture[f"swap_{level}_s{s}_win"])


# ---------------------------------------------------------------------------------------------
# swap_align2nat_at, jit / vmap / dtypes / errors / dispatch


def test_at_equals_the_full_op_and_its_gradient():
    rng = np.random.default_rng(3)
    for n, s, h, w, lam in [(2, 3, 9, 11, 2), (1, 11, 12, 10, 1), (2, 4, 13, 9, 4), (1, 5, 10, 10, 3)]:
        x = jnp.asarray(random_input(rng, n, s, h, w))
        ho, wo = out_hw(h, w, lam)
        k = 7
        b, y, xx = (jnp.asarray(rng.integers(0, m, k)) for m in (n, ho, wo))
        full = swap_align2nat(x, lam, -6.0, implementation="xla")
        assert_close(swap_align2nat_at(x, lam, -6.0, b, y, xx), full[b, y, xx])
        cot = jnp.asarray(rng.standard_normal((k, (lam * s) ** 2)), jnp.float32)
        g_at = jax.grad(lambda a: jnp.sum(cot * swap_align2nat_at(a, lam, -6.0, b, y, xx)))(x)  # noqa: B023
        g_full = jax.grad(lambda a: jnp.sum(cot * swap_align2nat(a, lam, -6.0)[b, y, xx]))(x)  # noqa: B023
        assert_close(g_at, g_full)
    empty = swap_align2nat_at(x, 2, -6.0, jnp.zeros(0, int), jnp.zeros(0, int), jnp.zeros(0, int))
    assert empty.shape == (0, (2 * 5) ** 2)


@pytest.mark.parametrize("impl", NATIVE)
def test_jit_vmap_dtype_and_empty(impl):
    rng = np.random.default_rng(4)
    x = jnp.asarray(random_input(rng, 6, 3, 9, 10)).reshape(3, 2, 9, 10, 9)
    cot = jnp.asarray(rng.standard_normal((3, 2, 5, 5, 36)), jnp.float32)

    def per_batch(impl_name):
        def fn(a, g):
            out, vjp = jax.vjp(lambda b: swap_align2nat(b, 2, -6.0, implementation=impl_name), a)
            return out, vjp(g)[0]

        return jax.jit(jax.vmap(fn))

    for ours, ref in zip(per_batch(impl)(x, cot), per_batch("xla")(x, cot)):
        assert_close(ours, ref)
    ref = swap_align2nat(x.reshape(6, 9, 10, 9), 2, -6.0, implementation="xla").reshape(3, 2, 5, 5, 36)
    assert_close(per_batch(impl)(x, cot)[0], ref)
    xb = x[0].astype(jnp.bfloat16)
    out = swap_align2nat(xb, 2, -6.0, implementation=impl)
    assert out.dtype == jnp.bfloat16
    ref = swap_align2nat(xb.astype(jnp.float32), 2, -6.0, implementation="xla").astype(jnp.bfloat16)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), rtol=1e-2, atol=1e-2)
    grad = jax.grad(lambda a: swap_align2nat(a, 2, -6.0, implementation=impl).astype(jnp.float32).sum())(xb)
    assert grad.dtype == jnp.bfloat16
    for shape, expected in [((0, 9, 10, 9), (0, 5, 5, 36)), ((1, 0, 10, 9), (1, 0, 5, 36))]:
        assert swap_align2nat(jnp.zeros(shape), 2, -6.0, implementation=impl).shape == expected


def test_argument_errors():
    with pytest.raises(ValueError, match="square"):
        swap_align2nat(jnp.zeros((1, 4, 4, 8)), 2, -6.0)
    with pytest.raises(ValueError, match="lambda_val"):
        swap_align2nat(jnp.zeros((1, 4, 4, 9)), 0, -6.0)
    with pytest.raises(ValueError, match=r"\(N, H, W, S\*S\)"):
        swap_align2nat(jnp.zeros((4, 4, 9)), 1, -6.0)


def test_dispatch():
    assert set(_dispatch._REGISTRY["swap_align2nat"]) == {"xla", "ffi", "triton"}
    assert "triton" not in _dispatch.available_implementations("swap_align2nat") or jax.default_backend() != "cpu"
    if ffi.is_built() and jax.default_backend() == "cpu":
        assert _dispatch.resolve("swap_align2nat", None) is ffi.swap_align2nat_ffi
        with pytest.raises(UserError, match=r"swap_align2nat.*'triton' is not available"):
            swap_align2nat(jnp.zeros((1, 4, 4, 9)), 1, -6.0, implementation="triton")
    # the windows op has only "xla": a model's MODEL.KERNELS of another op's name falls back to it
    assert _dispatch.resolve("swap_align2nat_at", "ffi").__name__ == "swap_align2nat_at_xla"


# ---------------------------------------------------------------------------------------------
# Triton: the kernel in Triton's CPU interpreter, the JAX side (ops.py) around it, CUDA lowering


@pytest.fixture(scope="module")
def interp():
    """A private copy of the Triton kernel module whose @triton.jit kernel runs in the interpreter."""
    with interpreter_mode():
        path = os.path.join(os.path.dirname(launch_lib.__file__), "swap_align2nat.py")
        spec = importlib.util.spec_from_file_location("_jaxseg_triton_interpreted_swap_align2nat", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def t(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a))


def interpreted(interp, x, lam, pad, cot):
    """Interpreted forward and backward launches: output and input gradient, numpy."""
    tables = [t(a) for a in interp.forward_tables(x.shape, lam)]
    (y,) = run_interpreted(interp.forward_launch(t(x), *tables, lam=lam, pad=pad))
    tables = [t(a) for a in interp.backward_tables(x.shape, lam)]
    (g,) = run_interpreted(interp.backward_launch(t(cot), *tables, lam=lam, input_shape=x.shape))
    return y, g


TRITON_CASES = [c for c in CASES if c[1] * c[1] * c[2] * c[3] * c[0] <= 3000]


@needs_triton
@pytest.mark.parametrize("case", TRITON_CASES, ids=case_id)
def test_triton_interpreted_matches_xla(interp, case):
    n, s, h, w, lam, pad = case
    rng = np.random.default_rng(abs(hash(case_id(case))) % 2**32)
    x = random_input(rng, n, s, h, w)
    cot = rng.standard_normal((n, *out_hw(h, w, lam), (lam * s) ** 2)).astype(np.float32)
    y, g = interpreted(interp, x, lam, pad, cot)
    y_ref, g_ref = value_and_grad("xla", x, lam, pad, cot)
    assert_close(y, y_ref)
    np.testing.assert_array_equal(g, g_ref)
    if y.size <= 6000:  # bitwise equal to the transcription of the CUDA kernel (no fused multiply-adds)
        np.testing.assert_array_equal(y, nhwc(cpu.swap_align2nat_loop(nchw(x), lam, pad)))


@needs_triton
def test_triton_interpreted_vectors_and_detectron2(interp, d2_fixture):
    for x, lam, pad, check in research_vector_inputs():
        tables = [t(a) for a in interp.forward_tables(x.shape, lam)]
        check(run_interpreted(interp.forward_launch(t(x), *tables, lam=lam, pad=pad))[0])

    def run(x, lam):
        tables = [t(a) for a in interp.forward_tables(x.shape, lam)]
        return run_interpreted(interp.forward_launch(t(x), *tables, lam=lam, pad=-6.0))[0]

    for level, s in (("p2", 11), ("p2", 15), ("p3", 11)):  # the interpreter is slow: lambda 2 at S = 11 only
        check_d2_level(run, d2_fixture, level, s)


@pytest.fixture
def interpreted_ops(interp, monkeypatch):
    """``jaxseg.kernels.triton.ops`` with ``launch.run_jax`` replaced by a host callback that runs the same
    ``Launch`` with the interpreted twin of its kernel."""

    def run_jax(launch):
        twin = getattr(interp, launch.kernel.fn.__name__)
        where = [i for i, d in enumerate(launch.in_dtypes) if d is not None]

        def host(*arrays):
            args = list(launch.args)
            for i, a in zip(where, arrays):
                args[i] = torch.from_numpy(np.array(a))
            return tuple(run_interpreted(dataclasses.replace(launch, kernel=twin, args=tuple(args))))

        shapes = tuple(jax.ShapeDtypeStruct(o.shape, np.dtype(o.dtype)) for o in launch.outs)
        return list(jax.pure_callback(host, shapes, *[launch.args[i] for i in where]))

    from jaxseg.kernels.triton import ops

    monkeypatch.setattr(launch_lib, "run_jax", run_jax)
    return ops


@needs_triton
def test_triton_ops_gradient_and_vmap(interpreted_ops):
    rng = np.random.default_rng(12)
    x = jnp.asarray(random_input(rng, 4, 3, 7, 6)).reshape(2, 2, 7, 6, 9)
    cot = jnp.asarray(rng.standard_normal((2, 2, 4, 3, 36)), jnp.float32)

    def per_batch(fn):
        def one(a, g):
            out, vjp = jax.vjp(lambda b: fn(b, 2, -6.0), a)
            return out, vjp(g)[0]

        return jax.jit(jax.vmap(one))

    got = per_batch(interpreted_ops.swap_align2nat)(x, cot)
    ref = per_batch(lambda *a: swap_align2nat(*a, implementation="xla"))(x, cot)
    assert_close(got[0], ref[0])
    np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(ref[1]))


@needs_triton
def test_cuda_lowering_swap_align2nat(cuda_lowering, tmp_path):
    ops, rec = cuda_lowering
    x = jnp.zeros((1, 40, 52, 121), jnp.float32)
    fn = lambda a: jax.value_and_grad(lambda b: ops.swap_align2nat(b, 2, -6.0).sum())(a)
    text = _lower_cuda(fn, x)
    assert text.count("triton_kernel_call") >= 2
    swap = sys.modules["jaxseg.kernels.triton.swap_align2nat"]
    fwd = swap.forward_launch(x, *swap.forward_tables(x.shape, 2), lam=2, pad=-6.0)
    bwd = swap.backward_launch(jnp.zeros((1, 20, 26, 484)), *swap.backward_tables(x.shape, 2), lam=2,
                               input_shape=x.shape)
    calls = [c for c in rec.calls if "tap_gather" in c.kernel.name]
    grids = sorted(c.grid for c in calls)
    assert grids == sorted(tuple(launch.grid) + (1,) * (3 - len(launch.grid)) for launch in (fwd, bwd))
    for call in calls:
        arrays = [p for p in call.params if p[0] == "array"]
        assert len(arrays) == 6 and arrays[-1][1] == 0  # 5 inputs and the output, which is not zeroed
    _check_ptx(rec, tmp_path)
