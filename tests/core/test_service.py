"""MessagingService without sockets: fake Connections with a real Outbox, the real MemoryStore.

Every frame type and error path of the contract, the delivery semantics (sent / delivered /
read, acks, backlog, redelivery) and the server-side limits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import pytest
import trio
from support import CountingNow, FakeConn, decode_server_frames, watermarks_of

from relay.config import RelayConfig
from relay.core import MessagingService
from relay.errors import FrameError, StoreError
from relay.protocol import AuthFrame, MessageRefused
from relay.store.base import Appended, NewMessage, group_conversation
from relay.store.memory import MemoryStore


class CountingStore(MemoryStore):
    """MemoryStore that records append_many batch sizes (and can be told to fail)."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.fail_appends = False
        self.fail_conversations = False
        self.fail_undelivered = 0

    async def append_many(self, messages: Sequence[NewMessage]) -> list[Appended]:
        if self.fail_appends:
            raise StoreError("disk full")
        self.batches.append(len(messages))
        return await super().append_many(messages)

    async def undelivered(self, user_id: str, device_id: str, *, limit: int = 1000) -> Any:
        if self.fail_undelivered:
            self.fail_undelivered -= 1
            raise StoreError("read failed")
        return await super().undelivered(user_id, device_id, limit=limit)

    async def conversations(self, user_id: str, *, limit: int = 100) -> Any:
        if self.fail_conversations:
            raise RuntimeError("boom")
        return await super().conversations(user_id, limit=limit)


class Harness:
    def __init__(self, **config: Any) -> None:
        self.now = 1000.0
        self.wall = 1_770_000_000.0
        self.config = RelayConfig(db_path=None, **config)
        self.store = CountingStore()
        self.svc = MessagingService(
            self.config, self.store, clock=lambda: self.now, wall=lambda: self.wall
        )
        self.conns: list[FakeConn] = []

    def open(self, **outbox: int) -> FakeConn:
        outbox.setdefault("max_bytes", self.config.outbox_max_bytes)
        outbox.setdefault("max_frames", self.config.outbox_max_frames)
        conn = FakeConn(**outbox)
        self.svc.on_open(conn)
        self.conns.append(conn)
        return conn

    async def send(self, conn: FakeConn, *frames: dict[str, Any] | bytes) -> None:
        payloads = [f if isinstance(f, bytes) else orjson.dumps(f) for f in frames]
        await self.svc.on_messages(conn, payloads)

    def frames(self, conn: FakeConn, *, flush: bool = True) -> list[dict[str, Any]]:
        """What the relay queued for `conn` since last asked; `flush` reports it written."""
        got = decode_server_frames(conn.outbox.take())
        if flush:
            self.svc.on_flushed(conn)
        return got

    async def settle(self) -> None:
        """What the shell does every tick: flush everything, tick, maintain."""
        self.svc.tick(self.now)
        await self.svc.maintain()

    async def connect(self, user: str, **auth: Any) -> FakeConn:
        conn = self.open()
        await self.send(conn, {"type": "auth", "userId": user, **auth})
        first = decode_server_frames(conn.outbox.take())
        assert first[0]["type"] == "auth_ok", first
        conn.backlog = first[1:]  # type: ignore[attr-defined]
        self.svc.on_flushed(conn)
        return conn

    def close(self, conn: FakeConn, code: int = 1000) -> None:
        self.svc.on_close(conn, code)

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall += seconds
        await self.settle()


def msg(ident: str, to: str | None = None, text: str = "hi", **extra: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "message", "id": ident, "text": text, **extra}
    if to is not None:
        frame["recipientId"] = to
    return frame


def of_type(frames: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] == kind]


# --- session --------------------------------------------------------------------------------------


async def test_auth_ok_and_session_fields() -> None:
    h = Harness()
    conn = h.open()
    await h.send(conn, {"type": "auth", "userId": "alice", "deviceId": "phone", "acks": True})
    (ok,) = h.frames(conn)
    assert ok["type"] == "auth_ok"
    assert (ok["userId"], ok["deviceId"]) == ("alice", "phone")
    assert len(ok["sessionId"]) >= 16
    assert ok["serverTime"].endswith("Z")
    anon = h.open()
    await h.send(anon, {"type": "auth", "userId": "alice"})
    (ok2,) = h.frames(anon)
    assert ok2["deviceId"].startswith("anon-") and ok2["sessionId"] != ok["sessionId"]


async def test_frames_before_auth_are_unauthenticated_and_the_connection_stays() -> None:
    h = Harness()
    conn = h.open()
    await h.send(conn, {"type": "ping", "ref": "p"}, msg("m1", "bob"), {"type": "conversations"})
    errors = h.frames(conn)
    assert [(e["code"], e.get("ref")) for e in errors] == [
        ("unauthenticated", "p"),
        ("unauthenticated", "m1"),
        ("unauthenticated", None),
    ]
    assert conn.closed is None
    await h.send(conn, {"type": "auth", "userId": "alice"})
    assert h.frames(conn)[0]["type"] == "auth_ok"
    assert h.store.batches == []  # nothing was stored before auth


async def test_an_auth_sent_in_time_is_not_closed_while_the_relay_works_on_it() -> None:
    # auth_timeout bounds the client's sending of `auth`, not the relay's handling of it: in a
    # reconnect storm the relay may take longer than that to get to everyone's sign-in, and
    # closing those clients 1008 only brings them back for another try
    h = Harness(auth_timeout=2.0)
    release = trio.Event()
    inner = h.svc.authenticator

    class Slow:
        async def authenticate(self, frame: AuthFrame) -> Any:
            await release.wait()
            return await inner.authenticate(frame)

    h.svc.authenticator = Slow()  # type: ignore[assignment]
    conn = h.open()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.send, conn, {"type": "auth", "userId": "u"})
        await trio.testing.wait_all_tasks_blocked()
        await h.advance(5.0)  # past the deadline, the sign-in still under way
        assert conn.closed is None
        release.set()
    assert h.frames(conn)[0]["type"] == "auth_ok"


async def test_no_auth_within_the_timeout_closes_1008() -> None:
    h = Harness(auth_timeout=2.0)
    slow = h.open()
    await h.advance(1.9)
    assert slow.closed is None
    await h.advance(0.2)
    assert slow.closed is not None and slow.closed[0] == 1008
    fast = h.open()
    await h.send(fast, {"type": "auth", "userId": "u"})
    await h.advance(5)
    assert fast.closed is None


async def test_auth_failure_sends_auth_failed_then_closes_1008() -> None:
    class Refuse:
        async def authenticate(self, frame: AuthFrame) -> str:
            raise FrameError("auth_failed", "bad token")

    h = Harness()
    h.svc = MessagingService(h.config, h.store, authenticator=Refuse(), clock=lambda: h.now)
    conn = h.open()
    await h.send(conn, {"type": "auth", "userId": "alice", "token": "x"}, {"type": "ping"})
    frames = h.frames(conn)
    assert [(f["type"], f.get("code")) for f in frames] == [("error", "auth_failed")]
    assert conn.closed is not None and conn.closed[0] == 1008


async def test_invalid_auth_frame_fails_auth() -> None:
    h = Harness()
    conn = h.open()
    await h.send(conn, {"type": "auth", "userName": "no id"})
    (err,) = h.frames(conn)
    assert (err["code"], err["field"]) == ("auth_failed", "userId")
    assert conn.closed is not None and conn.closed[0] == 1008


async def test_authenticator_decides_the_user() -> None:
    class Tokens:
        async def authenticate(self, frame: AuthFrame) -> str:
            if frame.token != "secret":
                raise FrameError("auth_failed", "bad token")
            return frame.user_id

    h = Harness()
    h.svc = MessagingService(h.config, h.store, authenticator=Tokens(), clock=lambda: h.now)
    good = h.open()
    await h.send(good, {"type": "auth", "userId": "alice", "token": "secret"})
    assert h.frames(good)[0]["type"] == "auth_ok"


async def test_second_auth_is_invalid_and_harmless() -> None:
    h = Harness()
    conn = await h.connect("alice")
    await h.send(conn, {"type": "auth", "userId": "mallory"}, {"type": "ping", "ref": "p"})
    err, pong = h.frames(conn)
    assert (err["code"], pong["type"]) == ("invalid", "pong")
    assert conn.state.user_id == "alice"


async def test_ping_pong() -> None:
    h = Harness()
    conn = await h.connect("alice")
    await h.send(conn, {"type": "ping", "ref": "p1"})
    (pong,) = h.frames(conn)
    assert pong["type"] == "pong" and pong["ref"] == "p1"
    assert pong["serverTime"].startswith("2026-02-")


