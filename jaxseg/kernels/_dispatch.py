"""A small registry that maps (op, implementation name) to a function.

Every kernel op (``roi_align``, ``nms``, ...) has a pure-JAX ``"xla"`` implementation that runs on
every backend. Faster backends (``"triton"`` on GPU, ``"ffi"`` on CPU) drop in by calling
:func:`register` with an ``available`` check; the op's public function then calls :func:`resolve`.

``implementation=None`` picks the first available name of :data:`DEFAULT_ORDER` for the current JAX
backend, so ``"xla"`` is chosen until a faster implementation is registered and available. A
process-wide choice (config key ``MODEL.KERNELS``) is set with :func:`set_default`; it applies to
every op that has an implementation of that name, and is resolved when a function is traced.
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
_FORCED: str | None = None  # set_default(); None: the backend's DEFAULT_ORDER


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


def set_default(name: str | None) -> None:
    """Makes ``name`` ("xla", "ffi", "triton") the implementation of every op called with
    ``implementation=None`` that has one by that name; ``None`` or ``""`` restores the automatic choice.

    Called by ``build_model`` with ``cfg.MODEL.KERNELS``. Ops without an implementation of that name
    keep the automatic choice; one that has it but cannot run here raises :class:`UserError` when used.
    """
    global _FORCED
    if name and name not in {n for entries in _REGISTRY.values() for n in entries}:
        known = sorted({n for entries in _REGISTRY.values() for n in entries})
        raise UserError(f"MODEL.KERNELS {name!r} is not a kernel implementation; known: {', '.join(known)}")
    _FORCED = name or None


def get_default() -> str | None:
    """The name set by :func:`set_default`, or None (automatic)."""
    return _FORCED


def resolve(op: str, implementation: str | None) -> Callable:
    """The function implementing ``op``: the named one, or the default when ``implementation`` is None."""
    entries = _REGISTRY.get(op, {})
    usable = available_implementations(op)
    if implementation is None and _FORCED is not None and _FORCED in entries:
        implementation = _FORCED
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
