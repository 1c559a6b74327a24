"""The BlobStore suite, run on every implementation: the local directory and PostgreSQL (the
store's database, where every node serves every file). Bytes round-trip whole and by range
across chunk boundaries; a file exists only once its record is saved; an upload that fails
or is cancelled leaves nothing; deletes, the age scan and the readers grants. With PostgreSQL,
the uploads sweep also deletes the files of messages retention deleted."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
import trio
import trio.lowlevel
from services import fresh_schema, postgres_database
from store_suite import msg, put
from support import TEST_DEFAULTS
from trio.testing import wait_all_tasks_blocked

from relay.config import RelayConfig
from relay.files.blobs import BlobStore, FileRecord, LocalBlobStore, new_file_id
from relay.files.service import FileService
from relay.files.tokens import HttpTokens
from relay.store.base import direct_conversation
from relay.store.postgres import PostgresStore
from relay.store.postgres.blobs import CHUNK, PostgresBlobStore


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture(params=["directory", "postgres"])
async def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    if request.param == "directory":
        made: BlobStore = LocalBlobStore(tmp_path / "files")
    else:
        made = PostgresBlobStore(fresh_schema(request.getfixturevalue("pg_database")))
    assert isinstance(made, BlobStore)
    await made.open()
    yield made
    await made.close()


def pattern(size: int) -> bytes:
    """`size` bytes that differ at every offset modulo 251 (a misplaced chunk shows)."""
    return bytes(i % 251 for i in range(size))


async def pieces(data: bytes, step: int = 64 * 1024) -> AsyncIterator[bytes]:
    for at in range(0, len(data), step):
        yield data[at : at + step]
        await trio.lowlevel.checkpoint()


async def read_all(blobs: BlobStore, file_id: str, first: int, last: int) -> bytes:
    got = bytearray()
    async for chunk in blobs.read(file_id, first, last):
        assert len(chunk) <= max(CHUNK, 64 * 1024)  # streamed, never the file whole
        got += chunk
    return bytes(got)


def record(
    file_id: str, size: int, sha: str, created_at: str = "2026-01-01T00:00:00.000Z"
) -> FileRecord:
    return FileRecord(file_id, "ann", "a.bin", size, "application/octet-stream", sha, created_at)


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, 2 * CHUNK + 17])
async def test_bytes_round_trip_whole_and_by_range(blobs: BlobStore, size: int) -> None:
    data = pattern(size)
    file_id = new_file_id()
    assert await blobs.write(file_id, pieces(data, 50_000)) == (
        size,
        hashlib.sha256(data).hexdigest(),
    )
    await blobs.save(record(file_id, size, hashlib.sha256(data).hexdigest()))
    if size:
        assert await read_all(blobs, file_id, 0, size - 1) == data
        for first, last in [(0, 0), (size - 1, size - 1), (size // 3, size - 1)]:
            assert await read_all(blobs, file_id, first, last) == data[first : last + 1]
    if size > CHUNK:  # a range across the boundary between two stored chunks
        assert await read_all(blobs, file_id, CHUNK - 5, CHUNK + 5) == data[CHUNK - 5 : CHUNK + 6]


async def test_a_file_exists_once_its_record_is_saved(blobs: BlobStore) -> None:
    file_id = new_file_id()
    size, sha = await blobs.write(file_id, pieces(b"hello"))
    assert await blobs.record(file_id) is None
    saved = record(file_id, size, sha)
    await blobs.save(saved)
    assert await blobs.record(file_id) == saved
    assert await blobs.record(new_file_id()) is None
    assert await blobs.record("../../etc/passwd") is None
    assert await blobs.readers("not an id") == frozenset()


async def test_a_failed_or_cancelled_upload_leaves_nothing(blobs: BlobStore) -> None:
    file_id = new_file_id()

    async def failing() -> AsyncIterator[bytes]:
        yield pattern(CHUNK + 10)
        raise OSError("the client went away")

    with pytest.raises(OSError, match="went away"):
        await blobs.write(file_id, failing())

    cancelled = new_file_id()

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield pattern(64 * 1024)
            await trio.sleep(0.001)

    with trio.move_on_after(0.2):
        await blobs.write(cancelled, endless())
    for gone in (file_id, cancelled):
        assert await blobs.record(gone) is None
        assert no_bytes(blobs, gone)
    if isinstance(blobs, LocalBlobStore):
        assert list((blobs.directory / "tmp").iterdir()) == []
    else:
        assert isinstance(blobs, PostgresBlobStore)
        assert pg_rows(blobs, "SELECT count(*) FROM file_uploads") == 0


def pg_rows(blobs: PostgresBlobStore, query: str, *args: str) -> int:
    with psycopg.connect(blobs.url) as conn:
        row = conn.execute(query, args).fetchone()
        assert row is not None
        return int(row[0])


def no_bytes(blobs: BlobStore, file_id: str) -> bool:
    """Whether nothing of `file_id`'s bytes is stored (looked at from outside the store)."""
    if isinstance(blobs, LocalBlobStore):
        return not (blobs.directory / file_id).exists()
    assert isinstance(blobs, PostgresBlobStore)
    return pg_rows(blobs, "SELECT count(*) FROM file_chunks WHERE file_id = %s", file_id) == 0


