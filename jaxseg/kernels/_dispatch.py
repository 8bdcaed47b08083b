"""A small registry that maps (op, implementation name) to a function.

Every kernel op (``roi_align``, ``nms``, ...) has a pure-JAX ``"xla"`` implementation that runs on
every backend. Faster backends (``"triton"`` on GPU, ``"ffi"`` on CPU) drop in by calling
:func:`register` with an ``available`` check; the op's public function then calls :func:`resolve`.

``implementation=None`` picks the first available name of :data:`DEFAULT_ORDER` for the current JAX
backend, so ``"xla"`` is chosen until a faster implementation is registered and available. There is
no process-wide choice: a model carries its own (config key ``MODEL.KERNELS``, the modules' ``kernels``
field) and passes it to every op it calls; an op that has no implementation of that name (but some
other op has) uses its automatic choice. The choice is resolved when a function is traced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax

from jaxseg.errors import UserError

# Preference order of implementation names per JAX backend; "xla" is always last.
DEFAULT_ORDER: dict[str, tuple[str, ...]] = {
    "gpu": ("triton", "xla"),
    "cuda": ("triton", "xla"),
    "rocm": ("triton", "xla"),
    "cpu": ("ffi", "xla"),
}


@dataclass(frozen=True)
class _Entry:
    fn: Callable
    available: Callable[[], bool]


_REGISTRY: dict[str, dict[str, _Entry]] = {}


def _always() -> bool:
    return True


def register(op: str, name: str, *, available: Callable[[], bool] = _always) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as implementation ``name`` of ``op``.

    ``available`` is called at dispatch time (e.g. "is jax-triton importable", "is the C++ library
    built"); an implementation that is not available is never chosen by default and asking for it by
    name raises :class:`UserError`.
    """

    def deco(fn: Callable) -> Callable:
        _REGISTRY.setdefault(op, {})[name] = _Entry(fn, available)
        return fn

    return deco


def available_implementations(op: str) -> list[str]:
    """Names of the registered implementations of ``op`` that can run here."""
    return [name for name, entry in _REGISTRY.get(op, {}).items() if entry.available()]


def known_names() -> list[str]:
    """Every implementation name registered for any op."""
    return sorted({n for entries in _REGISTRY.values() for n in entries})


def check_name(name: str | None) -> None:
    """UserError unless ``name`` is None/"" or an implementation name some op registers (MODEL.KERNELS)."""
    if name and name not in known_names():
        raise UserError(f"MODEL.KERNELS {name!r} is not a kernel implementation; known: {', '.join(known_names())}")


def resolve(op: str, implementation: str | None) -> Callable:
    """The function implementing ``op``: the named one, or the default when ``implementation`` is None."""
    entries = _REGISTRY.get(op, {})
    usable = available_implementations(op)
    if implementation is not None and implementation not in entries and implementation in known_names():
        implementation = None  # the model's choice names another op's implementation: automatic here
    if implementation is None:
        order = DEFAULT_ORDER.get(jax.default_backend(), ("xla",))
        for name in (*order, *usable):
            if name in usable:
                return entries[name].fn
        raise UserError(f"{op}: no implementation is available (registered: {sorted(entries)})")
    if implementation not in usable:
        why = "is not available here" if implementation in entries else "is unknown"
        raise UserError(
            f"{op}: implementation {implementation!r} {why}; available implementations: {', '.join(usable)}"
        )
    return entries[implementation].fn
