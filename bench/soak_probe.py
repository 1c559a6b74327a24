"""The soak's probes into the relay's memory, to say where RSS growth is when there is some.

From outside, every sample (cheap, no change to the relay): RSS by kind of mapping from
/proc/PID/smaps (the main heap, other anonymous mappings - glibc's thread arenas and large
mallocs -, shared libraries, the database's files, the rest) and the thread count.

With `python -m bench soak --trace`, from inside too: the relay runs under `traced_relay`
(tracemalloc on from the first sample, `TRACE_FRAMES` frames a trace), and at each sample the soak sends it SIGUSR1,
on which it writes a tracemalloc snapshot of the Python allocations and glibc's `malloc_info`
(per arena: bytes taken from the system and bytes free in it) to the trace directory. The end
of the run diffs the snapshots at the window's start and end: the allocation sites that grew
most, and each arena's in-use and free bytes. Tracing slows the relay's allocations and its
own bookkeeping adds to RSS: a traced run says where growth is, an untraced run how much.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import re
import signal
import sys
import tracemalloc
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

#: frames kept per traced allocation: enough to see which relay code asked, through the
#: library calls between
TRACE_FRAMES = 12
TRACE_DIR_ENV = "SOAK_TRACE_DIR"
#: set (to anything) for tracemalloc snapshots as well as the heap figures
TRACE_PYTHON_ENV = "SOAK_TRACE_PYTHON"
#: set (to anything) for each SQLite connection's heap and the Python objects over BIG_OBJECT
TRACE_OBJECTS_ENV = "SOAK_TRACE_OBJECTS"

_MAPPING = re.compile(rb"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$")


def _kind(path: bytes) -> str:
    if not path:
        return "anon"
    if path == b"[heap]":
        return "heap"
    if path.startswith(b"["):
        return "other"  # [stack], [vdso], [vvar]
    name = path.rsplit(b"/", 1)[-1]
    if b".so" in name:
        return "libs"
    if b"soak.db" in name:
        return "db"
    return "other"


def smaps_kb(pid: int) -> dict[str, int]:
    """RSS of `pid` (kB) by kind of mapping: `heap` (the main arena's brk heap), `anon`
    (anonymous mappings: thread arenas, large mallocs, thread stacks), `libs`, `db` (the
    database file and its -shm), `other`; `anon_maps` counts the anonymous mappings and
    `threads` the process's threads."""
    out = {"heap": 0, "anon": 0, "libs": 0, "db": 0, "other": 0, "anon_maps": 0}
    kind = "other"
    with open(f"/proc/{pid}/smaps", "rb") as f:
        for line in f:
            m = _MAPPING.match(line)
            if m:
                kind = _kind(m.group(1).strip())
                if kind == "anon":
                    out["anon_maps"] += 1
            elif line.startswith(b"Rss:"):
                out[kind] += int(line.split()[1])
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"Threads:"):
                out["threads"] = int(line.split()[1])
    return out


# --- inside the relay -----------------------------------------------------------------------------


def _malloc_info(path: Path) -> None:
    libc = ctypes.CDLL(None)
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    fp = libc.fopen(str(path).encode(), b"w")
    if not fp:
        raise OSError(f"cannot write {path}")
    try:
        libc.malloc_info(0, fp)
    finally:
        libc.fclose(fp)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _sqlite_memory() -> tuple[int, int]:
    """SQLite's own heap in this process, bytes: in use now and its high-water mark
    (sqlite3_status64(SQLITE_STATUS_MEMORY_USED)), from the library `sqlite3` loaded."""
    lib = ctypes.CDLL("libsqlite3.so.0")
    now, high = ctypes.c_int64(), ctypes.c_int64()
    lib.sqlite3_status64(0, ctypes.byref(now), ctypes.byref(high), 0)
    return now.value, high.value


#: sqlite3_db_status verbs: bytes of a connection's page cache, schema and prepared statements
_DB_STATUS = {"cache": 1, "schema": 2, "stmt": 3}


def _sqlite_connections(objects: list[object]) -> list[dict[str, int]]:
    """Each open sqlite3.Connection of `objects`: its own heap, bytes (sqlite3_db_status), biggest page cache
    first. The `sqlite3 *` is read from the Connection object (CPython 3.11's
    pysqlite_Connection: the handle is the first field after the object header)."""
    import sqlite3

    lib = ctypes.CDLL("libsqlite3.so.0")
    lib.sqlite3_db_status.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_int),
        ctypes.POINTER(ctypes.c_int),
        ctypes.c_int,
    ]
    found = []
    for conn in objects:
        if not isinstance(conn, sqlite3.Connection):
            continue
        db = ctypes.c_void_p.from_address(id(conn) + object.__basicsize__).value
        if not db:  # closed
            continue
        now, high = ctypes.c_int(), ctypes.c_int()
        figures = {}
        for name, op in _DB_STATUS.items():
            lib.sqlite3_db_status(db, op, ctypes.byref(now), ctypes.byref(high), 0)
            figures[name] = now.value
        found.append(figures)
    return sorted(found, key=lambda f: -f["cache"])


