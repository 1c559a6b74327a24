"""SQLite's memory statistics (relay.store.sqlite.memstatus): off in `relay serve`, untouched
once SQLite is in use. Each case runs in a process of its own: the switch is process-wide."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import PROBE_HEAD, serve_and_report

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the switch is made on Linux only"
)

FRESH = """
import sqlite3
from relay.store.sqlite.memstatus import disable_memory_statistics, memory_used

assert disable_memory_statistics() is True
conn = sqlite3.connect(":memory:")
conn.execute("CREATE TABLE t (x TEXT)")
conn.executemany("INSERT INTO t VALUES (?)", [("row %d" % n,) for n in range(1000)])
assert conn.execute("SELECT count(*), max(x) FROM t").fetchone() == (1000, "row 999")
assert memory_used() == 0, memory_used()  # off: nothing is counted
assert disable_memory_statistics() is True  # again: no second shutdown under an open connection
assert conn.execute("SELECT count(*) FROM t").fetchone() == (1000,)
print("ok")
"""

IN_USE = """
import sqlite3
from relay.store.sqlite.memstatus import disable_memory_statistics, memory_used

conn = sqlite3.connect(":memory:")
conn.execute("CREATE TABLE t (x TEXT)")
before = memory_used()
assert before > 0, before
assert disable_memory_statistics() is False  # SQLite holds memory: left as it is
assert memory_used() > 0
conn.execute("INSERT INTO t VALUES ('still works')")
assert conn.execute("SELECT x FROM t").fetchall() == [("still works",)]
print("ok")
"""


@pytest.mark.parametrize("probe", [FRESH, IN_USE], ids=["fresh", "in-use"])
def test_memory_statistics_switch(probe: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


#: `relay serve` on its embedded SQLite store, reporting SQLite's memory count on SIGUSR1
SERVE_PROBE = (
    PROBE_HEAD
    + """
from relay.store.sqlite.memstatus import memory_used
report = memory_used
serve()
"""
)


def test_relay_serve_runs_sqlite_without_memory_statistics(tmp_path: Path) -> None:
    """With the store open (its writer, checkpointer and readers hold SQLite memory), SQLite
    counts nothing: `relay serve` turned the statistics off before opening it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    used = int(serve_and_report(SERVE_PROBE, tmp_path, cwd=REPO, env=env))
    assert used == 0
    assert (tmp_path / "relay.db").stat().st_size > 0  # the store was open: SQLite in use
