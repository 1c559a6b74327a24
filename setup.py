"""Build the compiled hot path (relay/_fastpath.pyx). The load generator (bench/_loadgen.pyx)
is not part of the distribution: `python -m bench` compiles it in the checkout.

Invariant: a machine that cannot compile still gets a working relay (the pure-Python twin),
with a warning; RELAY_REQUIRE_EXT=1 turns that warning into a build failure (CI sets it).
"""

from __future__ import annotations

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

REQUIRE_EXT = os.environ.get("RELAY_REQUIRE_EXT") == "1"


def _extensions() -> list:
    try:
        from Cython.Build import cythonize
    except ImportError:
        if REQUIRE_EXT:
            raise
        print("WARNING: Cython is missing; relay installs its pure-Python hot path", file=sys.stderr)
        return []
    from setuptools import Extension

    # The dotted name spelled out: cythonize would otherwise name a module after its directory
    # only when that directory has an __init__.py.
    return cythonize(
        [Extension("relay._fastpath", ["relay/_fastpath.pyx"])],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
        quiet=True,
    )


class OptionalBuildExt(build_ext):
    """Compile when we can; fall back to the pure twin with a warning when we cannot."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            self._fail(exc)

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._fail(exc, ext.name)

    def _fail(self, exc: Exception, name: str = "extensions") -> None:
        if REQUIRE_EXT:
            raise
        print(
            f"WARNING: could not compile {name} ({exc}); the pure-Python twin will be used",
            file=sys.stderr,
        )


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
