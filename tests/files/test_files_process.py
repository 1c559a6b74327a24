"""Files against a `python -m relay serve` process: an upload cut by SIGKILL leaves no file
anyone can see (and the next start removes its bytes), and a 25 MiB upload and download leave
the relay's peak RSS less than 5 MiB higher (the bytes are streamed, never held whole)."""

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

import trio

URL_LINE = re.compile(r"running on ws://127\.0\.0\.1:(\d+)")
MIB = 1024 * 1024


@contextmanager
def relay_process(files: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "--port", "0", "--memory",
         "--files-dir", str(files)],
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


async def test_a_25_mib_upload_and_download_keep_the_relay_small(tmp_path: Path, kit: Any) -> None:
    files = tmp_path / "files"
    data = os.urandom(25 * MIB)
    with relay_process(files) as (process, port):
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
