"""docs/PROTOCOL.md is checked, not trusted.

The document's JSON Schemas (```json schema=NAME) and examples (```json example=NAME) are
extracted here. Static checks: every schema is a valid draft 2020-12 schema, every example
validates, every frame type of contract v1 has a schema in each direction it travels, the
tables of close codes, error codes and limits match the contract and relay/config.py.
"""

from __future__ import annotations

import argparse
import ast
import contextvars
import copy
import functools
import itertools
import re
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import jsonschema
import orjson
import pytest
import trio
from attrs import define
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from support import TEST_DEFAULTS, RawWs, http_get, mask_frame
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from relay import protocol
from relay.app import Relay
from relay.cli import build_parser, config_from
from relay.config import RelayConfig
from relay.core import MessagingService
from relay.errors import FrameError
from relay.protocol import AuthFrame
from relay.store.memory import MemoryStore

DOC = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"
ID_PREFIX = "urn:relay:v1:"

# Contract v1 (docs/PROTOCOL.md): the frame types in each direction.
CLIENT_TYPES = {
    "auth", "message", "receipt", "status", "presence", "typing", "conversations", "history",
    "group_create", "group_add", "group_remove", "group_leave", "ping",
}  # fmt: skip
SERVER_TYPES = {
    "auth_ok", "error", "message", "receipt", "status", "presence", "typing", "conversations",
    "history", "group", "pong",
}  # fmt: skip
# Contract v2, "Search"
CLIENT_TYPES |= {"search"}
SERVER_TYPES |= {"search_result"}
ERROR_CODES = {
    "bad_json", "bad_frame", "invalid", "unknown_type", "unauthenticated", "auth_failed",
    "forbidden", "rate_limited", "not_found", "internal",
}  # fmt: skip
CLOSE_CODES = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 1012, 1013}
# Contract v2, "Calls" (docs/PROTOCOL.md, Calls): the signalling frames in each direction.
CALL_CLIENT_TYPES = {"call_invite", "call_accept", "call_reject", "call_end", "call_signal"}
CALL_SERVER_TYPES = {"call_invite", "call_ringing", "call_accept", "call_end", "call_signal"}
CLIENT_TYPES |= CALL_CLIENT_TYPES
SERVER_TYPES |= CALL_SERVER_TYPES
# Contract v2, "End-to-end encryption": the key directory.
CLIENT_TYPES |= {"keys_publish", "keys_get"}
SERVER_TYPES |= {"keys"}

_BLOCK = re.compile(r"^```json (schema|example)=(\S+)\n(.*?)^```\s*$", re.M | re.S)


class ProtocolDoc:
    """The schemas and examples of docs/PROTOCOL.md, with a validator per frame."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.schemas: dict[str, dict[str, Any]] = {}
        self.examples: list[tuple[str, dict[str, Any]]] = []
        for kind, name, body in _BLOCK.findall(text):
            try:
                value = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise AssertionError(f"```json {kind}={name} is not JSON: {exc}") from exc
            if kind == "schema":
                assert name not in self.schemas, f"two schemas named {name}"
                self.schemas[name] = value
            else:
                self.examples.append((name, value))
        resources = [
            (s["$id"], Resource.from_contents(s, default_specification=DRAFT202012))
            for s in self.schemas.values()
            if "$id" in s
        ]
        self.registry: Registry[Any] = Registry().with_resources(resources)

    def validator(self, name: str) -> jsonschema.Draft202012Validator:
        return jsonschema.Draft202012Validator(self.schemas[name], registry=self.registry)

    def errors(self, name: str, frame: Any) -> list[str]:
        return [e.message for e in self.validator(name).iter_errors(frame)]

    def check(self, direction: str, frame: dict[str, Any]) -> None:
        """Assert `frame` (sent in `direction`, "client" or "server") matches its schema."""
        name = f"{direction}/{frame.get('type')}"
        assert name in self.schemas, f"no schema {name} for {frame!r}"
        errors = self.errors(name, frame)
        shown = repr(frame) if len(repr(frame)) < 800 else repr(frame)[:800] + "..."
        assert not errors, f"{name} does not match docs/PROTOCOL.md: {errors}\n{shown}"

    def table_rows(self, heading: str) -> Iterator[list[str]]:
        """Cells of the first table after `heading`."""
        lines = self.text[self.text.index(heading) :].splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("|"))
        for line in lines[start + 2 :]:
            if not line.startswith("|"):
                break
            yield [cell.strip() for cell in line.strip("|").split("|")]


DOC_TEXT = DOC.read_text(encoding="utf-8")
doc = ProtocolDoc(DOC_TEXT)
FRAME_SCHEMAS = sorted(n for n in doc.schemas if n != "common")


# --- the document's own consistency --------------------------------------------------------


def test_document_has_schemas_and_examples() -> None:
    assert len(doc.schemas) >= len(CLIENT_TYPES) + len(SERVER_TYPES) + 1
    assert len(doc.examples) >= len(FRAME_SCHEMAS)


@pytest.mark.parametrize("name", sorted(doc.schemas))
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    schema = doc.schemas[name]
    assert schema.get("$schema") == "https://json-schema.org/draft/2020-12/schema"
    assert schema.get("$id") == ID_PREFIX + name
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("direction,types", [("client", CLIENT_TYPES), ("server", SERVER_TYPES)])
def test_every_contract_frame_has_a_schema_in_its_direction(
    direction: str, types: set[str]
) -> None:
    documented = {n.split("/", 1)[1] for n in FRAME_SCHEMAS if n.startswith(direction + "/")}
    assert documented == types


@pytest.mark.parametrize("name", FRAME_SCHEMAS)
def test_every_frame_schema_has_an_example(name: str) -> None:
    assert any(n == name for n, _ in doc.examples), f"no ```json example={name}"


@pytest.mark.parametrize(
    "name,example", doc.examples, ids=[f"{n}-{i}" for i, (n, _) in enumerate(doc.examples)]
)
def test_example_validates_against_its_schema(name: str, example: dict[str, Any]) -> None:
    assert name in doc.schemas, f"example of an undocumented frame {name}"
    assert example["type"] == name.split("/", 1)[1]
    assert doc.errors(name, example) == []
    # The schema pins the frame type: the same frame with another type is refused.
    other = dict(example, type="bogus")
    assert doc.errors(name, other) != []


@pytest.mark.parametrize("name", sorted(n for n in FRAME_SCHEMAS if n.startswith("server/")))
def test_server_schemas_refuse_undocumented_fields(name: str) -> None:
    example = next(e for n, e in doc.examples if n == name)
    assert doc.errors(name, dict(example, undocumentedField=1)) != []


def _without(frame: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in frame.items() if k not in keys}


def _example(name: str, index: int = 0) -> dict[str, Any]:
    return copy.deepcopy([e for n, e in doc.examples if n == name][index])


# Frames the contract forbids; each must be refused by its schema (the schemas are not vacuous).
COUNTEREXAMPLES: list[tuple[str, dict[str, Any]]] = [
    ("client/auth", _without(_example("client/auth"), "userId")),
    ("client/auth", dict(_example("client/auth"), acks="yes")),
    ("client/message", dict(_example("client/message"), groupId="runners")),  # both targets
    ("client/message", _without(_example("client/message"), "recipientId")),  # no target
    ("client/message", dict(_example("client/message"), text="")),
    ("client/message", dict(_example("client/message"), text="x" * 4097)),
    ("client/message", dict(_example("client/message"), id="x" * 65)),
    ("client/message", dict(_example("client/message"), meta=[1])),
    ("client/receipt", dict(_example("client/receipt"), status="sent")),
    ("client/receipt", dict(_example("client/receipt"), seq=0)),
    ("client/receipt", dict(_example("client/receipt"), seq=2**63)),  # past what a store holds
    ("client/history", dict(_example("client/history"), before=2**63)),
    ("client/status", dict(_example("client/status"), status="offline")),
    ("client/history", dict(_example("client/history"), limit=101)),
    ("client/history", dict(_example("client/history"), after=3)),  # before and after
    ("client/typing", dict(_example("client/typing"), state="typing")),
    ("client/presence", dict(_example("client/presence"), userIds="user_456")),
    ("client/group_create", _without(_example("client/group_create"), "groupId")),
    ("client/group_create", dict(_example("client/group_create"), members="user_456")),
    ("server/auth_ok", _without(_example("server/auth_ok"), "sessionId")),
    ("server/auth_ok", dict(_example("server/auth_ok"), serverTime="2026-02-05 10:30:00")),
    ("server/error", dict(_example("server/error"), code="teapot")),
    ("server/error", _without(_example("server/error"), "field")),  # invalid names its field
    ("server/receipt", _without(_example("server/receipt", 0), "seq")),  # sent without seq
    ("server/receipt", _without(_example("server/receipt", 0), "peerId")),  # sent: to whom?
    ("server/receipt", _without(_example("server/receipt", 1), "reason")),  # failed, no reason
    ("server/receipt", dict(_example("server/receipt", 1), seq=4)),  # failed has no seq
    ("server/receipt", _without(_example("server/receipt", 2), "userId")),  # whose watermark?
    ("server/message", dict(_example("server/message"), status="pending")),
    ("server/message", dict(_example("server/message"), status="read")),  # history only
    ("server/message", _without(_example("server/message"), "seq")),
    ("server/message", dict(_example("server/message"), groupId="runners")),
    ("server/status", _without(_example("server/status", 1), "lastSeen")),
    ("server/presence", {"type": "presence", "users": [{"userId": "a", "status": "online"}]}),
    ("server/history", _without(_example("server/history"), "hasMore")),
    ("server/conversations", {"type": "conversations", "items": [{"peerId": "a"}]}),
    ("server/group", dict(_example("server/group"), members=["a", "a"])),
    ("server/group", dict(_example("server/group"), event="rename")),
    ("server/pong", _without(_example("server/pong"), "serverTime")),
]


@pytest.mark.parametrize(
    "name,frame", COUNTEREXAMPLES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(COUNTEREXAMPLES)]
)
def test_schema_refuses_what_the_contract_forbids(name: str, frame: dict[str, Any]) -> None:
    assert doc.errors(name, frame) != []


def test_error_codes_table_and_schema_match_the_contract() -> None:
    table = {row[0].strip("`") for row in doc.table_rows("| code | when | connection |")}
    assert table == ERROR_CODES
    enum = doc.schemas["server/error"]["properties"]["code"]["enum"]
    assert set(enum) == ERROR_CODES


def test_close_codes_table_covers_every_code() -> None:
    table = {int(row[0]) for row in doc.table_rows("### Close codes")}
    assert table == CLOSE_CODES


def _serve_flags() -> dict[str, set[str]]:
    """`relay serve`'s option strings by destination (the RelayConfig field they set)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags: dict[str, set[str]] = {}
    for action in sub.choices["serve"]._actions:
        flags.setdefault(action.dest, set()).update(action.option_strings)
    return flags


