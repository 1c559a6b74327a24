"""Receipt catch-up and history statuses end to end: a real Relay on 127.0.0.1 (port 0) over the
MemoryStore and over the SQLite store, real trio-websocket clients. A sender device that was
offline when its messages were delivered or read learns it after its next `auth_ok`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from support import watermarks_of
from test_e2e_messaging import WAIT, Client, connect, message, start

from relay import Relay
from relay.client import ConversationId, MessageStatus, RelayClient
from relay.store.base import Store, Watermarks, direct_conversation, group_conversation
from relay.store.memory import MemoryStore
from relay.store.sqlite import SqliteStore

AB = direct_conversation("alice", "bob")
BOB = ConversationId.direct("bob")


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """The relay's store (opened and closed by the relay), kept to wait for its watermarks."""
    if request.param == "memory":
        return MemoryStore()
    return SqliteStore(str(tmp_path / "relay.db"))


async def marks_reach(store: Store, conversation: str, user: str, wanted: Watermarks) -> None:
    """Wait until the relay has written `user`'s watermarks (acks=false marks come with a tick)."""
    with trio.fail_after(WAIT):
        while True:
            if await watermarks_of(store, conversation, user) == wanted:
                return
            await trio.sleep(0.02)  # the store has no change notification


async def barrier(client: Client) -> None:
    """Every frame `client` sent before is handled (one connection's frames go in order)."""
    await client.send({"type": "ping", "ref": "barrier"})
    await client.expect("pong", ref="barrier")


async def arrivals(client: Client, count: int) -> list[dict[str, Any]]:
    """The next `count` message and receipt frames, in the order they arrive."""
    got: list[dict[str, Any]] = []
    with trio.fail_after(WAIT):
        while len(got) < count:
            frame = await client._next()
            if frame["type"] in ("message", "receipt"):
                got.append(frame)
    return got


def receipts(frames: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (f["status"], f.get("id"), f["seq"], f.get("userId"), f.get("peerId"), f.get("groupId"))
        for f in frames
        if f["type"] == "receipt"
    ]


async def history(client: Client, **target: str) -> dict[str, str]:
    """id -> status of the conversation's newest page as `client` sees it."""
    await client.send({"type": "history", **target, "ref": "h"})
    page = await client.expect("history", ref="h")
    return {m["id"]: m["status"] for m in page["messages"]}


@pytest.mark.parametrize("acks", [False, True], ids=["acks-false", "acks-true"])
async def test_a_sender_offline_when_its_messages_were_delivered_and_read_learns_it(
    store: Store, acks: bool
) -> None:
    async with trio.open_nursery() as nursery:
        relay = await start(nursery, lambda: store, backlog_batch=2)
        async with connect(relay, "alice", deviceId="a-phone") as alice:
            for n in (1, 2, 3):
                await alice.send(message("bob", f"m{n}", ident=f"m{n}"))
                await alice.expect("receipt", id=f"m{n}", status="sent")
        # alice is gone; bob comes, receives, acknowledges (acks=true) or not, reads m2 only
        async with connect(relay, "bob", deviceId="b-phone", acks=acks) as bob:
            for seq in (1, 2, 3):
                assert (await bob.expect("message", id=f"m{seq}"))["seq"] == seq
                if acks:  # the next backlog batch waits for this
                    await bob.send({"type": "receipt", "peerId": "alice", "seq": seq,
                                    "status": "delivered"})  # fmt: skip
            await marks_reach(store, AB, "bob", Watermarks(3, 0))
            await bob.send({"type": "receipt", "peerId": "alice", "seq": 2, "status": "read"})
            await barrier(bob)
            # bob writes while alice is offline: her backlog (two batches) comes first
            for n in (4, 5, 6):
                await bob.send(message("alice", f"b{n}", ident=f"b{n}"))
                await bob.expect("receipt", id=f"b{n}", status="sent")
        await marks_reach(store, AB, "bob", Watermarks(3, 2))

        async with connect(relay, "alice", deviceId="a-phone") as alice:
            frames = await arrivals(alice, 5) + await alice.quiet(0.4)
            assert [f["id"] for f in frames if f["type"] == "message"] == ["b4", "b5", "b6"]
            assert [f["type"] for f in frames[:3]] == ["message"] * 3  # the backlog first
            assert receipts(frames) == [
                ("delivered", "m3", 3, "bob", "bob", None),
                ("read", "m2", 2, "bob", "bob", None),
            ]
            assert await history(alice, peerId="bob") == {
                "m1": "read", "m2": "read", "m3": "delivered",
                "b4": "delivered", "b5": "delivered", "b6": "delivered",
            }  # fmt: skip
            await alice.send(message("bob", "m7", ident="m7"))
            await alice.expect("receipt", id="m7", status="sent")
            assert (await history(alice, peerId="bob"))["m7"] == "sent"
        # again on the next connection (no cursor: the receipts are idempotent), and on a
        # device that never saw the conversation
        async with connect(relay, "alice", deviceId="a-tablet") as tablet:
            with trio.fail_after(WAIT):
                assert receipts([await tablet.expect("receipt") for _ in range(2)]) == [
                    ("delivered", "m3", 3, "bob", "bob", None),
                    ("read", "m2", 2, "bob", "bob", None),
                ]
            assert await tablet.quiet(0.3, "receipt") == []
        # the reader's own statuses are not receipts to itself: bob's messages are unread by
        # alice's devices (acks=false: delivered), so bob learns `delivered`, no `read`
        async with connect(relay, "bob", deviceId="b-phone", acks=acks) as bob:
            got = receipts([await bob.expect("receipt")] + await bob.quiet(0.3, "receipt"))
            assert got == [("delivered", "b6", 6, "alice", "alice", None)]
        nursery.cancel_scope.cancel()