async def test_bad_input_is_answered_and_the_connection_keeps_working() -> None:
    h = Harness()
    conn = await h.connect("alice")
    await h.send(conn, b"{nope", b"[]", {"type": "fly", "ref": "f"}, {"type": "history"})
    frames = h.frames(conn)
    assert [f["code"] for f in frames] == ["bad_json", "bad_frame", "unknown_type", "invalid"]
    assert frames[2]["ref"] == "f" and frames[3]["field"] == "peerId"
    await h.send(conn, {"type": "ping"})
    assert h.frames(conn)[0]["type"] == "pong"
    assert conn.closed is None


# --- messages -------------------------------------------------------------------------------------


async def test_one_to_one_message_reaches_every_device_but_the_sending_one() -> None:
    h = Harness()
    a1 = await h.connect("alice", deviceId="a-phone")
    a2 = await h.connect("alice", deviceId="a-watch")
    b1 = await h.connect("bob", deviceId="b-phone")
    b2 = await h.connect("bob", deviceId="b-watch")
    h.frames(a1), h.frames(b1)
    before = {conn: conn.sends for conn in (a2, b1, b2)}
    original = msg("1707116400000", "bob", "Hello there!", senderId="alice", senderName="Alice",
                   senderAvatar="AL", timestamp="2026-02-05T10:30:15Z", status="pending")  # fmt: skip
    await h.send(a1, original)
    (sent,) = h.frames(a1)
    assert sent == {
        "type": "receipt", "id": "1707116400000", "peerId": "bob", "status": "sent", "seq": 1,
        "timestamp": sent["timestamp"],
    }  # fmt: skip
    for conn in (a2, b1, b2):
        assert conn.sends == before[conn] + 1  # fanned out through Connection.send
        (got,) = of_type(h.frames(conn), "message")
        assert got["status"] == "delivered" and got["seq"] == 1
        assert {k: got[k] for k in ("id", "senderId", "senderName", "senderAvatar", "recipientId",
                                    "text", "timestamp")} == {
            k: original[k] for k in ("id", "senderId", "senderName", "senderAvatar",
                                     "recipientId", "text", "timestamp")
        }  # fmt: skip
        assert got["serverTimestamp"].endswith("Z")
    await h.send(b1, msg("r1", "alice", "back"))
    assert h.frames(b1)[0]["seq"] == 2  # one conversation, seq counts on


async def test_resend_of_the_same_id_gets_the_same_seq_and_no_second_delivery() -> None:
    h = Harness()
    a = await h.connect("alice")
    b = await h.connect("bob")
    await h.send(a, msg("m1", "bob"), msg("m2", "bob"))
    first = h.frames(a)
    assert [r["seq"] for r in first] == [1, 2]
    assert len(of_type(h.frames(b), "message")) == 2
    await h.send(a, msg("m1", "bob", "changed"))
    # bob's flush above told alice at once (a 1:1's `delivered` rides the next write)
    delivered, again = h.frames(a)
    assert (delivered["status"], delivered["seq"], delivered["id"]) == ("delivered", 2, "m2")
    assert (again["status"], again["seq"], again["id"]) == ("sent", 1, "m1")
    assert of_type(h.frames(b), "message") == []


async def test_consecutive_messages_of_one_read_are_stored_in_one_append() -> None:
    h = Harness()
    a = await h.connect("alice")
    await h.send(a, *(msg(f"m{i}", "bob") for i in range(5)), {"type": "ping"}, msg("m5", "bob"))
    frames = h.frames(a)
    assert [f["type"] for f in frames] == ["receipt"] * 5 + ["pong", "receipt"]
    assert [f["seq"] for f in of_type(frames, "receipt")] == [1, 2, 3, 4, 5, 6]
    assert h.store.batches == [5, 1]


async def test_refused_messages_get_failed_receipts_in_order_and_are_not_stored() -> None:
    h = Harness(max_text_chars=5)
    a = await h.connect("alice")
    b = await h.connect("bob")
    await h.send(
        a,
        msg("ok1", "bob"),
        msg("spoof", "bob", senderId="mallory"),
        msg("long", "bob", "x" * 6),
        msg("both", "bob", groupId="g"),
        msg("empty", "bob", ""),
        msg("ok2", "bob"),
    )
    frames = h.frames(a)
    assert [(f["id"], f["status"], f.get("reason")) for f in frames] == [
        ("ok1", "sent", None),
        ("spoof", "failed", "forbidden"),
        ("long", "failed", "too_long"),
        ("both", "failed", "invalid"),
        ("empty", "failed", "invalid"),
        ("ok2", "sent", None),
    ]
    assert [m["id"] for m in of_type(h.frames(b), "message")] == ["ok1", "ok2"]
    assert [f["seq"] for f in frames if f["status"] == "sent"] == [1, 2]


async def test_message_without_id_gets_an_invalid_error() -> None:
    h = Harness()
    a = await h.connect("alice")
    await h.send(a, {"type": "message", "recipientId": "bob", "text": "hi"})
    (err,) = h.frames(a)
    assert (err["type"], err["code"], err["field"]) == ("error", "invalid", "id")


async def test_meta_is_stored_and_forwarded_untouched_within_its_limit() -> None:
    h = Harness(max_meta_bytes=64)
    a = await h.connect("alice")
    b = await h.connect("bob")
    meta = {"reply_to": "m0", "n": [1, 2.5, None]}
    await h.send(a, msg("m1", "bob", meta=meta), msg("m2", "bob", meta={"x": "y" * 80}))
    sent, failed = h.frames(a)
    assert sent["status"] == "sent" and (failed["reason"], failed["field"]) == ("too_long", "meta")
    (got,) = of_type(h.frames(b), "message")
    assert got["meta"] == meta


async def test_flood_is_rate_limited_per_user() -> None:
    h = Harness(rate_limit_messages=1.0, rate_limit_burst=3)
    a = await h.connect("alice")
    c = await h.connect("carol")
    await h.send(a, *(msg(f"m{i}", "bob") for i in range(5)))
    assert [f.get("reason") for f in h.frames(a)] == [
        None,
        None,
        None,
        "rate_limited",
        "rate_limited",
    ]
    await h.send(c, msg("c1", "bob"))  # another user is not affected
    assert h.frames(c)[0]["status"] == "sent"
    h.now += 1.0  # one token back
    await h.send(a, msg("m9", "bob"), msg("m10", "bob"))
    assert [f["status"] for f in h.frames(a)] == ["sent", "failed"]


async def test_store_failure_answers_failed_internal() -> None:
    h = Harness()
    a = await h.connect("alice")
    b = await h.connect("bob")
    h.store.fail_appends = True
    await h.send(a, msg("m1", "bob"), msg("m2", "bob"))
    assert [(f["status"], f["reason"]) for f in h.frames(a)] == [("failed", "internal")] * 2
    assert of_type(h.frames(b), "message") == []
    h.store.fail_appends = False
    await h.send(a, msg("m1", "bob"))
    assert h.frames(a)[0]["seq"] == 1  # nothing was half-stored


async def test_unexpected_exception_answers_internal_and_the_connection_stays() -> None:
    h = Harness()
    a = await h.connect("alice")
    h.store.fail_conversations = True
    await h.send(a, {"type": "conversations", "ref": "c"}, {"type": "ping", "ref": "p"})
    err, pong = h.frames(a)
    assert (err["code"], err["ref"], pong["type"]) == ("internal", "c", "pong")
    assert a.closed is None


async def test_message_to_self_reaches_own_other_devices_once() -> None:
    h = Harness()
    a1 = await h.connect("alice", deviceId="1")
    a2 = await h.connect("alice", deviceId="2")
    await h.send(a1, msg("note", "alice"))
    assert h.frames(a1)[0]["status"] == "sent"
    assert [m["id"] for m in of_type(h.frames(a2), "message")] == ["note"]


# --- delivered / read -------------------------------------------------------------------------------


async def test_acks_false_device_counts_as_delivered_once_flushed() -> None:
    h = Harness()
    a = await h.connect("alice")
    b = await h.connect("bob")
    await h.send(a, msg("m1", "bob"), msg("m2", "bob"))
    h.frames(a)
    await h.settle()
    assert h.frames(a) == []  # queued for bob but not written yet: not delivered
    assert len(of_type(h.frames(b, flush=True), "message")) == 2
    await h.settle()
    (receipt,) = h.frames(a)
    assert receipt == {
        "type": "receipt", "id": "m2", "peerId": "bob", "seq": 2, "status": "delivered",
        "userId": "bob", "timestamp": receipt["timestamp"],
    }  # fmt: skip
    marks = await watermarks_of(h.store, _conv("alice", "bob"), "bob")
    assert marks.delivered_seq == 2


