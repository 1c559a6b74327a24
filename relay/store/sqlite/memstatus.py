"""SQLite's memory statistics, off in a serving process.

SQLite counts every allocation it makes (`sqlite3_memory_used`, the soft heap limit) unless
configured not to, and the count is guarded by one process-wide mutex: every `sqlite3_malloc`
and `sqlite3_free` locks and unlocks it. The writer binds each message's parameters, builds its
records and B-tree cells, and each of those allocates. In the durable bench the pthread mutex
calls were 6.4% of the relay's core (`perf record`, the SQLite relay at 77k msg/s), and with
the statistics off it delivered 4.7% more (median of five alternating pairs of `relay serve
--db`, every pair faster: 100 connections, 16 messages in flight each, relay pinned to one core
of the 2-core Intel VM, 2026-12-07). Nothing in the relay reads them, and the standard
library's sqlite3 has no way to.

The switch is process-wide and only possible while SQLite holds no resources: it shuts SQLite
down, configures it, and starts it again. So it is for `relay serve`, which owns its process,
before the store opens; a program that embeds the relay keeps SQLite as it configured it.

Invariants: the switch is made only when SQLite holds no memory (`sqlite3_memory_used` is 0:
no connection, statement or cache is open), on Linux (where ctypes passes the variadic
`sqlite3_config`'s int as C does); anything else leaves SQLite untouched and answers False.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from typing import Final

log = logging.getLogger("relay.store")

_SQLITE_OK: Final = 0
_SQLITE_CONFIG_MEMSTATUS: Final = 9

#: whether this process turned them off (then sqlite3_memory_used is 0 whatever is open, so the
#: check below cannot be made again: a second call must not shut SQLite down)
_disabled = False


def _library() -> ctypes.CDLL | None:
    """The SQLite that the standard library's sqlite3 uses: looked up through its extension
    module, whose symbol search covers the libsqlite3 it links (or SQLite built into it)."""
    try:
        import _sqlite3

        lib = ctypes.CDLL(_sqlite3.__file__)
        for name in ("sqlite3_memory_used", "sqlite3_shutdown", "sqlite3_config"):
            getattr(lib, name)
    except (ImportError, OSError, AttributeError):
        return None
    lib.sqlite3_memory_used.restype = ctypes.c_int64
    lib.sqlite3_memory_used.argtypes = []
    lib.sqlite3_shutdown.restype = ctypes.c_int
    lib.sqlite3_initialize.restype = ctypes.c_int
    lib.sqlite3_config.restype = ctypes.c_int
    return lib


def memory_used() -> int | None:
    """SQLite's count of the bytes it holds (0 when the statistics are off), or None when this
    process's SQLite cannot be reached."""
    lib = _library()
    return None if lib is None else int(lib.sqlite3_memory_used())


def disable_memory_statistics() -> bool:
    """Turn SQLite's memory statistics off for this process; True when done. Call it before
    any SQLite connection is opened (it declines, False, when SQLite holds any memory)."""
    global _disabled
    if _disabled:
        return True
    if not sys.platform.startswith("linux"):
        return False
    lib = _library()
    if lib is None:
        return False
    if lib.sqlite3_memory_used() != 0:
        log.debug("SQLite memory statistics left on: SQLite is in use in this process")
        return False
    if lib.sqlite3_shutdown() != _SQLITE_OK:
        return False
    configured = bool(lib.sqlite3_config(_SQLITE_CONFIG_MEMSTATUS, ctypes.c_int(0)) == _SQLITE_OK)
    if lib.sqlite3_initialize() != _SQLITE_OK:  # pragma: no cover - only fails out of memory
        log.warning("SQLite did not start again after configuring it")
        return False
    _disabled = configured
    return configured
