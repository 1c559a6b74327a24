"""relay.heap: a trim gives a thread arena's free pages back to the system, and the periodic
trimmer does so while it runs (real allocations, RSS read from /proc)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import trio
from support import PROBE_HEAD, serve_and_report, start_relay
from trio.testing import MockClock

from relay import heap

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not heap.available(), reason="no glibc malloc_trim here")

#: 64 MiB in 4000-byte blocks: each under glibc's mmap threshold, so they come from the arena
BLOCK = 4000
BLOCKS = (64 << 20) // BLOCK


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def fragment_an_arena() -> list[bytearray]:
    """In a thread of its own (its own malloc arena), 64 MiB of blocks of which one in 16 is
    kept, the last one among them: the freed 60 MiB lie below a live block, where free()
    alone never returns them. Returns the kept blocks."""
    kept: list[bytearray] = []

    def work() -> None:
        blocks = [bytearray(b"x" * BLOCK) for _ in range(BLOCKS)]
        kept.extend(blocks[15::16])  # the last block is kept: the heap's top stays in use
        blocks.clear()

    t = threading.Thread(target=work)
    t.start()
    t.join()
    return kept


def test_a_trim_returns_the_free_pages_below_a_live_block() -> None:
    kept = fragment_an_arena()
    before = rss_kb()
    released = heap.trim()
    after = rss_kb()
    assert released is True
    # 60 MiB were free in whole pages (4000-byte blocks: 15 of 16 free in each run of 64 KB)
    assert before - after > 30 << 10, (before, after)
    assert all(b[0] == ord("x") and b[-1] == ord("x") for b in kept)  # live data untouched


async def test_the_periodic_trimmer_gives_the_memory_back_while_it_runs() -> None:
    kept = fragment_an_arena()
    before = rss_kb()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(heap.trim_periodically, 0.05)
        deadline = time.monotonic() + 10
        while before - rss_kb() < 30 << 10:
            assert time.monotonic() < deadline, "no trim within 10 s"
            await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert len(kept) == BLOCKS // 16


async def test_a_serving_relay_trims_once_a_minute(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    await start_relay(nursery)
    kept = fragment_an_arena()
    before = rss_kb()
    await trio.sleep(heap.TRIM_EVERY / 2)
    assert before - rss_kb() < 30 << 10  # not trimmed before the minute is up
    deadline = time.monotonic() + 10  # the trim itself runs in a thread, in real time
    while before - rss_kb() < 30 << 10:
        assert time.monotonic() < deadline, "the relay did not trim"
        await trio.sleep(heap.TRIM_EVERY / 2)
    assert len(kept) == BLOCKS // 16


#: a program's function: eight threads allocate at once (each wants an arena of its own), then
#: the number of malloc arenas the process has
COUNT_ARENAS = """
import tempfile, threading
from pathlib import Path
from bench.soak_probe import _malloc_info, arenas

def count_arenas():
    barrier = threading.Barrier(8)
    kept = []
    def work():
        barrier.wait()
        kept.append([bytes(1000 + i % 7) for i in range(2000)])
        barrier.wait()
    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads: t.start()
    for t in threads: t.join()
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "malloc.xml"
        _malloc_info(path)
        return len(arenas(path))
"""

ARENA_PROBE = (
    COUNT_ARENAS
    + """
import sys
from relay import heap
if sys.argv[1] == "capped":
    assert heap.limit_arenas(2)
print(count_arenas())
"""
)


@pytest.mark.parametrize("mode", ["capped", "uncapped"])
def test_limit_arenas_caps_the_arenas_threads_get(mode: str) -> None:
    # eight threads allocating at once get arenas of their own unless capped (glibc: up to
    # 8 per core); `relay serve` caps them (relay.heap.limit_arenas)
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run(
        [sys.executable, "-c", ARENA_PROBE, mode],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,  # bench.soak_probe reads malloc_info
    )
    assert out.returncode == 0, out.stderr
    count = int(out.stdout)
    if mode == "capped":
        assert count <= 2
    else:
        assert count > 2  # the premise: without the cap this machine makes more


def test_an_operators_malloc_arena_max_stands() -> None:
    env = {**os.environ, "MALLOC_ARENA_MAX": "3"}
    out = subprocess.run(
        [sys.executable, "-c", "from relay import heap; print(heap.limit_arenas(2))"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.stdout.strip() == "False", out.stderr


#: `relay serve` (its own CLI entry, embedded SQLite store) in a process that, on SIGUSR1, has
#: eight threads allocate at once, then reports how many malloc arenas the process has
SERVE_PROBE = PROBE_HEAD + COUNT_ARENAS + "\nreport = count_arenas\nserve()\n"


@pytest.mark.parametrize("operator_max", [None, "64"])
def test_relay_serve_caps_its_arenas(tmp_path: Path, operator_max: str | None) -> None:
    """The cap holds in a process started by `relay serve` itself (not only when
    limit_arenas is called by hand); an operator's MALLOC_ARENA_MAX replaces it, which the
    same load shows makes more arenas than the cap."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.pop("MALLOC_ARENA_MAX", None)
    if operator_max is not None:
        env["MALLOC_ARENA_MAX"] = operator_max
    # cwd: bench.soak_probe reads malloc_info
    count = int(serve_and_report(SERVE_PROBE, tmp_path, cwd=REPO, env=env))
    if operator_max is None:
        assert count <= heap.ARENA_MAX
    else:
        assert count > heap.ARENA_MAX
