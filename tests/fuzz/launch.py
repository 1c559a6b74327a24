"""`python tests/fuzz/launch.py NAME [libFuzzer arguments]`: one harness under atheris (what
tests/fuzz/run.py starts, with tests/ on PYTHONPATH).

Only the relay and the harness are instrumented for coverage, as they are imported: the
modules they use (trio, attrs, orjson's wrapper, the standard library) are not. Instrumenting
everything loaded (atheris.instrument_all) took 30 s of startup and halved the executions.
"""

from __future__ import annotations

import importlib
import sys

import atheris

name = sys.argv.pop(1)
with atheris.instrument_imports(include=["relay", "fuzz"]):
    harness = importlib.import_module(f"fuzz.fuzz_{name}")
atheris.Setup(sys.argv, harness.check)
atheris.Fuzz()