def test_limits_table_matches_relay_config_and_the_cli() -> None:
    rows = {row[0].strip("`"): row for row in doc.table_rows("## Limits")}
    fields = {f.name: f for f in attrs.fields(RelayConfig)}
    assert set(rows) == set(fields), "the limits table must list every RelayConfig field"
    flags = _serve_flags()
    for name, (_, default, flag_cell, env, meaning) in rows.items():
        assert ast.literal_eval(default.strip("`")) == fields[name].default, name
        documented = set(re.findall(r"`(--[a-z-]+)", flag_cell))
        assert documented and documented <= flags.get(name, set()), (name, flags.get(name))
        assert f"`RELAY_{name.upper()}`" in env, name
        assert meaning, name
    assert "`PORT`" in rows["port"][3]


def test_fixed_limits_table_states_the_protocols_bounds() -> None:
    rows = {row[0]: row[1] for row in doc.table_rows("Fixed limits of protocol v1")}
    assert f"at most {protocol.FRAME_DEPTH_MAX} objects" in rows["a client frame's JSON nesting"]
    assert f"at most {protocol.META_DEPTH_MAX} objects" in rows["a message's `meta` nesting"]
    assert str(protocol.SEQ_MAX) in rows["a receipt's `seq`, `history` `before`"]
    for name in ("seq", "watermark"):
        assert doc.schemas["common"]["$defs"][name]["maximum"] == protocol.SEQ_MAX


@pytest.mark.parametrize(
    "name,env,text,value",
    [
        ("max_text_chars", "RELAY_MAX_TEXT_CHARS", "100", 100),
        ("presence_grace", "RELAY_PRESENCE_GRACE", "0.5", 0.5),
        ("retention_days", "RELAY_RETENTION_DAYS", "none", None),
        ("web_chat", "RELAY_WEB_CHAT", "true", True),
        ("port", "PORT", "9000", 9000),
    ],
)
def test_documented_environment_variables_configure_the_relay(
    name: str, env: str, text: str, value: object
) -> None:
    args = build_parser().parse_args(["serve"])
    assert getattr(config_from(args, {env: text}), name) == value


# --- the running relay against the document ------------------------------------------------------
#
# Every frame the relay sends in these tests is validated against its documented schema, every
# valid frame the tests send against the client schemas, and every frame the relay refuses as
# malformed must be refused by the client schema too. Each test declares the server frame
# variants (and close codes) it must see; together they must cover everything documented.

WAIT = 3.0  # seconds any expected frame may take; a missing frame fails instead of hanging

#: Every server frame variant and close code the document names, which the end-to-end tests
#: must observe.
_VARIANT_KEYS = {"receipt": "status", "error": "code", "status": "status", "group": "event"}


def _documented_variants() -> set[str]:
    found = {t for t in SERVER_TYPES if t not in _VARIANT_KEYS}
    for kind, key in _VARIANT_KEYS.items():
        values = set(doc.schemas[f"server/{kind}"]["properties"][key]["enum"])
        found |= {f"{kind}:{v}" for v in values}
    return found | {f"close:{row[0]}" for row in doc.table_rows("### Close codes")}


REQUIRED_COVERAGE = _documented_variants()
COVERS: dict[str, set[str]] = {}
_SEEN: contextvars.ContextVar[set[str]] = contextvars.ContextVar("seen")


def variant(frame: dict[str, Any]) -> str:
    kind = str(frame["type"])
    key = _VARIANT_KEYS.get(kind)
    return f"{kind}:{frame[key]}" if key else kind


def covers(*variants: str) -> Callable[[Callable[..., Awaitable[None]]], Callable[..., Any]]:
    """Declare what a test must see from the relay; the test fails if it does not."""

    def decorate(test: Callable[..., Awaitable[None]]) -> Callable[..., Any]:
        COVERS[test.__name__] = set(variants)

        @functools.wraps(test)
        async def run(*args: Any, **kwargs: Any) -> None:
            seen: set[str] = set()
            token = _SEEN.set(seen)
            try:
                await test(*args, **kwargs)
            finally:
                _SEEN.reset(token)
            assert set(variants) <= seen, f"never seen: {sorted(set(variants) - seen)}"

        return run

    return decorate


def _seen(item: str) -> None:
    _SEEN.get().add(item)


