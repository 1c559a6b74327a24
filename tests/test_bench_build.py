"""`python -m bench` builds its own load generator in the checkout, or says in one line why not.

Each test runs the harness in a copy of the checkout's bench/ without a compiled module, as a
fresh clone has it (`pip install .` does not build or install bench).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def bench_copy(tmp_path: Path) -> Path:
    """tmp_path/bench: the checkout's bench sources, nothing compiled."""
    shutil.copytree(
        ROOT / "bench",
        tmp_path / "bench",
        ignore=shutil.ignore_patterns("*.so", "*.c", "results", "__pycache__", "node_modules"),
    )
    return tmp_path / "bench"


def run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -c CODE` in `cwd`, so that cwd's bench is the one imported."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": ""},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_without_cython_it_says_so_in_one_line(tmp_path: Path) -> None:
    bench_copy(tmp_path)
    # sys.modules[name] = None is how CPython marks a module as not importable
    result = run(
        "import runpy, sys; sys.modules['Cython'] = None; sys.argv = ['bench', '--quick']; "
        "runpy.run_module('bench', run_name='__main__', alter_sys=True)",
        tmp_path,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines == [
        "python -m bench: cannot build the load generator (bench/_loadgen.pyx): Cython is not "
        "installed (pip install cython, or pip install -e '.[bench]')"
    ], result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_it_builds_the_load_generator_when_missing_and_when_stale(tmp_path: Path) -> None:
    """Compiles bench/_loadgen.pyx (about 15 s)."""
    bench = bench_copy(tmp_path)
    ready = "from bench.__main__ import ensure_loadgen; print(ensure_loadgen())"
    result = run(ready, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "None", result.stdout
    (built,) = bench.glob("_loadgen.*.so")
    check = "import bench._loadgen as m; print(m.__file__); print(m.LoadGen.__name__)"
    assert run(check, tmp_path).stdout.split() == [str(built), "LoadGen"]
    # nothing else left behind in the checkout
    assert not (tmp_path / "build").exists()

    # up to date: not rebuilt
    again = run(ready, tmp_path)
    assert "building" not in again.stdout and again.stdout.splitlines() == ["None"]
    # a source newer than its module is rebuilt
    older = (bench / "_loadgen.pyx").stat().st_mtime - 10
    os.utime(built, (older, older))
    stale = run(ready, tmp_path)
    assert stale.stdout.splitlines() == ["building the load generator (bench/_loadgen.pyx)", "None"]
    assert built.stat().st_mtime > older
