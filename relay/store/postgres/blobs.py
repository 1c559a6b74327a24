"""PostgresBlobStore: uploaded files in the PostgreSQL database of the store (the BlobStore
Protocol, relay/files/blobs.py), so every node on that database serves every file.

Tables (schema.py, migration 5): `files`, one row per stored file (its FileRecord);
`file_chunks`, its bytes as rows of CHUNK bytes, numbered from 0; `file_readers`, the users a
message carrying it was sent to; `file_uploads`, an upload whose bytes are committed and whose
record is not yet (between `write` and `save`).

Invariants:
- an upload's bytes are inserted a chunk at a time inside ONE transaction on a connection of
  its own, committed with its `file_uploads` row only once every chunk is in: a node killed
  during an upload (or an upload that fails, is too large, or is cancelled) leaves nothing
  any node can see;
- a file exists for readers once its `files` row is committed (`save`), which also removes its
  `file_uploads` row; bytes whose record never came (the node died in between) are removed
  by `open` after ABANDONED seconds, so another node's upload in that gap is never touched;
- bytes are never held whole in memory: at most one chunk is buffered each way;
- every statement is parameterised; a file id is checked against the id alphabet before use.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from typing import Any, Final, TypeVar

import psycopg
import trio

from relay.errors import StoreError, StoreUnavailable
from relay.files.blobs import FileRecord, valid_file_id
from relay.store.postgres.rows import Conn, describe
from relay.store.postgres.schema import migrate

T = TypeVar("T")

#: bytes per `file_chunks` row (and per chunk read back): a 25 MiB file is 100 rows
CHUNK: Final = 256 * 1024
#: seconds after which committed bytes without a record are an abandoned upload
ABANDONED: Final = 3600.0
_RECORD: Final = "file_id, owner, name, size, mime, sha256, created_at"
# through the GIN index on the messages' attachments (migration 5): the expression is the
# index's own
_UNCARRIED: Final = """
    SELECT f.file_id FROM files AS f
    WHERE EXISTS (SELECT 1 FROM file_readers AS r WHERE r.file_id = f.file_id)
    AND NOT EXISTS (
        SELECT 1 FROM messages AS m
        WHERE m.attachments IS NOT NULL
        AND (m.attachments::jsonb) @> jsonb_build_array(jsonb_build_object('fileId', f.file_id))
    )
    LIMIT %s
