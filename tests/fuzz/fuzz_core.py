"""Fuzz harness: client frames through the sans-IO messaging core.

`python tests/fuzz/run.py core` runs it (see tests/fuzz/run.py for time and corpus options).

One input is a script (tests/fuzz/script.py's format) for a MessagingService over a
MemoryStore with fake connections (tests/support.py's FakeConn, a real Outbox), driven the
way the shell drives it: open connections, authenticate as one of three users, send frames
(raw text, or built per frame type with each field good, absent, of a wrong type, out of
range, huge, unicode-odd, or nested up to 1,100 levels), flush outboxes, close, let time
pass (tick and maintain). Before and after auth it checks:
- no exception escapes the core, and the core never waits (a MemoryStore never does);
- no `internal` error frame and no `failed` receipt with reason `internal`;
- no connection closed with 1011 (the code of a handler failure);
- no log record at ERROR or with a traceback: a client's mistake is not the relay's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import orjson
from fuzz.script import Reader, Writer
from support import FakeConn, decode_server_frames

from relay.config import RelayConfig
from relay.core import MessagingService
from relay.store.memory import MemoryStore

USERS = ("alice", "bob", "carol")
DEVICES = ("phone", "watch", None)
MAX_CONNECTIONS = 6
#: (outbox max_bytes, max_frames) of an opened connection: roomy, or small enough for 1013
OUTBOXES = ((1 << 20, 4096), (4096, 16), (300, 2))
#: seconds an ADVANCE moves the clocks: a tick, past typing_lapse, auth_timeout, presence_grace
STEPS = (0.25, 1.0, 6.0, 11.0, 31.0)
CLOSE_CODES = (1000, 1001, 1006, 1011, 1013)
#: RelayConfig presets: the defaults, and limits small enough to reach every refusal
CONFIGS = (
    {},
    {
        "max_text_chars": 8,
        "max_meta_bytes": 32,
        "max_group_members": 3,
        "rate_limit_messages": 1.0,
        "rate_limit_burst": 2,
        "typing_rate_limit": 1.0,
        "backlog_batch": 2,
        "receipt_catchup": 1,
        "presence_grace": 0.0,
    },
)

#: every client frame type and its fields (docs/PROTOCOL.md); "ref" is common to all
FIELDS: dict[str, tuple[str, ...]] = {
    "auth": ("userId", "userName", "userAvatar", "token", "deviceId", "acks", "timestamp"),
    "message": (
        "id",
        "text",
        "recipientId",
        "groupId",
        "senderId",
        "senderName",
        "senderAvatar",
        "timestamp",
        "meta",
    ),
    "receipt": ("peerId", "groupId", "seq", "status"),
    "status": ("status", "userId"),
    "presence": ("userIds",),
    "typing": ("state", "recipientId", "groupId"),
    "conversations": ("limit",),
    "history": ("peerId", "groupId", "before", "after", "limit"),
    "group_create": ("groupId", "name", "members"),
    "group_add": ("groupId", "userIds"),
    "group_remove": ("groupId", "userIds"),
    "group_leave": ("groupId",),
    "ping": (),
}
#: a frame type the contract does not define, to reach `unknown_type`
TYPES = (*FIELDS, "bogus")

_users = tuple(orjson.dumps(u).decode() for u in USERS)
_user_lists = ('["alice","bob"]', '["bob","carol"]', '["carol"]', "[]", '["alice","alice"]')
#: JSON texts a field takes when the input asks for a good value
GOOD: dict[str, tuple[str, ...]] = {
    "userId": _users,
    "peerId": _users,
    "recipientId": _users,
    "senderId": _users,
    "userIds": _user_lists,
    "members": _user_lists,
    "groupId": ('"g1"', '"g2"'),
    "id": ('"m1"', '"m2"', '"m3"'),
    "text": ('"hi"', '"h\\u00e9llo, w\\u00f6rld"'),
    "meta": ('{"k":1}', '{"reply":{"to":"m1"}}'),
    "seq": ("1", "2", "3"),
    "before": ("2", "10"),
    "after": ("0", "1"),
    "limit": ("1", "50", "100"),
    "status": ('"delivered"', '"read"', '"online"', '"away"', '"busy"'),
    "state": ('"start"', '"stop"'),
    "acks": ("true", "false"),
    "deviceId": ('"phone"', '"watch"'),
    "ref": ('"r1"', '"r2"'),
}
_GOOD_DEFAULT = ('"x"',)
INTS = (0, 1, -1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30)
FLOATS = ("0.5", "-0.0", "1.0", "1e308", "1e400", "-1e400", "2e-400")
LONG = (127, 128, 129, 256, 257, 4096, 4097, 70_000)
STRINGS = (
    '""',
    '"\\u0000"',
    '"\\ud800"',
    '"\\udfff\\ud800x"',
    '"\\u00e9"',
    '"\\ud83d\\ude00"',
    '"\\u202e\\u200b"',
    '" "',
    '"null"',
    '"NaN"',
    '"1e400"',
)
#: nesting depths: small powers of two and their neighbours (where a depth limit is likely to
#: sit), around orjson's 254 levels of writing (an answer frame adds a few) and its 1,024 of
#: reading
DEPTHS = (
    1,
    2,
    15,
    16,
    17,
    31,
    32,
    33,
    64,
    200,
    250,
    251,
    252,
    253,
    254,
    255,
    256,
    1024,
    1025,
    1100,
)
(
    V_ABSENT,
    V_GOOD,
    V_NULL,
    V_BOOL,
    V_INT,
    V_FLOAT,
    V_STRING,
    V_LONG,
    V_LIST,
    V_OBJECT,
    V_NESTED,
    V_TEXT,
    V_JSON,
) = range(13)
N_VALUE_KINDS = 13
(OP_OPEN, OP_AUTH, OP_BUILT, OP_RAW, OP_FLUSH, OP_ADVANCE, OP_CLOSE) = range(7)
N_OPS = 7


def value(r: Reader, name: str, depth: int = 0, good: Sequence[str] | None = None) -> str | None:
    """The JSON text of field `name` as the input chooses it (a good one from `good`, by
    default GOOD's); None: leave the field out."""
    kind = r.byte()
    if kind >= N_VALUE_KINDS:
        # most bytes mean a good value (or none): a random input is then mostly frames the
        # relay takes, with a hostile value here and there, which reaches past validation
        kind = V_GOOD if kind & 3 else V_ABSENT
    if kind == V_ABSENT:
        return None
    if kind == V_GOOD:
        return r.pick(good or GOOD.get(name, _GOOD_DEFAULT))
    if kind == V_NULL:
        return "null"
    if kind == V_BOOL:
        return r.pick(("true", "false"))
    if kind == V_INT:
        return str(r.pick(INTS))
    if kind == V_FLOAT:
        return r.pick(FLOATS)
    if kind == V_STRING:
        return r.pick(STRINGS)
    if kind == V_LONG:
        return '"' + r.pick(("x", "\\u00e9", "\\ud83d\\ude00")) * r.pick(LONG) + '"'
    if kind in (V_LIST, V_OBJECT):
        if depth >= 3:
            return "null"
        items = [value(r, name, depth + 1) for _ in range(r.byte() % 5)]
        if kind == V_LIST:
            return "[" + ",".join(v if v is not None else "0" for v in items) + "]"
        keys = r.pick((("k", "a", "b", "c"), FIELDS["message"], (name, name, "", "type")))
        pairs = (f'"{k}":{v}' for k, v in zip(keys, items, strict=False) if v is not None)
        return "{" + ",".join(pairs) + "}"
    if kind == V_NESTED:
        levels = r.pick(DEPTHS)
        open_, close = r.pick((("[", "]"), ('{"a":', "}"), ('[{"b":', "}]")))
        inner = r.pick(("1", "[]", "{}", '"x"'))
        return open_ * levels + inner + close * levels
    if kind == V_TEXT:
        return orjson.dumps(r.chunk().decode("utf-8", "replace")).decode()
    return r.chunk().decode("utf-8", "replace")  # V_JSON: raw text, maybe not JSON at all


def built_frame(r: Reader) -> bytes:
    """A frame of a type the input picks: its `type` good (that type's name) or not, then each
    of its fields and `ref`."""
    kind = r.pick(TYPES)
    parts = []
    for name in ("type", *FIELDS.get(kind, ()), "ref"):
        text = value(r, name, good=(orjson.dumps(kind).decode(),) if name == "type" else None)
        if text is not None:
            parts.append(f'"{name}":{text}')
    return ("{" + ",".join(parts) + "}").encode()


class Failure(AssertionError):
    """An invariant of the core broke on this input."""


class _Records(logging.Handler):
    """Keeps the relay's log records at ERROR or with a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.bad: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.bad.append(record)


def run(coro: Coroutine[Any, Any, Any]) -> None:
    """Run a core coroutine to its end without an event loop: over a MemoryStore nothing the
    core awaits ever suspends."""
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    raise Failure("the core suspended over a MemoryStore")


class Driver:
    """The shell's part: connections, their outboxes, the clocks."""

    def __init__(self, config: RelayConfig, store: MemoryStore) -> None:
        self.now = 1000.0
        self.wall = 1_770_000_000.0
        self.svc = MessagingService(config, store, clock=lambda: self.now, wall=lambda: self.wall)
        self.conns: list[FakeConn] = []

    def conn(self, r: Reader) -> FakeConn:
        if not self.conns:
            self.open(OUTBOXES[0])
        return r.pick(self.conns)

    def open(self, outbox: tuple[int, int]) -> None:
        if len(self.conns) < MAX_CONNECTIONS:
            conn = FakeConn(*outbox)
            self.svc.on_open(conn)
            self.conns.append(conn)

    def deliver(self, conn: FakeConn, payloads: list[bytes]) -> None:
        """What the shell does with one read's text messages: the inline entry first, then the
        awaited one with the rest."""
        if conn.closed is not None or not payloads:
            return
        done = self.svc.on_messages_nowait(conn, payloads)
        if done < len(payloads):
            run(self.svc.on_messages(conn, payloads[done:]))

    def flush(self, conn: FakeConn) -> None:
        check_frames(conn.outbox.take())
        if conn.closed is None:
            self.svc.on_flushed(conn)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall += seconds
        self.svc.tick(self.now)
        run(self.svc.maintain())

    def reap(self) -> None:
        """End the connections the core closed, as the shell does after their close frame."""
        for conn in [c for c in self.conns if c.closed is not None]:
            code = conn.closed[0]
            if code == 1011:
                raise Failure(f"the core closed a connection with 1011: {conn.closed}")
            check_frames(conn.outbox.take())
            self.svc.on_close(conn, code)
            self.conns.remove(conn)

    def end(self, conn: FakeConn, code: int) -> None:
        check_frames(conn.outbox.take())
        self.svc.on_close(conn, code)
        self.conns.remove(conn)


def check_frames(data: bytes) -> None:
    for frame in decode_server_frames(data):
        if frame.get("type") == "error" and frame.get("code") == "internal":
            raise Failure(f"an `internal` error frame: {frame}")
        if frame.get("type") == "receipt" and frame.get("reason") == "internal":
            raise Failure(f"a `failed` receipt with reason internal: {frame}")


def step(d: Driver, r: Reader) -> None:
    op = r.byte() % N_OPS
    if op == OP_OPEN:
        d.open(r.pick(OUTBOXES))
    elif op == OP_AUTH:
        conn = d.conn(r)
        frame: dict[str, Any] = {"type": "auth", "userId": r.pick(USERS)}
        device = r.pick(DEVICES)
        if device is not None:
            frame["deviceId"] = device
        frame["acks"] = bool(r.byte() & 1)
        d.deliver(conn, [orjson.dumps(frame)])
    elif op == OP_BUILT:
        conn = d.conn(r)
        d.deliver(conn, [built_frame(r) for _ in range(1 + r.byte() % 4)])
    elif op == OP_RAW:
        conn = d.conn(r)
        d.deliver(conn, [r.chunk().decode("utf-8", "replace").encode()])
    elif op == OP_FLUSH:
        d.flush(d.conn(r))
    elif op == OP_ADVANCE:
        d.advance(r.pick(STEPS))
    else:
        d.end(d.conn(r), r.pick(CLOSE_CODES))
    d.reap()


def check(data: bytes, store_factory: Callable[[], MemoryStore] = MemoryStore) -> None:
    """One fuzz input; Failure (an AssertionError) names the broken invariant."""
    records = _Records()
    logger = logging.getLogger("relay")
    logger.addHandler(records)
    try:
        r = Reader(data)
        d = Driver(RelayConfig(db_path=None, **r.pick(CONFIGS)), store_factory())
        while r.more():
            step(d, r)
        for _ in range(2):  # what is left: written, then the marks and backlogs it lets go
            for conn in list(d.conns):
                d.flush(conn)
            d.advance(0.25)
            d.reap()
    finally:
        logger.removeHandler(records)
    if records.bad:
        record = records.bad[0]
        raise Failure(f"the relay logged {record.levelname}: {record.getMessage()}")


# --- the seed corpus ------------------------------------------------------------------------------


class Script:
    """Writes a check() input op by op (the seed corpus)."""

    def __init__(self, config: int = 0) -> None:
        self.w = Writer().byte(config)
        self.opened = 0

    def open(self, outbox: int = 0) -> Script:
        self.w.byte(OP_OPEN).byte(outbox)
        self.opened += 1
        return self

    def auth(
        self, conn: int, user: str, device: str | None = "phone", acks: bool = False
    ) -> Script:
        self.w.byte(OP_AUTH).byte(conn).pick(USERS, user).pick(DEVICES, device).byte(acks)
        return self

    def send(self, conn: int, *frames: dict[str, Any] | str) -> Script:
        for frame in frames:
            text = frame if isinstance(frame, str) else orjson.dumps(frame).decode()
            self.w.byte(OP_RAW).byte(conn).chunk(text.encode())
        return self

    def built(self, conn: int, kind: str, **fields: tuple[int, ...]) -> Script:
        """A built frame of type `kind`: each field named is the bytes value() reads (its
        value kind first); the rest are left out."""
        self.w.byte(OP_BUILT).byte(conn).byte(0).pick(TYPES, kind).byte(V_GOOD).byte(0)
        for name in (*FIELDS[kind], "ref"):
            choice = fields.get(name)
            for b in choice or (V_ABSENT,):
                self.w.byte(b)
        return self

    def flush(self, conn: int) -> Script:
        self.w.byte(OP_FLUSH).byte(conn)
        return self

    def advance(self, seconds: float) -> Script:
        self.w.byte(OP_ADVANCE).pick(STEPS, seconds)
        return self

    def close(self, conn: int, code: int = 1000) -> Script:
        self.w.byte(OP_CLOSE).byte(conn).pick(CLOSE_CODES, code)
        return self

    def done(self) -> bytes:
        return self.w.done()


def _good(name: str, text: str) -> tuple[int, ...]:
    return V_GOOD, GOOD[name].index(text)


def seeds() -> dict[str, bytes]:
    """The seed corpus: real client sessions (file name -> input)."""

    def pair(config: int = 0, outbox: int = 0) -> Script:
        s = Script(config).open(outbox).open(outbox)
        return s.auth(0, "alice").auth(1, "bob").flush(0).flush(1)

    def to(peer: str, ident: str = "m1", **extra: Any) -> dict[str, Any]:
        return {"type": "message", "id": ident, "recipientId": peer, "text": "hi", **extra}

    group = {"type": "group_create", "groupId": "g1", "name": "team", "members": ["bob", "carol"]}
    every_type = [
        to("bob"),
        {"type": "receipt", "peerId": "bob", "seq": 1, "status": "read"},
        {"type": "status", "status": "away"},
        {"type": "presence", "userIds": ["bob", "carol"]},
        {"type": "typing", "recipientId": "bob", "state": "start"},
        {"type": "conversations", "limit": 10},
        {"type": "history", "peerId": "bob", "limit": 50},
        group,
        {"type": "group_add", "groupId": "g1", "userIds": ["alice"]},
        {"type": "group_remove", "groupId": "g1", "userIds": ["carol"]},
        {"type": "group_leave", "groupId": "g1"},
        {"type": "ping", "ref": "p1"},
    ]
    chat = pair().send(0, to("bob"), to("bob", "m2", meta={"reply": "m1"})).flush(0).flush(1)
    return {
        "chat": chat.send(1, {"type": "receipt", "peerId": "alice", "seq": 2, "status": "read"})
        .flush(0)
        .flush(1)
        .send(0, {"type": "history", "peerId": "bob", "before": 2}, {"type": "conversations"})
        .flush(0)
        .done(),
        "every-type": pair().send(0, *every_type).flush(0).flush(1).done(),
        "every-type-before-auth": Script().open().send(0, *every_type).auth(0, "alice").done(),
        "every-type-small-limits": pair(config=1).send(0, *every_type).flush(0).done(),
        "group-chat": pair()
        .open()
        .auth(2, "carol", device=None)
        .send(0, group, {"type": "message", "id": "g-m1", "groupId": "g1", "text": "all"})
        .flush(0)
        .flush(1)
        .send(2, {"type": "receipt", "groupId": "g1", "seq": 1, "status": "read"})
        .send(1, {"type": "history", "groupId": "g1", "after": 0})
        .flush(1)
        .flush(2)
        .done(),
        "typing-lapse-and-presence": pair()
        .send(0, {"type": "typing", "recipientId": "bob", "state": "start"})
        .advance(11.0)
        .close(1, 1001)
        .advance(6.0)
        .flush(0)
        .done(),
        "reconnect-backlog": pair(outbox=0)
        .close(1, 1006)
        .send(0, *(to("bob", f"b{i}") for i in range(5)))
        .open()
        .auth(1, "bob")
        .advance(0.25)
        .flush(1)
        .advance(0.25)
        .done(),
        "acks-device": Script()
        .open()
        .open()
        .auth(0, "alice")
        .auth(1, "bob", device="watch", acks=True)
        .send(0, to("bob"))
        .flush(1)
        .send(1, {"type": "receipt", "peerId": "alice", "seq": 1, "status": "delivered"})
        .advance(0.25)
        .done(),
        "slow-consumer": pair(outbox=2).send(0, *(to("bob", f"s{i}") for i in range(6))).done(),
        "rate-limited": pair(config=1).send(0, *(to("bob", f"r{i}") for i in range(5))).done(),
        "auth-timeout": Script().open().advance(11.0).done(),
        "second-auth": pair().auth(0, "alice").done(),
        "bad-frames": pair()
        .send(0, "not json", "[1,2]", '{"type":1}', '{"type":"bogus"}', "{}", '"x"', "")
        .done(),
        "wrong-types": pair()
        .send(0, {"type": "history", "peerId": 5, "limit": "50"})
        .send(0, {"type": "receipt", "peerId": "bob", "seq": 2**63, "status": "read"})
        .send(0, {"type": "history", "peerId": "bob", "before": 2**63 - 1})
        .send(0, {"type": "conversations", "limit": 0})
        .send(0, to("bob", "w1", meta=[1]), to("bob", "w2", text=""), to("bob", "w" * 65))
        .done(),
        "built-message": pair()
        .built(
            0,
            "message",
            id=_good("id", '"m1"'),
            text=_good("text", '"hi"'),
            recipientId=_good("recipientId", '"bob"'),
        )
        .flush(1)
        .done(),
        "built-history": pair()
        .built(
            0,
            "message",
            id=_good("id", '"m1"'),
            text=_good("text", '"hi"'),
            recipientId=_good("recipientId", '"bob"'),
            meta=(V_NESTED, DEPTHS.index(200), 1, 0),
        )
        .built(0, "history", peerId=_good("peerId", '"bob"'), before=(V_INT, INTS.index(2**63)))
        .built(0, "conversations", limit=(V_FLOAT, 0))
        .flush(0)
        .done(),
        "built-group": pair()
        .built(
            0,
            "group_create",
            groupId=_good("groupId", '"g1"'),
            members=_good("members", '["bob","carol"]'),
        )
        .built(0, "group_add", groupId=_good("groupId", '"g1"'), userIds=(V_LONG, 0, 3))
        .built(1, "group_leave", groupId=_good("groupId", '"g1"'))
        .flush(0)
        .done(),
    }