def _conv(a: str, b: str) -> str:
    from relay.store.base import direct_conversation

    return direct_conversation(a, b)


async def test_unflushed_messages_are_lost_with_the_connection_and_come_again() -> None:
    h = Harness()
    a = await h.connect("alice")
    b = await h.connect("bob")
    await h.send(a, msg("m1", "bob"))
    h.frames(a)
    b.outbox.take()  # "written" partially: the shell never reported the flush
    h.close(b, 1006)
    await h.settle()
    assert h.frames(a) == []  # no delivered receipt
    b2 = await h.connect("bob")
    assert [m["id"] for m in b2.backlog] == ["m1"]  # type: ignore[attr-defined]


async def test_acks_true_device_delivers_by_receipt_and_gets_unacked_again() -> None:
    h = Harness()
    a = await h.connect("alice")
    b = await h.connect("bob", deviceId="bphone", acks=True)
    await h.send(a, msg("m1", "bob"), msg("m2", "bob"), msg("m3", "bob"))
    h.frames(a)
    assert [m["seq"] for m in of_type(h.frames(b), "message")] == [1, 2, 3]
    await h.settle()
    assert h.frames(a) == []  # flushed is not delivered for an acks device
    await h.send(b, {"type": "receipt", "peerId": "alice", "seq": 1, "status": "delivered"})
    (r,) = h.frames(a)
    assert (r["id"], r["seq"], r["status"], r["userId"]) == ("m1", 1, "delivered", "bob")
    h.close(b)
    b2 = await h.connect("bob", deviceId="bphone", acks=True)
    assert [m["seq"] for m in b2.backlog] == [2, 3]  # type: ignore[attr-defined]
    await h.send(b2, {"type": "receipt", "peerId": "alice", "seq": 3, "status": "delivered"})
    h.close(b2)
    b3 = await h.connect("bob", deviceId="bphone", acks=True)
    assert b3.backlog == []  # type: ignore[attr-defined]


async def test_read_receipt_reaches_the_sender_and_the_readers_other_devices() -> None:
    h = Harness()
    a1 = await h.connect("alice", deviceId="a1")
    a2 = await h.connect("alice", deviceId="a2")
    b1 = await h.connect("bob", deviceId="b1")
    b2 = await h.connect("bob", deviceId="b2")
    await h.send(a1, msg("m1", "bob"), msg("m2", "bob"))
    for conn in (a1, a2, b1, b2):
        h.frames(conn)
    await h.settle()
    assert [r["status"] for r in h.frames(a1)] == ["delivered"]
    assert [r["status"] for r in h.frames(a2)] == ["delivered"]  # every sender device
    await h.send(b1, {"type": "receipt", "peerId": "alice", "seq": 2, "status": "read"})
    for conn in (a1, a2):
        (r,) = h.frames(conn)
        assert (r["id"], r["seq"], r["status"], r["userId"], r["peerId"]) == (
            "m2", 2, "read", "bob", "bob",
        )  # fmt: skip
    (sync,) = h.frames(b2)
    assert (sync["status"], sync["seq"], sync["peerId"], sync["userId"]) == (
        "read", 2, "alice", "bob",
    )  # fmt: skip
    assert "id" not in sync
    assert h.frames(b1) == []
    summary = (await h.store.conversations("bob"))[0]
    assert (summary.unread, summary.read_seq) == (0, 2)


async def test_stale_receipts_are_ignored_and_status_only_moves_forward() -> None:
    h = Harness()
    a = await h.connect("alice")
    b = await h.connect("bob", acks=True, deviceId="b")
    await h.send(a, msg("m1", "bob"), msg("m2", "bob"))
    h.frames(a), h.frames(b)
    await h.send(b, {"type": "receipt", "peerId": "alice", "seq": 2, "status": "read"})
    assert [r["status"] for r in h.frames(a)] == ["read"]
    await h.send(
        b,
        {"type": "receipt", "peerId": "alice", "seq": 2, "status": "delivered"},
        {"type": "receipt", "peerId": "alice", "seq": 1, "status": "read"},
        {"type": "receipt", "peerId": "alice", "seq": 2, "status": "read"},
    )
    assert h.frames(a) == [] and h.frames(b) == []


async def test_receipt_seq_is_clamped_to_the_conversation() -> None:
    h = Harness()
    a = await h.connect("alice")
    b = await h.connect("bob", acks=True, deviceId="b")
    await h.send(a, msg("m1", "bob"))
    h.frames(a), h.frames(b)
    await h.send(b, {"type": "receipt", "peerId": "alice", "seq": 99, "status": "read"})
    (r,) = h.frames(a)
    assert r["seq"] == 1
    await h.send(a, msg("m2", "bob"))  # a later message is not already read
    h.frames(a)
    assert (await h.store.conversations("bob"))[0].unread == 1


async def test_receipt_for_a_conversation_the_user_is_not_in_is_forbidden() -> None:
    h = Harness()
    a = await h.connect("alice")
    await h.connect("bob")
    c = await h.connect("carol")
    await h.send(a, msg("m1", "bob"))
    await h.send(c, {"type": "receipt", "peerId": "alice", "seq": 1, "status": "read", "ref": "x"})
    (err,) = h.frames(c)
    assert (err["code"], err["ref"]) == ("forbidden", "x")
    await h.send(a, {"type": "group_create", "groupId": "g", "members": ["bob"]})
    await h.send(c, {"type": "receipt", "groupId": "g", "seq": 1, "status": "read"})
    assert h.frames(c)[0]["code"] == "forbidden"
    assert (await watermarks_of(h.store, _conv("alice", "bob"), "bob")).read_seq == 0


async def test_only_recipients_receipts_move_senders_status() -> None:
    h = Harness()
    a = await h.connect("alice", acks=True, deviceId="a")
    await h.connect("bob")
    await h.send(a, msg("m1", "bob"))
    h.frames(a)
    # the sender acknowledging its own message covers nothing of anyone else's
    await h.send(a, {"type": "receipt", "peerId": "bob", "seq": 1, "status": "read"})
    assert h.frames(a) == []
    assert (await watermarks_of(h.store, _conv("alice", "bob"), "bob")).read_seq == 0


# --- backlog ----------------------------------------------------------------------------------------


async def test_offline_recipient_gets_the_backlog_in_seq_order_then_live() -> None:
    h = Harness()
    a = await h.connect("alice")
    c = await h.connect("carol")
    await h.send(a, *(msg(f"a{i}", "bob") for i in range(3)))
    await h.send(c, msg("c0", "bob"))
    await h.send(a, msg("a3", "bob"))
    b = await h.connect("bob")
    assert [(m["id"], m["seq"]) for m in b.backlog] == [  # type: ignore[attr-defined]
        ("a0", 1), ("a1", 2), ("a2", 3), ("c0", 1), ("a3", 4),
    ]  # fmt: skip
    await h.send(a, msg("a4", "bob"))
    assert [m["id"] for m in of_type(h.frames(b), "message")] == ["a4"]


async def test_backlog_comes_in_batches_acks_false() -> None:
    h = Harness(backlog_batch=2)
    a = await h.connect("alice")
    await h.send(a, *(msg(f"m{i}", "bob") for i in range(5)))
    b = await h.connect("bob")
    got = [m["seq"] for m in b.backlog]  # type: ignore[attr-defined]
    assert got == [1, 2]
    for _ in range(5):
        await h.settle()
        got += [m["seq"] for m in of_type(h.frames(b), "message")]
    assert got == [1, 2, 3, 4, 5]
    await h.send(a, msg("live", "bob"))
    assert [m["seq"] for m in of_type(h.frames(b), "message")] == [6]


async def test_backlog_comes_in_batches_acks_true_as_they_are_acknowledged() -> None:
    h = Harness(backlog_batch=2)
    a = await h.connect("alice")
    await h.send(a, *(msg(f"m{i}", "bob") for i in range(5)))
    b = await h.connect("bob", acks=True, deviceId="b")
    assert [m["seq"] for m in b.backlog] == [1, 2]  # type: ignore[attr-defined]
    await h.settle()
    assert of_type(h.frames(b), "message") == []  # waits for the acknowledgement
    await h.send(b, {"type": "receipt", "peerId": "alice", "seq": 2, "status": "delivered"})
    assert [m["seq"] for m in of_type(h.frames(b), "message")] == [3, 4]
    await h.send(b, {"type": "receipt", "peerId": "alice", "seq": 4, "status": "delivered"})
    assert [m["seq"] for m in of_type(h.frames(b), "message")] == [5]