class Peer:
    """A trio-websocket client that checks both directions against docs/PROTOCOL.md."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.pending: list[dict[str, Any]] = []
        self.auth_ok: dict[str, Any] = {}
        self._pings = itertools.count()

    async def send(self, frame: dict[str, Any]) -> None:
        """Send a frame the contract allows (checked against its client schema)."""
        doc.check("client", frame)
        await self.ws.send_message(orjson.dumps(frame).decode())

    async def send_refused(self, frame: dict[str, Any]) -> None:
        """Send a frame the document says is malformed (its client schema must refuse it)."""
        name = f"client/{frame.get('type')}"
        if name in doc.schemas:
            assert doc.errors(name, frame), f"{name} schema accepts {frame!r}"
        await self.ws.send_message(orjson.dumps(frame).decode())

    async def send_text(self, text: str) -> None:
        await self.ws.send_message(text)

    async def _next(self) -> dict[str, Any]:
        with trio.fail_after(WAIT):
            raw = await self.ws.get_message()
        assert isinstance(raw, str), "the relay sends text frames only"
        frame = orjson.loads(raw)
        doc.check("server", frame)
        _seen(variant(frame))
        return frame  # type: ignore[no-any-return]

    async def expect(self, kind: str, **fields: Any) -> dict[str, Any]:
        """The first frame of `kind` with these field values; other frames stay pending."""

        def fits(frame: dict[str, Any]) -> bool:
            return frame["type"] == kind and all(
                k in frame and frame[k] == v for k, v in fields.items()
            )

        for i, frame in enumerate(self.pending):
            if fits(frame):
                return self.pending.pop(i)
        while True:
            frame = await self._next()
            if fits(frame):
                return frame
            self.pending.append(frame)

    async def barrier(self) -> list[dict[str, Any]]:
        """Everything the relay queued to this connection before it handled a fresh `ping`."""
        ref = f"barrier-{next(self._pings)}"
        await self.send({"type": "ping", "ref": ref})
        got, self.pending = self.pending, []
        while True:
            frame = await self._next()
            if frame["type"] == "pong" and frame.get("ref") == ref:
                return got
            got.append(frame)

    async def closed(self) -> int:
        """Read (and check) frames until the relay closes; its close code."""
        with trio.fail_after(WAIT):
            while True:
                try:
                    frame = orjson.loads(await self.ws.get_message())
                except ConnectionClosed as exc:
                    assert exc.reason is not None
                    _seen(f"close:{exc.reason.code}")
                    return exc.reason.code
                doc.check("server", frame)
                _seen(variant(frame))


@asynccontextmanager
async def peer(url: str, user: str | None = None, **auth: Any) -> AsyncIterator[Peer]:
    """A connected Peer; authenticated as `user` (auth fields in `auth`) when given."""
    async with open_websocket_url(url) as ws:
        p = Peer(ws)
        if user is not None:
            await p.send({"type": "auth", "userId": user, **auth})
            p.auth_ok = await p.expect("auth_ok")
        yield p


def text_message(mid: str, sender: str, text: str, **target: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": mid,
        "senderId": sender,
        "senderName": sender.title(),
        "senderAvatar": sender[:2].upper(),
        "text": text,
        "timestamp": "2026-02-05T10:30:15Z",
        "status": "pending",
        **target,
    }


def of_type(frames: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] == kind]


async def relay_on(nursery: trio.Nursery, **overrides: Any) -> Relay:
    """The real relay (MessagingService over MemoryStore) on 127.0.0.1, any free port."""
    config = RelayConfig(**{**TEST_DEFAULTS, **overrides})
    relay = Relay(config, handler=MessagingService(config, MemoryStore()))
    await nursery.start(relay.serve)
    return relay


def test_end_to_end_tests_cover_every_documented_server_frame() -> None:
    contract = (
        {f"close:{c}" for c in CLOSE_CODES}
        | {f"error:{c}" for c in ERROR_CODES - {"rate_limited"}}
        | {f"receipt:{s}" for s in ("sent", "failed", "delivered", "read")}
        | {f"status:{s}" for s in ("online", "offline", "away", "busy")}
    )
    assert contract <= REQUIRED_COVERAGE
    covered = set().union(*COVERS.values())
    assert covered == REQUIRED_COVERAGE, (
        f"not covered: {sorted(REQUIRED_COVERAGE - covered)}; "
        f"undocumented: {sorted(covered - REQUIRED_COVERAGE)}"
    )


@covers(
    "auth_ok",
    "pong",
    "error:unauthenticated",
    "error:bad_json",
    "error:bad_frame",
    "error:unknown_type",
    "error:invalid",
    "error:auth_failed",
    "close:1008",
)
async def test_e2e_session_and_malformed_frames(nursery: trio.Nursery) -> None:
    relay = await relay_on(nursery, auth_timeout=0.5)
    async with peer(relay.url) as a:
        await a.send({"type": "ping", "ref": "early"})
        assert (await a.expect("error", code="unauthenticated"))["ref"] == "early"
        await a.send_text("{not json")
        await a.expect("error", code="bad_json")
        await a.send_text("[1, 2]")
        await a.expect("error", code="bad_frame")
        await a.send_text('{"type": 7, "ref": "r7"}')
        assert (await a.expect("error", code="bad_frame"))["ref"] == "r7"
        await a.send_refused({"type": "whisper", "ref": "w1"})
        assert (await a.expect("error", code="unknown_type"))["ref"] == "w1"

        await a.send({"type": "auth", "userId": "alice", "deviceId": "phone", "acks": True})
        ok = await a.expect("auth_ok")
        assert (ok["userId"], ok["deviceId"]) == ("alice", "phone")
        await a.send({"type": "auth", "userId": "alice", "ref": "again"})
        again = await a.expect("error", code="invalid", ref="again")
        assert again["field"] == "type"
        await a.send_refused({"type": "presence", "userIds": "bob", "ref": "q"})
        assert (await a.expect("error", code="invalid", ref="q"))["field"] == "userIds"
        await a.send_refused({"type": "message", "id": "", "recipientId": "bob", "text": "x"})
        assert (await a.expect("error", code="invalid"))["field"] == "id"
        await a.send_refused(
            {"type": "history", "peerId": "bob", "before": 3, "after": 1, "ref": "h"}
        )
        await a.expect("error", code="invalid", ref="h")
        await a.send_refused({"type": "receipt", "peerId": "bob", "seq": 0, "status": "read"})
        assert (await a.expect("error", code="invalid"))["field"] == "seq"
        await a.send({"type": "ping", "ref": "p1"})
        await a.expect("pong", ref="p1")

    async with peer(relay.url) as original:  # no deviceId, no acks: the anonymous device
        await original.send({"type": "auth", "userId": "bob", "userName": "Bob"})
        ok = await original.expect("auth_ok")
        assert ok["deviceId"].startswith("anon-") and ok["userId"] == "bob"

    async with peer(relay.url) as bad:
        await bad.send_refused({"type": "auth", "userId": ""})
        assert (await bad.expect("error", code="auth_failed"))["field"] == "userId"
        assert await bad.closed() == 1008

    async with peer(relay.url) as silent:  # no auth within auth_timeout
        assert await silent.closed() == 1008


@covers(
    "message",
    "receipt:sent",
    "receipt:delivered",
    "receipt:read",
    "receipt:failed",
    "error:forbidden",
    "status:away",
)
async def test_e2e_messages_receipts_and_devices(nursery: trio.Nursery) -> None:
    relay = await relay_on(nursery)
    url = relay.url
    async with (
        peer(url, "alice", deviceId="phone", acks=True) as a1,
        peer(url, "alice", deviceId="watch", acks=True) as a2,
        peer(url, "bob", deviceId="phone", acks=True) as b1,
        peer(url, "bob", userName="Bob", userAvatar="BO") as b2,  # an original client
    ):
        # pending -> sent: once durable, with the conversation's seq
        await a1.send(text_message("m1", "alice", "Hello there!", recipientId="bob"))
        sent = await a1.expect("receipt", status="sent", id="m1")
        assert (sent["seq"], sent["peerId"]) == (1, "bob")
        for device in (b1, b2, a2):  # every device of the recipient, the sender's other ones
            got = await device.expect("message", id="m1")
            assert (got["seq"], got["senderId"], got["text"]) == (1, "alice", "Hello there!")
            assert got["status"] == "delivered" and got["recipientId"] == "bob"
        # b2 (acks false) counts as delivered once written to its socket
        delivered = await a1.expect("receipt", status="delivered", id="m1")
        assert (delivered["userId"], delivered["peerId"], delivered["seq"]) == ("bob", "bob", 1)
        await a2.expect("receipt", status="delivered", id="m1")

        # read: to the sender's devices, and a copy without id to the reader's other device
        await b1.send({"type": "receipt", "peerId": "alice", "seq": 1, "status": "read"})
        for device in (a1, a2):
            read = await device.expect("receipt", status="read", id="m1")
            assert (read["userId"], read["seq"]) == ("bob", 1)
        copy = await b2.expect("receipt", status="read", peerId="alice")
        assert "id" not in copy and copy["userId"] == "bob"

        # stale receipt: ignored; resend of m1: same seq, delivered to nobody again
        await b1.send({"type": "receipt", "peerId": "alice", "seq": 1, "status": "delivered"})
        await b1.barrier()
        assert of_type(await a1.barrier(), "receipt") == []
        await a1.send(text_message("m1", "alice", "Hello there!", recipientId="bob"))
        assert (await a1.expect("receipt", status="sent", id="m1"))["seq"] == 1
        for device in (b1, b2, a2):
            assert of_type(await device.barrier(), "message") == []

        # the original client's own frames: message without deviceId/acks, status
        await b2.send(
            {
                "type": "message",
                "id": "1707116400000",
                "senderId": "bob",
                "senderName": "Bob",
                "senderAvatar": "BO",
                "recipientId": "alice",
                "text": "Hi Alice",
                "timestamp": "2026-02-05T10:30:15.123",
                "status": "pending",
            }
        )
        assert (await b2.expect("receipt", status="sent", id="1707116400000"))["seq"] == 2
        assert (await b1.expect("message", id="1707116400000"))["seq"] == 2
        await a1.expect("message", id="1707116400000", senderName="Bob")
        await a2.expect("message", id="1707116400000")
        await a1.send({"type": "receipt", "peerId": "bob", "seq": 2, "status": "delivered"})
        for device in (b1, b2):
            ack = await device.expect("receipt", status="delivered", id="1707116400000")
            assert (ack["userId"], ack["peerId"]) == ("alice", "alice")
        await b2.send(
            {"type": "status", "status": "away", "userId": "bob", "timestamp": "2026-02-05T10:40"}
        )
        assert (await a1.expect("status", userId="bob"))["status"] == "away"

        # refusals: a failed receipt with the reason, nothing stored or delivered
        # (the schema cannot know who is authenticated, which groups exist, or meta's size)
        refusals: list[tuple[dict[str, Any], str, str, bool]] = [
            (text_message("f1", "bob", "spoof", recipientId="bob"), "forbidden", "senderId", False),
            (text_message("f2", "alice", "x" * 4097, recipientId="bob"), "too_long", "text", True),
            (
                dict(text_message("f3", "alice", "big", recipientId="bob"), meta={"k": "v" * 5000}),
                "too_long",
                "meta",
                False,
            ),
            (
                text_message("f4", "alice", "nowhere", groupId="no-such-group"),
                "not_found",
                "groupId",
                False,
            ),
        ]
        for frame, reason, field, schema_refuses in refusals:
            await (a1.send_refused if schema_refuses else a1.send)(frame)
            failed = await a1.expect("receipt", status="failed", id=frame["id"])
            assert (failed["reason"], failed["field"]) == (reason, field)
        await a1.send_refused(text_message("f5", "alice", "", recipientId="bob"))
        assert (await a1.expect("receipt", id="f5"))["reason"] == "invalid"
        await a1.send_refused(text_message("f6", "alice", "two", recipientId="bob", groupId="g"))
        assert (await a1.expect("receipt", id="f6"))["reason"] == "invalid"
        for device in (b1, b2, a2):
            assert of_type(await device.barrier(), "message") == []

        # forbidden: receipts for a conversation the user has none in, someone else's status
        await a1.send({"type": "receipt", "peerId": "carol", "seq": 1, "status": "read"})
        await a1.expect("error", code="forbidden", field="peerId")
        await a1.send({"type": "status", "status": "busy", "userId": "bob", "ref": "s"})
        await a1.expect("error", code="forbidden", ref="s")


@covers("message", "receipt:sent", "receipt:delivered")
async def test_e2e_store_and_forward_in_seq_order_with_redelivery(nursery: trio.Nursery) -> None:
    relay = await relay_on(nursery)
    url = relay.url
    async with peer(url, "alice", deviceId="phone", acks=True) as alice:
        for n in (1, 2, 3):
            await alice.send(text_message(f"m{n}", "alice", f"text {n}", recipientId="bob"))
            assert (await alice.expect("receipt", status="sent", id=f"m{n}"))["seq"] == n

        async def backlog(p: Peer) -> list[int]:
            return [(await p.expect("message"))["seq"] for _ in range(3)]

        async with peer(url, "bob", deviceId="phone", acks=True) as bob:
            assert await backlog(bob) == [1, 2, 3]  # the backlog follows auth_ok, oldest first
        # not acknowledged (acks: true): sent again on the next connection
        async with peer(url, "bob", deviceId="phone", acks=True) as bob:
            assert await backlog(bob) == [1, 2, 3]
            await bob.send({"type": "receipt", "peerId": "alice", "seq": 3, "status": "delivered"})
            ack = await alice.expect("receipt", status="delivered")
            assert (ack["id"], ack["seq"], ack["userId"]) == ("m3", 3, "bob")
            await bob.barrier()
        async with peer(url, "bob", deviceId="phone", acks=True) as bob:
            assert of_type(await bob.barrier(), "message") == []
        async with peer(url, "bob", deviceId="tablet", acks=True) as tablet:
            # a new device starts at the user's delivered watermark
            assert of_type(await tablet.barrier(), "message") == []
        await alice.send(text_message("m4", "alice", "text 4", recipientId="bob"))
        await alice.expect("receipt", status="sent", id="m4")
        async with peer(url, "bob") as original:  # acks false: delivered once written
            assert (await original.expect("message"))["id"] == "m4"
            assert (await alice.expect("receipt", status="delivered"))["id"] == "m4"


@covers("status:online", "status:away", "status:busy", "status:offline", "presence", "typing")
async def test_e2e_presence_and_typing(nursery: trio.Nursery) -> None:
    relay = await relay_on(nursery, presence_grace=0.4, typing_lapse=0.3)
    url = relay.url
    async with peer(url, "alice", deviceId="phone") as alice:
        async with peer(url, "bob", deviceId="phone") as bob:
            await bob.send(text_message("hi", "bob", "hi", recipientId="alice"))
            await alice.expect("message", id="hi")  # now they share a conversation
        offline = await alice.expect("status", userId="bob", status="offline")
        assert offline["lastSeen"] <= offline["timestamp"]
        await alice.send({"type": "presence", "userIds": ["bob", "carol"], "ref": "q1"})
        answer = await alice.expect("presence", ref="q1")
        assert [(u["userId"], u["status"]) for u in answer["users"]] == [
            ("bob", "offline"),
            ("carol", "offline"),
        ]
        assert answer["users"][0]["lastSeen"] == offline["lastSeen"]
        assert answer["users"][1]["lastSeen"] is None

        async with peer(url, "bob", deviceId="phone") as bob:
            await alice.expect("status", userId="bob", status="online")
            for status in ("away", "busy"):
                await bob.send({"type": "status", "status": status})
                await alice.expect("status", userId="bob", status=status)
            await alice.send({"type": "presence", "userIds": ["bob"]})
            assert (await alice.expect("presence"))["users"] == [
                {"userId": "bob", "status": "busy", "lastSeen": None}
            ]

            await alice.send({"type": "typing", "recipientId": "bob", "state": "start"})
            await bob.expect("typing", userId="alice", state="start")
            await alice.send({"type": "typing", "recipientId": "bob", "state": "stop"})
            await bob.expect("typing", userId="alice", state="stop")
            await alice.send({"type": "typing", "recipientId": "bob", "state": "start"})
            await bob.expect("typing", userId="alice", state="start")
            await bob.expect("typing", userId="alice", state="stop")  # the lapse

        # a reconnect within the grace announces nothing
        async with peer(url, "bob", deviceId="phone"):
            pass
        async with peer(url, "bob", deviceId="phone") as bob:
            await trio.sleep(0.6)  # past the grace of the first close
            await bob.barrier()
            assert of_type(await alice.barrier(), "status") == []


@covers(
    "group:create",
    "group:add",
    "group:remove",
    "group:leave",
    "conversations",
    "history",
    "typing",
    "receipt:read",
    "receipt:failed",
    "error:not_found",
    "error:forbidden",
    "error:invalid",
)
async def test_e2e_groups_conversations_and_history(nursery: trio.Nursery) -> None:
    relay = await relay_on(nursery)
    url = relay.url
    async with (
        peer(url, "alice", deviceId="phone", acks=True) as alice,
        peer(url, "bob", deviceId="phone", acks=True) as bob,
        peer(url, "carol", deviceId="phone", acks=True) as carol,
    ):
        create = {"type": "group_create", "groupId": "g1", "name": "Runners", "members": ["bob"]}
        await alice.send({**create, "ref": "c"})
        made = await alice.expect("group", ref="c")
        assert (made["members"], made["createdBy"], made["event"]) == (
            ["alice", "bob"],
            "alice",
            "create",
        )
        assert "ref" not in await bob.expect("group", groupId="g1", event="create")
        await alice.send({**create, "ref": "c2"})
        assert (await alice.expect("error", code="invalid", ref="c2"))["field"] == "groupId"

        for n in (1, 2, 3):
            await alice.send(text_message(f"g{n}", "alice", f"group {n}", groupId="g1"))
            assert (await alice.expect("receipt", status="sent", id=f"g{n}"))["groupId"] == "g1"
            assert (await bob.expect("message", id=f"g{n}"))["seq"] == n
        await alice.send({"type": "typing", "groupId": "g1", "state": "start"})
        assert (await bob.expect("typing", userId="alice"))["groupId"] == "g1"
        assert of_type(await carol.barrier(), "message") == []

        # outsiders: no send, no history, no changes; unknown groups are not_found
        await carol.send(text_message("c1", "carol", "let me in", groupId="g1"))
        assert (await carol.expect("receipt", id="c1"))["reason"] == "forbidden"
        await carol.send({"type": "history", "groupId": "g1", "ref": "h"})
        await carol.expect("error", code="forbidden", ref="h")
        await carol.send({"type": "group_add", "groupId": "g1", "userIds": ["carol"], "ref": "a"})
        await carol.expect("error", code="forbidden", ref="a")
        await carol.send({"type": "typing", "groupId": "g1", "state": "start", "ref": "t"})
        await carol.expect("error", code="forbidden", ref="t")
        await carol.send({"type": "group_leave", "groupId": "nope", "ref": "n"})
        await carol.expect("error", code="not_found", ref="n")
        await carol.send({"type": "history", "groupId": "nope", "ref": "n2"})
        await carol.expect("error", code="not_found", ref="n2")

        # the conversation list and the read watermark in a group
        for n in (1, 2, 3, 4, 5):
            await alice.send(text_message(f"d{n}", "alice", f"direct {n}", recipientId="bob"))
            await bob.expect("message", id=f"d{n}")
        await bob.send({"type": "conversations", "ref": "l"})
        items = (await bob.expect("conversations", ref="l"))["items"]
        assert [(i.get("peerId"), i.get("groupId")) for i in items] == [
            ("alice", None),
            (None, "g1"),
        ]
        assert (items[0]["unread"], items[0]["lastSeq"], items[0]["readSeq"]) == (5, 5, 0)
        assert items[0]["lastMessage"]["id"] == "d5"
        assert (items[1]["name"], items[1]["unread"]) == ("Runners", 3)
        await bob.send({"type": "receipt", "groupId": "g1", "seq": 3, "status": "read"})
        read = await alice.expect("receipt", status="read", groupId="g1")
        assert (read["id"], read["userId"]) == ("g3", "bob")
        await bob.send({"type": "conversations"})
        items = (await bob.expect("conversations"))["items"]
        assert [i["unread"] for i in items] == [5, 0]

        # history pages, oldest first within a page
        async def page(**query: Any) -> tuple[list[int], bool]:
            await bob.send({"type": "history", "peerId": "alice", **query, "ref": "p"})
            got = await bob.expect("history", ref="p")
            assert got["peerId"] == "alice"
            return [m["seq"] for m in got["messages"]], got["hasMore"]

        assert await page(limit=2) == ([4, 5], True)
        assert await page(before=4, limit=2) == ([2, 3], True)
        assert await page(before=2) == ([1], False)
        assert await page(after=3, limit=10) == ([4, 5], False)
        assert await page(after=0, limit=5) == ([1, 2, 3, 4, 5], False)

        # membership: any member adds, only the creator removes others, anyone leaves
        await bob.send({"type": "group_add", "groupId": "g1", "userIds": ["carol"], "ref": "add"})
        added = await bob.expect("group", ref="add")
        assert (added["event"], added["members"]) == ("add", ["alice", "bob", "carol"])
        for other in (alice, carol):
            await other.expect("group", event="add")
        await bob.send({"type": "group_remove", "groupId": "g1", "userIds": ["alice"], "ref": "r"})
        await bob.expect("error", code="forbidden", ref="r")
        await alice.send({"type": "group_remove", "groupId": "g1", "userIds": ["carol"]})
        for member in (alice, bob, carol):  # the removed user learns it too
            gone = await member.expect("group", event="remove")
            assert gone["members"] == ["alice", "bob"]
        await bob.send({"type": "group_leave", "groupId": "g1", "ref": "bye"})
        assert (await bob.expect("group", ref="bye"))["members"] == ["alice"]
        assert (await alice.expect("group", event="leave"))["members"] == ["alice"]


@covers("receipt:delivered", "receipt:read", "history")
async def test_e2e_receipt_catch_up_and_history_statuses(nursery: trio.Nursery) -> None:
    # the frames of "Catch-up after reconnecting" and the statuses of `history`, as documented
    relay = await relay_on(nursery)
    url = relay.url
    async with peer(url, "alice", deviceId="phone") as alice:
        await alice.send({"type": "group_create", "groupId": "g1", "name": "G",
                          "members": ["bob"], "ref": "c"})  # fmt: skip
        await alice.expect("group", ref="c")
        for mid, target in (("d1", {"recipientId": "bob"}), ("d2", {"recipientId": "bob"}),
                            ("g1", {"groupId": "g1"})):  # fmt: skip
            await alice.send(text_message(mid, "alice", "hi", **target))
            await alice.expect("receipt", status="sent", id=mid)
    async with peer(url, "bob", deviceId="phone", acks=True) as bob:
        for mid in ("d1", "d2", "g1"):
            await bob.expect("message", id=mid)
        await bob.send({"type": "receipt", "peerId": "alice", "seq": 2, "status": "delivered"})
        await bob.send({"type": "receipt", "peerId": "alice", "seq": 1, "status": "read"})
        await bob.send({"type": "receipt", "groupId": "g1", "seq": 1, "status": "read"})
        await bob.barrier()
    async with peer(url, "alice", deviceId="phone") as alice:
        got = [await alice.expect("receipt") for _ in range(4)]
        got += of_type(await alice.barrier(), "receipt")
        assert sorted((r["status"], r["id"], r.get("peerId"), r.get("groupId")) for r in got) == [
            ("delivered", "d2", "bob", None), ("delivered", "g1", None, "g1"),
            ("read", "d1", "bob", None), ("read", "g1", None, "g1"),
        ]  # fmt: skip
        assert {r["userId"] for r in got} == {"bob"}
        for target, statuses in (({"peerId": "bob"}, ["read", "delivered"]),
                                 ({"groupId": "g1"}, ["read"])):  # fmt: skip
            await alice.send({"type": "history", **target, "ref": "h"})
            page = await alice.expect("history", ref="h")
            assert [m["status"] for m in page["messages"]] == statuses


@covers("receipt:sent", "receipt:failed")
async def test_e2e_message_rate_limit(nursery: trio.Nursery) -> None:
    relay = await relay_on(nursery, rate_limit_messages=0.01, rate_limit_burst=3)
    async with peer(relay.url, "alice") as alice:
        for n in range(4):
            await alice.send(text_message(f"r{n}", "alice", "flood", recipientId="bob"))
        answers = [(await alice.expect("receipt", id=f"r{n}"))["status"] for n in range(4)]
        assert answers == ["sent", "sent", "sent", "failed"]
        assert alice.pending == [] or of_type(alice.pending, "receipt") == []
        await alice.send(text_message("r4", "alice", "flood", recipientId="bob"))
        assert (await alice.expect("receipt", id="r4"))["reason"] == "rate_limited"


@define
class TokenFile:
    """An Authenticator: each line of the file is `<token> <userId>`; read at every auth."""

    path: Path

    async def authenticate(self, frame: AuthFrame) -> str:
        text = await trio.Path(self.path).read_text()
        tokens = dict(line.split() for line in text.splitlines() if line.strip())
        user = tokens.get(frame.token or "")
        if user is None:
            raise FrameError("auth_failed", "unknown token")
        if user != frame.user_id:
            raise FrameError("auth_failed", "the token belongs to another user")
        return user


@covers("auth_ok", "error:auth_failed", "error:internal", "close:1008", "close:1011")
async def test_e2e_token_authentication(nursery: trio.Nursery, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("t-alice alice\n")
    config = RelayConfig(**TEST_DEFAULTS)
    service = MessagingService(config, MemoryStore(), authenticator=TokenFile(tokens))
    relay = Relay(config, handler=service)
    await nursery.start(relay.serve)
    async with peer(relay.url, "alice", token="t-alice") as alice:
        assert alice.auth_ok["userId"] == "alice"
    for token in ("t-alice", "forged"):  # someone else's token, an unknown one
        async with peer(relay.url) as mallory:
            await mallory.send({"type": "auth", "userId": "mallory", "token": token})
            await mallory.expect("error", code="auth_failed")
            assert await mallory.closed() == 1008
    tokens.unlink()  # the token backend is gone: the relay cannot authenticate anyone
    async with peer(relay.url) as alice:
        await alice.send({"type": "auth", "userId": "alice", "token": "t-alice"})
        await alice.expect("error", code="internal")
        assert await alice.closed() == 1011


@covers("close:1000", "close:1001", "close:1002", "close:1003", "close:1007", "close:1009")
async def test_e2e_transport_close_codes(nursery: trio.Nursery) -> None:
    relay = await relay_on(nursery, max_message_bytes=1024)
    async with peer(relay.url, "alice") as alice:
        await alice.ws.send_message(b"\x00binary")
        assert await alice.closed() == 1003
    async with peer(relay.url, "alice") as alice:
        await alice.send_text('{"type":"ping","ref":"' + "x" * 1024 + '"}')
        assert await alice.closed() == 1009
    for close_code in (1000, 1001):  # the relay echoes the client's close code
        raw = await RawWs.connect(relay)
        await raw.send(mask_frame(0x8, struct.pack("!H", close_code)))
        code, _ = await raw.expect_close()
        _seen(f"close:{code}")
        assert code == close_code
        await raw.aclose()
    raw = await RawWs.connect(relay)
    await raw.send(mask_frame(0x1, b'{"type":"ping"}', masked=False))
    code, _ = await raw.expect_close()
    _seen(f"close:{code}")
    assert code == 1002
    await raw.aclose()
    raw = await RawWs.connect(relay)
    await raw.send(mask_frame(0x1, b'{"type":"\xff"}'))
    code, _ = await raw.expect_close()
    _seen(f"close:{code}")
    assert code == 1007
    await raw.aclose()


@covers("close:1011")
async def test_e2e_heartbeat_closes_a_silent_peer_with_1011(nursery: trio.Nursery) -> None:
    relay = await relay_on(nursery, heartbeat_interval=0.2, heartbeat_timeout=0.2)
    raw = await RawWs.connect(relay)  # never answers the relay's pings
    with trio.fail_after(WAIT):
        code, _ = await raw.expect_close()
    _seen(f"close:{code}")
    assert code == 1011
    await raw.aclose()


@covers("auth_ok", "close:1012")
async def test_e2e_shutdown_closes_with_1012(nursery: trio.Nursery) -> None:
    scope = trio.CancelScope()

    async def run_relay(*, task_status: trio.TaskStatus[Relay]) -> None:
        with scope:
            async with trio.open_nursery() as inner:
                task_status.started(await relay_on(inner))

    relay = await nursery.start(run_relay)
    async with peer(relay.url, "alice", deviceId="phone") as alice:
        scope.cancel()
        assert await alice.closed() == 1012


@covers("receipt:sent", "history", "close:1013")
async def test_e2e_slow_consumer_is_closed_with_1013_and_loses_nothing(
    nursery: trio.Nursery,
) -> None:
    relay = await relay_on(
        nursery,
        outbox_max_frames=32,
        outbox_max_bytes=64 * 1024,
        rate_limit_messages=10_000.0,
        rate_limit_burst=10_000,
    )
    raw = await RawWs.connect(relay)
    await raw.send_text(b'{"type":"auth","userId":"bob","deviceId":"phone","acks":true}')
    _, payload = await raw.recv_frame()
    doc.check("server", orjson.loads(payload))
    sent = 0
    async with peer(relay.url, "alice") as alice:
        while relay.metrics.stats.slow_consumer_closes == 0:  # bob never reads
            assert sent < 5000, "the relay never gave up on a consumer that does not read"
            batch = [
                text_message(f"s{sent + i}", "alice", "y" * 4000, recipientId="bob")
                for i in range(50)
            ]
            for frame in batch:
                await alice.send(frame)
            for frame in batch:
                await alice.expect("receipt", status="sent", id=frame["id"])
            sent += len(batch)
        code, _ = await raw.expect_close()
        _seen(f"close:{code}")
        assert code == 1013
        await raw.aclose()
        seqs: list[int] = []
        while len(seqs) < sent:  # every message acknowledged `sent` is in the store
            await alice.send({"type": "history", "peerId": "bob", "after": len(seqs), "limit": 10})
            seqs += [m["seq"] for m in (await alice.expect("history"))["messages"]]
        assert seqs == list(range(1, sent + 1))
    async with peer(relay.url, "bob", deviceId="phone", acks=True) as bob:  # and reach bob
        for seq in range(1, sent + 1):
            assert (await bob.expect("message"))["seq"] == seq
            await bob.send(
                {"type": "receipt", "peerId": "alice", "seq": seq, "status": "delivered"}
            )


@covers("message", "receipt:sent")
async def test_e2e_a_backlog_larger_than_the_outbox_reaches_the_next_connection(
    nursery: trio.Nursery,
) -> None:
    # Contract: what a connection could not take "waits in the store for the next connection.
    # Nothing is lost." A device that reads and acknowledges as it goes must get its backlog.
    relay = await relay_on(
        nursery, outbox_max_bytes=64 * 1024, rate_limit_messages=10_000.0, rate_limit_burst=10_000
    )
    count = 40  # 40 x 4000 characters: more than one outbox holds
    async with peer(relay.url, "alice") as alice:
        for n in range(count):
            await alice.send(text_message(f"b{n}", "alice", "z" * 4000, recipientId="bob"))
        for n in range(count):
            await alice.expect("receipt", status="sent", id=f"b{n}")
    async with peer(relay.url, "bob", deviceId="phone", acks=True) as bob:
        for seq in range(1, count + 1):
            got = await bob.expect("message")
            assert got["seq"] == seq
            await bob.send(
                {"type": "receipt", "peerId": "alice", "seq": seq, "status": "delivered"}
            )


def test_schema_limits_match_the_relay() -> None:
    """The limits the schemas bake in are the ones relay.protocol and RelayConfig enforce."""
    defs = doc.schemas["common"]["$defs"]
    config = RelayConfig()
    assert defs["messageId"]["maxLength"] == protocol.MESSAGE_ID_MAX
    assert defs["userId"]["maxLength"] == defs["groupId"]["maxLength"] == protocol.IDENT_MAX
    assert defs["shortText"]["maxLength"] == defs["clientTime"]["maxLength"]
    assert defs["shortText"]["maxLength"] == protocol.SHORT_TEXT_MAX
    props = {n: s.get("properties", {}) for n, s in doc.schemas.items()}
    assert props["client/message"]["text"]["maxLength"] == config.max_text_chars
    assert props["client/auth"]["token"]["maxLength"] == protocol.TOKEN_MAX
    assert props["client/auth"]["deviceId"]["maxLength"] == protocol.IDENT_MAX
    assert props["client/presence"]["userIds"]["maxItems"] == protocol.PRESENCE_QUERY_MAX
    assert props["client/history"]["limit"]["maximum"] == protocol.HISTORY_LIMIT_MAX
    assert props["client/history"]["limit"]["default"] == protocol.HISTORY_LIMIT_DEFAULT
    assert props["client/conversations"]["limit"]["maximum"] == protocol.CONVERSATIONS_LIMIT_MAX
    assert props["client/conversations"]["limit"]["default"] == protocol.CONVERSATIONS_LIMIT_DEFAULT
    assert props["client/group_create"]["name"]["maxLength"] == protocol.GROUP_NAME_MAX
    for name, key in (
        ("client/group_create", "members"),
        ("client/group_add", "userIds"),
        ("client/group_remove", "userIds"),
    ):
        assert props[name][key]["maxItems"] == config.max_group_members
    assert set(props["client/status"]["status"]["enum"]) == set(protocol.USER_STATUSES)
    assert set(props["client/receipt"]["status"]["enum"]) == set(protocol.RECEIPT_STATUSES)
    assert set(protocol.CLIENT_FRAME_TYPES) == CLIENT_TYPES


@covers("history")
async def test_e2e_history_pages_larger_than_the_outbox_are_answered(
    nursery: trio.Nursery,
) -> None:
    # Contract: `limit` may be up to 100. With the default 1 MiB outbox, 100 messages of 4096
    # four-byte characters (1.6 MiB) make such a page; here the outbox is scaled down. The
    # relay answers (a page cut short by size says hasMore), it does not close with 1013.
    relay = await relay_on(nursery, outbox_max_bytes=64 * 1024)
    async with peer(relay.url, "alice") as alice:
        for n in range(20):
            await alice.send(text_message(f"h{n}", "alice", "\U0001f600" * 1000, recipientId="bob"))
        for n in range(20):
            await alice.expect("receipt", status="sent", id=f"h{n}")
        for direction in ("before", "after"):
            seqs: list[int] = []
            cursor = 21 if direction == "before" else 0
            more = True
            while more:
                await alice.send(
                    {"type": "history", "peerId": "bob", direction: cursor, "limit": 20, "ref": "p"}
                )
                page = await alice.expect("history", ref="p")
                got = [m["seq"] for m in page["messages"]]
                assert got and got == sorted(got)  # never empty while more, oldest first
                seqs = got + seqs if direction == "before" else seqs + got
                cursor = got[0] if direction == "before" else got[-1]
                more = page["hasMore"]
            assert seqs == list(range(1, 21))


@covers("conversations")
async def test_e2e_a_conversation_list_larger_than_the_outbox_is_answered(
    nursery: trio.Nursery,
) -> None:
    # With the default 1 MiB outbox, 100 conversations whose last messages are 4096 four-byte
    # characters make a 1.6 MiB list; here the outbox is scaled down. The list is answered
    # (newest first, `hasMore` when cut short), not with a 1013 close on every request.
    relay = await relay_on(nursery, outbox_max_bytes=64 * 1024)
    peers = [f"user_{n:02d}" for n in range(20)]
    async with peer(relay.url, "alice") as alice:
        for n, other in enumerate(peers):
            await alice.send(text_message(f"c{n}", "alice", "\U0001f600" * 1000, recipientId=other))
        for n in range(len(peers)):
            await alice.expect("receipt", status="sent", id=f"c{n}")
        await alice.send({"type": "conversations", "ref": "all"})
        answer = await alice.expect("conversations", ref="all")
        listed = [i["peerId"] for i in answer["items"]]
        assert listed and listed == peers[::-1][: len(listed)]  # the newest, newest first
        assert answer.get("hasMore", False) == (len(listed) < len(peers))


@covers("error:rate_limited", "group:create", "group:leave")
async def test_e2e_group_changes_over_the_users_limit_are_rate_limited(
    nursery: trio.Nursery,
) -> None:
    relay = await relay_on(nursery, group_rate_limit=0.001, group_rate_burst=2)
    async with peer(relay.url, "alice") as alice, peer(relay.url, "alice") as phone:
        for n in range(2):
            await alice.send({"type": "group_create", "groupId": f"g{n}", "ref": f"c{n}"})
            await alice.expect("group", ref=f"c{n}")
        # the user's budget, whichever device asks
        await phone.send({"type": "group_create", "groupId": "g2", "ref": "c2"})
        refused = await phone.expect("error", code="rate_limited")
        assert (refused["ref"], refused.get("field")) == ("c2", None)
        await alice.send({"type": "group_leave", "groupId": "g0", "ref": "l0"})  # never limited
        assert (await alice.expect("group", ref="l0"))["event"] == "leave"


@covers("error:bad_json", "receipt:failed", "receipt:sent", "conversations", "history")
async def test_e2e_json_nested_too_deep_is_refused_and_never_stored(nursery: trio.Nursery) -> None:
    def deep_meta(ident: str, depth: int) -> str:
        meta = '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)
        return f'{{"type":"message","id":"{ident}","recipientId":"bob","text":"hi","meta":{meta}}}'

    relay = await relay_on(nursery)
    async with peer(relay.url) as alice:
        await alice.send_text(deep_meta("m0", 300))  # before auth: answered, not closed (1011)
        assert "deeper than 32" in (await alice.expect("error", code="bad_json"))["message"]
        await alice.send({"type": "auth", "userId": "alice"})
        await alice.expect("auth_ok")
        await alice.send_text(deep_meta("m1", protocol.META_DEPTH_MAX))
        await alice.expect("receipt", status="sent", id="m1")
        for depth in (protocol.META_DEPTH_MAX + 1, 254):
            await alice.send_text(deep_meta("m2", depth))
        failed = await alice.expect("receipt", status="failed", id="m2")
        assert (failed["reason"], failed["field"]) == ("invalid", "meta")
        await alice.expect("error", code="bad_json")
        await alice.send({"type": "conversations", "ref": "c"})
        listed = await alice.expect("conversations", ref="c")
        assert [i["lastMessage"]["id"] for i in listed["items"]] == ["m1"]
        await alice.send({"type": "history", "peerId": "bob", "ref": "h"})
        assert [m["id"] for m in (await alice.expect("history", ref="h"))["messages"]] == ["m1"]


async def test_e2e_http_endpoints_as_documented(nursery: trio.Nursery) -> None:
    relay = await relay_on(nursery)
    assert await http_get(relay, "/healthz") == (200, b"ok")
    assert await http_get(relay, "/healthz", method="HEAD") == (200, b"")
    assert (await http_get(relay, "/metrics", method="POST"))[0] == 405
    assert (await http_get(relay, "/nope"))[0] == 404
    assert (await http_get(relay, "/"))[0] == 404  # documented: no web chat served yet
    status, body = await http_get(relay, "/metrics")
    assert status == 200
    exposed = {line.split("{")[0].split(" ")[0] for line in body.decode().splitlines()}
    # every family by its TYPE line: histograms, and labelled counters with no sample yet
    exposed |= {line.split()[2] for line in body.decode().splitlines() if line.startswith("# TYPE")}
    documented = {row[0].strip("`").split("{")[0] for row in doc.table_rows("| metric | kind |")}
    assert len(documented) >= 10
    assert documented <= exposed, f"documented but not exposed: {documented - exposed}"


@pytest.mark.parametrize(
    "example",
    [e for n, e in doc.examples if n.startswith("client/")],
    ids=[f"{n}-{i}" for i, (n, _) in enumerate(doc.examples) if n.startswith("client/")],
)
def test_client_examples_are_accepted_by_the_relays_parser(example: dict[str, Any]) -> None:
    frame = protocol.parse_client_frame(orjson.dumps(example), protocol.Limits())
    assert type(frame).__name__.lower().startswith(example["type"].replace("_", ""))


@covers("call_invite", "call_ringing", "call_accept", "call_end", "call_signal")
async def test_e2e_calls(nursery: trio.Nursery) -> None:
    # contract v2, Calls: every frame both ways checked against its schema
    relay = await relay_on(nursery)
    sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\n"
    async with (
        peer(relay.url, "alice", deviceId="laptop") as alice,
        peer(relay.url, "bob", deviceId="phone") as phone,
        peer(relay.url, "bob", deviceId="watch") as watch,
    ):
        assert alice.auth_ok["iceServers"] == []
        await alice.send(
            {"type": "call_invite", "callId": "c1", "peerId": "bob", "media": "video",
             "sdp": sdp, "ref": "i"}
        )  # fmt: skip
        assert (await alice.expect("call_ringing"))["ref"] == "i"
        assert (await phone.expect("call_invite"))["callerId"] == "alice"
        await watch.expect("call_invite")
        await alice.send({"type": "call_signal", "callId": "c1", "payload": {"candidate": "x"}})
        await watch.expect("call_signal")
        await phone.send({"type": "call_accept", "callId": "c1", "sdp": sdp})
        assert (await alice.expect("call_accept"))["deviceId"] == "phone"
        assert (await watch.expect("call_end"))["reason"] == "answered_elsewhere"
        await phone.send_refused({"type": "call_signal", "callId": "c1", "payload": [1]})
        assert (await phone.expect("error", code="invalid"))["field"] == "payload"
        await phone.send({"type": "call_end", "callId": "c1"})
        assert (await alice.expect("call_end"))["reason"] == "hangup"
        record = await alice.expect("message")
        assert record["call"]["outcome"] == "answered" and "meta" not in record


@covers("keys")
async def test_e2e_keys(nursery: trio.Nursery) -> None:
    # contract v2, End-to-end encryption: the key directory, checked against its schemas
    relay = await relay_on(nursery)
    published = {
        "type": "keys_publish",
        "deviceId": "phone",
        "identityKey": "A" * 43 + "=",
        "encKey": "B" * 43 + "=",
        "signature": "C" * 86 + "==",
    }
    async with peer(relay.url, "bob", deviceId="phone") as bob, peer(relay.url, "alice") as alice:
        await bob.send({**published, "ref": "p"})
        own = await bob.expect("keys", ref="p")
        assert [d["deviceId"] for d in own["devices"]] == ["phone"]
        await alice.send({"type": "keys_get", "userId": "bob", "ref": "g"})
        (device,) = (await alice.expect("keys", ref="g"))["devices"]
        assert device["encKey"] == published["encKey"]
        await alice.send({**published, "ref": "f"})
        assert (await alice.expect("error", code="forbidden", ref="f"))["field"] == "deviceId"
        await alice.send_refused({**published, "encKey": "short", "ref": "s"})
        assert (await alice.expect("error", code="invalid", ref="s"))["field"] == "encKey"


@covers("search_result", "error:invalid", "error:forbidden")
async def test_e2e_search_as_documented(nursery: trio.Nursery) -> None:
    relay = await relay_on(nursery)
    async with peer(relay.url, "alice") as alice, peer(relay.url, "bob") as bob:
        for n, text in enumerate(["Run tomorrow?", "see you at the café", "running late"]):
            await alice.send(text_message(f"s{n}", "alice", text, recipientId="bob"))
            await alice.expect("receipt", status="sent", id=f"s{n}")
        await bob.send({"type": "search", "query": "run*", "limit": 1, "ref": "q1"})
        first = await bob.expect("search_result", ref="q1")
        assert ([m["id"] for m in first["items"]], first["hasMore"]) == (["s2"], True)
        await bob.send({"type": "search", "query": "run*", "before": first["next"], "ref": "q2"})
        rest = await bob.expect("search_result", ref="q2")
        assert ([m["id"] for m in rest["items"]], rest["hasMore"]) == (["s0"], False)
        assert "next" not in rest
        await bob.send(
            {"type": "search", "query": '"SEE YOU" cafe', "peerId": "alice", "ref": "q3"}
        )
        assert [m["id"] for m in (await bob.expect("search_result", ref="q3"))["items"]] == ["s1"]
        await bob.send_refused({"type": "search", "query": "run", "limit": 0, "ref": "q4"})
        assert (await bob.expect("error", code="invalid", ref="q4"))["field"] == "limit"
        await bob.send({"type": "search", "query": "x", "groupId": "nobody's", "ref": "q5"})
        await bob.expect("error", ref="q5")
        await alice.send({"type": "group_create", "groupId": "g", "members": [], "ref": "g"})
        await alice.expect("group", ref="g")
        await bob.send({"type": "search", "query": "x", "groupId": "g", "ref": "q6"})
        await bob.expect("error", code="forbidden", ref="q6")


async def test_every_metric_the_relay_exports_is_in_the_metrics_table(
    nursery: trio.Nursery,
) -> None:
    # An operator's dashboard is built from the table: a family missing from it is invisible.
    relay = await relay_on(nursery)
    text = relay.metrics.render().decode()
    families = set(re.findall(r"^# TYPE (relay_\w+) (\w+)$", text, re.M))
    assert ("relay_joining_waiting", "gauge") in families
    table = set(re.findall(r"^\| `(relay_\w+)(?:\{[\w,]+\})?` \| (\w+) \|", DOC_TEXT, re.M))
    missing = {
        (name, kind)
        for name, kind in families
        if (name, kind) not in table
        and (name.removesuffix("_total"), kind) not in table
        and (f"{name}_total", kind) not in table
    }
    assert not missing, f"exported but not in docs/PROTOCOL.md's metrics table: {sorted(missing)}"
