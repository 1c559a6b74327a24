"""Hostile client input through the real MessagingService (FakeConn over a real Outbox, the
real MemoryStore and SqliteStore): whatever a client sends, before or after `auth`, it gets a
clear error, a `failed` receipt or what it asked for; never `internal`, never a closed
connection it did not cause, never a traceback in the log; and nothing is stored that an answer
could not carry back (`conversations` and `history` keep working for everyone).

Time is the service's injected clock (group changes are rate-limited by it).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import FakeConn, decode_server_frames

from relay.config import RelayConfig
from relay.core import MessagingService
from relay.errors import FrameError
from relay.protocol import (
    FRAME_DEPTH_MAX,
    META_DEPTH_MAX,
    SEQ_MAX,
    Limits,
    MessageFrame,
    MessageRefused,
    parse_client_frame,
)
from relay.store.base import InlineAppend, Store
from relay.store.memory import MemoryStore
from relay.store.sqlite import SqliteStore

STORES = ("memory", "sqlite")


class Raw:
    """JSON text written as it is into a payload: what no encoder writes (deep nesting, NaN,
    lone surrogate escapes, bytes that are not UTF-8)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Raw({self.data[:60]!r}{'...' if len(self.data) > 60 else ''})"


def to_json(value: Any, ascii_only: bool) -> bytes:
    if isinstance(value, Raw):
        return value.data
    if isinstance(value, dict):
        items = (to_json(k, ascii_only) + b":" + to_json(v, ascii_only) for k, v in value.items())
        return b"{" + b",".join(items) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(to_json(v, ascii_only) for v in value) + b"]"
    # the stdlib writes any int, and lone surrogates as escapes (ascii) or as raw bytes
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def nested_object(depth: int) -> bytes:
    return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)


def frame_bytes(kind: str, fields: dict[str, Any], ascii_only: bool = True) -> bytes:
    return to_json({"type": kind, **fields}, ascii_only)


class Relayed:
    """A MessagingService over `store` with its clocks in the test's hands, and what it sent."""

    def __init__(self, store: Store, **config: Any) -> None:
        self.now = 1000.0
        self.config = RelayConfig(db_path=None, **config)
        self.svc = MessagingService(
            self.config, store, clock=lambda: self.now, wall=lambda: 1_770_000_000.0 + self.now
        )
        self.seen: dict[int, list[dict[str, Any]]] = {}
        self.inline = isinstance(store, InlineAppend)

    def open(self) -> FakeConn:
        conn = FakeConn(self.config.outbox_max_bytes, self.config.outbox_max_frames)
        self.svc.on_open(conn)
        self.seen[conn.id] = []
        return conn

    async def send(self, conn: FakeConn, *payloads: bytes | dict[str, Any]) -> list[dict[str, Any]]:
        """What the shell does with one read: the inline entry first (an active session's
        leading messages), the rest awaited; returns what `conn` got. The inline entry only
        with a store that appends inline: SQLite's queued appends answer from its writer
        thread, at a time the test does not control (the awaited entry parses alike)."""
        raw = [p if isinstance(p, bytes) else orjson.dumps(p) for p in payloads]
        taken = self.svc.on_messages_nowait(conn, raw) if self.inline else 0
        if taken < len(raw):
            await self.svc.on_messages(conn, raw[taken:])
        return self.take(conn)

    def take(self, conn: FakeConn) -> list[dict[str, Any]]:
        got = decode_server_frames(conn.outbox.take())
        self.svc.on_flushed(conn)
        self.seen[conn.id] += got
        return got

    async def connect(self, user: str) -> FakeConn:
        conn = self.open()
        got = await self.send(conn, {"type": "auth", "userId": user})
        assert got[0]["type"] == "auth_ok", got
        return conn

    async def answers(self, conn: FakeConn, frame: dict[str, Any]) -> dict[str, Any]:
        """The answer to `frame` (its `ref`), after the store has settled."""
        ref = f"q{len(self.seen[conn.id])}"
        await self.send(conn, {**frame, "ref": ref})
        await self.settle()
        got = [f for f in self.seen[conn.id] if f.get("ref") == ref]
        assert len(got) == 1, (frame, got)
        return got[0]

    async def settle(self) -> None:
        """What the shell's tick does: expiries, then the store work the frames queued."""
        self.svc.tick(self.now)
        await self.svc.maintain()

    async def everything_reads_back(self, *conns: FakeConn) -> None:
        """Each user's conversations, and the history of each of them, are answered."""
        for conn in conns:
            listed = await self.answers(conn, {"type": "conversations"})
            assert listed["type"] == "conversations", listed
            for item in listed["items"]:
                key = "groupId" if "groupId" in item else "peerId"
                page = await self.answers(conn, {"type": "history", key: item[key]})
                assert page["type"] in ("history", "error"), page
                assert page.get("code") != "internal", page

    def assert_no_failure(self, *conns: FakeConn) -> None:
        for conn in conns:
            self.take(conn)
            for frame in self.seen[conn.id]:
                assert frame.get("code") != "internal", frame
                assert frame.get("reason") != "internal", frame
            assert conn.closed is None or conn.closed[0] != 1011, conn.closed