async def test_live_messages_during_a_backlog_keep_seq_order() -> None:
    h = Harness(backlog_batch=2)
    a = await h.connect("alice")
    await h.send(a, *(msg(f"m{i}", "bob") for i in range(3)))
    b = await h.connect("bob")
    seen = [m["seq"] for m in b.backlog]  # type: ignore[attr-defined]
    await h.send(a, msg("live1", "bob"))  # arrives while the backlog is still going
    seen += [m["seq"] for m in of_type(h.frames(b, flush=False), "message")]
    for _ in range(4):
        h.svc.on_flushed(b)
        await h.settle()
        seen += [m["seq"] for m in of_type(h.frames(b, flush=False), "message")]
    assert seen == [1, 2, 3, 4]


class SlowBacklogStore(CountingStore):
    """A store whose next `undelivered` waits until `gate` is set (a slow backlog read)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: trio.Event | None = None
        self.reading = trio.Event()

    async def undelivered(self, user_id: str, device_id: str, *, limit: int = 1000) -> Any:
        gate, self.gate = self.gate, None
        if gate is not None:
            self.reading.set()
            await gate.wait()
        return await super().undelivered(user_id, device_id, limit=limit)


@pytest.mark.parametrize("acks", [False, True])
async def test_own_messages_sent_during_another_devices_backlog_reach_it_in_seq_order(
    acks: bool,
) -> None:
    # bob's second device connects while its backlog read is slow; meanwhile bob writes from
    # his first device and alice answers. The second device must see all of it, in seq order:
    # bob's own message is held during the backlog, alice's comes with the backlog's next read.
    h = Harness()
    store = SlowBacklogStore()
    h.store = store
    h.svc = MessagingService(h.config, store, clock=lambda: h.now, wall=lambda: h.wall)
    alice = await h.connect("alice")
    bob = await h.connect("bob", deviceId="b1")
    store.gate = gate = trio.Event()
    bob2 = h.open()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            h.send, bob2, {"type": "auth", "userId": "bob", "deviceId": "b2", "acks": acks}
        )
        await store.reading.wait()  # bob2's backlog read has started
        await h.send(bob, msg("own", "alice"))  # seq 1: bob's own, held for bob2
        await h.send(alice, msg("reply", "bob"))  # seq 2: skipped live, read by the backlog
        gate.set()
    seen = [(m["id"], m["seq"]) for m in of_type(h.frames(bob2), "message")]
    for _ in range(3):  # the backlog goes on as bob2 flushes (and acknowledges)
        if acks and seen:
            await h.send(
                bob2,
                {"type": "receipt", "peerId": "alice", "seq": seen[-1][1], "status": "delivered"},
            )
        await h.settle()
        seen += [(m["id"], m["seq"]) for m in of_type(h.frames(bob2), "message")]
    assert seen == [("own", 1), ("reply", 2)]


@pytest.mark.parametrize("acks", [False, True])
async def test_a_backlog_larger_than_the_outbox_reaches_a_reading_device(acks: bool) -> None:
    h = Harness(outbox_max_bytes=16 * 1024, rate_limit_burst=1000)
    a = await h.connect("alice")
    await h.send(a, *(msg(f"m{i}", "bob", "z" * 1000) for i in range(40)))  # ~44 KiB
    b = await h.connect("bob", deviceId="b", acks=acks)
    got = [m["seq"] for m in b.backlog]  # type: ignore[attr-defined]
    assert 0 < len(got) < 40
    for _ in range(40):
        frames = h.frames(b)  # read (and flush) what came, acknowledge it
        seqs = [m["seq"] for m in of_type(frames, "message")]
        got += seqs
        if acks and seqs:
            await h.send(b, {"type": "receipt", "peerId": "alice", "seq": seqs[-1],
                             "status": "delivered"})  # fmt: skip
        await h.settle()
    assert got == list(range(1, 41))
    assert b.closed is None


async def test_a_history_page_is_cut_to_half_the_outbox_and_says_has_more() -> None:
    h = Harness(outbox_max_bytes=16 * 1024, rate_limit_burst=1000)
    a = await h.connect("alice")
    await h.send(a, *(msg(f"m{i}", "bob", "z" * 1000) for i in range(20)))
    h.frames(a)
    await h.send(a, {"type": "history", "peerId": "bob", "limit": 20, "ref": "new"})
    (page,) = h.frames(a)
    newest = [m["seq"] for m in page["messages"]]
    assert page["hasMore"] and 1 < len(newest) < 20 and newest[-1] == 20
    assert newest == list(range(21 - len(newest), 21))
    await h.send(a, {"type": "history", "peerId": "bob", "after": 0, "limit": 20, "ref": "old"})
    (page,) = h.frames(a)
    oldest = [m["seq"] for m in page["messages"]]
    assert page["hasMore"] and oldest == list(range(1, len(oldest) + 1))
    assert a.closed is None


async def test_the_conversation_list_is_cut_to_half_the_outbox() -> None:
    h = Harness(outbox_max_bytes=16 * 1024, rate_limit_burst=1000)
    a = await h.connect("alice")
    await h.send(a, *(msg(f"m{i}", f"peer{i}", "z" * 1000) for i in range(20)))
    h.frames(a)
    await h.send(a, {"type": "conversations"})
    (answer,) = h.frames(a)
    peers = [i["peerId"] for i in answer["items"]]
    assert answer["hasMore"] is True and 1 < len(peers) < 20
    assert peers == [f"peer{i}" for i in range(19, 19 - len(peers), -1)]  # newest first
    await h.send(a, {"type": "conversations", "limit": 3})
    (answer,) = h.frames(a)
    assert len(answer["items"]) == 3 and "hasMore" not in answer


async def test_a_failed_backlog_read_is_retried_and_live_messages_wait_for_it() -> None:
    h = Harness()
    a = await h.connect("alice")
    await h.send(a, msg("m1", "bob"), msg("m2", "bob"))
    h.store.fail_undelivered = 1
    b = await h.connect("bob")
    assert b.backlog == []  # type: ignore[attr-defined]
    assert b.closed is None
    await h.send(a, msg("m3", "bob"))  # live, but behind the backlog
    assert of_type(h.frames(b), "message") == []
    await h.settle()
    assert [m["seq"] for m in of_type(h.frames(b), "message")] == [1, 2, 3]


async def test_group_member_gets_group_backlog_from_when_they_joined() -> None:
    h = Harness()
    a = await h.connect("alice")
    await h.send(a, {"type": "group_create", "groupId": "g", "members": ["bob"]})
    await h.send(a, {"type": "message", "id": "g1", "groupId": "g", "text": "one"})
    await h.send(a, {"type": "group_add", "groupId": "g", "userIds": ["carol"]})
    await h.send(a, {"type": "message", "id": "g2", "groupId": "g", "text": "two"})
    b = await h.connect("bob")
    c = await h.connect("carol")
    assert [m["id"] for m in b.backlog] == ["g1", "g2"]  # type: ignore[attr-defined]
    assert [m["id"] for m in c.backlog] == ["g2"]  # type: ignore[attr-defined]


# --- presence -------------------------------------------------------------------------------------


async def test_presence_online_offline_with_grace_to_contacts_only() -> None:
    h = Harness(presence_grace=5.0)
    a = await h.connect("alice")
    b = await h.connect("bob")
    stranger = await h.connect("stranger")
    await h.send(a, msg("m1", "bob"))  # now alice and bob share a conversation
    h.frames(a), h.frames(b), h.frames(stranger)
    h.close(b)
    await h.advance(4.0)
    assert of_type(h.frames(a), "status") == []
    b = await h.connect("bob")  # back within the grace: nothing announced
    assert of_type(h.frames(a), "status") == []
    h.close(b)
    left_at = h.svc.ctx.now_iso()
    await h.advance(5.1)
    (off,) = of_type(h.frames(a), "status")
    assert (off["userId"], off["status"], off["lastSeen"]) == ("bob", "offline", left_at)
    assert h.frames(stranger) == []
    b = await h.connect("bob")
    (on,) = of_type(h.frames(a), "status")
    assert (on["userId"], on["status"]) == ("bob", "online")
    assert h.frames(stranger) == []
    b2 = await h.connect("bob", deviceId="watch")  # second device: no announcement
    assert of_type(h.frames(a), "status") == []
    h.close(b2)
    await h.advance(10)
    assert of_type(h.frames(a), "status") == []  # one device still there


async def test_a_user_with_two_devices_goes_offline_when_both_left() -> None:
    h = Harness(presence_grace=1.0)
    a = await h.connect("alice")
    b1 = await h.connect("bob", deviceId="1")
    b2 = await h.connect("bob", deviceId="2")
    await h.send(a, msg("m1", "bob"))
    h.frames(a)
    h.close(b1)
    await h.advance(2.0)
    assert of_type(h.frames(a), "status") == []
    h.close(b2)
    await h.advance(2.0)
    (off,) = of_type(h.frames(a), "status")
    assert (off["userId"], off["status"]) == ("bob", "offline")
    await h.connect("bob", deviceId="1")
    assert [s["status"] for s in of_type(h.frames(a), "status")] == ["online"]


async def test_presence_query_and_last_seen() -> None:
    h = Harness(presence_grace=0.0)
    a = await h.connect("alice")
    b = await h.connect("bob")
    h.close(b)
    left = h.svc.ctx.now_iso()
    await h.settle()
    await h.send(a, {"type": "presence", "userIds": ["alice", "bob", "nobody"], "ref": "q"})
    (answer,) = h.frames(a)
    assert answer == {
        "type": "presence",
        "users": [
            {"userId": "alice", "status": "online", "lastSeen": None},
            {"userId": "bob", "status": "offline", "lastSeen": left},
            {"userId": "nobody", "status": "offline", "lastSeen": None},
        ],
        "ref": "q",
    }
    assert await h.store.last_seen(["bob"]) == {"bob": left}


async def test_status_frames_are_passed_on_to_contacts_and_must_be_own() -> None:
    h = Harness()
    a = await h.connect("alice")
    b = await h.connect("bob")
    await h.send(a, msg("m1", "bob"))
    h.frames(a), h.frames(b)
    assert [r["status"] for r in h.frames(a)] == ["delivered"]  # told at bob's flush
    await h.send(a, {"type": "status", "status": "away", "userId": "alice", "timestamp": "t"})
    (st,) = h.frames(b)
    assert (st["type"], st["status"], st["userId"]) == ("status", "away", "alice")
    await h.send(b, {"type": "presence", "userIds": ["alice"]})
    assert h.frames(b)[0]["users"][0]["status"] == "away"
    await h.send(a, {"type": "status", "status": "busy", "userId": "bob"})
    (err,) = h.frames(a)
    assert (err["code"], err["field"]) == ("forbidden", "userId")
    assert h.frames(b) == []


# --- typing ---------------------------------------------------------------------------------------


async def test_typing_forwarded_lapses_and_is_droppable() -> None:
    h = Harness(typing_lapse=10.0)
    a = await h.connect("alice")
    b1 = await h.connect("bob", deviceId="1")
    b2 = await h.connect("bob", deviceId="2")
    await h.send(a, {"type": "typing", "recipientId": "bob", "state": "start"})
    for conn in (b1, b2):
        assert h.frames(conn) == [{"type": "typing", "userId": "alice", "state": "start"}]
    await h.advance(9.0)
    assert h.frames(b1) == []
    await h.send(a, {"type": "typing", "recipientId": "bob", "state": "start"})  # refresh
    h.frames(b1), h.frames(b2)
    await h.advance(9.0)
    assert h.frames(b1) == []
    await h.advance(1.5)
    assert h.frames(b1) == [{"type": "typing", "userId": "alice", "state": "stop"}]
    await h.send(a, {"type": "typing", "recipientId": "bob", "state": "stop"})
    assert h.frames(b1) == []  # nothing active: nothing to stop
    assert h.frames(a) == []  # typing is never answered or stored
    assert h.store.batches == []


async def test_typing_stop_and_disconnect_end_the_indicator() -> None:
    h = Harness()
    a = await h.connect("alice")
    b = await h.connect("bob")
    await h.send(a, {"type": "typing", "recipientId": "bob", "state": "start"})
    await h.send(a, {"type": "typing", "recipientId": "bob", "state": "stop"})
    assert [f["state"] for f in h.frames(b)] == ["start", "stop"]
    await h.send(a, {"type": "typing", "recipientId": "bob", "state": "start"})
    h.frames(b)
    h.close(a)
    assert h.frames(b) == [{"type": "typing", "userId": "alice", "state": "stop"}]


async def test_a_tick_examines_no_pending_typing_or_grace_until_one_is_due() -> None:
    """n typing pairs and n users within their grace, none due: the tick compares the same
    few deadlines with `now` whatever n is (a scan of both tables compared 2n more); each
    table's n entries end at the tick their deadline is reached, not before."""

    async def compared(n: int) -> int:
        h = Harness(presence_grace=60.0, typing_lapse=10.0, typing_rate_limit=1e9)
        a = await h.connect("alice")
        for i in range(n):
            await h.send(a, {"type": "typing", "recipientId": f"r{i}", "state": "start"})
            h.close(await h.connect(f"u{i}"))
        presence, typing = h.svc.ctx.presence, h.svc.ctx.typing

        def leaving() -> int:
            return sum(presence.leaving_since(f"u{i}") is not None for i in range(n))

        now = CountingNow(h.now + 9.9)
        h.svc.tick(now)
        assert leaving() == n and len(typing.keys_of("alice")) == n
        h.svc.tick(h.now + 10.0)
        assert typing.keys_of("alice") == [] and leaving() == n
        h.svc.tick(h.now + 59.9)
        assert leaving() == n
        h.svc.tick(h.now + 60.0)
        assert leaving() == 0
        return now.compared

    few, many = await compared(1), await compared(2000)
    assert few == many <= 4, (few, many)


