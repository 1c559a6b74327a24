"""The fast path is a leaf: relay.fastpath and the two implementations it chooses between
import nothing else from relay, so no layer it serves can run back up into it."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import relay

SOURCE = Path(relay.__file__).parent


def relay_imports_of(path: Path) -> set[str]:
    """The relay modules a Python module imports, wherever the import stands."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "relay"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            found |= {node.module} if node.module.split(".")[0] == "relay" else set()
    return found


def test_the_twin_imports_nothing_from_relay_outside_itself() -> None:
    modules = sorted((SOURCE / "_fastpath_py").glob("*.py"))
    assert modules
    for module in modules:
        outside = {
            m for m in relay_imports_of(module) if m.split(".")[:2] != ["relay", "_fastpath_py"]
        }
        assert outside == set(), module.name


def test_the_chooser_imports_only_the_implementations() -> None:
    assert relay_imports_of(SOURCE / "fastpath.py") <= {"relay._fastpath_py"}


def test_the_compiled_module_imports_nothing_from_relay() -> None:
    source = (SOURCE / "_fastpath.pyx").read_text()
    imported = set(re.findall(r"^\s*(?:from|c?import)\s+(relay\S*)", source, re.MULTILINE))
    assert imported == set()


@pytest.mark.parametrize("pure", [False, True])
def test_importing_the_fast_path_loads_no_other_relay_module(pure: bool) -> None:
    code = (
        "import sys, relay\n"
        "package = set(sys.modules)\n"  # what the package itself loads (its config, errors)
        "import relay.fastpath\n"
        "print(' '.join(sorted(set(sys.modules) - package)))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    if pure:
        env["RELAY_PURE"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    loaded = {m for m in done.stdout.split() if m.split(".")[0] == "relay"}
    assert {m for m in loaded if not m.startswith("relay._fastpath_py.")} <= {
        "relay.fastpath",
        "relay._fastpath",
        "relay._fastpath_py",
    }
    assert "relay.fastpath" in loaded
