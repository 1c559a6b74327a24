"""POST /files and GET /files/{fileId} against a real relay on 127.0.0.1 (contract v2, "Files"):
tokens, streaming with SHA-256, the size limit, sniffed types, ranges, safe names, access."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from support import TEST_DEFAULTS

from relay.app import Relay
from relay.config import RelayConfig

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


async def start(nursery: trio.Nursery, tmp_path: Path, **overrides: Any) -> Relay:
    files = tmp_path / "files"
    config = RelayConfig(**{**TEST_DEFAULTS, "files_dir": str(files), **overrides})
    relay = Relay(config)
    await nursery.start(relay.serve)
    return relay


def bearer(token: str) -> tuple[bytes, bytes]:
    return (b"authorization", f"Bearer {token}".encode())


def stored(tmp_path: Path) -> list[str]:
    """What the files directory holds (its tmp/ included)."""
    root = tmp_path / "files"
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def test_upload_then_download_with_sniffed_type_range_and_safe_name(
    nursery: trio.Nursery, tmp_path: Path, kit: Any
) -> None:
    relay = await start(nursery, tmp_path)
    port = relay.address.port  # type: ignore[union-attr]
    async with kit.session(relay.url, "ann") as token:
        up = await kit.http(
            port,
            "POST",
            "/files?name=..%2F..%2Fetc%2Fp%C3%A4ss%22wd%0D%0A.png",
            headers=[bearer(token), (b"content-type", b"text/html")],
            body=kit.pieces(PNG, 1000),
        )
        assert up.status == 201, up.body
        info = up.json()
        assert info["name"] == "pässwd.png"
        assert (info["size"], info["mime"]) == (len(PNG), "image/png")  # not the claimed html
        assert info["sha256"] == hashlib.sha256(PNG).hexdigest()
        file_id = info["fileId"]

        got = await kit.http(port, "GET", f"/files/{file_id}", headers=[bearer(token)])
        assert got.status == 200
        assert got.body == PNG
        assert got.headers[b"content-type"] == b"image/png"
        assert got.headers[b"x-content-type-options"] == b"nosniff"
        assert got.headers[b"content-disposition"] == (
            b"inline; filename=\"passwd.png\"; filename*=UTF-8''p%C3%A4sswd.png"
        )
        part = await kit.http(
            port, "GET", f"/files/{file_id}", headers=[bearer(token), (b"range", b"bytes=2-9")]
        )
        assert (part.status, part.body) == (206, PNG[2:10])
        assert part.headers[b"content-range"] == f"bytes 2-9/{len(PNG)}".encode()
        tail = await kit.http(
            port, "GET", f"/files/{file_id}", headers=[bearer(token), (b"range", b"bytes=-5")]
        )
        assert (tail.status, tail.body) == (206, PNG[-5:])
        beyond = await kit.http(
            port, "GET", f"/files/{file_id}", headers=[bearer(token), (b"range", b"bytes=99999-")]
        )
        assert beyond.status == 416
        assert beyond.headers[b"content-range"] == f"bytes */{len(PNG)}".encode()

        # a type nobody recognises keeps the client's, an active one does not
        text = await kit.http(
            port, "POST", "/files?name=a.svg", headers=[bearer(token), (b"content-type", b"image/svg+xml")],
            body=b"<svg onload=alert(1)>",
        )  # fmt: skip
        assert text.json()["mime"] == "application/octet-stream"
        plain = await kit.http(
            port, "POST", "/files", headers=[bearer(token), (b"content-type", b"text/plain")],
            body=b"hello",
        )  # fmt: skip
        assert (plain.json()["mime"], plain.json()["name"]) == ("text/plain", "file")
        got = await kit.http(
            port, "GET", f"/files/{plain.json()['fileId']}", headers=[bearer(token)]
        )
        assert got.headers[b"content-disposition"].startswith(b"attachment;")


async def test_only_the_uploader_reads_a_file_others_get_404(
    nursery: trio.Nursery, tmp_path: Path, kit: Any
) -> None:
    relay = await start(nursery, tmp_path)
    port = relay.address.port  # type: ignore[union-attr]
    async with kit.session(relay.url, "ann") as ann, kit.session(relay.url, "bob") as bob:
        up = await kit.http(
            port, "POST", "/files?name=a.bin", headers=[bearer(ann)], body=b"x" * 10
        )
        file_id = up.json()["fileId"]
        path = f"/files/{file_id}"
        assert (await kit.http(port, "GET", path, headers=[bearer(ann)])).status == 200
        nobody = await kit.http(
            port, "GET", "/files/AAAAAAAAAAAAAAAAAAAAAAAA", headers=[bearer(ann)]
        )
        other = await kit.http(port, "GET", path, headers=[bearer(bob)])
        wrong = await kit.http(port, "GET", path, headers=[bearer("not-a-token" * 4)])
        assert (other.status, wrong.status, nobody.status) == (404, 404, 404)
        assert other.body == nobody.body  # nothing tells a foreign file from a missing one
        missing = await kit.http(port, "GET", path)
        assert missing.status == 401
        assert missing.headers[b"www-authenticate"] == b"Bearer"
        assert (await kit.http(port, "POST", "/files", body=b"x")).status == 401
        assert (
            await kit.http(port, "POST", "/files", headers=[bearer("nope")], body=b"x")
        ).status == 401
        for odd in ("/files/..%2F..%2Fetc%2Fpasswd", "/files/%00", "/files/a/b", "/files/"):
            assert (await kit.http(port, "GET", odd, headers=[bearer(ann)])).status == 404, odd


async def test_a_token_outlives_its_session_by_http_token_ttl_only(
    nursery: trio.Nursery, tmp_path: Path, kit: Any
) -> None:
    relay = await start(nursery, tmp_path, http_token_ttl=0.0)
    port = relay.address.port  # type: ignore[union-attr]
    async with kit.session(relay.url, "ann") as token:
        up = await kit.http(port, "POST", "/files", headers=[bearer(token)], body=b"data")
        path = f"/files/{up.json()['fileId']}"
        assert (await kit.http(port, "GET", path, headers=[bearer(token)])).status == 200
    # the session ended (ttl 0): the token is refused once the relay has seen the close
    with trio.fail_after(5):
        while (await kit.http(port, "GET", path, headers=[bearer(token)])).status != 404:  # noqa: ASYNC110
            await trio.sleep(0.01)


async def test_an_upload_over_the_limit_is_413_and_stores_nothing(
    nursery: trio.Nursery, tmp_path: Path, kit: Any
) -> None:
    relay = await start(nursery, tmp_path, max_file_bytes=100_000)
    port = relay.address.port  # type: ignore[union-attr]
    async with kit.session(relay.url, "ann") as token:
        declared = await kit.http(
            port, "POST", "/files", headers=[bearer(token)], body=kit.pieces(os.urandom(200_000)),
            length=200_000,
        )  # fmt: skip
        assert declared.status == 413
        assert declared.json()["error"] == "too_large"
        chunked = await kit.http(
            port, "POST", "/files", headers=[bearer(token)], body=kit.pieces(os.urandom(300_000), 10_000)
        )  # fmt: skip
        assert chunked.status == 413
        assert stored(tmp_path) == []
        exact = await kit.http(port, "POST", "/files", headers=[bearer(token)], body=b"y" * 100_000)
        assert exact.status == 201
        assert stored(tmp_path) == sorted(
            [exact.json()["fileId"], exact.json()["fileId"] + ".json"]
        )


@pytest.mark.parametrize("size", [0, 1])
async def test_tiny_files(nursery: trio.Nursery, tmp_path: Path, kit: Any, size: int) -> None:
    relay = await start(nursery, tmp_path)
    port = relay.address.port  # type: ignore[union-attr]
    async with kit.session(relay.url, "ann") as token:
        up = await kit.http(port, "POST", "/files", headers=[bearer(token)], body=b"z" * size)
        assert up.json()["size"] == size
        got = await kit.http(port, "GET", f"/files/{up.json()['fileId']}", headers=[bearer(token)])
        assert (got.status, got.body) == (200, b"z" * size)


async def test_uploads_older_than_a_day_are_swept(tmp_path: Path) -> None:
    from relay.clock import iso_utc
    from relay.files.blobs import FileRecord, LocalBlobStore, new_file_id
    from relay.files.service import UNSENT_TTL, FileService
    from relay.files.tokens import HttpTokens

    now = 1_800_000_000.0
    blobs = LocalBlobStore(tmp_path / "files")
    service = FileService(RelayConfig(**TEST_DEFAULTS), blobs, HttpTokens(), wall=lambda: now)
    await service.open()
    kept: list[str] = []
    for age in (UNSENT_TTL + 1, UNSENT_TTL - 60, 5.0):
        file_id = new_file_id()
        size, sha = await blobs.write(file_id, _one(b"data"))
        await blobs.save(
            FileRecord(file_id, "ann", "a", size, "text/plain", sha, iso_utc(now - age))
        )
        kept.append(file_id)
    assert await service.sweep() == 1
    assert await blobs.record(kept[0]) is None
    assert [await blobs.record(f) is not None for f in kept[1:]] == [True, True]
    assert not (tmp_path / "files" / kept[0]).exists()


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data
