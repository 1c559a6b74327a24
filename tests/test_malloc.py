"""`relay serve` limits glibc's malloc arenas (relay/malloc.py), measured by glibc itself.

Each case runs in a child process (an arena, once made, stays for the process's life): eight
threads allocate at once, then `malloc_stats()` lists the arenas glibc made on stderr.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

CHILD = """
import ctypes, sys, threading
from relay.malloc import limit_arenas
took = limit_arenas() if sys.argv[1] == "limit" else False
start = threading.Barrier(8)
def churn():
    start.wait()
    for _ in range(2000):
        blocks = [bytearray(4096) for _ in range(16)]
        del blocks
threads = [threading.Thread(target=churn) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(took, flush=True)
ctypes.CDLL(None).malloc_stats()
"""


def _arenas(mode: str, **env: str) -> tuple[str, int]:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, mode],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", **env},
    )
    return result.stdout.strip(), result.stderr.count("Arena ")


pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc's malloc_stats: Linux only"
)


def test_limit_arenas_bounds_what_concurrent_threads_make() -> None:
    took, limited = _arenas("limit")
    assert took == "True"
    assert 1 <= limited <= 2
    # without the limit the same threads make more: the test can tell the difference
    _, free = _arenas("none")
    assert free > 2


def test_an_operators_malloc_arena_max_is_left_to_glibc() -> None:
    took, arenas = _arenas("limit", MALLOC_ARENA_MAX="3")
    assert took == "False"
    assert arenas <= 3