@asynccontextmanager
async def relayed(kind: str, **config: Any) -> AsyncIterator[Relayed]:
    folder = tempfile.mkdtemp(prefix="relay-hostile-")
    try:
        store: Store = MemoryStore() if kind == "memory" else SqliteStore(Path(folder) / "r.db")
        relay = Relayed(store, **config)
        await relay.svc.start()
        try:
            yield relay
        finally:
            await relay.svc.aclose()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def no_errors_logged(records: list[logging.LogRecord]) -> None:
    bad = [r for r in records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [(r.levelname, r.getMessage(), r.exc_text) for r in bad]


# --- the poison message and the integers past 64 bits, one by one ----------------------------------


def meta_message(ident: str, depth: int) -> bytes:
    return b'{"type":"message","id":"%s","recipientId":"bob","text":"hi","meta":%s}' % (
        ident.encode(),
        nested_object(depth),
    )


@pytest.mark.parametrize("kind", STORES)
@pytest.mark.parametrize("depth", [META_DEPTH_MAX + 1, 200, 251, 254])
async def test_a_meta_too_deep_to_answer_with_is_refused_and_nothing_breaks(
    kind: str, depth: int, caplog: pytest.LogCaptureFixture
) -> None:
    async with relayed(kind) as relay:
        alice, bob = await relay.connect("alice"), await relay.connect("bob")
        # the deepest meta allowed is stored, delivered and paged like any other
        await relay.send(alice, meta_message("ok", META_DEPTH_MAX))
        got = await relay.send(alice, meta_message("deep", depth))
        await relay.settle()
        if depth + 1 > FRAME_DEPTH_MAX:
            assert [(f["type"], f["code"]) for f in got] == [("error", "bad_json")]
        else:
            (failed,) = got
            assert (failed["status"], failed["reason"], failed["field"], failed["id"]) == (
                "failed",
                "invalid",
                "meta",
                "deep",
            )
        delivered = [f for f in relay.take(bob) if f["type"] == "message"]
        assert [m["id"] for m in delivered] == ["ok"]
        page = await relay.answers(alice, {"type": "history", "peerId": "bob"})
        assert [m["id"] for m in page["messages"]] == ["ok"]
        await relay.everything_reads_back(alice, bob)
        relay.assert_no_failure(alice, bob)
    no_errors_logged(caplog.records)


@pytest.mark.parametrize("depth", [255, 300, 1023, 1100])
async def test_json_too_deep_before_auth_is_bad_json_and_the_connection_stays(
    depth: int, caplog: pytest.LogCaptureFixture
) -> None:
    async with relayed("memory") as relay:
        conn = relay.open()
        got = await relay.send(conn, meta_message("m1", depth))
        assert [(f["type"], f["code"]) for f in got] == [("error", "bad_json")]
        assert conn.closed is None
        got = await relay.send(conn, {"type": "auth", "userId": "alice"})
        assert got[0]["type"] == "auth_ok"
        got = await relay.send(conn, meta_message("m2", depth))
        assert [(f["type"], f["code"]) for f in got] == [("error", "bad_json")]
        relay.assert_no_failure(conn)
    no_errors_logged(caplog.records)


@pytest.mark.parametrize("kind", STORES)
@pytest.mark.parametrize(
    "frame",
    [
        {"type": "history", "peerId": "bob", "before": 2**63},
        {"type": "history", "peerId": "bob", "after": 2**63},
        {"type": "history", "peerId": "bob", "before": 2**64 - 1},
        {"type": "receipt", "peerId": "bob", "seq": 2**63, "status": "read"},
        {"type": "receipt", "peerId": "bob", "seq": 2**64 - 1, "status": "delivered"},
        {"type": "conversations", "limit": 2**63},
    ],
)
async def test_integers_past_what_a_store_holds_are_invalid(
    kind: str, frame: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    async with relayed(kind) as relay:
        alice, bob = await relay.connect("alice"), await relay.connect("bob")
        await relay.send(alice, {"type": "message", "id": "m1", "recipientId": "bob", "text": "hi"})
        await relay.settle()
        answer = await relay.answers(alice, frame)
        assert (answer["type"], answer["code"], answer["field"]) == (
            "error",
            "invalid",
            next(k for k, v in frame.items() if isinstance(v, int)),
        )
        # the largest seq a store holds is read like any other
        for bound in ({"before": SEQ_MAX}, {"after": SEQ_MAX}):
            page = await relay.answers(alice, {"type": "history", "peerId": "bob", **bound})
            assert page["type"] == "history", page
        relay.assert_no_failure(alice, bob)
    no_errors_logged(caplog.records)


# --- group changes are rate-limited per user, by the service's clock --------------------------------


async def test_group_changes_are_rate_limited_per_user() -> None:
    async with relayed("memory", group_rate_limit=0.5, group_rate_burst=3) as relay:
        alice, bob = await relay.connect("alice"), await relay.connect("bob")

        async def create(conn: FakeConn, group: str) -> dict[str, Any]:
            return await relay.answers(
                conn, {"type": "group_create", "groupId": group, "members": ["bob"]}
            )

        assert [(await create(alice, f"g{i}"))["type"] for i in range(3)] == ["group"] * 3
        refused = await create(alice, "g3")
        assert (refused["type"], refused["code"]) == ("error", "rate_limited")
        assert "slow down" in refused["message"]
        # nothing was created: the id is still free for bob, whose budget is his own
        assert (await create(bob, "g3"))["type"] == "group"
        # adds and removes of others count too; leaving never does
        add = {"type": "group_add", "groupId": "g0", "userIds": ["carol"]}
        assert (await relay.answers(alice, add))["code"] == "rate_limited"
        assert (await relay.answers(bob, {"type": "group_leave", "groupId": "g1"}))["type"] == (
            "group"
        )
        remove_self = {"type": "group_remove", "groupId": "g2", "userIds": ["alice"]}
        assert (await relay.answers(alice, remove_self))["event"] == "leave"
        # one token back after 2 s at 0.5/s (times exact in binary: no rounding at the edge)
        relay.now += 1.5
        assert (await relay.answers(alice, add))["code"] == "rate_limited"
        relay.now += 0.5
        assert (await relay.answers(alice, add))["event"] == "add"
        remove = {"type": "group_remove", "groupId": "g0", "userIds": ["carol"]}
        assert (await relay.answers(alice, remove))["code"] == "rate_limited"
        relay.now += 2.0
        assert (await relay.answers(alice, remove))["event"] == "remove"
        # a full bucket carries nothing and is pruned by the tick
        relay.now += 10.0
        await relay.settle()
        assert len(relay.svc.ctx.group_limiter) == 0
        relay.assert_no_failure(alice, bob)


# --- hostile values in every field of every frame type ----------------------------------------------

#: a frame of each type that the relay accepts, the base the hostile values are put into
VALID: dict[str, dict[str, Any]] = {
    "auth": {"userId": "mallory"},
    "message": {"id": "m-1", "recipientId": "bob", "text": "hi"},
    "receipt": {"peerId": "bob", "seq": 1, "status": "read"},
    "status": {"status": "away"},
    "presence": {"userIds": ["bob"]},
    "typing": {"recipientId": "bob", "state": "start"},
    "conversations": {"limit": 5},
    "history": {"peerId": "bob", "limit": 5},
    "group_create": {"groupId": "g2", "name": "two", "members": ["bob"]},
    "group_add": {"groupId": "g", "userIds": ["carol"]},
    "group_remove": {"groupId": "g", "userIds": ["carol"]},
    "group_leave": {"groupId": "g2"},
    "ping": {},
}
#: the fields each type reads, and some it does not
FIELDS: dict[str, tuple[str, ...]] = {
    "auth": ("userId", "userName", "userAvatar", "token", "deviceId", "acks", "timestamp"),
    "message": (
        "id", "text", "recipientId", "groupId", "senderId", "senderName", "senderAvatar",
        "timestamp", "meta", "status",
    ),
    "receipt": ("peerId", "groupId", "seq", "status"),
    "status": ("status", "userId"),
    "presence": ("userIds",),
    "typing": ("recipientId", "groupId", "state"),
    "conversations": ("limit",),
    "history": ("peerId", "groupId", "before", "after", "limit"),
    "group_create": ("groupId", "name", "members"),
    "group_add": ("groupId", "userIds"),
    "group_remove": ("groupId", "userIds"),
    "group_leave": ("groupId",),
    "ping": (),
}  # fmt: skip
ANY_FIELDS = ("ref", "id", "extra")

deep = st.builds(
    lambda depth, brackets: Raw(b"[" * depth + b"]" * depth if brackets else nested_object(depth)),
    st.sampled_from([1, 2, 15, 16, 17, 31, 32, 33, 200, 251, 254, 255, 256, 1023, 1024, 1100]),
    st.booleans(),
)
huge_ints = (
    st.sampled_from([SEQ_MAX, 2**63, 2**64 - 1, 2**64, 10**30, -(2**63), -(2**63) - 1, 0, -1])
    | st.integers()
)
floats = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
    [Raw(b"NaN"), Raw(b"Infinity"), Raw(b"-Infinity"), Raw(b"1e400"), Raw(b"-0.0"), Raw(b"1.0")]
)
nan_like = st.sampled_from(["NaN", "nan", "Infinity", "-Infinity", "1e999", "-0", "0x10", "1_0"])
surrogates = st.sampled_from(
    [
        "\ud800",  # a lone surrogate: an escape when ascii, else raw bytes that are not UTF-8
        "a\udfffb",
        Raw(b'"\\ud800"'),
        Raw(b'"\\udc00\\ud800"'),
        Raw(b'"\xed\xa0\x80"'),
        Raw(b'"\xff\xfe"'),
    ]
)
giant = st.sampled_from([64, 65, 128, 129, 256, 257, 4096, 4097, 8192, 8193, 20000]).flatmap(
    lambda n: st.sampled_from(["x" * n, "é" * n, "😀" * n])
)
oddities = st.sampled_from(
    ["", " ", "\x00", "\u202e", "\ufeff", "e\u0301", "👍🏽", "\U0010ffff", "\u2028", "<script>"]
) | st.text(max_size=12)
wrong_types = st.sampled_from([None, True, False, [], {}, ["bob", 1], {"a": 1}, [["bob"]], 1.5])
hostile = st.one_of(
    deep, huge_ints, floats, nan_like, surrogates, giant, oddities, wrong_types
) | st.recursive(
    oddities | huge_ints | wrong_types,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)


@st.composite
def hostile_frames(draw: st.DrawFn) -> bytes:
    """A frame the relay accepts, with up to three of its fields replaced by hostile values
    or left out (and sometimes a field it does not read)."""
    kind = draw(st.sampled_from((*VALID, "message", "message")))  # messages are what is stored
    fields = dict(VALID[kind])
    if kind == "message":
        fields["id"] = draw(st.sampled_from(["m-1", "m-2", "m-3"]))
        if draw(st.booleans()):  # the value stored as it is, and sent back in every answer
            fields["meta"] = {"k": draw(hostile)} if draw(st.booleans()) else draw(deep)
    names = FIELDS[kind] + ANY_FIELDS
    for name in draw(st.lists(st.sampled_from(names), max_size=3, unique=True)):
        if draw(st.integers(0, 5)) == 0:
            fields.pop(name, None)
        else:
            fields[name] = draw(hostile)
    return frame_bytes(kind, fields, ascii_only=draw(st.booleans()))


async def hostile_session(kind: str, before_auth: list[bytes], after_auth: list[bytes]) -> None:
    async with relayed(kind) as relay:
        stranger = relay.open()
        alice, bob = await relay.connect("alice"), await relay.connect("bob")
        await relay.send(alice, {"type": "message", "id": "m0", "recipientId": "bob", "text": "hi"})
        await relay.send(alice, {"type": "group_create", "groupId": "g", "members": ["bob"]})
        for payload in before_auth:  # one read each: nothing is batched with what went wrong
            await relay.send(stranger, payload)
        for payload in after_auth:
            await relay.send(alice, payload)
        await relay.settle()
        await relay.everything_reads_back(alice, bob)
        relay.assert_no_failure(stranger, alice, bob)


HOSTILE_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.parametrize("kind", STORES)
@HOSTILE_SETTINGS
@given(
    before_auth=st.lists(hostile_frames(), max_size=3),
    after_auth=st.lists(hostile_frames(), min_size=1, max_size=5),
)
def test_hostile_values_in_any_frame_never_fail_the_relay(
    kind: str,
    before_auth: list[bytes],
    after_auth: list[bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        trio.run(hostile_session, kind, before_auth, after_auth)
    no_errors_logged(caplog.records)


def test_the_hostile_strategy_reaches_the_store_and_the_limits() -> None:
    """The strategy is not vacuous: its frames include messages the relay stores, and values
    each bound refuses."""
    seen: set[str] = set()

    # derandomized: the same examples every run, so the claim cannot flake as frame types are
    # added to the strategy and each one's share of the examples shrinks
    @settings(max_examples=2000, deadline=None, derandomize=True)
    @given(hostile_frames())
    def classify(payload: bytes) -> None:
        try:
            frame = parse_client_frame(payload, Limits())
        except MessageRefused as exc:
            seen.add(f"refused:{exc.field}")
        except FrameError as exc:
            seen.add(f"error:{exc.code}")
        else:
            seen.add("message" if isinstance(frame, MessageFrame) else "frame")

    classify()
    assert {"message", "frame", "refused:meta", "error:bad_json", "error:invalid"} <= seen, seen
