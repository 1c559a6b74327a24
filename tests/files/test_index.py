"""The files index (relay.files.service): a message carrying files this node uploaded and
already granted to its audience reads and writes no file (it is taken inline); a new audience
is still granted before the answer; a node without the index (a restart, another node) reads
the file store; access stays the uploader and the audiences, 404 for anyone else."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio
from live_clients import raw
from support import start_relay

from relay.files.blobs import FileRecord, LocalBlobStore
from relay.files.service import FileService

__all__ = ["raw"]

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


class CountingBlobStore(LocalBlobStore):
    """The real directory store, counting the calls the message path could make."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.calls: dict[str, int] = {"record": 0, "readers": 0, "grant": 0}

    async def record(self, file_id: str) -> FileRecord | None:
        self.calls["record"] += 1
        return await super().record(file_id)

    async def readers(self, file_id: str) -> frozenset[str]:
        self.calls["readers"] += 1
        return await super().readers(file_id)

    async def grant(self, file_id: str, readers: Sequence[str]) -> None:
        self.calls["grant"] += 1
        await super().grant(file_id, readers)


def _auth(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


async def _counted_relay(nursery: trio.Nursery, files: Path) -> tuple[Any, CountingBlobStore]:
    relay = await start_relay(nursery, files_dir=str(files))
    service = relay.handler.ctx.files  # type: ignore[union-attr]
    assert isinstance(service, FileService)
    service.blobs = counting = CountingBlobStore(files)
    return relay, counting


async def _send(client: Any, ident: str, peer: str, file_id: str) -> dict[str, Any]:
    await client.send(
        {"type": "message", "id": ident, "recipientId": peer, "attachments": [{"fileId": file_id}]}
    )
    receipt: dict[str, Any] = await client.expect("receipt", id=ident)
    return receipt


async def test_a_granted_file_is_sent_again_without_touching_the_file_store(
    nursery: trio.Nursery, raw: Any, kit: Any, tmp_path: Path
) -> None:
    relay, blobs = await _counted_relay(nursery, tmp_path / "files")
    port = relay.address.port
    async with raw(relay.url, "ann") as ann, raw(relay.url, "bob") as bob:
        up = await kit.http(
            port, "POST", "/files", headers=_auth(ann.auth_ok["httpToken"]), body=PNG
        )
        record = up.json()
        file_id = record["fileId"]
        assert (await _send(ann, "m1", "bob", file_id))["status"] == "sent"
        assert (await bob.expect("message", id="m1"))["attachments"] == [record]
        # the upload put the record in the index; the first message stored its one grant
        # (which reads the readers it adds to)
        assert blobs.calls == {"record": 0, "readers": 1, "grant": 1}
        for ident in ("m2", "m3", "m4"):
            assert (await _send(ann, ident, "bob", file_id))["status"] == "sent"
            assert (await bob.expect("message", id=ident))["attachments"] == [record]
        assert blobs.calls == {"record": 0, "readers": 1, "grant": 1}
        # a new audience: granted before the answer, so cy reads it at once
        async with raw(relay.url, "cy") as cy, raw(relay.url, "dan") as dan:
            assert (await _send(ann, "m5", "cy", file_id))["status"] == "sent"
            await cy.expect("message", id="m5")
            assert blobs.calls["grant"] == 2
            target = f"/files/{file_id}"
            for who, status in ((cy, 200), (bob, 200), (ann, 200), (dan, 404)):
                got = await kit.http(port, "GET", target, headers=_auth(who.auth_ok["httpToken"]))
                assert got.status == status, who
            # someone else's file, known to the index, is refused as before
            assert (await _send(dan, "d1", "ann", file_id))["reason"] == "invalid"
    assert sorted(await LocalBlobStore(tmp_path / "files").readers(file_id)) == ["ann", "bob", "cy"]


async def test_a_node_without_the_index_reads_the_file_store(
    nursery: trio.Nursery, raw: Any, kit: Any, tmp_path: Path
) -> None:
    files = tmp_path / "files"
    first, _ = await _counted_relay(nursery, files)
    async with raw(first.url, "ann") as ann:
        token = ann.auth_ok["httpToken"]
        up = await kit.http(first.address.port, "POST", "/files", headers=_auth(token), body=PNG)
        file_id = up.json()["fileId"]
    second, blobs = await _counted_relay(nursery, files)  # another node on the same files
    async with raw(second.url, "ann") as ann, raw(second.url, "bob") as bob:
        assert (await _send(ann, "m1", "bob", file_id))["status"] == "sent"
        assert (await bob.expect("message", id="m1"))["attachments"] == [up.json()]
        assert blobs.calls["record"] == 1
        got = await kit.http(
            second.address.port, "GET", f"/files/{file_id}", headers=_auth(bob.auth_ok["httpToken"])
        )
        assert (got.status, got.body) == (200, PNG)