async def test_indicators_that_lapse_in_one_tick_stop_in_the_order_they_began() -> None:
    """Pairs that lapse in the same tick stop in the order they became active (a refresh
    keeps its place), not by deadline."""
    h = Harness(typing_lapse=10.0)
    a = await h.connect("alice")
    c = await h.connect("carol")
    b = await h.connect("bob")
    await h.send(a, {"type": "typing", "recipientId": "bob", "state": "start"})
    h.now += 1.0
    await h.send(c, {"type": "typing", "recipientId": "bob", "state": "start"})
    h.now += 1.0
    await h.send(a, {"type": "typing", "recipientId": "bob", "state": "start"})  # lapses last
    h.frames(b)
    await h.advance(20.0)
    assert [(f["userId"], f["state"]) for f in h.frames(b)] == [
        ("alice", "stop"),
        ("carol", "stop"),
    ]


async def test_typing_is_rate_limited_per_user() -> None:
    h = Harness(typing_rate_limit=2.0)
    a = await h.connect("alice")
    b = await h.connect("bob")
    for _ in range(6):
        await h.send(a, {"type": "typing", "recipientId": "bob", "state": "start"})
    assert len(h.frames(b)) == 2
    assert h.frames(a) == []


async def test_group_typing_and_non_member_typing() -> None:
    h = Harness()
    a = await h.connect("alice")
    b = await h.connect("bob")
    c = await h.connect("carol")
    await h.send(a, {"type": "group_create", "groupId": "g", "members": ["bob"]})
    h.frames(a), h.frames(b)
    await h.send(b, {"type": "typing", "groupId": "g", "state": "start"})
    assert h.frames(a) == [{"type": "typing", "userId": "bob", "state": "start", "groupId": "g"}]
    assert h.frames(b) == []
    await h.send(c, {"type": "typing", "groupId": "g", "state": "start"})
    assert h.frames(c)[0]["code"] == "forbidden"
    assert h.frames(a) == []


# --- conversations and history --------------------------------------------------------------------


async def test_conversations_list_with_unread_and_watermarks() -> None:
    h = Harness()
    a = await h.connect("alice")
    b = await h.connect("bob")
    await h.send(a, msg("m1", "bob"), msg("m2", "bob"), msg("m3", "bob"))
    await h.send(a, {"type": "group_create", "groupId": "g", "name": "Runners", "members": ["bob"]})
    await h.send(b, {"type": "receipt", "peerId": "alice", "seq": 1, "status": "read"})
    h.frames(b)
    await h.send(b, {"type": "conversations", "ref": "c1"})
    (answer,) = h.frames(b)
    assert answer["type"] == "conversations" and answer["ref"] == "c1"
    by_key = {i.get("peerId") or i.get("groupId"): i for i in answer["items"]}
    alice = by_key["alice"]
    assert (alice["unread"], alice["lastSeq"], alice["readSeq"]) == (2, 3, 1)
    assert alice["lastMessage"]["id"] == "m3" and alice["updatedAt"].endswith("Z")
    group = by_key["g"]
    assert (group["name"], group["lastMessage"], group["unread"]) == ("Runners", None, 0)


