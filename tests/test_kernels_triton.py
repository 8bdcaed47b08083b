"""Triton kernels: the very launches the GPU runs, executed by Triton's CPU interpreter, against "xla".

Each kernel module builds a ``Launch`` (kernel, ordered arguments, outputs, grid, meta-parameters).
On GPU ``launch.run_jax`` hands it to ``jax_triton.triton_call``; here :func:`run_interpreted` hands
the same ``Launch``, built from torch CPU tensors, to ``kernel[grid](*args, *outputs, **meta)``.
``@triton.jit`` picks the interpreter when the function is *decorated*, so the kernel modules are
loaded a second time, under ``TRITON_INTERPRET=1``, as private copies (the normally imported
modules keep their compilable ``JITFunction``s for the CUDA lowering tests at the end).

The CUDA lowering tests run jax-triton's real lowering rule for ``lowering_platforms=("cuda",)`` on
this CPU-only jaxlib: jax-triton needs four small objects from the jaxlib CUDA plugin only to *wrap*
the result (kernel, parameters, call, serialisation), which a stub records instead. Everything
before that -- Triton's front end, TTIR -> TTGIR -> LLVM -> PTX for sm_90a (H100), the argument signature,
the grid and the zeroed outputs -- is the GPU's code path. When Triton's bundled ``ptxas`` runs
here, the PTX is also assembled for sm_90a.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

triton = pytest.importorskip("triton", reason="triton is not installed (it comes with torch: pip install -e .[test])")
torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from test_kernels_nms import clustered_boxes  # noqa: E402
from test_kernels_nms import random_boxes as nms_random_boxes  # noqa: E402
from test_kernels_paste_masks import random_case  # noqa: E402
from test_kernels_roi_align import degenerate_boxes, random_boxes  # noqa: E402

from jaxseg.errors import UserError  # noqa: E402
from jaxseg.kernels import _dispatch, batched_nms, nms, paste_masks, roi_align  # noqa: E402
from jaxseg.kernels.triton import launch as launch_lib  # noqa: E402

_KERNEL_MODULES = ("roi_align", "nms", "paste_masks")

# The interpreter evaluates masked-off lanes too (x / 0 for empty boxes): numpy's warnings are expected.
pytestmark = pytest.mark.filterwarnings("ignore:(divide by zero|invalid value) encountered:RuntimeWarning")


@contextlib.contextmanager
def interpreter_mode():
    """``TRITON_INTERPRET=1`` and an interpreter-patched ``triton.language``, for a while.

    ``tl.max``, ``tl.sum``, ``tl.zeros``... were decorated when ``triton`` was first imported, before
    ``TRITON_INTERPRET`` was set (torch or another test may import it first), and the interpreter only
    swaps Triton's builtins: while this is active, the modules' globals hold one interpreted twin per
    function (one, so that the interpreter's fast paths, which compare a reduction's combine function
    by identity, still apply). The interpreter also leaves ``triton.language`` patched after calling
    a @jit helper; every attribute it patches is put back on exit, since the CUDA lowering tests
    compile the real kernels in this process.
    """
    import triton.language as tl
    from triton.runtime import interpreter
    from triton.runtime.jit import JITFunction

    originals: dict[tuple[int, str], tuple[object, str, object]] = {}
    real_set_attr = interpreter._LangPatchScope.set_attr

    def recording_set_attr(scope, obj, name, value):
        originals.setdefault((id(obj), name), (obj, name, vars(obj).get(name, _MISSING)))
        real_set_attr(scope, obj, name, value)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        mp.setattr(interpreter._LangPatchScope, "set_attr", recording_set_attr)
        for module in (tl.standard, tl):
            for name, member in list(vars(module).items()):
                if isinstance(member, JITFunction):
                    if id(member) not in _TWINS:
                        _TWINS[id(member)] = (member, interpreter.InterpretedFunction(member.fn))
                    mp.setattr(module, name, _TWINS[id(member)][1])
        try:
            yield
        finally:
            for obj, name, value in originals.values():
                if value is _MISSING:
                    if name in vars(obj):
                        delattr(obj, name)
                else:
                    setattr(obj, name, value)


_MISSING = object()
_TWINS: dict[int, tuple] = {}  # id(JITFunction) -> (the function, kept alive; its interpreted twin)


@pytest.fixture(scope="module")
def interp():
    """Private copies of the kernel modules whose @triton.jit functions run in the interpreter."""
    from triton.runtime.interpreter import InterpretedFunction

    mods = {}
    with interpreter_mode():
        for name in _KERNEL_MODULES:
            path = os.path.join(os.path.dirname(launch_lib.__file__), f"{name}.py")
            spec = importlib.util.spec_from_file_location(f"_jaxseg_triton_interpreted_{name}", path)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            mods[name] = mod
    assert isinstance(mods["roi_align"].roi_align_fwd_kernel, InterpretedFunction)
    return SimpleNamespace(**mods)


def run_interpreted(launch: launch_lib.Launch) -> list[np.ndarray]:
    """Runs ``launch`` like jax-triton does: inputs, then one buffer per output, then the meta-parameters.

    Outputs not marked ``zeroed`` start as garbage, so a kernel that leaves part of them unwritten fails.
    """
    outs = []
    for o in launch.outs:
        dtype = getattr(torch, o.dtype)
        fill = float("nan") if dtype.is_floating_point else -77
        outs.append(torch.zeros(o.shape, dtype=dtype) if o.zeroed else torch.full(o.shape, fill, dtype=dtype))
    if not launch.empty:
        # The interpreter takes float scalars as Python floats (it types them float32, as jax-triton
        # types np.float32); the value is the same float32 number.
        args = [float(a) if isinstance(a, np.float32) else a for a in launch.args]
        with interpreter_mode():
            launch.kernel[launch.grid](
                *args, *outs, num_warps=launch.num_warps, num_stages=launch.num_stages, **launch.meta
            )
    return [o.numpy() for o in outs]


def t(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a))


# ---------------------------------------------------------------------------------------------
# roi_align


def roi_case(interp, feats, boxes, bidx, out_hw, scale, sr, aligned, cot=None):
    """Interpreted forward (and backward with ``cot``) against roi_align "xla" (and its vjp)."""
    f, b, i = (np.asarray(a) for a in (feats, boxes, bidx.astype(np.int32)))
    (out,) = run_interpreted(interp.roi_align.forward_launch(t(f), t(b), t(i), out_hw, scale, sr, aligned))
    ref, vjp = jax.vjp(lambda x: roi_align(x, jnp.asarray(b), jnp.asarray(i), out_hw, scale, sr, aligned, "xla"), f)
    # (the vjp's backward pass is only traced and compiled when called below)
    tol = 1e-5 * max(1.0, float(np.abs(f).max()))
    np.testing.assert_allclose(out, np.asarray(ref), rtol=0, atol=tol)
    if cot is not None:
        launch = interp.roi_align.backward_launch(t(cot), t(b), t(i), f.shape, scale, sr, aligned)
        (grad,) = run_interpreted(launch)
        ref_grad = np.asarray(vjp(jnp.asarray(cot))[0])
        np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=1e-5 * max(1.0, float(np.abs(ref_grad).max())))
    return out


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_random_and_edge_boxes(interp, aligned, sampling_ratio):
    rng = np.random.default_rng(20 + 2 * aligned + sampling_ratio)
    feats = rng.standard_normal((2, 12, 15, 3)).astype(np.float32) * 3
    boxes = np.concatenate([degenerate_boxes() / 2, random_boxes(rng, 12, (48, 60), max_size=90)])
    bidx = rng.integers(0, 2, len(boxes))
    cot = rng.standard_normal((len(boxes), 3, 4, 3)).astype(np.float32) if aligned else None
    out = roi_case(interp, feats, boxes, bidx, (3, 4), 0.25, sampling_ratio, aligned, cot)
    if aligned and sampling_ratio == 0:
        assert np.all(out[:5] == 0)  # zero width, zero height, inverted, outside (adaptive grid: no samples)


@pytest.mark.parametrize("aligned, expected", [(False, 7.5), (True, 4.5)])
def test_roi_align_detectron2_vector(interp, aligned, expected):
    feats = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    out = roi_case(
        interp, feats, np.array([[1.0, 1.0, 3.0, 3.0]], np.float32), np.zeros(1, int), (4, 4), 1.0, 0, aligned
    )
    assert out[0, 0, 0, 0] == pytest.approx(expected)


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_boundary_vector(interp, sampling_ratio):
    """The sample at y = -1.0 is inside (clamped to row 0); y = -2 reads nothing."""
    feats = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    out = roi_case(
        interp,
        feats,
        np.array([[-2.0, -2.0, 2.0, 2.0]], np.float32),
        np.zeros(1, int),
        (2, 2),
        1.0,
        sampling_ratio,
        True,
    )
    np.testing.assert_allclose(out[0, :, :, 0], [[0.0, 0.25], [1.0, 2.5]], atol=1e-6)


def test_roi_align_long_thin_box_large_adaptive_grid(interp):
    """1300 x 20 px at scale 1/4: 47 samples per bin along x, looped in full (data-dependent bound)."""
    rng = np.random.default_rng(4)
    feats = rng.standard_normal((1, 8, 340, 2)).astype(np.float32)
    boxes = np.array([[10.0, 20.0, 1310.0, 24.0]], np.float32)  # one sample per bin along y
    cot = rng.standard_normal((1, 2, 7, 2)).astype(np.float32)
    roi_case(interp, feats, boxes, np.zeros(1, int), (2, 7), 0.25, 0, True, cot)


def test_roi_align_huge_box_mostly_outside(interp):
    """Bins 2000 px wide: only the in-map samples are visited, and the result still matches."""
    rng = np.random.default_rng(5)
    feats = rng.standard_normal((1, 6, 9, 2)).astype(np.float32)
    boxes = np.array([[-2e4, 3.0, 2e4, 20.0], [-3e3, -3e3, 3e3, 3e3]], np.float32)
    roi_case(interp, feats, boxes, np.zeros(2, int), (2, 5), 0.25, 0, True)


# ---------------------------------------------------------------------------------------------
# nms


def interpreted_nms(interp, boxes, scores, threshold, groups=None, valid=None, max_output=None):
    """The GPU path of ops._greedy_nms with the two kernels interpreted: kept indices in order."""
    n = len(boxes)
    k_out = n if max_output is None else max_output
    as_jnp = lambda a: None if a is None else jnp.asarray(a)
    ranked, ranked_groups, n_valid, order = interp.nms.prepare(
        jnp.asarray(boxes), jnp.asarray(scores), as_jnp(groups), as_jnp(valid)
    )
    (mask,) = run_interpreted(interp.nms.mask_launch(t(ranked), t(ranked_groups), threshold))
    (keep,) = run_interpreted(interp.nms.scan_launch(t(mask), t(n_valid), k_out))
    k, kv = interp.nms.finish(order, jnp.asarray(keep), k_out)
    return np.asarray(k)[np.asarray(kv)]


def xla_kept(result):
    keep, keep_valid = (np.asarray(a) for a in result)
    return keep[keep_valid]


@pytest.mark.parametrize("kind", ["random", "clustered"])
def test_nms_matches_xla(interp, kind):
    rng = np.random.default_rng(3 if kind == "random" else 4)
    n = 200  # several row and word tiles of the mask kernel
    boxes = nms_random_boxes(rng, n) if kind == "random" else clustered_boxes(rng, n)
    scores = rng.random(n).astype(np.float32)
    for threshold in (0.5,) if kind == "random" else (0.3, 0.7):
        ref = xla_kept(nms(jnp.asarray(boxes), jnp.asarray(scores), threshold, implementation="xla"))
        np.testing.assert_array_equal(interpreted_nms(interp, boxes, scores, threshold), ref)


def test_nms_ties_duplicates_valid_and_max_output(interp):
    rng = np.random.default_rng(6)
    base = clustered_boxes(rng, 60, clusters=4)
    boxes = np.concatenate([base, base[:20], np.zeros((5, 4), np.float32)])  # exact duplicates, empty boxes
    scores = np.round(rng.random(len(boxes)), 1).astype(np.float32)  # many equal scores
    scores[60:70] = scores[:10]
    valid = rng.random(len(boxes)) > 0.2
    for max_output in (None, 7):
        ref = xla_kept(
            nms(
                jnp.asarray(boxes),
                jnp.asarray(scores),
                0.5,
                valid=jnp.asarray(valid),
                max_output=max_output,
                implementation="xla",
            )
        )
        got = interpreted_nms(interp, boxes, scores, 0.5, valid=valid, max_output=max_output)
        np.testing.assert_array_equal(got, ref)


def test_batched_nms_matches_xla(interp):
    rng = np.random.default_rng(7)
    n = 200
    boxes = clustered_boxes(rng, n, clusters=6)
    scores = rng.random(n).astype(np.float32)
    groups = rng.integers(0, 4, n).astype(np.int32)
    ref = xla_kept(batched_nms(jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(groups), 0.5, implementation="xla"))
    np.testing.assert_array_equal(interpreted_nms(interp, boxes, scores, 0.5, groups=groups), ref)


# ---------------------------------------------------------------------------------------------
# paste_masks


def paste_case(interp, masks, boxes, image_hw, threshold=0.5):
    ref = np.asarray(paste_masks(jnp.asarray(masks), jnp.asarray(boxes), image_hw, None, implementation="xla"))
    (values,) = run_interpreted(interp.paste_masks.paste_launch(t(masks), t(boxes), image_hw, None))
    np.testing.assert_allclose(values, ref, rtol=0, atol=1e-5)
    (binary,) = run_interpreted(interp.paste_masks.paste_launch(t(masks), t(boxes), image_hw, threshold))
    assert binary.dtype == np.int8 and set(np.unique(binary)) <= {0, 1}
    decided = np.abs(ref - threshold) > 1e-5
    np.testing.assert_array_equal((binary != 0)[decided], (ref >= threshold)[decided])
    return values


def test_paste_masks_random(interp):
    rng = np.random.default_rng(8)
    masks, boxes = random_case(rng, 9, 28, (37, 70))
    paste_case(interp, masks, boxes, (37, 70))


def test_paste_masks_outside_tiny_and_degenerate(interp):
    rng = np.random.default_rng(2)
    masks = rng.random((6, 14, 14)).astype(np.float32)
    boxes = np.array(
        [
            [-30, -10, 20, 25],
            [-5, -5, 70, 55],
            [10.2, 10.7, 11.1, 11.9],
            [25.5, 0.25, 26.0, 49.75],
            [5, 5, 5, 9],
            [30, 30, 20, 40],
        ],
        np.float32,
    )
    values = paste_case(interp, masks, boxes, (21, 33))
    assert np.all(values[4] == 0) and np.all(np.isfinite(values))


# ---------------------------------------------------------------------------------------------
# The JAX side (ops.py: casts, custom_vjp, vmap, nms ranking) executed on CPU, kernels interpreted


@pytest.fixture
def interpreted_ops(interp, monkeypatch):
    """``jaxseg.kernels.triton.ops`` with ``launch.run_jax`` replaced by a host callback that runs the
    same ``Launch`` with the interpreted twin of its kernel."""

    def run_jax(launch):
        module = getattr(interp, launch.kernel.fn.__module__.rsplit(".", 1)[1])
        twin = getattr(module, launch.kernel.fn.__name__)
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


def test_ops_roi_align_grad_and_vmap(interpreted_ops):
    rng = np.random.default_rng(9)
    feats = jnp.asarray(rng.standard_normal((2, 8, 10, 3)), jnp.float32)
    boxes = jnp.asarray(np.stack([random_boxes(rng, 4, (32, 40), max_size=40) for _ in range(2)]))
    cot = jnp.asarray(rng.standard_normal((2, 4, 2, 2, 3)), jnp.float32)

    def per_image(impl):
        def f(x, b, g):
            fn = lambda y: jnp.sum(impl(y[None], b, jnp.zeros(4, jnp.int32), (2, 2), 0.25, 0, True) * g)
            return jax.value_and_grad(fn)(x)

        return jax.jit(jax.vmap(f))

    xla = lambda *a: roi_align(*a, implementation="xla")
    got = per_image(interpreted_ops.roi_align)(feats, boxes, cot)
    ref = per_image(xla)(feats, boxes, cot)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5)


def test_ops_nms_and_paste(interpreted_ops):
    rng = np.random.default_rng(10)
    boxes = jnp.asarray(clustered_boxes(rng, 40, clusters=3))
    scores = jnp.asarray(rng.random(40), jnp.float32)
    valid = jnp.asarray(rng.random(40) > 0.1)
    got = interpreted_ops.nms(boxes, scores, 0.5, valid=valid, max_output=10)
    ref = nms(boxes, scores, 0.5, valid=valid, max_output=10, implementation="xla")
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    masks, pboxes = (jnp.asarray(a) for a in random_case(rng, 3, 14, (20, 24)))
    got = interpreted_ops.paste_masks(masks, pboxes, (20, 24), None)
    ref = paste_masks(masks, pboxes, (20, 24), None, implementation="xla")
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5)
    binary = interpreted_ops.paste_masks(masks, pboxes, (20, 24), 0.5)
    assert binary.dtype == bool and binary.shape == (3, 20, 24)


# ---------------------------------------------------------------------------------------------
# Registration


def test_registered_but_not_available_on_cpu():
    for op in ("roi_align", "nms", "batched_nms", "paste_masks"):
        assert "triton" in _dispatch._REGISTRY[op]
        assert ("triton" in _dispatch.available_implementations(op)) == (jax.default_backend() == "gpu")
    if jax.default_backend() == "cpu":
        with pytest.raises(UserError, match=r"roi_align.*'triton' is not available"):
            roi_align(
                jnp.ones((1, 4, 4, 1)), jnp.zeros((1, 4)), jnp.zeros(1, jnp.int32), 2, 1.0, implementation="triton"
            )


def test_importing_kernels_imports_no_triton():
    code = "import sys, jaxseg.kernels; assert 'triton' not in sys.modules and 'jax_triton' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})


# ---------------------------------------------------------------------------------------------
# CUDA lowering on this CPU machine (jax-triton's lowering rule, PTX for sm_90a)


class _Recorder:
    """Stands in for jaxlib's CUDA ``gpu_triton`` module: records what jax-triton would hand to it."""

    def __init__(self):
        self.calls: list[SimpleNamespace] = []

    def module_attrs(self) -> dict:
        rec = self

        class TritonKernel:
            def __init__(self, name, num_warps, num_ctas, shared_mem_bytes, binary, ttir, compute_capability):
                self.name, self.num_warps, self.shared, self.ptx = name, num_warps, shared_mem_bytes, binary

        class TritonKernelCall:
            def __init__(self, kernel, gx, gy, gz, params):
                rec.calls.append(SimpleNamespace(kernel=kernel, grid=(gx, gy, gz), params=params))

            def to_proto(self, name, metadata):
                return name.encode()

        return dict(
            TritonKernel=TritonKernel,
            TritonKernelCall=TritonKernelCall,
            TritonAutotunedKernelCall=None,
            create_array_parameter=lambda zeroed_bytes, divisibility: ("array", zeroed_bytes, divisibility),
            create_scalar_parameter=lambda value, dtype: ("scalar", value, dtype),
            get_compute_capability=lambda device: 90,
            get_arch_details=lambda device: "sm_90",
            get_serialized_metadata=lambda data: b"",
        )


