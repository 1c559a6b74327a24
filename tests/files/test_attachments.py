"""Messages carrying files, through a real relay on SQLite: a file ann uploaded goes with her
message to bob live, in his backlog and in history with its name, size, type and SHA-256; bob
may then download it and a stranger may not; a fileId that is not the sender's, or 11 of them,
is refused with a `failed` receipt naming `attachments`; the Python client sends one
(`send_file`) and reads it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import trio
from live_clients import client, raw
from support import start_relay

__all__ = ["client", "raw"]

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


def _auth(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


async def test_a_message_carries_its_files_to_the_recipient_only(
    nursery: trio.Nursery, raw: Any, kit: Any, tmp_path: Path
) -> None:
    relay = await start_relay(
        nursery, db_path=str(tmp_path / "relay.db"), files_dir=str(tmp_path / "files")
    )
    port = relay.address.port  # type: ignore[union-attr]
    async with raw(relay.url, "ann") as ann, raw(relay.url, "cy") as cy:
        up = await kit.http(
            port, "POST", "/files?name=cat.png", headers=_auth(ann.auth_ok["httpToken"]), body=PNG
        )
        assert up.status == 201
        record = up.json()
        assert record["sha256"] == hashlib.sha256(PNG).hexdigest()
        theirs = await kit.http(
            port, "POST", "/files?name=x.txt", headers=_auth(cy.auth_ok["httpToken"]), body=b"x"
        )
        cy_file = theirs.json()["fileId"]
        async with raw(relay.url, "bob") as bob:
            await ann.send(
                {
                    "type": "message",
                    "id": "m1",
                    "recipientId": "bob",
                    "attachments": [{"fileId": record["fileId"]}],
                }
            )
            assert (await ann.expect("receipt", id="m1"))["status"] == "sent"
            live = await bob.expect("message", id="m1")
            assert live["attachments"] == [record]
            got = await kit.http(
                port, "GET", f"/files/{record['fileId']}", headers=_auth(bob.auth_ok["httpToken"])
            )
            assert (got.status, got.body) == (200, PNG)
        # bob is away: a message with text and the file waits in his backlog
        await ann.send(
            {
                "type": "message",
                "id": "m2",
                "recipientId": "bob",
                "text": "again",
                "attachments": [{"fileId": record["fileId"]}],
            }
        )
        assert (await ann.expect("receipt", id="m2"))["status"] == "sent"
        # another user's file, and eleven files: refused, naming the field; nothing stored
        for ident, files in (
            ("m3", [{"fileId": cy_file}]),
            ("m4", [{"fileId": "AAAAAAAAAAAAAAAAAAAAAAAA"}]),
            ("m5", [{"fileId": record["fileId"]}] * 11),
        ):
            await ann.send(
                {"type": "message", "id": ident, "recipientId": "bob", "attachments": files}
            )
            failed = await ann.expect("receipt", id=ident)
            assert (failed["status"], failed["reason"], failed["field"]) == (
                "failed",
                "invalid",
                "attachments",
            )
        # the stranger cannot read ann's file, exactly as if it did not exist
        denied = await kit.http(
            port, "GET", f"/files/{record['fileId']}", headers=_auth(cy.auth_ok["httpToken"])
        )
        assert denied.status == 404
    async with raw(relay.url, "bob") as bob:
        backlog = await bob.expect("message", id="m2")
        assert (backlog["text"], backlog["attachments"]) == ("again", [record])
        await bob.send({"type": "history", "peerId": "ann", "ref": "h1"})
        history = await bob.expect("history", ref="h1")
        assert [(m["id"], m["attachments"]) for m in history["messages"]] == [
            ("m1", [record]),
            ("m2", [record]),
        ]
        await bob.send({"type": "conversations", "ref": "c1"})
        (item,) = (await bob.expect("conversations", ref="c1"))["items"]
        assert item["lastMessage"]["attachments"] == [record]
        # search finds a message with files by its text, and returns its attachments
        with trio.fail_after(10):
            while True:
                await bob.send({"type": "search", "query": "again", "ref": "s1"})
                found = await bob.expect("search_result", ref="s1")
                if found["items"]:
                    break
                await trio.sleep(0.05)
        assert [(m["id"], m["attachments"]) for m in found["items"]] == [("m2", [record])]


async def test_a_file_a_message_carries_survives_the_uploads_sweep(
    nursery: trio.Nursery, raw: Any, kit: Any, tmp_path: Path
) -> None:
    from relay.files.blobs import LocalBlobStore

    relay = await start_relay(nursery, files_dir=str(tmp_path / "files"))
    port = relay.address.port  # type: ignore[union-attr]
    async with raw(relay.url, "ann") as ann:
        token = ann.auth_ok["httpToken"]
        sent = (await kit.http(port, "POST", "/files", headers=_auth(token), body=b"a")).json()
        kept = (await kit.http(port, "POST", "/files", headers=_auth(token), body=b"b")).json()
        await ann.send(
            {
                "type": "message",
                "id": "m1",
                "recipientId": "bob",
                "attachments": [{"fileId": kept["fileId"]}],
            }
        )
        assert (await ann.expect("receipt", id="m1"))["status"] == "sent"
    blobs = LocalBlobStore(tmp_path / "files")
    # both are older than any cut-off: only the one no message carries is swept
    assert sorted(await blobs.created_before("9999")) == sorted([sent["fileId"], kept["fileId"]])
    assert await blobs.readers(kept["fileId"]) == {"ann", "bob"}
    assert await blobs.readers(sent["fileId"]) == frozenset()


async def test_the_client_sends_a_file_and_the_recipient_reads_it(
    nursery: trio.Nursery, client: Any, tmp_path: Path
) -> None:
    relay = await start_relay(nursery, files_dir=str(tmp_path / "files"))
    async with client(relay, "ann") as ann, client(relay, "bob") as bob:
        with trio.fail_after(5):
            await ann.wait_online()
            await bob.wait_online()
            pending = await ann.send_file("bob", PNG, name="cat.png", text="look")
            await bob.wait_until(lambda s: s.find(pending.id, "ann") is not None)
        got = bob.state.find(pending.id, "ann")
        assert got is not None and got.text == "look" and got.attachments is not None
        (info,) = got.attachments
        assert (info.name, info.size, info.mime) == ("cat.png", len(PNG), "image/png")
        assert info.sha256 == hashlib.sha256(PNG).hexdigest()
        data = b"".join([chunk async for chunk in bob.download(info.file_id)])
        assert data == PNG


def test_a_message_with_files_crosses_between_cluster_nodes_whole() -> None:
    from relay.cluster import envelope
    from relay.store.base import StoredMessage

    files = [{"fileId": "f" * 24, "name": "a.png", "size": 3, "mime": "image/png", "sha256": "0"}]
    message = StoredMessage("d:a:b", 4, "m1", "a", "", "t", "b", attachments=files)
    assert envelope.decode_message(envelope.encode_message(message)) == message


async def test_a_file_sent_to_a_group_is_read_by_its_members_only(
    nursery: trio.Nursery, raw: Any, kit: Any, tmp_path: Path
) -> None:
    relay = await start_relay(nursery, files_dir=str(tmp_path / "files"))
    port = relay.address.port  # type: ignore[union-attr]
    async with (
        raw(relay.url, "ann") as ann,
        raw(relay.url, "bob") as bob,
        raw(relay.url, "cy") as cy,
    ):
        await ann.send({"type": "group_create", "groupId": "team", "members": ["bob"]})
        await ann.expect("group")
        up = await kit.http(
            port, "POST", "/files", headers=_auth(ann.auth_ok["httpToken"]), body=PNG
        )
        record = up.json()
        await ann.send(
            {"type": "message", "id": "g1", "groupId": "team", "attachments": [{"fileId": record["fileId"]}]}
        )  # fmt: skip
        assert (await ann.expect("receipt", id="g1"))["status"] == "sent"
        assert (await bob.expect("message", id="g1"))["attachments"] == [record]
        target = f"/files/{record['fileId']}"
        member = await kit.http(port, "GET", target, headers=_auth(bob.auth_ok["httpToken"]))
        outsider = await kit.http(port, "GET", target, headers=_auth(cy.auth_ok["httpToken"]))
        assert (member.status, member.body, outsider.status) == (200, PNG, 404)
