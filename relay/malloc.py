"""glibc's malloc arenas under `relay serve`.

glibc gives each thread that allocates concurrently an arena of its own, up to eight per core,
and an arena keeps its high-water mark. The relay's SQLite threads (writer, readers,
checkpointer) each step theirs up when a temporary ~2 MB page-cache allocation lands in an arena
that never held one, then creep by 20-40 kB a minute: measured in the 30-minute soak
(`python -m bench soak`), that was the whole of the RSS growth left once the handshake's
reference cycle was gone (`malloc_trim` freed 4 MB that came back within 30 s). Two arenas,
one for the Trio thread and one shared by the store's threads, bound that.

Invariants: called before any thread starts (an arena, once made, stays); a no-op off glibc
(musl and other C libraries have no `mallopt`) and when the operator set MALLOC_ARENA_MAX, which
glibc reads itself.
"""

from __future__ import annotations

import ctypes
import os
import sys

#: mallopt's parameter number for the arena limit (glibc's malloc.h).
M_ARENA_MAX = -8
#: Arenas `relay serve` allows: the Trio thread's and one for the store's threads.
ARENAS = 2


def limit_arenas(count: int = ARENAS) -> bool:
    """Limit glibc's malloc to `count` arenas; True when it took effect."""
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no C library handle, or one without mallopt (musl)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, count))