@pytest.fixture
def cuda_lowering(monkeypatch):
    """jax_triton imported against a recording stand-in for the CUDA plugin; yields (ops, recorder)."""
    if importlib.util.find_spec("jax_triton") is None:
        pytest.skip("jax-triton is not installed (pip install -e .[test])")
    import jaxlib.gpu_triton as gpu_triton

    rec = _Recorder()
    for name, value in rec.module_attrs().items():
        monkeypatch.setattr(gpu_triton, name, value, raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)  # jax_triton sets it on import; restored after
    monkeypatch.delitem(sys.modules, "jax_triton", raising=False)
    monkeypatch.delitem(sys.modules, "jax_triton.triton_lib", raising=False)
    import jax_triton  # noqa: F401

    from jaxseg.kernels.triton import ops

    yield ops, rec


def _lower_cuda(fn, *args) -> str:
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


def _check_ptx(rec, tmp_path):
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    for call in rec.calls:
        assert (
            f".entry {call.kernel.name}" in call.kernel.ptx and ".target sm_90" in call.kernel.ptx
        )  # sm_90a on Hopper
        if os.access(ptxas, os.X_OK):
            src = tmp_path / f"{call.kernel.name}.ptx"
            src.write_text(call.kernel.ptx)
            subprocess.run([ptxas, "-arch=sm_90a", str(src), "-o", str(tmp_path / "k.cubin")], check=True)