#: a Python object whose own allocation is at least this many bytes is listed by
#: `_big_objects` (glibc serves an allocation this big from a direct mmap or a whole free run)
BIG_OBJECT = 128 * 1024


def _reachable() -> tuple[list[object], dict[int, object]]:
    """Every object reachable from the modules and from what the collector tracks, and for each
    object of at least BIG_OBJECT bytes the object it was first reached from. `relay serve`
    moves what exists at startup into the collector's permanent generation (gc.freeze), which
    gc.get_objects() and gc.get_referrers() leave out, so its tables and store connections are
    found through referents."""
    import gc

    seen: set[int] = set()
    found: list[object] = []
    parents: dict[int, object] = {}
    todo: list[tuple[object, object]] = [(sys.modules, None)]
    todo.extend((obj, None) for obj in gc.get_objects())
    own = {id(seen), id(found), id(parents), id(todo)}
    while todo:
        obj, parent = todo.pop()
        if id(obj) in seen or id(obj) in own:
            continue
        seen.add(id(obj))
        found.append(obj)
        if parent is not None and _size(obj) >= BIG_OBJECT:
            parents[id(obj)] = parent
        todo.extend((child, obj) for child in gc.get_referents(obj))
    return found, parents


def _size(obj: object) -> int:
    try:
        return sys.getsizeof(obj)
    except TypeError:
        return 0


def _owner(obj: object, parent: object) -> str:
    """How `parent` holds `obj`: `Class.attribute` (slots or __dict__), `dict[key]` of a
    table, or the parent's type."""
    if isinstance(parent, dict):
        key = next((k for k, v in parent.items() if v is obj), None)
        return f"dict of {len(parent):,} [{key!r:.60}]"
    names = list(getattr(type(parent), "__slots__", ())) + list(getattr(parent, "__dict__", ()))
    attr = next((n for n in names if getattr(parent, n, None) is obj), None)
    return f"{type(parent).__qualname__}.{attr}" if attr else type(parent).__qualname__


def _big_objects(objects: list[object], parents: dict[int, object]) -> list[dict[str, Any]]:
    """The objects of `objects` of at least BIG_OBJECT bytes, biggest first: type, size, length
    and holder (the walk's own set and lists excepted)."""
    found = []
    for obj in objects:
        size = _size(obj)
        if size >= BIG_OBJECT and id(obj) in parents:
            found.append(
                {
                    "type": type(obj).__qualname__,
                    "bytes": size,
                    "len": len(obj) if hasattr(obj, "__len__") else -1,
                    "owner": _owner(obj, parents[id(obj)]),
                }
            )
    return sorted(found, key=lambda f: -f["bytes"])


_OBMALLOC = {
    b"# arenas allocated current": "python_arenas",
    b"# bytes in allocated blocks": "python_blocks",
    b"# bytes in available blocks": "python_free_blocks",
}


def _obmalloc(scratch: Path) -> dict[str, int]:
    """Python's small-object allocator (its 1 MiB arenas are anonymous mmaps, outside glibc's
    arenas): arenas held, bytes in live blocks, bytes free in partly used pools, from
    sys._debugmallocstats (which writes to the C stderr: pointed at `scratch` meanwhile)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(scratch, "wb") as f:
            os.dup2(f.fileno(), 2)
            sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    found = {}
    for line in scratch.read_bytes().splitlines():
        name, _, value = line.partition(b"=")
        key = _OBMALLOC.get(name.strip())
        if key is not None:
            found[key] = int(value.strip().replace(b",", b""))
    scratch.unlink()
    return found


def heap_figures(scratch: Path) -> dict[str, Any]:
    """This process's heap by owner, bytes: glibc's view (`mallinfo2`: in use in the arenas,
    free in them, in direct mmaps), SQLite's own use, and the Python allocations tracemalloc
    follows (0 when it is off), Python's own small-object allocator, and each SQLite
    connection's page cache, schema and statements."""
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _Mallinfo2
    info = libc.mallinfo2()
    sqlite_now, sqlite_high = _sqlite_memory()
    # the walk allocates a set and a list of every object (~10 MB, a direct mmap each): their
    # free raises glibc's dynamic mmap threshold, which changes where the relay's own large
    # buffers go, so it runs only when asked for
    objects, parents = _reachable() if TRACE_OBJECTS_ENV in os.environ else ([], {})
    return {
        "malloc_used": info.uordblks,
        "malloc_free": info.fordblks,
        "malloc_mmapped": info.hblkhd,
        "sqlite_used": sqlite_now,
        "sqlite_high": sqlite_high,
        "python_traced": tracemalloc.get_traced_memory()[0],
        **_obmalloc(scratch),
        "sqlite_connections": _sqlite_connections(objects),
        "big_objects": _big_objects(objects, parents),
    }


