"""Giving the C heap's free memory back to the system while the relay runs.

The relay's SQLite work runs in threads (the writer, the checkpointer, and the readers in
Trio's worker threads, which exit after 10 s idle and are started again on demand). glibc's
malloc gives threads their own arenas, and an arena keeps what is freed in it: only the free
space at the very top of an arena's heap goes back to the system on `free()`, and only once it
exceeds the trim threshold, which glibc raises (up to 64 MiB) each time a large mmapped block
is freed. Free space below the top of a heap stays in RSS until something is allocated into
it again. In `python -m bench soak` (30 minutes, SQLite store) the Python objects and SQLite's
own heap stayed flat while glibc's free-but-kept memory grew 1.9 -> 3.2 MB and RSS +1.8% over
the last 20 minutes.

`malloc_trim(0)` walks every arena and returns every whole free page (MADV_DONTNEED), not only
the top of each heap. `trim_periodically` calls it every `TRIM_EVERY` seconds from a worker
thread (it takes each arena's lock in turn, so other threads' allocations wait on it briefly;
the event loop's thread is never blocked by the walk of the other arenas).

`relay serve` also caps glibc's arenas at ARENA_MAX (`limit_arenas`, before any thread starts;
a `MALLOC_ARENA_MAX` in the environment wins). Without a cap glibc makes up to 8 per core as
threads come and go: in a 30-minute soak a sixth thread appeared after 16 minutes, its new
arena took 2.3 MB while the one it replaced kept its pages, and RSS grew +3.6% over the last
20 minutes with Python's objects flat. With the cap the next run kept four arenas and grew
+2.4%; most of that rest was SQLite's, not glibc's: each reader connection cached a prepared
statement per backlog page length (store/sqlite/rows.py `IN_LIST` ends it).

Invariants:
- where the C library has no `malloc_trim` (musl, macOS, Windows), `trim` is a no-op that
  returns None and `trim_periodically` returns at once: nothing else depends on it;
- a trim only returns pages that hold no live allocation: it never changes what the program
  sees, only RSS (a page given back is faulted in again, zeroed, when reused).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
from collections.abc import Callable
from typing import Final

import trio

log = logging.getLogger("relay.heap")

#: Seconds between trims. A trim walks every chunk of every arena: measured (2026-12-05, 2-core
#: Xeon VM, load 3.7) on a 50 MB heap spread over 9 arenas, 6 ms when it released 11 MB and
#: 0.6 ms when there was nothing to release; a 780 MB heap took 60 ms. Once a minute is
#: ~0.01% of a core for the relay's ~55 MB, and a minute of churn is what it gives back.
TRIM_EVERY: Final = 60.0


#: glibc malloc arenas in a serving relay: the event loop's own and three for the store's threads
#: (writer, checkpointer, readers). mallopt's parameter number for it is M_ARENA_MAX.
ARENA_MAX: Final = 4
_M_ARENA_MAX: Final = -8


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return None


def limit_arenas(most: int = ARENA_MAX) -> bool:
    """Cap glibc's malloc arenas at `most` for this process (call it before threads start);
    False where there is no glibc `mallopt` or `MALLOC_ARENA_MAX` is set (the operator's
    choice stands)."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None) if libc is not None else None
    if mallopt is None or _malloc_trim() is None:  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, most))


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none."""
    libc = _libc()
    try:
        fn = libc.malloc_trim  # type: ignore[union-attr]
    except AttributeError:
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def available() -> bool:
    """Whether this process's C library can trim its heap (glibc)."""
    return _malloc_trim() is not None


def trim() -> bool | None:
    """Return every whole free page of every malloc arena to the system. glibc's answer
    (True when it advised some pages away, which includes pages already given back by an
    earlier trim), None where there is no malloc_trim.
    Blocks for the walk (ctypes releases the GIL meanwhile): call it from a worker thread."""
    fn = _malloc_trim()
    if fn is None:
        return None
    return bool(fn(0))


async def trim_periodically(every: float = TRIM_EVERY) -> None:
    """Trim the heap every `every` seconds until cancelled (a no-op without glibc)."""
    if not available():
        log.debug("no malloc_trim in this C library: the heap is not trimmed")
        return
    while True:
        await trio.sleep(every)
        await trio.to_thread.run_sync(trim, abandon_on_cancel=True)