async def test_history_paging_before_after_and_has_more() -> None:
    h = Harness()
    a = await h.connect("alice")
    await h.send(a, *(msg(f"m{i}", "bob", f"t{i}") for i in range(1, 8)))
    h.frames(a)
    await h.send(a, {"type": "history", "peerId": "bob", "limit": 3, "ref": "h1"})
    page = h.frames(a)[0]
    assert (page["ref"], page["peerId"], page["hasMore"]) == ("h1", "bob", True)
    assert [m["seq"] for m in page["messages"]] == [5, 6, 7]
    await h.send(a, {"type": "history", "peerId": "bob", "before": 5, "limit": 3})
    page = h.frames(a)[0]
    assert ([m["seq"] for m in page["messages"]], page["hasMore"]) == ([2, 3, 4], True)
    await h.send(a, {"type": "history", "peerId": "bob", "before": 2, "limit": 3})
    page = h.frames(a)[0]
    assert ([m["seq"] for m in page["messages"]], page["hasMore"]) == ([1], False)
    await h.send(a, {"type": "history", "peerId": "bob", "after": 5})
    page = h.frames(a)[0]
    assert ([m["seq"] for m in page["messages"]], page["hasMore"]) == ([6, 7], False)
    await h.send(a, {"type": "history", "peerId": "bob", "after": 0, "limit": 2})
    page = h.frames(a)[0]
    assert ([m["text"] for m in page["messages"]], page["hasMore"]) == (["t1", "t2"], True)
    await h.send(a, {"type": "history", "peerId": "bob"})
    assert len(h.frames(a)[0]["messages"]) == 7  # default limit 50


async def test_history_of_a_group_is_for_members_only() -> None:
    h = Harness()
    a = await h.connect("alice")
    c = await h.connect("carol")
    await h.send(a, {"type": "group_create", "groupId": "g", "members": ["bob"]})
    await h.send(a, {"type": "message", "id": "g1", "groupId": "g", "text": "secret"})
    h.frames(a)
    await h.send(c, {"type": "history", "groupId": "g"}, {"type": "history", "groupId": "nope"})
    forbidden, missing = h.frames(c)
    assert (forbidden["code"], missing["code"]) == ("forbidden", "not_found")
    await h.send(a, {"type": "history", "groupId": "g"})
    page = h.frames(a)[0]
    assert page["groupId"] == "g" and [m["text"] for m in page["messages"]] == ["secret"]


# --- groups ---------------------------------------------------------------------------------------


async def test_group_lifecycle_and_permissions() -> None:
    h = Harness()
    a = await h.connect("alice")
    b = await h.connect("bob")
    c = await h.connect("carol")
    d = await h.connect("dave")
    await h.send(a, {"type": "group_create", "groupId": "g1", "name": "Runners",
                     "members": ["bob", "carol"], "ref": "r1"})  # fmt: skip
    (created,) = h.frames(a)
    assert created == {
        "type": "group", "groupId": "g1", "name": "Runners", "members": ["alice", "bob", "carol"],
        "createdBy": "alice", "event": "create", "ref": "r1",
    }  # fmt: skip
    for conn in (b, c):
        (g,) = h.frames(conn)
        assert g["members"] == ["alice", "bob", "carol"] and "ref" not in g
    assert h.frames(d) == []
    # a member sends: every member's devices get it, the sender gets sent
    await h.send(b, {"type": "message", "id": "x1", "groupId": "g1", "text": "run?"})
    (sent,) = h.frames(b)
    assert (sent["status"], sent["groupId"], sent["seq"]) == ("sent", "g1", 1)
    for conn in (a, c):
        (m,) = h.frames(conn)
        assert (m["groupId"], m["senderId"], m["text"]) == ("g1", "bob", "run?")
    # a non-member cannot send, add or leave; an unknown group is not_found
    await h.send(d, {"type": "message", "id": "x2", "groupId": "g1", "text": "hi"})
    assert (h.frames(d)[0]["status"],) == ("failed",)
    await h.send(d, {"type": "group_add", "groupId": "g1", "userIds": ["dave"]})
    assert h.frames(d)[0]["code"] == "forbidden"
    await h.send(d, {"type": "message", "id": "x3", "groupId": "nope", "text": "hi"})
    assert h.frames(d)[0]["reason"] == "not_found"
    await h.send(d, {"type": "group_leave", "groupId": "nope"})
    assert h.frames(d)[0]["code"] == "not_found"
    # any member may add
    await h.send(c, {"type": "group_add", "groupId": "g1", "userIds": ["dave"], "ref": "add"})
    assert h.frames(c)[0]["ref"] == "add"
    for conn in (a, b, d):
        assert h.frames(conn)[0]["members"] == ["alice", "bob", "carol", "dave"]
    # only the creator removes others
    await h.send(b, {"type": "group_remove", "groupId": "g1", "userIds": ["carol"]})
    assert h.frames(b)[0]["code"] == "forbidden"
    await h.send(a, {"type": "group_remove", "groupId": "g1", "userIds": ["carol"]})
    assert h.frames(a)[0]["members"] == ["alice", "bob", "dave"]
    (told,) = h.frames(c)  # the removed member learns it
    assert (told["event"], told["members"]) == ("remove", ["alice", "bob", "dave"])
    h.frames(b), h.frames(d)
    await h.send(a, {"type": "message", "id": "x4", "groupId": "g1", "text": "bye carol"})
    assert [r["status"] for r in h.frames(a)] == ["sent"]
    assert h.frames(c) == []
    assert [m["id"] for m in h.frames(d)] == ["x4"]
    # leaving
    await h.send(d, {"type": "group_leave", "groupId": "g1"})
    left = h.frames(d)[0]
    assert (left["event"], left["members"]) == ("leave", ["alice", "bob"])
    assert h.frames(a)[0]["members"] == ["alice", "bob"]


async def test_group_create_limits_and_conflicts() -> None:
    h = Harness(max_group_members=3)
    a = await h.connect("alice")
    await h.send(a, {"type": "group_create", "groupId": "g", "members": ["b", "c", "d"]})
    (err,) = h.frames(a)
    assert (err["code"], err["field"]) == ("invalid", "members")  # 4 with the creator
    await h.send(a, {"type": "group_create", "groupId": "g", "members": ["b", "c"]})
    assert h.frames(a)[0]["type"] == "group"
    await h.send(a, {"type": "group_create", "groupId": "g", "members": []})
    (err,) = h.frames(a)
    assert (err["code"], err["field"]) == ("invalid", "groupId")
    await h.send(a, {"type": "group_add", "groupId": "g", "userIds": ["x"]})
    assert h.frames(a)[0]["field"] == "userIds"


# --- flow control ---------------------------------------------------------------------------------


async def test_slow_consumer_is_closed_1013_and_others_keep_working() -> None:
    h = Harness()
    a = await h.connect("alice")
    slow = h.open(max_frames=3)
    await h.send(slow, {"type": "auth", "userId": "bob"})
    fine = await h.connect("bob", deviceId="fine", acks=True)
    await h.send(a, *(msg(f"m{i}", "bob") for i in range(5)))
    assert slow.closed is not None and slow.closed[0] == 1013
    assert [m["seq"] for m in of_type(h.frames(fine), "message")] == [1, 2, 3, 4, 5]
    assert [r["status"] for r in h.frames(a)] == ["sent"] * 5
    h.close(slow, 1013)
    back = await h.connect("bob")
    # nothing reached bob (the other device has not acknowledged): it all comes again
    assert [m["seq"] for m in back.backlog] == [1, 2, 3, 4, 5]  # type: ignore[attr-defined]


async def test_typing_to_a_full_outbox_is_dropped_not_closed() -> None:
    h = Harness()
    a = await h.connect("alice")
    b = h.open(max_frames=4)
    await h.send(b, {"type": "auth", "userId": "bob"})
    await h.send(a, msg("m1", "bob"), msg("m2", "bob"))  # 3 of 4 frames queued for bob
    await h.send(a, {"type": "typing", "recipientId": "bob", "state": "start"})
    assert b.closed is None
    frames = h.frames(b)
    assert [f["type"] for f in frames] == ["auth_ok", "message", "message"]  # typing dropped


# --- in-process publish ---------------------------------------------------------------------------


