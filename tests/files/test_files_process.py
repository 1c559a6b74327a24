"""Files against a `python -m relay serve` process: an upload cut by SIGKILL leaves no file
anyone can see (and the next start removes its bytes), and a 25 MiB upload and download leave
the relay's peak RSS less than 5 MiB higher (the bytes are streamed, never held whole); both
with the files in a directory and in PostgreSQL (the store's database)."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio
from services import fresh_schema, postgres_database

URL_LINE = re.compile(r"running on ws://127\.0\.0\.1:(\d+)")
MIB = 1024 * 1024


@contextmanager
def relay_process(
    files: Path | None, db: str | None = None
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A relay on `--memory` with its files in `files`, or on the PostgreSQL `db` (files in
    its database)."""
    where = ["--db", db] if db is not None else ["--memory", "--files-dir", str(files)]
    process = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "--port", "0", *where],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        port = None
        while port is None:
            line = process.stdout.readline()
            assert line, f"relay exited: {process.communicate()[1]}"
            found = URL_LINE.search(line)
            port = int(found.group(1)) if found else None
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


def bearer(token: str) -> tuple[bytes, bytes]:
    return (b"authorization", f"Bearer {token}".encode())


async def test_a_sigkill_during_an_upload_leaves_no_file(tmp_path: Path, kit: Any) -> None:
    files = tmp_path / "files"
    with relay_process(files) as (process, port):
        url = f"ws://127.0.0.1:{port}"
        async with kit.session(url, "ann") as token:
            killed = trio.Event()

            async def half_then_wait() -> AsyncIterator[bytes]:
                for _ in range(40):  # 2.5 MiB of a declared 5 MiB
                    yield os.urandom(65536)
                with trio.fail_after(10):
                    while not list((files / "tmp").iterdir()):  # noqa: ASYNC110
                        await trio.sleep(0.01)  # until the relay has begun writing
                process.send_signal(signal.SIGKILL)
                killed.set()
                await trio.sleep_forever()

            with trio.move_on_after(10):
                async with trio.open_nursery() as nursery:

                    async def upload() -> None:
                        await kit.http(
                            port, "POST", "/files", headers=[bearer(token)],
                            body=half_then_wait(), length=5 * MIB,
                        )  # fmt: skip

                    nursery.start_soon(upload)
                    await killed.wait()
                    process.wait(timeout=10)
                    nursery.cancel_scope.cancel()
    assert killed.is_set()
    # nothing but the interrupted temporary bytes, under tmp/ where no file id can point
    assert [p.name for p in files.iterdir()] == ["tmp"]
    with relay_process(files) as (_, port):
        assert [p for p in files.rglob("*") if p.is_file()] == []  # swept at start
        async with kit.session(f"ws://127.0.0.1:{port}", "ann") as token:
            answer = await kit.http(port, "POST", "/files", headers=[bearer(token)], body=b"ok")
            assert answer.status == 201


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    with postgres_database() as url:
        yield url


def pg_count(url: str, query: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(query).fetchone()
        assert row is not None
        return int(row[0])


async def test_a_sigkill_during_an_upload_to_postgres_leaves_nothing(
    pg_database: str, kit: Any
) -> None:
    db = fresh_schema(pg_database)
    with relay_process(None, db) as (process, port):
        url = f"ws://127.0.0.1:{port}"
        async with kit.session(url, "ann") as token:
            killed = trio.Event()

            async def half_then_wait() -> AsyncIterator[bytes]:
                for _ in range(40):  # 2.5 MiB of a declared 5 MiB
                    yield os.urandom(65536)
                with trio.fail_after(10):
                    # until the relay has begun writing: its upload's transaction is open
                    while not pg_count(  # noqa: ASYNC110
                        db,
                        "SELECT count(*) FROM pg_stat_activity WHERE "
                        "application_name = 'relay-files' AND xact_start IS NOT NULL",
                    ):
                        await trio.sleep(0.01)
                process.send_signal(signal.SIGKILL)
                killed.set()
                await trio.sleep_forever()

            with trio.move_on_after(10):
                async with trio.open_nursery() as nursery:

                    async def upload() -> None:
                        await kit.http(
                            port, "POST", "/files", headers=[bearer(token)],
                            body=half_then_wait(), length=5 * MIB,
                        )  # fmt: skip

                    nursery.start_soon(upload)
                    await killed.wait()
                    process.wait(timeout=10)
                    nursery.cancel_scope.cancel()
    assert killed.is_set()
    for table in ("files", "file_chunks", "file_uploads"):
        assert pg_count(db, f"SELECT count(*) FROM {table}") == 0, table
    with relay_process(None, db) as (_, port):
        async with kit.session(f"ws://127.0.0.1:{port}", "ann") as token:
            answer = await kit.http(port, "POST", "/files", headers=[bearer(token)], body=b"ok")
            assert answer.status == 201
    assert pg_count(db, "SELECT count(*) FROM files") == 1


@pytest.mark.parametrize("where", ["directory", "postgres"])
async def test_a_25_mib_upload_and_download_keep_the_relay_small(
    tmp_path: Path, kit: Any, where: str, request: pytest.FixtureRequest
) -> None:
    files = tmp_path / "files"
    db = fresh_schema(request.getfixturevalue("pg_database")) if where == "postgres" else None
    data = os.urandom(25 * MIB)
    with relay_process(files, db) as (process, port):
        url = f"ws://127.0.0.1:{port}"
        async with kit.session(url, "ann") as token:
            # warm up the paths once (imports, buffers), then measure the big transfer
            small = await kit.http(
                port, "POST", "/files", headers=[bearer(token)], body=b"w" * 100_000
            )
            await kit.http(port, "GET", f"/files/{small.json()['fileId']}", headers=[bearer(token)])
            before = peak_rss_kib(process.pid)
            up = await kit.http(
                port,
                "POST",
                "/files",
                headers=[bearer(token)],
                body=kit.pieces(data),
                length=len(data),
            )
            assert up.status == 201
            assert up.json()["sha256"] == hashlib.sha256(data).hexdigest()
            got = await kit.http(
                port, "GET", f"/files/{up.json()['fileId']}", headers=[bearer(token)]
            )
            assert got.body == data
            growth = peak_rss_kib(process.pid) - before
    assert growth < 5 * 1024, f"peak RSS grew {growth} KiB"