async def test_a_group_sender_learns_each_members_watermark_after_it_joined(
    store: Store,
) -> None:
    g = group_conversation("team")
    async with trio.open_nursery() as nursery:
        relay = await start(nursery, lambda: store)
        async with connect(relay, "alice") as alice:
            await alice.send({"type": "group_create", "groupId": "team", "name": "Team",
                              "members": ["bob", "carol"], "ref": "c"})  # fmt: skip
            await alice.expect("group", ref="c")
            for n in (1, 2):
                await alice.send(message("", f"g{n}", ident=f"g{n}", groupId="team"))
                await alice.expect("receipt", id=f"g{n}", status="sent")
        async with connect(relay, "bob") as bob:  # acks=false: delivered once written
            await bob.expect("message", id="g2")
            await marks_reach(store, g, "bob", Watermarks(2, 0))
            await bob.send({"type": "receipt", "groupId": "team", "seq": 2, "status": "read"})
            await barrier(bob)
            # dave joins at seq 2: his watermarks say nothing about what alice said before
            await bob.send({"type": "group_add", "groupId": "team", "userIds": ["dave"],
                            "ref": "a"})  # fmt: skip
            await bob.expect("group", ref="a")
        async with connect(relay, "carol", deviceId="c-watch", acks=True) as carol:
            await carol.expect("message", id="g2")
            await carol.send({"type": "receipt", "groupId": "team", "seq": 1,
                              "status": "delivered"})  # fmt: skip
            await barrier(carol)

        async with connect(relay, "alice") as alice:
            with trio.fail_after(WAIT):
                got = [await alice.expect("receipt") for _ in range(3)]
            got += await alice.quiet(0.4, "receipt")
            assert sorted(receipts(got)) == [
                ("delivered", "g1", 1, "carol", None, "team"),
                ("delivered", "g2", 2, "bob", None, "team"),
                ("read", "g2", 2, "bob", None, "team"),
            ]
            assert all("peerId" not in f for f in got)  # the live group shape
            # every other member's watermark: g1 delivered (bob, carol; dave came later), g2
            # not yet delivered to carol
            assert await history(alice, groupId="team") == {"g1": "delivered", "g2": "sent"}
            async with connect(relay, "carol", deviceId="c-watch", acks=True) as carol:
                await carol.send({"type": "receipt", "groupId": "team", "seq": 2,
                                  "status": "read"})  # fmt: skip
                await alice.expect("receipt", status="read", userId="carol")  # live, as before
            assert await history(alice, groupId="team") == {"g1": "read", "g2": "read"}
            # the members' own view: alice's messages are others' messages to them
            async with connect(relay, "bob") as bob:
                assert await history(bob, groupId="team") == {"g1": "delivered", "g2": "delivered"}
        nursery.cancel_scope.cancel()


PEERS = [f"p{n}" for n in range(6)]
#: what alice's catch-up holds once every peer read her one message, newest conversation first
ALL = [
    (status, f"to-{peer}", 1, peer, peer, None)
    for peer in reversed(PEERS)
    for status in ("delivered", "read")
]