def test_cuda_lowering_roi_align_forward_backward_vmap(cuda_lowering, tmp_path):
    ops, rec = cuda_lowering
    feats = jnp.zeros((2, 16, 20, 8), jnp.float32)
    boxes = jnp.zeros((5, 4), jnp.float32)
    bidx = jnp.zeros((5,), jnp.int32)
    fwd = lambda f: ops.roi_align(f, boxes, bidx, (7, 7), 0.25, 0, True)
    text = _lower_cuda(lambda f: jax.value_and_grad(lambda x: fwd(x).sum())(f), feats)
    assert text.count("triton_kernel_call") >= 2
    expected = [
        ops._roi.forward_launch(feats, boxes, bidx, (7, 7), 0.25, 0, True),
        ops._roi.backward_launch(jnp.zeros((5, 7, 7, 8)), boxes, bidx, feats.shape, 0.25, 0, True),
    ]
    by_name = {c.kernel.name: c for c in rec.calls}
    for launch in expected:
        (call,) = [c for name, c in by_name.items() if launch.kernel.fn.__name__ in name]
        assert call.grid == tuple(launch.grid) + (1,) * (3 - len(launch.grid))
        arrays = [p for p in call.params if p[0] == "array"]
        assert len(arrays) == sum(d is not None for d in launch.in_dtypes) + len(launch.outs)
        zeroed = [p[1] for p in arrays[-len(launch.outs) :]]
        sizes = [int(np.prod(o.shape)) * np.dtype(o.dtype).itemsize if o.zeroed else 0 for o in launch.outs]
        assert zeroed == sizes
    _check_ptx(rec, tmp_path)
    # vmap over images: one kernel call per image inside a loop
    rec.calls.clear()
    vm = jax.vmap(lambda f, b: ops.roi_align(f[None], b, jnp.zeros(5, jnp.int32), (7, 7), 0.25, 2, False))
    _lower_cuda(vm, feats, jnp.zeros((2, 5, 4)))
    assert rec.calls and all(c.grid == (5, 1, 1) for c in rec.calls)
    _check_ptx(rec, tmp_path)


def test_cuda_lowering_nms_and_paste(cuda_lowering, tmp_path):
    ops, rec = cuda_lowering
    boxes, scores = jnp.zeros((300, 4)), jnp.zeros((300,))
    _lower_cuda(lambda b, s: ops.nms(b, s, 0.5, max_output=100), boxes, scores)
    _lower_cuda(lambda b, s, g: ops.batched_nms(b, s, g, 0.5), boxes, scores, jnp.zeros((300,), jnp.int32))
    _lower_cuda(lambda m, b: ops.paste_masks(m, b, (61, 83), 0.5), jnp.zeros((4, 28, 28)), jnp.zeros((4, 4)))
    _lower_cuda(lambda m, b: ops.paste_masks(m, b, (61, 83), None), jnp.zeros((4, 28, 28)), jnp.zeros((4, 4)))
    names = {c.kernel.name for c in rec.calls}
    assert any("nms_mask" in n for n in names) and any("nms_scan" in n for n in names)
    assert any("paste_masks" in n for n in names)
    scan = next(c for c in rec.calls if "nms_scan" in c.kernel.name)
    assert scan.grid == (1, 1, 1)
    _check_ptx(rec, tmp_path)
