"""One launch description per Triton kernel call, run by jax-triton on GPU and by the interpreter in tests.

Each kernel module builds a :class:`Launch` from its (already cast) input arrays and static
parameters: the kernel, the ordered argument list, the outputs' shapes and dtypes, the grid, the
``constexpr`` meta-parameters and the compiler options. The argument order follows jax-triton's
convention: the inputs (arrays and scalars) in order, then one pointer per output. :func:`run_jax`
turns a ``Launch`` into ``jax_triton.triton_call``; the tests hand the very same ``Launch`` (built
from torch CPU tensors) to ``kernel[grid](*args, *outputs, **meta)`` under ``TRITON_INTERPRET=1``, so
what the test checks is what the GPU runs.

Scalars: Python ``int`` becomes ``i32``; float scalars must be ``np.float32`` (jax-triton would make a
Python ``float`` an ``fp64``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Out:
    """One kernel output: its shape and dtype (a numpy dtype name), and whether it starts zeroed."""

    shape: tuple[int, ...]
    dtype: str
    zeroed: bool = False


@dataclass(frozen=True)
class Launch:
    """Everything needed to launch one Triton kernel."""

    kernel: Any  # a triton JITFunction (or, in the interpreter tests, an InterpretedFunction)
    args: tuple[Any, ...]  # inputs in kernel order: arrays (jax or torch) and int / np.float32 scalars
    in_dtypes: tuple[str | None, ...]  # expected dtype of each array argument (None for scalars)
    outs: tuple[Out, ...]
    grid: tuple[int, ...]
    meta: dict[str, Any] = field(default_factory=dict)  # constexpr meta-parameters
    num_warps: int = 4
    num_stages: int = 2
    # Off by default: a fused multiply-add rounds differently from the XLA reference (and from the
    # CPU interpreter), and the kernels compare sample positions against exact bounds.
    enable_fp_fusion: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        if len(self.args) != len(self.in_dtypes):
            raise ValueError(f"{self.name}: {len(self.args)} arguments but {len(self.in_dtypes)} dtypes")
        if not 1 <= len(self.grid) <= 3 or any(int(g) < 0 for g in self.grid):
            raise ValueError(f"{self.name}: bad grid {self.grid}")
        for i, (a, want) in enumerate(zip(self.args, self.in_dtypes)):
            if want is None:
                if not isinstance(a, (int, np.float32)) or isinstance(a, bool):
                    raise TypeError(f"{self.name}: argument {i} must be an int or np.float32 scalar, got {type(a)}")
            elif dtype_name(a.dtype) != want:
                raise TypeError(f"{self.name}: argument {i} has dtype {dtype_name(a.dtype)}, expected {want}")

    @property
    def empty(self) -> bool:
        """True when the grid has no programs (nothing to launch; outputs are their initial values)."""
        return any(int(g) == 0 for g in self.grid)


def dtype_name(dtype: Any) -> str:
    """'float32' for np.float32, jnp.float32 and torch.float32 alike."""
    return str(dtype).removeprefix("torch.")


def cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def next_pow2(n: int, minimum: int = 1) -> int:
    return max(minimum, 1 << max(int(n) - 1, 0).bit_length())


def run_jax(launch: Launch) -> list:
    """Runs ``launch`` with ``jax_triton.triton_call`` (GPU only); returns the outputs as a list."""
    import jax
    import jax.numpy as jnp
    import jax_triton

    outs = [jax.ShapeDtypeStruct(o.shape, np.dtype(o.dtype)) for o in launch.outs]
    if launch.empty:  # a zero-size grid: nothing runs, outputs are zero (or never read)
        return [jnp.zeros(o.shape, o.dtype) for o in outs]
    result = jax_triton.triton_call(
        *launch.args,
        kernel=launch.kernel,
        out_shape=outs,
        grid=tuple(int(g) for g in launch.grid),
        name=launch.name,
        num_warps=launch.num_warps,
        num_stages=launch.num_stages,
        enable_fp_fusion=launch.enable_fp_fusion,
        zeroed_outputs=tuple(i for i, o in enumerate(launch.outs) if o.zeroed),
        **launch.meta,
    )
    return list(result)