async def test_publish_goes_through_validation_store_and_delivery() -> None:
    h = Harness(max_text_chars=10)
    b1 = await h.connect("bob", deviceId="1")
    b2 = await h.connect("bob", deviceId="2")
    stored = await h.svc.publish(sender_id="system", recipient_id="bob", text="welcome",
                                 message_id="w1", sender_name="Relay")  # fmt: skip
    assert (stored.seq, stored.id, stored.sender_name) == (1, "w1", "Relay")
    for conn in (b1, b2):
        (m,) = of_type(h.frames(conn), "message")
        assert (m["id"], m["senderId"], m["text"]) == ("w1", "system", "welcome")
    again = await h.svc.publish(sender_id="system", recipient_id="bob", text="welcome",
                                message_id="w1")  # fmt: skip
    assert again.seq == 1 and h.frames(b1) == []
    with pytest.raises(MessageRefused) as info:
        await h.svc.publish(sender_id="system", recipient_id="bob", text="x" * 11)
    assert info.value.code == "too_long"
    with pytest.raises(FrameError):
        await h.svc.publish(sender_id="system", recipient_id="bob", group_id="g", text="x")
    with pytest.raises(MessageRefused) as info:
        await h.svc.publish(sender_id="system", group_id="nope", text="x")
    assert info.value.code == "not_found"


# --- ordering under concurrent appends ------------------------------------------------------------


class GatedStore(MemoryStore):
    """The first append_many waits for a gate while a later one completes."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()
        self.calls = 0

    async def append_many(self, messages: Sequence[NewMessage]) -> list[Appended]:
        self.calls += 1
        result = await super().append_many(messages)  # seq assigned in call order
        if self.calls == 1:
            await self.gate.wait()
        return result


class LateAcceptingStore(MemoryStore):
    """The first append_many is accepted only after a later one (as a store whose caller must
    first wait for a slot may do): the first caller gets the higher seq."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()
        self.calls = 0

    async def append_many(self, messages: Sequence[NewMessage]) -> list[Appended]:
        self.calls += 1
        if self.calls == 1:
            await self.gate.wait()
        return await super().append_many(messages)


async def three_users(svc: MessagingService) -> dict[str, FakeConn]:
    conns = {}
    for user in ("alice", "carol", "bob"):
        conn = FakeConn()
        svc.on_open(conn)
        await svc.on_messages(conn, [orjson.dumps({"type": "auth", "userId": user})])
        conn.outbox.take()
        conns[user] = conn
    return conns


async def test_deliveries_keep_seq_order_when_the_store_accepts_out_of_call_order() -> None:
    store = LateAcceptingStore()
    svc = MessagingService(RelayConfig(db_path=None), store)
    conns = await three_users(svc)
    watch = FakeConn()  # bob's second device sees both messages of the conversation
    svc.on_open(watch)
    await svc.on_messages(watch, [orjson.dumps({"type": "auth", "userId": "bob"})])
    watch.outbox.take()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(svc.on_messages, conns["alice"], [orjson.dumps(msg("first", "bob"))])
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(svc.on_messages, conns["bob"], [orjson.dumps(msg("second", "alice"))])
        await trio.testing.wait_all_tasks_blocked()
        # "second" is stored as seq 1 and its sender has its receipt; nothing can precede seq 1,
        # so it is delivered at once, while "first" (seq 2) is still on its way
        (receipt,) = decode_server_frames(conns["bob"].outbox.take())
        assert (receipt["id"], receipt["seq"]) == ("second", 1)
        seen = [(m["id"], m["seq"]) for m in decode_server_frames(watch.outbox.take())]
        assert seen == [("second", 1)]
        store.gate.set()
    seen += [(m["id"], m["seq"]) for m in decode_server_frames(watch.outbox.take())]
    assert seen == [("second", 1), ("first", 2)]


async def test_deliveries_leave_in_seq_order_when_appends_return_out_of_order() -> None:
    store = GatedStore()
    svc = MessagingService(RelayConfig(db_path=None), store)
    conns = await three_users(svc)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(svc.on_messages, conns["alice"], [orjson.dumps(msg("a1", "bob"))])
        await trio.testing.wait_all_tasks_blocked()
        await svc.on_messages(conns["alice"], [orjson.dumps(msg("a2", "bob"))])
        assert decode_server_frames(conns["bob"].outbox.take()) == []  # a1 not yet released
        store.gate.set()
    got = decode_server_frames(conns["bob"].outbox.take())
    assert [m["seq"] for m in got] == [1, 2]


import trio.testing  # noqa: E402  (used above; kept next to its only user)


class SlowWritesStore(MemoryStore):
    """mark_delivered_many and set_last_seen wait for a gate (a durable store mid-commit)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()

    async def mark_delivered_many(self, marks: Sequence[tuple[str, str, str, int]]) -> Any:
        await self.gate.wait()
        return await super().mark_delivered_many(marks)

    async def set_last_seen(self, user_id: str, timestamp: str) -> None:
        await self.gate.wait()
        await super().set_last_seen(user_id, timestamp)


async def test_what_was_flushed_is_not_sent_again_while_its_marks_are_being_written() -> None:
    h = Harness(presence_grace=0.0)
    h.store = SlowWritesStore()  # type: ignore[assignment]
    h.svc = MessagingService(h.config, h.store, clock=lambda: h.now, wall=lambda: h.wall)
    a = await h.connect("alice")
    b = await h.connect("bob")  # the anonymous device
    await h.send(a, msg("m1", "bob"))
    assert [m["id"] for m in of_type(h.frames(b), "message")] == ["m1"]  # flushed
    h.close(b)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.svc.maintain)  # writing bob's mark and lastSeen: not done yet
        await trio.testing.wait_all_tasks_blocked()
        await h.send(a, {"type": "presence", "userIds": ["bob"]})
        (answer,) = of_type(h.frames(a), "presence")
        assert answer["users"][0]["lastSeen"] is not None  # known before it is written
        again = await h.connect("bob")
        assert again.backlog == []  # type: ignore[attr-defined]
        h.store.gate.set()
    assert (await watermarks_of(h.store, _conv("alice", "bob"), "bob")).delivered_seq == 1


async def _flushed_to_many(h: Harness, pairs: int) -> list[FakeConn]:
    """`pairs` senders who each wrote one message to their own reader in a group of the two
    (`g{i}`), which was flushed: a delivery mark per reader waits for maintain() (a 1:1's
    sender is told at the flush). Returns the senders."""
    senders = [await h.connect(f"s{i}") for i in range(pairs)]
    readers = [await h.connect(f"r{i}") for i in range(pairs)]
    for i, sender in enumerate(senders):
        await _pair_group(h, sender, readers[i], f"g{i}", f"r{i}")
        await h.send(sender, msg(f"m{i}", groupId=f"g{i}"))
        h.frames(sender)
    for reader in readers:
        assert len(of_type(h.frames(reader), "message")) == 1  # flushed
    return senders


async def _pair_group(h: Harness, sender: FakeConn, reader: FakeConn, group: str, to: str) -> None:
    await h.send(sender, {"type": "group_create", "groupId": group, "members": [to]})
    assert of_type(h.frames(sender), "group") and of_type(h.frames(reader), "group")


class Pauses:
    """A maintain() pause that counts its calls and, at call `hang_at`, never returns."""

    def __init__(self, hang_at: int | None = None) -> None:
        self.count = 0
        self.hang_at = hang_at

    async def __call__(self) -> None:
        self.count += 1
        if self.count == self.hang_at:
            await trio.sleep_forever()


def _delivered_ids(sender: FakeConn, h: Harness) -> list[str]:
    return [r["id"] for r in of_type(h.frames(sender), "receipt") if r["status"] == "delivered"]


async def test_maintain_pauses_between_slices_and_still_writes_every_mark(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("relay.core.service.MAINTAIN_SLICE", 0.0)  # a pause before every entry
    h = Harness()
    senders = await _flushed_to_many(h, 5)
    pause = Pauses()
    await h.svc.maintain(pause)
    assert pause.count >= 5
    assert [_delivered_ids(s, h) for s in senders] == [[f"m{i}"] for i in range(5)]


async def test_a_flush_during_maintain_is_marked_by_the_next_call() -> None:
    # one pass per call: marks that arrive while it runs (here: in its pause) wait, so a busy
    # relay's maintain() ends, and each call batches a tick's worth of flushes
    h = Harness()
    late = await h.connect("late")
    reader = await h.connect("late-reader")
    [early] = await _flushed_to_many(h, 1)
    await _pair_group(h, late, reader, "lg", "late-reader")

    async def pause() -> None:
        await h.send(late, msg("l1", groupId="lg"))
        h.frames(reader)  # flushed while maintain() runs

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("relay.core.service.MAINTAIN_SLICE", 0.0)
        await h.svc.maintain(pause)
    assert _delivered_ids(early, h) == ["m0"]
    assert _delivered_ids(late, h) == []  # not yet
    await h.svc.maintain()
    assert _delivered_ids(late, h) == ["l1"]


async def test_marks_not_written_when_maintain_is_cancelled_are_written_by_the_next_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("relay.core.service.MAINTAIN_SLICE", 0.0)
    monkeypatch.setattr("relay.core.receipts.MARKS_PER_INLINE_WRITE", 2)
    h = Harness()
    senders = await _flushed_to_many(h, 4)
    # the 4th pause comes before the second write (the first one's two receipts went out);
    # cancelled there, as when the server shuts down
    with trio.move_on_after(0.05):
        await h.svc.maintain(Pauses(hang_at=4))
    assert [len(_delivered_ids(s, h)) for s in senders] == [1, 1, 0, 0]
    marks = [await watermarks_of(h.store, group_conversation(f"g{i}"), f"r{i}") for i in range(4)]
    assert [m.delivered_seq for m in marks] == [1, 1, 0, 0]
    await h.svc.maintain()
    assert [len(_delivered_ids(s, h)) for s in senders] == [0, 0, 1, 1]


async def test_a_ticks_marks_are_one_store_write_and_one_read() -> None:
    # a store round trip per mark would let delivered receipts fall behind a busy relay
    # (each write waits for the durable store's next commit)
    calls: list[tuple[str, int]] = []

    class Recording(CountingStore):
        async def mark_delivered_many(self, marks: Sequence[Any]) -> Any:
            calls.append(("write", len(marks)))
            return await super().mark_delivered_many(marks)

        async def latest_by_sender_many(self, queries: Sequence[Any]) -> Any:
            calls.append(("read", len(queries)))
            return await super().latest_by_sender_many(queries)

    h = Harness()
    h.store = Recording()
    h.svc = MessagingService(h.config, h.store, clock=lambda: h.now, wall=lambda: h.wall)
    senders = await _flushed_to_many(h, 5)
    calls.clear()
    await h.svc.maintain()
    assert calls == [("write", 5), ("read", 5)]
    assert [_delivered_ids(s, h) for s in senders] == [[f"m{i}"] for i in range(5)]


class _RecordingStore(CountingStore):
    """Records the sizes of the marks' store writes and reads."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int]] = []

    async def mark_delivered_many(self, marks: Sequence[Any]) -> Any:
        self.calls.append(("write", len(marks)))
        return await super().mark_delivered_many(marks)

    async def latest_by_sender_many(self, queries: Sequence[Any]) -> Any:
        self.calls.append(("read", len(queries)))
        return await super().latest_by_sender_many(queries)