"""


class PostgresBlobStore:
    """Files in the PostgreSQL database at `url` (see the module docstring). `readers`: pooled
    connections for reads and small writes (each upload has its own)."""

    def __init__(self, url: str, *, readers: int = 2, connect_timeout: float = 5.0) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self._count = readers
        self._pool: queue.SimpleQueue[Conn | None] = queue.SimpleQueue()
        self._limiter = trio.CapacityLimiter(readers)
        self._open = False

    def _connect(self) -> Conn:
        return psycopg.connect(
            self.url,
            connect_timeout=max(1, round(self.connect_timeout)),
            application_name="relay-files",
            autocommit=True,
        )

    async def open(self) -> None:
        if self._open:
            return
        try:
            await trio.to_thread.run_sync(self._open_sync)
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot open the PostgreSQL files: {describe(exc)}") from None
        for _ in range(self._count):
            self._pool.put(None)
        self._open = True

    def _open_sync(self) -> None:
        with self._connect() as conn:
            conn.autocommit = False
            migrate(conn)  # the store migrates first when it shares the database; idempotent
            conn.autocommit = True
            with conn.transaction():
                conn.execute(
                    "DELETE FROM file_chunks WHERE file_id IN (SELECT file_id FROM file_uploads "
                    "WHERE started_at < %s)",
                    (time.time() - ABANDONED,),
                )
                conn.execute(
                    "DELETE FROM file_uploads WHERE started_at < %s", (time.time() - ABANDONED,)
                )

    async def close(self) -> None:
        if not self._open:
            return
        self._open = False
        with trio.CancelScope(shield=True):
            borrowers = [object() for _ in range(self._count)]
            for borrower in borrowers:
                await self._limiter.acquire_on_behalf_of(borrower)
            while True:
                try:
                    conn = self._pool.get_nowait()
                except queue.Empty:
                    break
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
            for borrower in borrowers:
                self._limiter.release_on_behalf_of(borrower)

    async def _run(self, work: Callable[..., T], *args: Any) -> T:
        if not self._open:
            raise StoreError("the files store is not open")
        return await trio.to_thread.run_sync(self._run_sync, work, args, limiter=self._limiter)

    def _run_sync(self, work: Callable[..., T], args: tuple[Any, ...]) -> T:
        conn = self._pool.get_nowait()  # the limiter guarantees a slot
        try:
            if conn is None or conn.closed:
                conn = self._connect()
            with conn.transaction():
                return work(conn, *args)
        except psycopg.Error as exc:
            if conn is not None and (conn.broken or conn.closed):
                with contextlib.suppress(Exception):
                    conn.close()
                conn = None
            raise StoreError(f"files store failed: {describe(exc)}") from exc
        finally:
            self._pool.put(conn)

    async def write(self, file_id: str, chunks: AsyncIterable[bytes]) -> tuple[int, str]:
        if not valid_file_id(file_id):
            raise ValueError("not a file id")
        if not self._open:
            raise StoreError("the files store is not open")
        try:
            conn = await trio.to_thread.run_sync(self._connect)
        except psycopg.Error as exc:
            raise StoreError(f"files store failed: {describe(exc)}") from exc
        digest = hashlib.sha256()
        size = 0
        number = 0
        buffer = bytearray()

        def put(data: bytes, n: int) -> None:
            conn.execute(
                "INSERT INTO file_chunks (file_id, n, data) VALUES (%s, %s, %s)",
                (file_id, n, data),
            )

        try:
            await trio.to_thread.run_sync(conn.execute, "BEGIN")
            async for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                buffer += chunk
                while len(buffer) >= CHUNK:
                    await trio.to_thread.run_sync(put, bytes(buffer[:CHUNK]), number)
                    del buffer[:CHUNK]
                    number += 1
            if buffer or number == 0:
                await trio.to_thread.run_sync(put, bytes(buffer), number)
                buffer.clear()

            def finish() -> None:
                conn.execute(
                    "INSERT INTO file_uploads (file_id, started_at) VALUES (%s, %s)",
                    (file_id, time.time()),
                )
                conn.execute("COMMIT")

            await trio.to_thread.run_sync(finish)
        except psycopg.Error as exc:
            raise StoreError(f"files store failed: {describe(exc)}") from exc
        finally:
            # an open transaction is rolled back by closing: nothing of a failed upload stays
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(conn.close)
        return size, digest.hexdigest()

    async def save(self, record: FileRecord) -> None:
        def work(conn: Conn) -> None:
            conn.execute(
                f"INSERT INTO files ({_RECORD}) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    record.file_id,
                    record.owner,
                    record.name,
                    record.size,
                    record.mime,
                    record.sha256,
                    record.created_at,
                ),
            )
            conn.execute("DELETE FROM file_uploads WHERE file_id = %s", (record.file_id,))

        await self._run(work)

    async def record(self, file_id: str) -> FileRecord | None:
        if not valid_file_id(file_id):
            return None

        def work(conn: Conn) -> FileRecord | None:
            row = conn.execute(
                f"SELECT {_RECORD} FROM files WHERE file_id = %s", (file_id,)
            ).fetchone()
            return None if row is None else FileRecord(*row)

        return await self._run(work)

    async def read(self, file_id: str, first: int, last: int) -> AsyncIterator[bytes]:
        def fetch(conn: Conn, n: int, start: int, length: int) -> bytes:
            row = conn.execute(
                "SELECT substring(data FROM %s FOR %s) FROM file_chunks "
                "WHERE file_id = %s AND n = %s",
                (start + 1, length, file_id, n),
            ).fetchone()
            return b"" if row is None else bytes(row[0])

        at = first
        while at <= last:
            n, start = divmod(at, CHUNK)
            data = await self._run(fetch, n, start, min(CHUNK - start, last - at + 1))
            if not data:
                return
            at += len(data)
            yield data

    async def delete(self, file_id: str) -> None:
        def work(conn: Conn) -> None:
            for table in ("files", "file_readers", "file_uploads", "file_chunks"):
                conn.execute(f"DELETE FROM {table} WHERE file_id = %s", (file_id,))

        await self._run(work)

    async def created_before(self, moment: str) -> list[str]:
        def work(conn: Conn) -> list[str]:
            rows = conn.execute("SELECT file_id FROM files WHERE created_at < %s", (moment,))
            return [str(r[0]) for r in rows.fetchall()]

        return await self._run(work)

    async def uncarried(self, *, limit: int = 1000) -> list[str]:
        """relay.files.blobs.ForgetsUncarried: files granted to readers (a message carried
        them) that no stored message carries any more (retention or a purge deleted them)."""

        def work(conn: Conn) -> list[str]:
            rows = conn.execute(_UNCARRIED, (limit,))
            return [str(r[0]) for r in rows.fetchall()]

        return await self._run(work)

    async def grant(self, file_id: str, readers: Sequence[str]) -> None:
        users = sorted(set(readers))
        if not users:
            return

        def work(conn: Conn) -> None:
            conn.execute(
                "INSERT INTO file_readers (file_id, user_id) SELECT %s, unnest(%s::text[]) "
                "ON CONFLICT DO NOTHING",
                (file_id, users),
            )

        await self._run(work)

    async def readers(self, file_id: str) -> frozenset[str]:
        if not valid_file_id(file_id):
            return frozenset()

        def work(conn: Conn) -> frozenset[str]:
            rows = conn.execute("SELECT user_id FROM file_readers WHERE file_id = %s", (file_id,))
            return frozenset(str(r[0]) for r in rows.fetchall())

        return await self._run(work)
