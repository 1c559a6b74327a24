"""Encrypted messages through a real relay on SQLite: the `e2e` object the Python client seals
goes live, into the backlog after a reconnect and into history untouched; the conversation
preview says `e2e: true`; search never finds it; the database file never holds the text; a
malformed object gets a `failed` receipt naming its field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from support import start_relay

from relay.client.e2e import DeviceIdentity, open_e2e, seal, verify_device
from relay.client.frames import parse_message
from relay.cluster import envelope
from relay.store.base import StoredMessage

#: the text alice encrypts: it must never reach the relay's database
SECRET = "zebracrossing-marker-7341"
#: a plain message's text, found in the database and by search (the control of both checks)
PLAIN = "plainwords-marker-5519"


async def _keys(conn: Any, user: str, ref: str) -> list[Any]:
    await conn.send({"type": "keys_get", "userId": user, "ref": ref})
    return [verify_device(user, d) for d in (await conn.expect("keys", ref=ref))["devices"]]


async def test_an_e2e_message_round_trips_and_never_leaves_its_text_in_the_database(
    nursery: trio.Nursery, raw: Any, tmp_path: Path
) -> None:
    db = tmp_path / "relay.db"
    relay = await start_relay(nursery, db_path=str(db))
    alice_laptop = DeviceIdentity.generate("laptop")
    bob_phone = DeviceIdentity.generate("phone")
    async with raw(relay.url, "alice", "laptop") as alice:
        async with raw(relay.url, "bob", "phone") as bob:
            for conn, me in ((alice, alice_laptop), (bob, bob_phone)):
                await conn.send(me.publish_frame())
                await conn.expect("keys")
            bob_keys = await _keys(alice, "bob", "k1")
            e2e = seal(SECRET, sender_user="alice", sender_device="laptop", recipients=bob_keys)
            await alice.send({"type": "message", "id": "e1", "recipientId": "bob", "e2e": e2e})
            sent = await alice.expect("receipt", id="e1")
            assert sent["status"] == "sent"
            live = await bob.expect("message", id="e1")
            assert live["e2e"] == e2e and "text" not in live
            assert open_e2e(live["e2e"], sender_user="alice", me=bob_phone).text == SECRET
            await alice.send({"type": "message", "id": "p1", "recipientId": "bob", "text": PLAIN})
            assert (await alice.expect("receipt", id="p1"))["status"] == "sent"
            await bob.expect("message", id="p1")
        # bob is away: the next encrypted message waits in his backlog
        later = seal("second " + SECRET, sender_user="alice", sender_device="laptop",
                     recipients=bob_keys)  # fmt: skip
        await alice.send({"type": "message", "id": "e2", "recipientId": "bob", "e2e": later})
        assert (await alice.expect("receipt", id="e2"))["status"] == "sent"
        # a malformed object is refused with its field, and nothing is stored
        bad = {**later, "boxes": {"phone": "not base64!"}}
        await alice.send({"type": "message", "id": "e3", "recipientId": "bob", "e2e": bad})
        failed = await alice.expect("receipt", id="e3")
        assert (failed["status"], failed["reason"], failed["field"]) == ("failed", "invalid", "e2e")
        both = {**later, "v": 1}
        await alice.send(
            {"type": "message", "id": "e4", "recipientId": "bob", "e2e": both, "text": "hi"}
        )
        failed = await alice.expect("receipt", id="e4")
        assert (failed["status"], failed["reason"], failed["field"]) == (
            "failed",
            "invalid",
            "text",
        )
        async with raw(relay.url, "bob", "phone") as bob:
            backlog = await bob.expect("message", id="e2")
            assert backlog["e2e"] == later and "text" not in backlog
            assert open_e2e(backlog["e2e"], sender_user="alice", me=bob_phone).text == (
                "second " + SECRET
            )
            await bob.send({"type": "history", "peerId": "alice", "ref": "h1"})
            history = await bob.expect("history", ref="h1")
            by_id = {m["id"]: m for m in history["messages"]}
            assert sorted(by_id) == ["e1", "e2", "p1"]
            assert by_id["e1"]["e2e"] == e2e and "text" not in by_id["e1"]
            assert by_id["p1"]["text"] == PLAIN and "e2e" not in by_id["p1"]
            await bob.send({"type": "conversations", "ref": "c1"})
            (item,) = (await bob.expect("conversations", ref="c1"))["items"]
            assert item["lastMessage"]["id"] == "e2"
            assert item["lastMessage"]["e2e"] is True and "text" not in item["lastMessage"]
            # search finds the plain message's words (the index is live) and never the secret
            with trio.fail_after(10):
                while True:
                    await bob.send({"type": "search", "query": "plainwords", "ref": "s1"})
                    found = await bob.expect("search_result", ref="s1")
                    if found["items"]:
                        break
                    await trio.sleep(0.05)
            assert [m["id"] for m in found["items"]] == ["p1"]
            for word in ("zebracrossing", "second"):
                await bob.send({"type": "search", "query": word, "ref": "s2"})
                assert (await bob.expect("search_result", ref="s2"))["items"] == []
    stored = b""
    for path in await trio.Path(tmp_path).iterdir():  # the database, its WAL and shm files
        if path.name.startswith("relay.db"):
            stored += await path.read_bytes()
    assert PLAIN.encode() in stored  # the grep can see a text the relay stored
    assert SECRET.encode() not in stored
    assert b"zebracrossing" not in stored


async def test_the_python_client_reads_an_encrypted_message_and_opens_it(
    nursery: trio.Nursery, raw: Any, client: Any
) -> None:
    relay = await start_relay(nursery)
    bob_phone = DeviceIdentity.generate("phone")
    async with client(relay, "bob", "phone") as bob:
        async with raw(relay.url, "alice", "laptop") as alice:
            await bob.request(bob_phone.publish_frame(), "keys")
            e2e = seal(SECRET, sender_user="alice", sender_device="laptop",
                       recipients=await _keys(alice, "bob", "k1"))  # fmt: skip
            await alice.send({"type": "message", "id": "e1", "recipientId": "bob", "e2e": e2e})
            assert (await alice.expect("receipt", id="e1"))["status"] == "sent"
        with trio.fail_after(5):
            await bob.wait_until(lambda s: s.find("e1", "alice") is not None)
        got = bob.state.find("e1", "alice")
        assert got is not None and (got.text, got.e2e) == ("", e2e)
        assert open_e2e(got.e2e, sender_user="alice", me=bob_phone).text == SECRET
        [conversation] = await bob.refresh_conversations()
        assert conversation.last_message is not None
        # the preview (e2e: true) does not replace the message the client already holds
        assert (conversation.last_message.id, conversation.last_message.e2e) == ("e1", e2e)


def test_the_client_reads_a_preview_of_an_encrypted_message_without_its_boxes() -> None:
    preview = {"type": "message", "id": "e9", "senderId": "alice", "recipientId": "bob",
               "e2e": True, "timestamp": "t", "status": "delivered", "seq": 3}  # fmt: skip
    read = parse_message(preview, "bob")
    assert read is not None and (read.text, read.e2e, read.seq) == ("", {}, 3)
    # neither a text nor an object (nor an object beside a text): not a message it can show
    assert parse_message({**preview, "e2e": "x"}, "bob") is None
    assert parse_message({**preview, "text": "hi"}, "bob") is not None
    assert parse_message({**preview, "text": "hi"}, "bob").e2e is None  # type: ignore[union-attr]


def test_an_e2e_message_crosses_between_cluster_nodes_whole() -> None:
    e2e = {"v": 1, "suite": "hpke-x25519-sha256-aes256gcm", "senderDevice": "d",
           "boxes": {"phone": "QUJD"}}  # fmt: skip
    message = StoredMessage("d:a:b", 3, "e1", "a", "", "t", "b", e2e=e2e)
    assert envelope.decode_message(envelope.encode_message(message)) == message