class _WaitingStore(_RecordingStore):
    """The same store, as the core sees a durable one: no append_now (InlineAppend)."""

    append_now = None  # type: ignore[assignment]

    async def append_many(self, messages: Sequence[NewMessage]) -> list[Appended]:
        return MemoryStore.append_now(self, messages)


@pytest.mark.parametrize(
    ("store", "writes"),
    [(_RecordingStore, [32, 32, 6]), (_WaitingStore, [70])],
    ids=["inline", "waiting"],
)
async def test_a_store_that_never_waits_gets_the_marks_a_slice_at_a_time(
    store: type[_RecordingStore], writes: list[int]
) -> None:
    # An in-memory store's write of a chunk runs in one go: 256 marks held the event loop
    # 1.5 ms, and every message arriving meanwhile waited. A durable store's write waits (the
    # loop runs meanwhile), and fewer, larger writes keep up with more marks.
    h = Harness()
    h.store = store()
    h.svc = MessagingService(h.config, h.store, clock=lambda: h.now, wall=lambda: h.wall)
    senders = await _flushed_to_many(h, 70)
    h.store.calls.clear()
    await h.svc.maintain()
    assert [n for kind, n in h.store.calls if kind == "write"] == writes
    assert [n for kind, n in h.store.calls if kind == "read"] == writes
    assert [_delivered_ids(s, h) for s in senders] == [[f"m{i}"] for i in range(70)]


async def test_a_connection_whose_frames_wait_in_the_shells_line_is_not_closed_for_auth() -> None:
    # In a reconnect storm the shell holds sign-ins' frames in its line for joining work;
    # auth_timeout is the client's time to send `auth`, not the relay's time to get to it.
    h = Harness(auth_timeout=10.0)
    waiting, silent = h.open(), h.open()
    waiting.input_queued = True
    h.svc.tick(h.now + 30.0)
    assert waiting.closed is None
    assert silent.closed == (1008, "authentication timeout")
    # its turn came: the frames it held were not `auth`, so the deadline, long past, applies
    waiting.input_queued = False
    h.svc.tick(h.now + 30.25)
    assert waiting.closed == (1008, "authentication timeout")


async def test_a_queued_auth_frame_signs_in_once_its_turn_comes() -> None:
    h = Harness(auth_timeout=10.0)
    conn = h.open()
    conn.input_queued = True
    h.svc.tick(h.now + 30.0)
    conn.input_queued = False
    await h.send(conn, {"type": "auth", "userId": "late"})
    assert h.frames(conn)[0]["type"] == "auth_ok"
    h.svc.tick(h.now + 30.25)
    assert conn.closed is None


async def test_a_direct_messages_sender_is_told_once_at_the_first_devices_flush() -> None:
    h = Harness()
    a = await h.connect("alice")
    phone = await h.connect("bob", deviceId="phone")
    tablet = await h.connect("bob", deviceId="tablet")
    await h.send(a, msg("m1", "bob"))
    assert [r["status"] for r in h.frames(a)] == ["sent"]
    assert h.frames(a) == []  # nothing flushed to bob yet: nothing to tell
    h.frames(phone, flush=False)
    assert h.frames(a) == []  # queued to the phone but not written: not delivered
    h.svc.on_flushed(phone)
    (told,) = h.frames(a)
    assert (told["status"], told["id"], told["seq"]) == ("delivered", "m1", 1)
    assert (told["userId"], told["peerId"]) == ("bob", "bob")
    h.frames(tablet)  # bob's second device: alice knows already
    await h.settle()  # the marks are stored; the receipts they cause were told
    assert h.frames(a) == []
    marks = await watermarks_of(h.store, _conv("alice", "bob"), "bob")
    assert marks.delivered_seq == 1


async def test_a_device_with_acks_tells_the_sender_by_its_receipt_not_at_the_flush() -> None:
    h = Harness()
    a = await h.connect("alice")
    b = await h.connect("bob", acks=True)
    await h.send(a, msg("m1", "bob"))
    h.frames(a), h.frames(b)
    await h.settle()
    assert h.frames(a) == []
    await h.send(b, {"type": "receipt", "peerId": "alice", "seq": 1, "status": "delivered"})
    (told,) = h.frames(a)
    assert (told["status"], told["id"], told["seq"]) == ("delivered", "m1", 1)


async def test_a_busy_direct_conversation_is_told_at_the_flush_once_a_tick() -> None:
    h = Harness()
    a = await h.connect("alice")
    b = await h.connect("bob")

    async def exchange(ident: str) -> list[tuple[str, str]]:
        await h.send(a, msg(ident, "bob"))
        h.frames(b)
        return [(r["status"], r["id"]) for r in h.frames(a)]

    assert await exchange("m1") == [("sent", "m1"), ("delivered", "m1")]
    # within the same tick: the rest of the conversation's receipts come with the tick
    assert await exchange("m2") == [("sent", "m2")]
    assert await exchange("m3") == [("sent", "m3")]
    await h.settle()
    (told,) = h.frames(a)
    assert (told["status"], told["id"], told["seq"]) == ("delivered", "m3", 3)
    assert await exchange("m4") == [("sent", "m4"), ("delivered", "m4")]
    await h.settle()
    assert h.frames(a) == []


async def test_what_the_flush_told_is_remembered_for_a_bounded_number_of_conversations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("relay.core.marks.TOLD_MAX", 2)
    h = Harness()
    b = await h.connect("bob")
    senders = [await h.connect(user) for user in ("alice", "carol", "dave")]
    for i, sender in enumerate(senders):
        await h.send(sender, msg(f"m{i}", "bob"))
        h.frames(b)
        assert [r["status"] for r in h.frames(sender)] == ["sent", "delivered"]
        assert len(h.svc._marks._told) <= 2  # the bound is the point
    await h.settle()
    # what the bound forgot may be told again, the same receipt: its status only moves forward
    for i, sender in enumerate(senders):
        again = [(r["status"], r["id"], r["seq"]) for r in h.frames(sender)]
        assert again in ([], [("delivered", f"m{i}", 1)])