async def test_delete_age_scan_and_readers(blobs: BlobStore) -> None:
    ids = []
    for created in ("2026-01-01T00:00:00.000Z", "2026-01-02T00:00:00.000Z"):
        file_id = new_file_id()
        size, sha = await blobs.write(file_id, pieces(pattern(CHUNK + 1)))
        await blobs.save(record(file_id, size, sha, created))
        ids.append(file_id)
    assert await blobs.created_before("2026-01-01T12:00:00.000Z") == [ids[0]]
    assert sorted(await blobs.created_before("2026-01-03T00:00:00.000Z")) == sorted(ids)
    await blobs.grant(ids[1], ["bob", "cy"])
    await blobs.grant(ids[1], ["cy", "dee"])
    assert await blobs.readers(ids[1]) == {"bob", "cy", "dee"}
    assert await blobs.readers(ids[0]) == frozenset()
    await blobs.delete(ids[1])
    assert await blobs.record(ids[1]) is None
    assert await blobs.readers(ids[1]) == frozenset()
    assert no_bytes(blobs, ids[1]) and not no_bytes(blobs, ids[0])
    assert await blobs.created_before("2026-01-03T00:00:00.000Z") == [ids[0]]


async def test_concurrent_grants_of_one_file_keep_every_reader(blobs: BlobStore) -> None:
    """Messages carrying one file to different people, granted at once: no grant's readers
    are lost to another's (each reads, then replaces, the file's readers)."""
    file_id = new_file_id()
    size, sha = await blobs.write(file_id, pieces(b"photo"))
    await blobs.save(record(file_id, size, sha))
    users = [f"user{i}" for i in range(12)]
    async with trio.open_nursery() as nursery:
        for user in users:
            nursery.start_soon(blobs.grant, file_id, [user, "bob"])
    assert await blobs.readers(file_id) == {*users, "bob"}
    if isinstance(blobs, LocalBlobStore):
        assert len(blobs._granting) == 0  # no lock is kept for a file nobody grants


async def test_a_grant_does_not_wait_for_another_files_grant(tmp_path: Path) -> None:
    """The grants of one file take turns, not those of every file: a grant held up in the
    file system (its readers file is a FIFO nobody writes to yet) holds up no other file's
    grant, so no other message's answer waits for it."""
    blobs = LocalBlobStore(tmp_path / "files")
    await blobs.open()
    stuck, free = new_file_id(), new_file_id()
    for file_id in (stuck, free):
        size, sha = await blobs.write(file_id, pieces(b"photo"))
        await blobs.save(record(file_id, size, sha))
    fifo = blobs.directory / f"{stuck}.readers"
    os.mkfifo(fifo)

    def feed() -> None:  # the writer the stuck read waits for
        with open(fifo, "wb") as out:
            out.write(b'["ann"]')

    async with trio.open_nursery() as nursery:
        nursery.start_soon(blobs.grant, stuck, ["bob"])
        await wait_all_tasks_blocked()  # the stuck grant holds its file's turn
        try:
            with trio.fail_after(10):
                await blobs.grant(free, ["cy"])
        finally:
            await trio.to_thread.run_sync(feed)
    assert await blobs.readers(free) == {"cy"}
    assert await blobs.readers(stuck) == {"ann", "bob"}
    assert fifo.is_file()  # replaced whole by the grant
    assert len(blobs._granting) == 0


async def test_postgres_sweep_deletes_the_files_of_deleted_messages(pg_database: str) -> None:
    """With the files in the PostgreSQL store's database, the uploads sweep also deletes a
    file once retention deleted every message carrying it; a carried file stays."""
    url = fresh_schema(pg_database)
    store = PostgresStore(url, retention_max_messages=1, retention_interval=0.01)
    await store.open()
    blobs = PostgresBlobStore(url)
    service = FileService(RelayConfig(**TEST_DEFAULTS), blobs, HttpTokens())
    await service.open()
    try:
        sent = []
        for n in range(2):
            file_id = new_file_id()
            size, sha = await blobs.write(file_id, pieces(pattern(100 + n)))
            saved = record(file_id, size, sha)
            await blobs.save(saved)
            message = msg("ann", "bob", text="")._replace(attachments=[saved.public()])
            await put(store, message)
            await service.grant([file_id], ["bob"])
            sent.append(file_id)
            if n == 0:
                assert await service.sweep() == 0  # its message is stored: kept

        async def trimmed() -> bool:  # retention keeps the newest message only
            page, _ = await store.history(direct_conversation("ann", "bob"))
            return len(page) == 1

        with trio.fail_after(10):
            while not await trimmed():  # noqa: ASYNC110 (retention runs in the writer thread)
                await trio.sleep(0.01)
        assert await service.sweep() == 1
        assert await blobs.record(sent[0]) is None and no_bytes(blobs, sent[0])
        assert await blobs.record(sent[1]) is not None and not no_bytes(blobs, sent[1])
    finally:
        await service.close()
        await store.close()