def traced_relay(argv: list[str]) -> int:
    """`relay` with `argv`; at each SIGUSR1, malloc_info and the heap figures written to
    $SOAK_TRACE_DIR (malloc-N.xml, heap-N.json), with $SOAK_TRACE_PYTHON set a tracemalloc
    snapshot too (snap-N; tracing starts at the first signal), then an empty done-N."""
    directory = Path(os.environ[TRACE_DIR_ENV])
    python = TRACE_PYTHON_ENV in os.environ
    numbers = itertools.count()

    def dump(signum: int, frame: object) -> None:
        n = next(numbers)
        if python and not tracemalloc.is_tracing():
            # from the first sample on: the relay's startup allocates a lot (imports, compiled
            # tables) and, traced, takes ~40 s; growth is what is allocated later and kept
            tracemalloc.start(TRACE_FRAMES)
        if python:
            tracemalloc.take_snapshot().dump(str(directory / f"snap-{n:04d}"))
        _malloc_info(directory / f"malloc-{n:04d}.xml")
        (directory / f"heap-{n:04d}.json").write_text(
            json.dumps(heap_figures(directory / "mallocstats.txt"))
        )
        (directory / f"done-{n:04d}").touch()

    signal.signal(signal.SIGUSR1, dump)
    from relay.cli import main

    return main(argv)


# --- reading what it wrote ------------------------------------------------------------------------


def arenas(path: Path) -> list[dict[str, int]]:
    """Per glibc arena in a malloc_info file: bytes taken from the system (`system`), free in
    it (`free`: fastbins and the rest) and in use (`used`)."""
    found = []
    for heap in ET.parse(path).getroot().iter("heap"):
        free = sum(int(t.get("size", 0)) for t in heap.findall("total"))
        system = next(
            (int(s.get("size", 0)) for s in heap.findall("system") if s.get("type") == "current"),
            0,
        )
        found.append(
            {"nr": int(heap.get("nr", -1)), "system": system, "free": free, "used": system - free}
        )
    return found


def mmapped(path: Path) -> int:
    """Bytes in glibc's direct mmaps (allocations over the mmap threshold)."""
    root = ET.parse(path).getroot()
    return sum(int(t.get("size", 0)) for t in root.findall("total") if t.get("type") == "mmap")


def top_growth(first: Path, last: Path, limit: int = 15) -> list[dict[str, Any]]:
    """The allocation sites (whole tracebacks) whose traced bytes grew most from `first` to
    `last`: bytes and blocks gained, and the innermost frames."""
    old = tracemalloc.Snapshot.load(str(first))
    new = tracemalloc.Snapshot.load(str(last))
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    stats = new.filter_traces(ignore).compare_to(old.filter_traces(ignore), "traceback")
    stats.sort(key=lambda s: s.size_diff, reverse=True)
    return [
        {
            "size_diff": s.size_diff,
            "count_diff": s.count_diff,
            "size": s.size,
            "frames": [f"{f.filename}:{f.lineno}" for f in s.traceback][-TRACE_FRAMES:],
        }
        for s in stats[:limit]
        if s.size_diff > 0
    ]


def growth_by_line(first: Path, last: Path, limit: int = 15) -> list[dict[str, Any]]:
    """As top_growth, by the allocating line only (all its callers summed)."""
    old = tracemalloc.Snapshot.load(str(first))
    new = tracemalloc.Snapshot.load(str(last))
    stats = new.compare_to(old, "lineno")
    stats.sort(key=lambda s: s.size_diff, reverse=True)
    return [
        {
            "size_diff": s.size_diff,
            "count_diff": s.count_diff,
            "size": s.size,
            "line": f"{s.traceback[0].filename}:{s.traceback[0].lineno}",
        }
        for s in stats[:limit]
        if s.size_diff > 0
    ]


def heap_series(directory: Path, count: int) -> list[dict[str, Any]]:
    """The heap figures written at samples 0..count-1."""
    return [json.loads((directory / f"heap-{n:04d}.json").read_text()) for n in range(count)]


def traced_total(path: Path) -> int:
    """Bytes of Python allocations in a snapshot."""
    return sum(s.size for s in tracemalloc.Snapshot.load(str(path)).statistics("filename"))
