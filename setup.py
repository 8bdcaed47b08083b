"""Build of jaxseg's optional C++ XLA FFI CPU kernels (``jaxseg.kernels._ffi_cpu``).

Everything else about the package is in pyproject.toml. The extension is optional: when it cannot be
built (no C++17 compiler, no Python headers, no jax FFI headers) the install still succeeds, prints
why, and jaxseg falls back to its pure-JAX "xla" kernels with one warning at import.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CSRC = os.path.join("jaxseg", "kernels", "csrc")


class OptionalBuildExt(build_ext):
    """build_ext that adds jax's FFI headers and turns any build failure into a warning."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # noqa: BLE001 - any failure: install without the kernels
            self._skip(e)

    def build_extension(self, ext: Extension) -> None:
        try:
            import jax.ffi  # a build requirement (pyproject.toml), for the headers only

            if jax.ffi.include_dir() not in ext.include_dirs:
                ext.include_dirs.append(jax.ffi.include_dir())
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001
            self._skip(e)

    @staticmethod
    def _skip(error: Exception) -> None:
        print(
            f"WARNING: jaxseg's C++ FFI kernels were not built ({type(error).__name__}: {error}); "
            "jaxseg will use its pure-JAX kernels on CPU.",
            file=sys.stderr,
        )


ffi_cpu = Extension(
    "jaxseg.kernels._ffi_cpu",
    sources=[
        os.path.join(CSRC, f)
        for f in ("module.cc", "roi_align.cc", "nms.cc", "paste_masks.cc", "swap_align2nat.cc")
    ],
    depends=[os.path.join(CSRC, "common.h")],
    language="c++",
    extra_compile_args=[
        "-std=c++17",
        "-O3",
        "-ffp-contract=off",  # no fused multiply-add: float32 results as the "xla" kernels round them
        "-fvisibility=hidden",
        "-pthread",
        "-DNDEBUG",
        "-Wno-return-type",  # the FFI headers trip these
        "-Wno-attributes",
        "-Wno-sign-compare",
    ],
    extra_link_args=["-pthread"],
    optional=True,
)

setup(ext_modules=[ffi_cpu], cmdclass={"build_ext": OptionalBuildExt})
