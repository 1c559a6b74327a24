"""Opening a SQLite store's connections: the write connection (WAL, schema migrated), the
read-only readers, and the checkpointer's, each with the store's busy timeout and pragmas.

Invariants:
- the file is in WAL mode with synchronous=NORMAL before any write, and its schema is at
  migrations.SCHEMA_VERSION (migrated in one transaction) before any reader opens;
- a readers' connection has `query_only` set: a read never writes;
- a readers' connection's page cache is at most `READER_CACHE_KIB` (unless the store's own
  `pragmas` set `cache_size`, applied after it);
- every failure is a StoreUnavailable naming the file and the reason, and leaves no
  connection open;
- a database file the store creates is 0600 (owner only: it holds every user's messages), and
  so are its -wal and -shm files, which SQLite creates with the main file's permissions. An
  existing file keeps the permissions its owner gave it.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Final

from attrs import frozen

from relay.errors import StoreError, StoreUnavailable
from relay.store.migrations import SchemaMismatch, migrate
from relay.store.sqlite.rows import describe

#: Permissions of a database file the store creates (and, through SQLite, of its -wal/-shm).
FILE_MODE: Final = 0o600

#: WAL pages (of 4 kB) between the writer's automatic checkpoints: every ~40 MB of WAL rather
#: than SQLite's 4 MB, so the pages appends keep rewriting (the tails of the table and indexes)
#: are copied to the file once per checkpoint, not once per 4 MB, and the checkpoint's fsyncs
#: stall commits 10x less often.
_CHECKPOINT_PAGES: Final = 10_000
_JOURNAL_SIZE_LIMIT: Final = 64 << 20  # the WAL file is cut back to this when it restarts

#: Page cache of each read connection, KiB (`PRAGMA cache_size = -256`). SQLite's default is
#: 2000 KiB per connection, and a reader's cache only fills: a long-running relay's reads walk
#: an ever larger file, so each reader's cache grew for the whole of `python -m bench soak`'s
#: 30 minutes (part of its +1.38% RSS over the last 20), in the malloc arena of the worker
#: thread that happened to run it. Reads are short: a history page or a conversation list
#: touches a few index pages and a page or two of rows; a miss is a pread from the kernel's
#: page cache, which holds the file's hot pages anyway. The writer keeps the default: its
#: appends rewrite the same table and index tails, which a cache keeps hot.
READER_CACHE_KIB: Final = 256


def _require_json(conn: sqlite3.Connection, where: str) -> None:
    """Refuse at open a SQLite without json_each (built in since 3.38; an option before), which
    the reads use to take a list as one parameter (rows.IN_LIST), rather than fail each read."""
    try:
        conn.execute("SELECT value FROM json_each('[]')").fetchall()
    except sqlite3.OperationalError as exc:
        raise StoreUnavailable(
            f"{where}: this SQLite ({sqlite3.sqlite_version}) has no JSON functions (json_each), "
            "which the store's reads use; SQLite 3.38 or later has them built in"
        ) from exc


@frozen
class Connections:
    """A store's open connections: the writer's, the readers', the checkpointer's (if any)."""

    writer: sqlite3.Connection
    readers: list[sqlite3.Connection]
    checkpoint: sqlite3.Connection | None


@frozen
class Connector:
    """How a store opens `path`: `busy_timeout` seconds of waiting for another connection's
    lock, extra `pragmas` for every connection after migration, SQLite's `quick_check` at open
    when `check_on_open`."""

    path: str
    busy_timeout: float
    pragmas: tuple[tuple[str, int | str], ...]
    check_on_open: bool

    def connect(self, readers: int, checkpoint: bool) -> Connections:
        """The write connection, `readers` read connections and, when `checkpoint`, the
        checkpointer's. Blocks: call it from a worker thread."""
        where = f"cannot open the database {self.path!r}"
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise StoreUnavailable(f"{where}: the directory {directory!r} does not exist")
        try:
            self._create_private()
        except OSError as exc:
            raise StoreUnavailable(
                f"{where}: the file cannot be opened or created in {directory!r} "
                f"({exc.strerror or exc})"
            ) from exc
        opened: list[sqlite3.Connection] = []
        try:
            conn = self._connection()
            opened.append(conn)
            self._prepare_writer(conn, where)
            _require_json(conn, where)
            readers_open = []
            for _ in range(readers):
                reader = self._connection()
                opened.append(reader)
                reader.execute("PRAGMA query_only = ON")
                reader.execute(f"PRAGMA cache_size = -{READER_CACHE_KIB}")
                self._apply_pragmas(reader)
                readers_open.append(reader)
            checkpoint_conn = None
            if checkpoint:
                checkpoint_conn = self._connection()
                opened.append(checkpoint_conn)
            return Connections(conn, readers_open, checkpoint_conn)
        except sqlite3.Error as exc:
            for c in opened:
                c.close()
            raise StoreUnavailable(f"{where}: {describe(exc)}") from exc
        except SchemaMismatch as exc:
            for c in opened:
                c.close()
            raise StoreUnavailable(f"{where}: {exc}") from exc
        except BaseException:
            for c in opened:
                c.close()
            raise

    def _create_private(self) -> None:
        """Create the database file empty and owner-only when it does not exist, before SQLite
        opens it (SQLite would create it 0644 less the umask). An empty file is an empty
        database to SQLite."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except FileExistsError:
            return
        try:
            os.fchmod(fd, FILE_MODE)  # a umask may only have narrowed it further; keep it exact
        finally:
            os.close(fd)

    def _prepare_writer(self, conn: sqlite3.Connection, where: str) -> None:
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            raise StoreUnavailable(
                f"{where}: cannot switch it to WAL mode (journal_mode is {mode!r}); "
                "is the file or its directory read-only?"
            )
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA wal_autocheckpoint = {_CHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT}")
        if self.check_on_open:
            problems = [r[0] for r in conn.execute("PRAGMA quick_check(5)").fetchall()]
            if problems != ["ok"]:
                raise StoreUnavailable(
                    f"{where}: the database file is corrupt (quick_check: {'; '.join(problems)})"
                )
        conn.execute("BEGIN IMMEDIATE")
        try:
            migrate(conn)
            conn.execute("COMMIT")
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        self._apply_pragmas(conn)

    def _connection(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout,
            isolation_level=None,
            check_same_thread=False,
            cached_statements=256,  # appends use one statement per (optional columns, run length)
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        return conn

    def _apply_pragmas(self, conn: sqlite3.Connection) -> None:
        for name, value in self.pragmas:
            if not name.replace("_", "").isalnum():
                raise StoreError(f"not a pragma name: {name!r}")
            conn.execute(f"PRAGMA {name} = {int(value) if isinstance(value, int) else repr(value)}")
