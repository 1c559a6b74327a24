"""RelayClient.upload_file / download against a real relay: the session's httpToken, bytes
streamed both ways, errors as FileRequestFailed."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from support import TEST_DEFAULTS

from relay.app import Relay
from relay.client import FileRequestFailed, RelayClient
from relay.config import RelayConfig


async def test_upload_and_download_with_the_client(nursery: trio.Nursery, tmp_path: Path) -> None:
    config = RelayConfig(**{**TEST_DEFAULTS, "files_dir": str(tmp_path / "files")})
    relay = Relay(config)
    await nursery.start(relay.serve)
    data = os.urandom(300_000)

    async def source() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 50_000):
            yield data[i : i + 50_000]

    async with (
        RelayClient(relay.url, user_id="ann") as ann,
        RelayClient(relay.url, user_id="bob") as bob,
    ):
        with trio.fail_after(5):
            await ann.wait_online()
            await bob.wait_online()
            info = await ann.upload_file(source(), name="notes.txt", mime="text/plain")
            assert (info.name, info.size, info.mime) == ("notes.txt", len(data), "text/plain")
            assert info.sha256 == hashlib.sha256(data).hexdigest()
            got = b"".join([chunk async for chunk in ann.download(info.file_id)])
            assert got == data
            small = await bob.upload_file(b"\x89PNG\r\n\x1a\n....", name="p.png")
            assert small.mime == "image/png"
            with pytest.raises(FileRequestFailed) as failed:
                async for _ in bob.download(info.file_id):
                    pass
            assert failed.value.status == 404
