"""The messaging core end to end: a real Relay on 127.0.0.1 (port 0) with MessagingService over
the MemoryStore and over the SQLite store, driven by real trio-websocket clients."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
from support import TEST_DEFAULTS
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from relay import Relay, RelayConfig
from relay.core import MessagingService
from relay.protocol import MessageRefused
from relay.store.base import Store
from relay.store.memory import MemoryStore
from relay.store.sqlite import SqliteStore

WAIT = 2.0  # seconds any expected frame may take (receipts from flushes come within a tick)


@pytest.fixture(params=["memory", "sqlite"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    """Each test runs on the in-memory store and on the durable SQLite store."""
    if request.param == "memory":
        return MemoryStore
    return lambda: SqliteStore(str(tmp_path / "relay.db"))


async def start(nursery: trio.Nursery, new_store: Callable[[], Store], **overrides: Any) -> Relay:
    """A Relay with MessagingService over a fresh store (opened and closed by the service)."""
    config = RelayConfig(**{**TEST_DEFAULTS, **overrides})
    relay = Relay(config, handler=MessagingService(config, new_store()))
    await nursery.start(relay.serve)
    return relay


class Client:
    """One WebSocket client; frames it did not ask for yet wait in `pending`."""

    def __init__(self, ws: WebSocketConnection, user: str) -> None:
        self.ws = ws
        self.user = user
        self.pending: list[dict[str, Any]] = []
        self.auth_ok: dict[str, Any] = {}

    async def send(self, frame: dict[str, Any] | bytes | str) -> None:
        if isinstance(frame, dict):
            frame = orjson.dumps(frame).decode()
        elif isinstance(frame, bytes):
            frame = frame.decode()
        await self.ws.send_message(frame)

    async def _next(self) -> dict[str, Any]:
        return orjson.loads(await self.ws.get_message())  # type: ignore[no-any-return]

    async def expect(self, kind: str, **match: Any) -> dict[str, Any]:
        """The first frame of `kind` whose fields equal `match` (earlier ones stay pending);
        fails after WAIT seconds, so a missing frame fails the test instead of hanging it."""

        def fits(frame: dict[str, Any]) -> bool:
            return frame.get("type") == kind and all(frame.get(k) == v for k, v in match.items())

        for i, frame in enumerate(self.pending):
            if fits(frame):
                return self.pending.pop(i)
        with trio.fail_after(WAIT):
            while True:
                frame = await self._next()
                if fits(frame):
                    return frame
                self.pending.append(frame)

    async def quiet(self, seconds: float = 0.3, kind: str | None = None) -> list[dict[str, Any]]:
        """Every frame (of `kind`) that arrives within `seconds` (tests expect none)."""
        with trio.move_on_after(seconds):
            while True:
                self.pending.append(await self._next())
        got = [f for f in self.pending if kind is None or f.get("type") == kind]
        self.pending = [f for f in self.pending if f not in got]
        return got


_ids = itertools.count(1)


@asynccontextmanager
async def connect(relay: Relay, user: str, **auth: Any) -> AsyncIterator[Client]:
    async with open_websocket_url(relay.url) as ws:
        client = Client(ws, user)
        await client.send({"type": "auth", "userId": user, **auth})
        client.auth_ok = await client.expect("auth_ok")
        yield client


def message(to: str, text: str = "hi", *, ident: str | None = None, **extra: Any) -> dict[str, Any]:
    frame = {"type": "message", "id": ident or f"m{next(_ids)}", "text": text, **extra}
    if "groupId" not in extra:
        frame["recipientId"] = to
    return frame


async def test_two_users_with_two_devices_each_exchange_direct_and_group_messages(
    new_store: Callable[[], Store],
) -> None:
    async with trio.open_nursery() as nursery:
        relay = await start(nursery, new_store)
        async with (
            connect(relay, "alice", deviceId="a-phone", acks=True) as a1,
            connect(relay, "alice", deviceId="a-watch", acks=True) as a2,
            connect(relay, "bob", deviceId="b-phone", acks=True) as b1,
            connect(relay, "bob", deviceId="b-watch", acks=True) as b2,
        ):
            await a1.send(message("bob", "hello bob", ident="d1", senderId="alice"))
            sent = await a1.expect("receipt", id="d1")
            assert (sent["status"], sent["seq"], sent["peerId"]) == ("sent", 1, "bob")
            for device in (a2, b1, b2):
                got = await device.expect("message", id="d1")
                assert (got["senderId"], got["text"], got["seq"]) == ("alice", "hello bob", 1)
            await b2.send(message("alice", "hi alice", ident="d2"))
            assert (await b2.expect("receipt", id="d2"))["seq"] == 2
            for device in (a1, a2, b1):
                assert (await device.expect("message", id="d2"))["seq"] == 2
            assert await a1.quiet(0.1, "message") == []  # the sender's own device: no echo

            await a1.send({"type": "group_create", "groupId": "team", "name": "Team",
                           "members": ["bob"], "ref": "g"})  # fmt: skip
            created = await a1.expect("group", ref="g")
            assert created["members"] == ["alice", "bob"]
            for device in (a2, b1, b2):
                assert (await device.expect("group", groupId="team"))["event"] == "create"
            await b1.send(message("", "to the team", ident="g1", groupId="team"))
            sent = await b1.expect("receipt", id="g1")
            assert (sent["status"], sent["groupId"], sent["seq"]) == ("sent", "team", 1)
            for device in (a1, a2, b2):
                got = await device.expect("message", id="g1")
                assert (got["groupId"], got["senderId"], got["seq"]) == ("team", "bob", 1)
        nursery.cancel_scope.cancel()


async def test_pending_sent_delivered_read_as_the_sender_and_the_readers_other_device_see_it(
    new_store: Callable[[], Store],
) -> None:
    async with trio.open_nursery() as nursery:
        relay = await start(nursery, new_store)
        async with (
            connect(relay, "alice") as alice,
            connect(relay, "bob", deviceId="phone") as phone,
            connect(relay, "bob", deviceId="tablet") as tablet,
        ):
            await alice.send(message("bob", "are you there?", ident="q1", status="pending"))
            sent = await alice.expect("receipt", id="q1", status="sent")
            got = await phone.expect("message", id="q1")
            await tablet.expect("message", id="q1")
            # acks=false devices: delivered once the frame was written to their sockets
            delivered = await alice.expect("receipt", status="delivered")
            assert (delivered["id"], delivered["seq"], delivered["userId"], delivered["peerId"]) == (
                "q1", sent["seq"], "bob", "bob",
            )  # fmt: skip
            await phone.send({"type": "receipt", "peerId": "alice", "seq": got["seq"],
                              "status": "read"})  # fmt: skip
            read = await alice.expect("receipt", status="read")
            assert (read["id"], read["seq"], read["userId"]) == ("q1", got["seq"], "bob")
            sync = await tablet.expect("receipt", status="read")
            assert (sync["peerId"], sync["seq"], sync["userId"]) == ("alice", got["seq"], "bob")
            assert await phone.quiet(0.1, "receipt") == []
            await tablet.send({"type": "conversations"})
            (item,) = (await tablet.expect("conversations"))["items"]
            assert (item["peerId"], item["unread"], item["readSeq"]) == ("alice", 0, 1)
        nursery.cancel_scope.cancel()


async def test_offline_recipient_gets_the_backlog_in_seq_order_on_connect(
    new_store: Callable[[], Store],
) -> None:
    async with trio.open_nursery() as nursery:
        relay = await start(nursery, new_store, backlog_batch=3)
        async with connect(relay, "alice") as alice, connect(relay, "carol") as carol:
            for i in range(4):
                await alice.send(message("bob", f"a{i}", ident=f"a{i}"))
                await alice.expect("receipt", id=f"a{i}")
            await carol.send(message("bob", "c0", ident="c0"))
            await carol.expect("receipt", id="c0")
            await alice.send(message("bob", "a4", ident="a4"))
            await alice.expect("receipt", id="a4")
            async with connect(relay, "bob") as bob:
                got = [await bob.expect("message") for _ in range(6)]
                assert [(m["id"], m["seq"]) for m in got] == [
                    ("a0", 1), ("a1", 2), ("a2", 3), ("a3", 4), ("c0", 1), ("a4", 5),
                ]  # fmt: skip
                await alice.send(message("bob", "live", ident="live"))
                assert (await bob.expect("message"))["id"] == "live"
            async with connect(relay, "bob") as bob:  # everything was delivered already
                assert await bob.quiet(0.3, "message") == []
        nursery.cancel_scope.cancel()


async def test_resend_of_the_same_id_gets_the_same_seq_and_no_second_delivery(
    new_store: Callable[[], Store],
) -> None:
    async with trio.open_nursery() as nursery:
        relay = await start(nursery, new_store)
        async with connect(relay, "alice") as alice, connect(relay, "bob") as bob:
            await alice.send(message("bob", "once", ident="dup"))
            first = await alice.expect("receipt", id="dup", status="sent")
            await bob.expect("message", id="dup")
            await alice.send(message("bob", "once", ident="dup"))
            again = await alice.expect("receipt", id="dup", status="sent")
            assert again["seq"] == first["seq"]
            assert await bob.quiet(0.3, "message") == []
        nursery.cancel_scope.cancel()


async def test_acks_device_gets_again_what_it_did_not_acknowledge_after_a_dropped_connection(
    new_store: Callable[[], Store],
) -> None:
    async with trio.open_nursery() as nursery:
        relay = await start(nursery, new_store)
        async with connect(relay, "alice") as alice:
            async with connect(relay, "bob", deviceId="bphone", acks=True) as bob:
                for i in range(3):
                    await alice.send(message("bob", f"t{i}", ident=f"t{i}"))
                got = [await bob.expect("message") for _ in range(3)]
                await bob.send({"type": "receipt", "peerId": "alice", "seq": got[0]["seq"],
                                "status": "delivered"})  # fmt: skip
                assert (await alice.expect("receipt", status="delivered"))["id"] == "t0"
                await bob.ws.aclose(code=4000)  # gone without acknowledging t1, t2
            async with connect(relay, "bob", deviceId="bphone", acks=True) as bob:
                again = [await bob.expect("message") for _ in range(2)]
                assert [m["id"] for m in again] == ["t1", "t2"]
                await bob.send({"type": "receipt", "peerId": "alice", "seq": again[-1]["seq"],
                                "status": "delivered"})  # fmt: skip
                assert (await alice.expect("receipt", status="delivered"))["id"] == "t2"
            async with connect(relay, "bob", deviceId="bphone", acks=True) as bob:
                assert await bob.quiet(0.3, "message") == []
        nursery.cancel_scope.cancel()


async def test_presence_online_and_offline_after_the_grace(new_store: Callable[[], Store]) -> None:
    async with trio.open_nursery() as nursery:
        relay = await start(nursery, new_store, presence_grace=0.5)
        async with connect(relay, "alice") as alice, connect(relay, "stranger") as stranger:
            async with connect(relay, "bob") as bob:
                await bob.send(message("alice", "hey"))
                await alice.expect("message")
            async with connect(relay, "bob"):  # reconnect within the grace: nothing
                assert await alice.quiet(0.2, "status") == []
            offline = await alice.expect("status", userId="bob")
            assert offline["status"] == "offline" and offline["lastSeen"].endswith("Z")
            await alice.send({"type": "presence", "userIds": ["bob", "alice"]})
            users = (await alice.expect("presence"))["users"]
            assert users == [
                {"userId": "bob", "status": "offline", "lastSeen": offline["lastSeen"]},
                {"userId": "alice", "status": "online", "lastSeen": None},
            ]
            async with connect(relay, "bob") as bob:
                online = await alice.expect("status", userId="bob")
                assert online["status"] == "online"
                await bob.send({"type": "status", "status": "busy", "userId": "bob"})
                assert (await alice.expect("status", userId="bob"))["status"] == "busy"
            assert await stranger.quiet(0.2, "status") == []  # no shared conversation
        nursery.cancel_scope.cancel()


async def test_typing_start_stop_and_lapse(new_store: Callable[[], Store]) -> None:
    async with trio.open_nursery() as nursery:
        relay = await start(nursery, new_store, typing_lapse=0.5)
        async with connect(relay, "alice") as alice, connect(relay, "bob") as bob:
            await alice.send({"type": "typing", "recipientId": "bob", "state": "start"})
            assert await bob.expect("typing") == {"type": "typing", "userId": "alice",
                                                  "state": "start"}  # fmt: skip
            await alice.send({"type": "typing", "recipientId": "bob", "state": "stop"})
            assert (await bob.expect("typing"))["state"] == "stop"
            await alice.send({"type": "typing", "recipientId": "bob", "state": "start"})
            await bob.expect("typing", state="start")
            with trio.fail_after(2):  # nobody refreshed it: the relay stops it
                assert (await bob.expect("typing"))["state"] == "stop"
            assert await alice.quiet(0.1) == []
        nursery.cancel_scope.cancel()


async def test_conversations_and_history_paging(new_store: Callable[[], Store]) -> None:
    async with trio.open_nursery() as nursery:
        relay = await start(nursery, new_store)
        async with connect(relay, "alice") as alice:
            for i in range(1, 8):
                await alice.send(message("bob", f"t{i}", ident=f"h{i}"))
                await alice.expect("receipt", id=f"h{i}")
            await alice.send(message("carol", "other"))
            await alice.expect("receipt")
            async with connect(relay, "bob") as bob:
                for _ in range(7):
                    await bob.expect("message")
                await bob.send({"type": "receipt", "peerId": "alice", "seq": 3, "status": "read"})
                await bob.send({"type": "conversations", "ref": "c1"})
                answer = await bob.expect("conversations", ref="c1")
                (item,) = answer["items"]
                assert (item["peerId"], item["unread"], item["lastSeq"], item["readSeq"]) == (
                    "alice", 4, 7, 3,
                )  # fmt: skip
                assert item["lastMessage"]["text"] == "t7"
                await bob.send({"type": "history", "peerId": "alice", "limit": 3, "ref": "p1"})
                page = await bob.expect("history", ref="p1")
                assert ([m["seq"] for m in page["messages"]], page["hasMore"]) == ([5, 6, 7], True)
                await bob.send({"type": "history", "peerId": "alice", "before": 5, "limit": 3,
                                "ref": "p2"})  # fmt: skip
                page = await bob.expect("history", ref="p2")
                assert ([m["seq"] for m in page["messages"]], page["hasMore"]) == ([2, 3, 4], True)
                await bob.send({"type": "history", "peerId": "alice", "after": 4, "ref": "p3"})
                page = await bob.expect("history", ref="p3")
                assert ([m["text"] for m in page["messages"]], page["hasMore"]) == (
                    ["t5", "t6", "t7"], False,
                )  # fmt: skip
            await alice.send({"type": "conversations"})
            items = (await alice.expect("conversations"))["items"]
            assert [i["peerId"] for i in items] == ["carol", "bob"]  # newest first
        nursery.cancel_scope.cancel()


async def test_bad_input_is_answered_as_the_contract_says_and_everyone_keeps_working(
    new_store: Callable[[], Store],
) -> None:
    async with trio.open_nursery() as nursery:
        relay = await start(nursery, new_store, max_text_chars=20, rate_limit_messages=1.0,
                            rate_limit_burst=5)  # fmt: skip
        async with (
            connect(relay, "alice") as alice,
            connect(relay, "bob") as bob,
            connect(relay, "mallory") as mallory,
        ):
            await alice.send(message("bob", "private", ident="p1"))
            seq = (await alice.expect("receipt", id="p1"))["seq"]
            await bob.expect("message", id="p1")
            await alice.send({"type": "group_create", "groupId": "club", "members": ["bob"]})
            await alice.expect("group")

            await mallory.send("{not json")
            assert (await mallory.expect("error"))["code"] == "bad_json"
            await mallory.send("[1,2]")
            assert (await mallory.expect("error"))["code"] == "bad_frame"
            await mallory.send({"type": "receipt", "peerId": "alice", "seq": "1",
                                "status": "read", "ref": "r0"})  # fmt: skip
            err = await mallory.expect("error")
            assert (err["code"], err["field"], err["ref"]) == ("invalid", "seq", "r0")
            await mallory.send({"type": "warp", "ref": "w"})
            assert (await mallory.expect("error"))["code"] == "unknown_type"
            await mallory.send(message("bob", "I am alice", ident="s1", senderId="alice"))
            r = await mallory.expect("receipt", id="s1")
            assert (r["status"], r["reason"]) == ("failed", "forbidden")
            await mallory.send({"type": "receipt", "peerId": "bob", "seq": seq, "status": "read"})
            assert (await mallory.expect("error"))["code"] == "forbidden"
            await mallory.send(message("", "let me in", ident="s2", groupId="club"))
            r = await mallory.expect("receipt", id="s2")
            assert (r["status"], r["reason"]) == ("failed", "forbidden")
            await mallory.send(message("bob", "x" * 21, ident="s3"))
            r = await mallory.expect("receipt", id="s3")
            assert (r["status"], r["reason"]) == ("failed", "too_long")
            for i in range(8):
                await mallory.send(message("bob", "spam", ident=f"f{i}"))
            flood = [await mallory.expect("receipt", id=f"f{i}") for i in range(8)]
            assert [f["status"] for f in flood].count("sent") == 5
            assert [f.get("reason") for f in flood[5:]] == ["rate_limited"] * 3

            # nobody was hurt: bob never saw the refused ones, alice and bob still talk
            spam = [await bob.expect("message", senderId="mallory") for _ in range(5)]
            assert [m["id"] for m in spam] == [f"f{i}" for i in range(5)]
            assert await bob.quiet(0.2, "message") == []
            await alice.send(message("bob", "still here", ident="p2"))
            await bob.expect("message", id="p2")
            await mallory.send({"type": "ping", "ref": "alive"})
            assert (await mallory.expect("pong"))["ref"] == "alive"
        nursery.cancel_scope.cancel()


async def test_a_client_of_the_original_guide_works_unchanged(
    new_store: Callable[[], Store],
) -> None:
    async with trio.open_nursery() as nursery:
        relay = await start(nursery, new_store)
        async with (
            open_websocket_url(relay.url) as ws_a,
            open_websocket_url(relay.url) as ws_b,
        ):
            alice, bob = Client(ws_a, "user_123"), Client(ws_b, "user_456")
            await alice.send({"type": "auth", "userId": "user_123", "userName": "John Doe",
                              "userAvatar": "JD", "timestamp": "2026-02-05T10:30:00Z"})  # fmt: skip
            await bob.send({"type": "auth", "userId": "user_456", "userName": "Jane",
                            "userAvatar": "JA", "timestamp": "2026-02-05T10:30:00Z"})  # fmt: skip
            await alice.expect("auth_ok")
            await bob.expect("auth_ok")
            await alice.send({"type": "message", "id": "1707116400000", "senderId": "user_123",
                              "senderName": "John Doe", "senderAvatar": "JD",
                              "recipientId": "user_456", "text": "Hello there!",
                              "timestamp": "2026-02-05T10:30:15Z", "status": "pending"})  # fmt: skip
            receipt = await alice.expect("receipt", status="sent")
            assert (receipt["id"], receipt["peerId"]) == ("1707116400000", "user_456")
            got = await bob.expect("message")
            for key, value in {"id": "1707116400000", "senderId": "user_123",
                               "senderName": "John Doe", "senderAvatar": "JD",
                               "recipientId": "user_456", "text": "Hello there!",
                               "timestamp": "2026-02-05T10:30:15Z",
                               "status": "delivered"}.items():  # fmt: skip
                assert got[key] == value
            await bob.send({"type": "status", "status": "away", "userId": "user_456",
                            "timestamp": "2026-02-05T10:31:00Z"})  # fmt: skip
            status = await alice.expect("status", userId="user_456")
            assert status["status"] == "away"
        nursery.cancel_scope.cancel()


async def test_auth_rules_over_the_wire(new_store: Callable[[], Store]) -> None:
    async with trio.open_nursery() as nursery:
        relay = await start(nursery, new_store, auth_timeout=0.3)
        async with open_websocket_url(relay.url) as ws:
            client = Client(ws, "?")
            await client.send({"type": "ping"})
            assert (await client.expect("error"))["code"] == "unauthenticated"
            with pytest.raises(ConnectionClosed) as info, trio.fail_after(3):
                await ws.get_message()
            assert info.value.reason.code == 1008
        async with open_websocket_url(relay.url) as ws:
            client = Client(ws, "?")
            await client.send({"type": "auth", "userId": 42})
            assert (await client.expect("error"))["code"] == "auth_failed"
            with pytest.raises(ConnectionClosed) as info, trio.fail_after(3):
                await ws.get_message()
            assert info.value.reason.code == 1008
        nursery.cancel_scope.cancel()


async def test_relay_publish_delivers_through_the_same_path(new_store: Callable[[], Store]) -> None:
    async with trio.open_nursery() as nursery:
        relay = await start(nursery, new_store)
        async with connect(relay, "bob") as bob:
            stored = await relay.publish(sender_id="system", recipient_id="bob",
                                         text="maintenance at 22:00", message_id="n1")  # fmt: skip
            got = await bob.expect("message", id="n1")
            assert (got["senderId"], got["seq"]) == ("system", stored.seq)
            with pytest.raises(MessageRefused):
                await relay.publish(sender_id="system", recipient_id="bob", text="")
        nursery.cancel_scope.cancel()


async def test_every_device_sees_a_busy_conversation_in_seq_order(
    new_store: Callable[[], Store],
) -> None:
    async with trio.open_nursery() as nursery:
        relay = await start(nursery, new_store, rate_limit_burst=1000)
        count = 60
        async with (
            connect(relay, "alice", deviceId="a1") as alice,
            connect(relay, "alice", deviceId="a2") as alice2,
            connect(relay, "bob", deviceId="b1") as bob,
            connect(relay, "bob", deviceId="b2") as bob2,
        ):

            async def burst(client: Client, to: str) -> None:
                for i in range(count):
                    await client.send(message(to, f"{client.user} {i}"))

            async with trio.open_nursery() as senders:  # both sides at once
                senders.start_soon(burst, alice, "bob")
                senders.start_soon(burst, bob, "alice")
            for watcher, expected in ((alice2, 2 * count), (bob2, 2 * count)):
                seqs = [(await watcher.expect("message"))["seq"] for _ in range(expected)]
                assert seqs == list(range(1, 2 * count + 1))
            for sender in (alice, bob):  # and the sending devices see the other side in order
                seqs = [(await sender.expect("message"))["seq"] for _ in range(count)]
                assert seqs == sorted(seqs) and len(set(seqs)) == count
        nursery.cancel_scope.cancel()
