"""The C++ "ffi" kernels against the pure-JAX "xla" reference: random and edge cases, gradients, jit, vmap.

Skipped (with the reason) only when the extension was not built; set JAXSEG_REQUIRE_FFI=1 (CI) to make
a missing build fail instead.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_kernels_nms import clustered_boxes, greedy_reference, kept
from test_kernels_nms import random_boxes as random_nms_boxes
from test_kernels_paste_masks import random_case
from test_kernels_roi_align import degenerate_boxes, random_boxes

from jaxseg.errors import UserError
from jaxseg.kernels import _dispatch, batched_nms, ffi, nms, paste_masks, roi_align

NOT_BUILT = (
    "the C++ FFI kernels are not built (jaxseg.kernels._ffi_cpu is missing: pip install -e . with a C++17 compiler)"
)


def test_extension_built_when_required():
    if os.environ.get("JAXSEG_REQUIRE_FFI") == "1":
        assert ffi.is_built(), NOT_BUILT


needs_ffi = pytest.mark.skipif(not ffi.is_built(), reason=NOT_BUILT)


def assert_close(ours, ref, rel=1e-5):
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    np.testing.assert_allclose(ours, ref, rtol=0, atol=rel * max(1.0, float(np.abs(ref).max(initial=0.0))))


# ---------------------------------------------------------------------------------------------
# Dispatch and MODEL.KERNELS


@needs_ffi
def test_ffi_is_the_default_on_cpu():
    assert jax.default_backend() == "cpu"
    assert _dispatch.resolve("roi_align", None) is ffi.roi_align_ffi
    assert _dispatch.resolve("nms", None) is ffi.nms_ffi
    assert _dispatch.resolve("batched_nms", None) is ffi.batched_nms_ffi
    assert _dispatch.resolve("paste_masks", None) is ffi.paste_masks_ffi


def test_a_name_another_op_has_falls_back_to_automatic():
    assert _dispatch.resolve("nms", "xla").__name__ == "nms_xla"
    with pytest.raises(UserError, match=r"MODEL.KERNELS 'cuda'.*xla"):
        _dispatch.check_name("cuda")
    _dispatch.check_name("")  # automatic


def _lowered_text(kernels: str) -> str:
    from jaxseg.config import setup_cfg
    from jaxseg.models.registry import build_model

    config = os.path.join(os.path.dirname(__file__), "..", "configs", "quickstart", "shapes_mask_rcnn.yaml")
    model = build_model(setup_cfg(config, ["MODEL.KERNELS", kernels]))
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *model.init_args()))
    images, hw = model.init_args()
    outputs = jax.eval_shape(model.apply, variables, images, hw)
    text = jax.jit(model.apply).lower(variables, images, hw).as_text()
    text += jax.jit(model.postprocess, static_argnames="canvas_hw").lower(outputs, hw, hw, canvas_hw=(64, 64)).as_text()
    return text


@needs_ffi
def test_kernel_choice_is_a_model_value_not_a_global():
    """Two models with different MODEL.KERNELS in one process each lower their own kernels."""
    with_ffi, with_xla = _lowered_text("ffi"), _lowered_text("xla")
    for target in ("jaxseg_nms", "jaxseg_roi_align_fwd", "jaxseg_paste_masks"):
        assert target in with_ffi
        assert target not in with_xla
    assert "jaxseg_nms" in _lowered_text("ffi")  # building the xla model changed nothing for the next one


def test_build_model_refuses_an_unknown_kernel_name():
    from jaxseg.config import setup_cfg
    from jaxseg.models.registry import build_model

    config = os.path.join(os.path.dirname(__file__), "..", "configs", "COCO-InstanceSegmentation",
                          "mask_rcnn_R_50_FPN_3x.yaml")
    with pytest.raises(UserError, match="MODEL.KERNELS 'cuda'"):
        build_model(setup_cfg(config, ["MODEL.KERNELS", "cuda"]))


# ---------------------------------------------------------------------------------------------
# roi_align


def both_roi_align(features, boxes, batch_index, output_size, scale, sampling_ratio, aligned, cot=None):
    """(output, feature gradient for cotangent `cot`) of "ffi" and of "xla"."""
    res = []
    for impl in ("ffi", "xla"):
        f = lambda x, impl=impl: roi_align(x, boxes, batch_index, output_size, scale, sampling_ratio, aligned, impl)
        out, vjp = jax.vjp(f, jnp.asarray(features))
        g = np.ones(out.shape, np.float32) if cot is None else cot
        res.append((np.asarray(out), np.asarray(vjp(jnp.asarray(g))[0])))
    return res


@needs_ffi
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_random_and_degenerate_boxes(aligned, sampling_ratio):
    rng = np.random.default_rng(20 + 2 * aligned + sampling_ratio)
    feats = rng.standard_normal((2, 24, 31, 5)).astype(np.float32) * 3
    boxes = np.concatenate([random_boxes(rng, 150, (96, 124), max_size=200), degenerate_boxes()])
    batch_index = rng.integers(0, 2, len(boxes)).astype(np.int32)
    cot = rng.standard_normal((len(boxes), 7, 5, 5)).astype(np.float32)
    (out, grad), (ref, ref_grad) = both_roi_align(feats, boxes, batch_index, (7, 5), 0.25, sampling_ratio, aligned, cot)
    assert_close(out, ref)
    assert_close(grad, ref_grad)


@needs_ffi
@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_vectors(aligned):
    feats = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    box, zero = np.array([[1.0, 1.0, 3.0, 3.0]], np.float32), np.zeros(1, np.int32)
    (out, grad), (ref, ref_grad) = both_roi_align(feats, box, zero, 4, 1.0, 0, aligned)
    assert_close(out, ref)
    assert_close(grad, ref_grad)
    expected = [[4.5, 5.0, 5.5, 6.0], [7.0, 7.5, 8.0, 8.5], [9.5, 10.0, 10.5, 11.0], [12.0, 12.5, 13.0, 13.5]]
    if aligned:
        np.testing.assert_allclose(out[0, :, :, 0], expected, atol=1e-6)
    # Samples exactly at -1 (inside, clamped to row 0) and at -2 (nothing).
    feats = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    for sampling_ratio in (0, 2):
        box = np.array([[-2.0, -2.0, 2.0, 2.0]], np.float32)
        (out, _), (ref, _) = both_roi_align(feats, box, zero, 2, 1.0, sampling_ratio, True)
        np.testing.assert_array_equal(out, ref)


@needs_ffi
def test_roi_align_large_grids_huge_and_odd_boxes():
    rng = np.random.default_rng(4)
    feats = rng.standard_normal((2, 16, 340, 4)).astype(np.float32)
    boxes = np.array(
        [
            [10.0, 20.0, 1310.0, 40.0],  # 47 columns per bin
            [20.0, 5.0, 40.0, 60.0],
            [-2e4, 3.0, 2e4, 40.0],  # huge, mostly outside: only in-map samples are visited
            [-3e3, -3e3, 3e3, 3e3],
            [np.nan, 0.0, 10.0, 10.0],  # NaN: no samples
            [0.0, 0.0, np.inf, 10.0],
            [-np.inf, 0.0, 10.0, 10.0],
            [3.0, 4.0, 5.0, 4.0],  # empty
        ],
        np.float32,
    )
    batch_index = np.array([0, 1, 0, 1, 0, 1, 0, 7], np.int32)  # out of range: clamped, as xla
    cot = rng.standard_normal((len(boxes), 7, 6, 4)).astype(np.float32)
    (out, grad), (ref, ref_grad) = both_roi_align(feats, boxes, batch_index, (7, 6), 0.25, 0, True, cot)
    assert_close(out, ref)
    assert_close(grad, ref_grad)
    assert np.all(out[-1] == 0) and np.all(np.isfinite(out))


@needs_ffi
def test_roi_align_empty_and_dtype():
    out = roi_align(jnp.zeros((1, 10, 10, 3)), jnp.zeros((0, 4)), jnp.zeros((0,), jnp.int32), 7, 1.0, 0, True, "ffi")
    assert out.shape == (0, 7, 7, 3)
    rng = np.random.default_rng(8)
    feats = jnp.asarray(rng.standard_normal((1, 12, 12, 8)), jnp.bfloat16)
    boxes = jnp.asarray(random_boxes(rng, 20, (48, 48), max_size=60))
    args = (feats, boxes, jnp.zeros(20, jnp.int32), 7, 0.25)
    ours, ref = roi_align(*args, implementation="ffi"), roi_align(*args, implementation="xla")
    assert ours.dtype == ref.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(ours, np.float32), np.asarray(ref, np.float32), atol=2e-2)
    grad = jax.grad(lambda f: roi_align(f, *args[1:], implementation="ffi").astype(jnp.float32).sum())(feats)
    assert grad.dtype == jnp.bfloat16


def test_xla_roi_align_gradient_matches_finite_differences():
    """roi_align is linear in the features: a central difference along a random direction is exact."""
    rng = np.random.default_rng(9)
    feats = jnp.asarray(rng.standard_normal((1, 6, 7, 2)), jnp.float32)
    boxes = jnp.asarray([[0.5, 1.0, 20.0, 18.0], [-4.0, -2.0, 9.0, 30.0], [3.0, 3.0, 12.0, 7.0]], jnp.float32)
    cot = jnp.asarray(rng.standard_normal((3, 3, 2, 2)), jnp.float32)
    direction = jnp.asarray(rng.standard_normal(feats.shape), jnp.float32)
    # The adaptive grid, whose gradient is xla's custom_vjp (a static grid is plain JAX autodiff).
    loss = lambda f: jnp.sum(cot * roi_align(f, boxes, jnp.zeros(3, jnp.int32), (3, 2), 0.25, 0, True, "xla"))
    eps = 0.5
    fd = (loss(feats + eps * direction) - loss(feats - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(float(jnp.vdot(jax.grad(loss)(feats), direction)), float(fd), rtol=1e-4, atol=1e-4)


@needs_ffi
def test_roi_align_jit_vmap_and_gradient():
    rng = np.random.default_rng(6)
    feats = jnp.asarray(rng.standard_normal((3, 16, 20, 4)), jnp.float32)
    boxes = jnp.asarray(np.stack([random_boxes(rng, 40, (64, 80), max_size=90) for _ in range(3)]))
    cot = jnp.asarray(rng.standard_normal((3, 40, 7, 7, 4)), jnp.float32)
    zeros = jnp.zeros(40, jnp.int32)

    def per_image(impl):
        def fn(f, b, g):
            out, vjp = jax.vjp(lambda x: roi_align(x[None], b, zeros, 7, 0.25, implementation=impl), f)
            return out, vjp(g)[0]

        return jax.jit(jax.vmap(fn))

    for ours, ref in zip(per_image("ffi")(feats, boxes, cot), per_image("xla")(feats, boxes, cot)):
        assert_close(ours, ref)

    # Unbatched features with batched boxes (not copied per batch element), and nested vmap.
    def shared(impl):
        f = lambda x, b: roi_align(x, b, zeros, (5, 4), 0.25, 2, True, impl)
        return jax.jit(jax.vmap(jax.vmap(f, in_axes=(None, 0)), in_axes=(None, 0)))

    nested = boxes.reshape(3, 1, 40, 4)
    assert_close(shared("ffi")(feats[:1], nested), shared("xla")(feats[:1], nested))
    loss = lambda impl: jax.grad(lambda x: jnp.sum(shared(impl)(x, nested) ** 2))(feats[:1])
    assert_close(loss("ffi"), loss("xla"))


# ---------------------------------------------------------------------------------------------
# nms, batched_nms


def assert_same_nms(ours, ref):
    np.testing.assert_array_equal(np.asarray(ours[0]), np.asarray(ref[0]))
    np.testing.assert_array_equal(np.asarray(ours[1]), np.asarray(ref[1]))
    kept(ours)  # dtypes and padding


@needs_ffi
@pytest.mark.parametrize("seed", range(4))
def test_nms_random(seed):
    rng = np.random.default_rng(seed)
    n = [37, 300, 700, 1000][seed]
    boxes = jnp.asarray(clustered_boxes(rng, n) if seed % 2 else random_nms_boxes(rng, n))
    scores = jnp.asarray(rng.random(n).astype(np.float32))
    valid = jnp.asarray(rng.random(n) < 0.7)
    for threshold in (0.3, 0.5, 0.7):
        for kw in ({}, {"valid": valid, "max_output": 50}):
            assert_same_nms(nms(boxes, scores, threshold, **kw, implementation="ffi"),
                            nms(boxes, scores, threshold, **kw, implementation="xla"))


@needs_ffi
@pytest.mark.parametrize("seed", range(3))
def test_batched_nms_random(seed):
    rng = np.random.default_rng(100 + seed)
    n = [50, 400, 900][seed]
    boxes = clustered_boxes(rng, n) + np.float32(5000.0 * (seed == 2))  # large coordinates: exact per group
    scores = jnp.asarray(rng.random(n).astype(np.float32))
    idxs = jnp.asarray(rng.integers(0, [1, 5, 80][seed], n))
    for kw in ({}, {"max_output": 30}, {"valid": jnp.asarray(rng.random(n) < 0.5)}):
        ours = batched_nms(jnp.asarray(boxes), scores, idxs, 0.6, **kw, implementation="ffi")
        assert_same_nms(ours, batched_nms(jnp.asarray(boxes), scores, idxs, 0.6, **kw, implementation="xla"))
    ours = kept(batched_nms(jnp.asarray(boxes), scores, idxs, 0.6, implementation="ffi"))
    np.testing.assert_array_equal(ours, greedy_reference(boxes, np.asarray(scores), 0.6, groups=np.asarray(idxs)))


@needs_ffi
def test_nms_edge_cases():
    both = lambda *a, **k: (nms(*a, **k, implementation="ffi"), nms(*a, **k, implementation="xla"))
    # Invalid boxes never suppress; all invalid.
    boxes = jnp.array([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0]])
    scores = jnp.array([0.9, 0.8, 0.7])
    for v in ([False, True, True], [False, False, True], [False, False, False]):
        assert_same_nms(*both(boxes, scores, 0.5, valid=jnp.array(v)))
    # Ties: lower index first.
    b = jnp.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [20, 20, 30, 31], [50, 50, 60, 60]], jnp.float32)
    ours, ref = both(b, jnp.array([0.5, 0.5, 0.7, 0.7, 0.5]), 0.5)
    assert_same_nms(ours, ref)
    np.testing.assert_array_equal(kept(ours), [2, 0, 4])
    rng = np.random.default_rng(5)
    ties = jnp.asarray(rng.integers(0, 6, 400).astype(np.float32) / 5)
    assert_same_nms(*both(jnp.asarray(clustered_boxes(rng, 400)), ties, 0.5))
    # IoU exactly at the threshold (strict), zero-area, inverted boxes, -0.0 vs 0.0 scores.
    b = jnp.array([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 5.0, 9.0], [5.0, 5.0, 5.0, 9.0],
                   [9.0, 9.0, 7.0, 7.0]])
    for thr in (0.5, 0.49):
        assert_same_nms(*both(b, jnp.array([0.9, 0.8, 0.7, 0.6, 0.5]), thr))
    assert_same_nms(*both(b, jnp.array([0.0, -0.0, 0.0, -0.0, 0.0]), 0.49))
    # NaN scores rank last; NaN / inf coordinates never suppress.
    rng = np.random.default_rng(12)
    b = clustered_boxes(rng, 200)
    b[::17, 2] = np.nan
    b[5::23, 0] = -np.inf
    s = rng.random(200).astype(np.float32)
    s[::11] = np.nan
    assert_same_nms(*both(jnp.asarray(b), jnp.asarray(s), 0.5))
    # max_output > N, empty input, bool-less valid.
    assert_same_nms(*both(b[:7], s[:7], 0.5, max_output=12))
    for impl in ("ffi", "xla"):
        keep, keep_valid = nms(jnp.zeros((0, 4)), jnp.zeros((0,)), 0.5, implementation=impl)
        assert keep.shape == (0,) and keep_valid.shape == (0,)
        keep, keep_valid = batched_nms(jnp.zeros((0, 4)), jnp.zeros((0,)), jnp.zeros((0,), jnp.int32), 0.5,
                                       max_output=3, implementation=impl)
        assert keep.shape == (3,) and not np.any(np.asarray(keep_valid))


@needs_ffi
def test_nms_jit_and_vmap():
    rng = np.random.default_rng(11)
    boxes = jnp.asarray(np.stack([clustered_boxes(rng, 300) for _ in range(5)]))
    scores = jnp.asarray(rng.random((5, 300)).astype(np.float32))
    valid = jnp.asarray(rng.random((5, 300)) < 0.8)
    thresholds = jnp.asarray([0.3, 0.5, 0.6, 0.7, 0.9], jnp.float32)

    def run(impl):
        per_level = jax.vmap(lambda b, s, v, t: nms(b, s, t, valid=v, max_output=200, implementation=impl))
        shared_boxes = jax.vmap(lambda s, g: batched_nms(boxes[0], s, g, 0.5, implementation=impl))  # boxes unbatched
        groups = jnp.asarray(rng.integers(0, 3, (5, 300)))
        return jax.jit(per_level)(boxes, scores, valid, thresholds), jax.jit(shared_boxes)(scores, groups)

    rng_state = rng.bit_generator.state
    ours = run("ffi")
    rng.bit_generator.state = rng_state
    ref = run("xla")
    for o, r in zip(ours, ref):
        assert_same_nms(o, r)


# ---------------------------------------------------------------------------------------------
# paste_masks


def assert_paste_matches(masks, boxes, image_hw, threshold):
    args = (jnp.asarray(masks), jnp.asarray(boxes), image_hw)
    values = paste_masks(*args, threshold=None, implementation="ffi")
    ref = np.asarray(paste_masks(*args, threshold=None, implementation="xla"))
    assert_close(values, ref)
    binary = np.asarray(paste_masks(*args, threshold=threshold, implementation="ffi"))
    assert binary.dtype == bool and binary.shape == ref.shape
    ref_binary = np.asarray(paste_masks(*args, threshold=threshold, implementation="xla"))
    decided = np.abs(ref - threshold) > 1e-5
    np.testing.assert_array_equal(binary[decided], ref_binary[decided])
    assert np.mean(binary != ref_binary) < 1e-4
    return binary


@needs_ffi
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_paste_random(threshold):
    rng = np.random.default_rng(int(threshold * 10))
    masks, boxes = random_case(rng, 37, 28, (61, 83))
    binary = assert_paste_matches(masks, boxes, (61, 83), threshold)
    assert 0 < binary.mean() < 0.5


@needs_ffi
def test_paste_edge_cases():
    mask = np.array([[[0.2, 0.9], [0.6, 1.0]]], np.float32)
    assert_paste_matches(mask, np.array([[0.5, 0.5, 3.5, 3.5]], np.float32), (4, 5), 0.5)
    rng = np.random.default_rng(2)
    boxes = np.array(
        [
            [-30, -10, 20, 25],  # partly outside
            [40, 30, 90, 70],
            [-5, -5, 70, 55],
            [10.2, 10.7, 11.1, 11.9],  # tiny
            [3, 40, 4, 41],
            [25.5, 0.25, 26.0, 49.75],
            [5.0, 5.0, 5.0, 9.0],  # degenerate: nothing
            [30.0, 30.0, 10.0, 12.0],  # inverted
            [200.0, 200.0, 300.0, 300.0],  # outside
            [-1e9, -1e9, 1e9, 1e9],  # huge
        ],
        np.float32,
    )
    masks = rng.random((len(boxes), 14, 14)).astype(np.float32)
    assert_paste_matches(masks, boxes, (50, 64), 0.5)
    values = np.asarray(paste_masks(jnp.asarray(masks), jnp.asarray(boxes), (50, 64), None, implementation="ffi"))
    assert np.all(values[6] == 0) and np.all(values[8] == 0) and np.all(np.isfinite(values))
    for impl in ("ffi", "xla"):
        out = paste_masks(jnp.zeros((0, 28, 28)), jnp.zeros((0, 4)), (10, 12), implementation=impl)
        assert out.shape == (0, 10, 12) and out.dtype == bool
        with pytest.raises(ValueError, match="square"):
            paste_masks(jnp.zeros((1, 28, 14)), jnp.zeros((1, 4)), (10, 12), implementation=impl)


@needs_ffi
def test_paste_jit_and_vmap():
    rng = np.random.default_rng(4)
    cases = [random_case(rng, 5, 28, (30, 40)) for _ in range(2)]
    masks, boxes = (jnp.asarray(np.stack(a)) for a in zip(*cases))

    def run(impl, threshold):
        per_image = jax.vmap(lambda m, b: paste_masks(m, b, (30, 40), threshold, implementation=impl))
        same_masks = jax.vmap(lambda b: paste_masks(masks[0], b, (30, 40), threshold, implementation=impl))
        return jax.jit(per_image)(masks, boxes), jax.jit(same_masks)(boxes)

    for ours, ref in zip(run("ffi", None), run("xla", None)):
        assert_close(ours, ref)
    for ours, ref in zip(run("ffi", 0.5), run("xla", 0.5)):
        assert np.mean(np.asarray(ours) != np.asarray(ref)) < 1e-3