async def six_readers(relay: Relay) -> None:
    """Alice writes to six peers in turn while they are offline; each comes and reads it."""
    async with connect(relay, "alice") as alice:
        for peer in PEERS:
            await alice.send(message(peer, "hi", ident=f"to-{peer}"))
            await alice.expect("receipt", id=f"to-{peer}", status="sent")
    for peer in PEERS:
        async with connect(relay, peer) as reader:
            await reader.expect("message", id=f"to-{peer}")
            await reader.send({"type": "receipt", "peerId": "alice", "seq": 1, "status": "read"})
            await barrier(reader)


async def test_the_catch_up_examines_at_most_receipt_catchup_watermarks(store: Store) -> None:
    async with trio.open_nursery() as nursery:
        relay = await start(nursery, lambda: store, receipt_catchup=3)
        await six_readers(relay)
        async with connect(relay, "alice") as alice:
            got = [await alice.expect("receipt")] + await alice.quiet(0.4, "receipt")
            assert receipts(got) == ALL[:6]  # the three most recent conversations
        nursery.cancel_scope.cancel()


async def test_the_catch_up_never_fills_more_than_half_the_outbox(store: Store) -> None:
    async with trio.open_nursery() as nursery:
        # 8 frames at most: the 12 receipts due would close the connection with 1013
        relay = await start(nursery, lambda: store, outbox_max_frames=8)
        await six_readers(relay)
        async with connect(relay, "alice") as alice:
            got = [await alice.expect("receipt")] + await alice.quiet(0.4, "receipt")
            # auth_ok may still be queued when the catch-up runs: 3 or 4 of them fit
            assert receipts(got) in (ALL[:3], ALL[:4])
            await barrier(alice)  # still open
        nursery.cancel_scope.cancel()


async def test_no_catch_up_when_turned_off(store: Store) -> None:
    async with trio.open_nursery() as nursery:
        relay = await start(nursery, lambda: store, receipt_catchup=0)
        async with connect(relay, "alice") as alice:
            await alice.send(message("bob", "hi", ident="x1"))
            await alice.expect("receipt", id="x1", status="sent")
        async with connect(relay, "bob") as bob:
            await bob.send({"type": "receipt", "peerId": "alice", "seq": 1, "status": "read"})
            await barrier(bob)
        async with connect(relay, "alice") as alice:
            assert await alice.quiet(0.4, "receipt") == []
            assert await history(alice, peerId="bob") == {"x1": "read"}  # history still tells
        nursery.cancel_scope.cancel()


async def test_the_client_library_ends_up_with_the_right_statuses_after_reconnecting(
    store: Store,
) -> None:
    read, delivered = MessageStatus.READ, MessageStatus.DELIVERED
    async with trio.open_nursery() as nursery:
        relay = await start(nursery, lambda: store)
        first = RelayClient(relay.url, user_id="alice", device_id="a-phone")
        async with first:
            m1 = await first.send_message("bob", "one")
            m2 = await first.send_message("bob", "two")
            with trio.fail_after(WAIT):  # each has its own `sent` receipt, in order
                await first.wait_message(m1.id, MessageStatus.SENT)
                await first.wait_message(m2.id, MessageStatus.SENT)
        async with connect(relay, "bob") as bob:
            await bob.expect("message", id=m2.id)
            await marks_reach(store, AB, "bob", Watermarks(2, 0))
            await bob.send({"type": "receipt", "peerId": "alice", "seq": 1, "status": "read"})
            await barrier(bob)
        # the same state (an app restored from disk) on a new connection: the catch-up alone
        again = RelayClient(relay.url, user_id="alice", device_id="a-phone", sync_on_connect=False)
        again.state = first.state
        assert [m.status for m in again.state.messages(BOB)] == [MessageStatus.SENT] * 2
        async with again:
            with trio.fail_after(WAIT):
                await again.wait_message(m1.id, read)
                await again.wait_message(m2.id, delivered)
            assert [(m.id, m.status) for m in again.state.messages(BOB)] == [
                (m1.id, read), (m2.id, delivered),
            ]  # fmt: skip
        # a new installation learns them too (catch-up, then the history it loads)
        async with RelayClient(relay.url, user_id="alice", device_id="a-new") as fresh:
            with trio.fail_after(WAIT):
                await fresh.wait_online()
                await fresh.load_history("bob")
            assert [(m.id, m.status) for m in fresh.state.messages(BOB)] == [
                (m1.id, read), (m2.id, delivered),
            ]  # fmt: skip
        nursery.cancel_scope.cancel()
