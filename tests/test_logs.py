"""The relay's log as an operator reads it: lines a real relay (127.0.0.1, port 0) writes while
real WebSocket clients connect, sign in (or are refused), send messages and break the protocol,
in both formats (`text`, `json`), and the JSON lines of `relay serve --log-format json`.

What users rely on: one line per connection opened and closed (code, reason, who closed), a
refused sign-in with its reason, a protocol violation, a slow consumer's close; every JSON line
an object with ts/level/logger/msg; never a message's text, a token or the secret, not even at
DEBUG; no traceback for a client's mistake."""

from __future__ import annotations

import io
import logging
import os
import re
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
import trio
from support import JsonClient, RawWs, mask_frame, served, slow_reader, start_relay
from trio_websocket import open_websocket_url

from relay import Relay
from relay.logs import JsonFormatter, formatter, rfc3339
from relay.store.sqlite import SqliteStore

WAIT = 3.0
SECRET = "k" * 40
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.fixture(params=["text", "json"])
def log_format(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def captured(log_format: str) -> Iterator[io.StringIO]:
    """Everything the relay's loggers write at DEBUG, formatted as `relay serve` would."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter(log_format))
    logger = logging.getLogger("relay")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def token(user: str, *, secret: str = SECRET) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + 600}, secret, "HS256")


@asynccontextmanager
async def client(relay: Relay) -> AsyncIterator[JsonClient]:
    async with open_websocket_url(relay.url) as ws:
        yield JsonClient(ws, WAIT)


async def all_closed(relay: Relay) -> None:
    """Until every connection's teardown (and so its closing line) ran."""
    with trio.fail_after(WAIT):
        while True:
            if not relay.metrics.stats.connections_open:
                return
            await trio.sleep(0.01)


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = [orjson.loads(line) for line in text.splitlines()]
    for line in lines:
        assert isinstance(line, dict)
        assert RFC3339.match(line["ts"]), line
        assert line["level"] in ("debug", "info", "warning", "error", "critical"), line
        assert line["logger"].startswith("relay"), line
        assert isinstance(line["msg"], str) and line["msg"], line
    return lines


def find(lines: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [line for line in lines if all(line.get(k) == v for k, v in match.items())]


# --- a relay in this process ------------------------------------------------------------------


async def test_connections_refusals_and_violations_are_logged_without_secrets(
    nursery: trio.Nursery, captured: io.StringIO, log_format: str
) -> None:
    relay = await start_relay(nursery, auth_secret=SECRET)
    unique = f"unique-text-{uuid.uuid4().hex}"
    tokens = [token("alice"), token("bob"), token("mallory", secret="w" * 40)]

    async with client(relay) as alice, client(relay) as bob:
        await alice.send({"type": "auth", "userId": "alice", "token": tokens[0]})
        await bob.send({"type": "auth", "userId": "bob", "token": tokens[1]})
        await alice.expect("auth_ok")
        await bob.expect("auth_ok")
        await alice.send({"type": "message", "id": "m1", "recipientId": "bob", "text": unique})
        await alice.expect("receipt", id="m1", status="sent")
        assert (await bob.expect("message", id="m1"))["text"] == unique
        # client mistakes carrying the text: a frame that is not JSON, an unknown type
        await alice.send('{"type":"message","text":"' + unique)
        await alice.expect("error", code="bad_json")
        await alice.send({"type": unique, "text": unique})
        await alice.expect("error", code="unknown_type")
        async with client(relay) as mallory:
            await mallory.send({"type": "auth", "userId": "mallory", "token": tokens[2]})
            assert (await mallory.expect("error"))["code"] == "auth_failed"
            assert await mallory.closed() == 1008
        raw = await RawWs.connect(relay)
        await raw.send(mask_frame(0x2, unique.encode()))  # binary: closed 1003
        assert (await raw.expect_close())[0] == 1003
        await raw.aclose()
        await alice.ws.aclose(code=1000, reason="bye")
    await all_closed(relay)

    text = captured.getvalue()
    for secret in (unique, SECRET, *tokens):
        assert secret not in text
    assert "Traceback" not in text
    if log_format == "text":
        assert re.search(r"sign-in refused \(bad_signature\).* reason=bad_signature", text)
        assert re.search(r"closed: 1000 bye \(by peer\)", text)
        assert re.search(r"broke the WebSocket protocol: closing 1003", text)
        assert re.search(r"malformed frame: bad_json .*code=bad_json", text)
        return

    lines = json_lines(text)
    assert not [line for line in lines if "exc" in line]
    opened = find(lines, logger="relay.transport", level="info")
    opened = [line for line in opened if "opened" in line["msg"]]
    assert len(opened) == 4 and all(line["peer"].startswith("127.0.0.1:") for line in opened)
    conns = {line["conn"] for line in opened}
    closed = [line for line in lines if "closed:" in line["msg"]]
    assert {line["conn"] for line in closed} == conns  # one line each
    assert len(closed) == 4
    (bye,) = find(lines, reason="bye")
    assert (bye["code"], bye["by"], bye["level"]) == (1000, "peer", "info")
    (refused,) = find(lines, logger="relay.auth")
    assert (refused["reason"], refused["user"], refused["level"]) == (
        "bad_signature",
        "mallory",
        "info",
    )
    assert refused["conn"] in conns and refused["peer"].startswith("127.0.0.1:")
    assert find(lines, conn=refused["conn"], code=1008, by="relay")
    violation = [line for line in lines if "broke the WebSocket protocol" in line["msg"]]
    assert [(v["code"], v["level"]) for v in violation] == [(1003, "info")]
    malformed = find(lines, logger="relay.core", code="bad_json")
    assert [m["level"] for m in malformed] == ["info"]
    # the same connection's next malformed frame: DEBUG (no flooding at INFO)
    assert [m["level"] for m in find(lines, logger="relay.core", code="unknown_type")] == ["debug"]
    signed_in = find(lines, logger="relay.core", level="debug", user="alice")
    assert signed_in and signed_in[0]["conn"] in conns


async def test_a_slow_consumer_close_is_a_warning(
    nursery: trio.Nursery, captured: io.StringIO, log_format: str
) -> None:
    relay = await start_relay(
        nursery,
        outbox_max_frames=32,
        outbox_max_bytes=64 * 1024,
        rate_limit_messages=10_000.0,
        rate_limit_burst=10_000,
    )
    slow = await slow_reader(relay)
    await slow.send_text(b'{"type":"auth","userId":"bob"}')
    async with client(relay) as alice:
        await alice.send({"type": "auth", "userId": "alice"})
        await alice.expect("auth_ok")
        sent = 0
        while relay.metrics.stats.slow_consumer_closes == 0:  # bob never reads
            assert sent < 5000, "the relay never gave up on a consumer that does not read"
            for i in range(50):
                frame = {"type": "message", "id": f"s{sent + i}", "recipientId": "bob"}
                await alice.send({**frame, "text": "y" * 4000})
            for i in range(50):
                await alice.expect("receipt", id=f"s{sent + i}", status="sent")
            sent += 50
    await slow.aclose()
    await all_closed(relay)

    text = captured.getvalue()
    assert "y" * 100 not in text
    if log_format == "text":
        assert re.search(r"WARNING relay\.transport: connection \d+ from .* closed: 1013", text)
        return
    lines = json_lines(text)
    (slow_line,) = find(lines, code=1013)
    assert (slow_line["level"], slow_line["by"]) == ("warning", "relay")
    assert slow_line["reason"].startswith("slow consumer")


def test_json_lines_carry_the_extra_fields_and_a_relay_fault_its_traceback() -> None:
    record = logging.LogRecord(
        "relay.core", logging.ERROR, __file__, 1, "went %s", ("wrong",), None
    )
    record.conn = 7
    record.user = "ann"
    line = orjson.loads(JsonFormatter().format(record))
    assert line == {
        "ts": rfc3339(record.created),
        "level": "error",
        "logger": "relay.core",
        "msg": "went wrong",
        "conn": 7,
        "user": "ann",
    }
    try:
        raise RuntimeError("a bug")
    except RuntimeError:
        faulty = logging.LogRecord(
            "relay.core", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    line = orjson.loads(JsonFormatter().format(faulty))
    assert "RuntimeError: a bug" in line["exc"]
    assert rfc3339(0.5) == "1970-01-01T00:00:00.500Z"


# --- relay serve --log-format json ------------------------------------------------------------

URL_LINE = re.compile(r"WebSocket server running on ws://\S+:(\d+)")


def test_relay_serve_writes_json_lines(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "relay", "serve", "--port", "0", "--memory"]
    with served([*command, "--log-format", "json"], cwd=tmp_path) as relay:
        match = URL_LINE.search(relay.line)
        assert match is not None, relay.line
        port = int(match.group(1))

        async def visit() -> None:
            async with open_websocket_url(f"ws://127.0.0.1:{port}") as ws:
                await ws.send_message(orjson.dumps({"type": "auth", "userId": "ann"}).decode())
                assert orjson.loads(await ws.get_message())["type"] == "auth_ok"

        trio.run(visit)
    stderr = relay.stderr
    lines = json_lines(stderr)
    messages = [line["msg"] for line in lines]
    assert any(m.startswith("listening on ws://") for m in messages), messages
    (opened,) = [line for line in lines if "opened from" in line["msg"]]
    (closed,) = [line for line in lines if "closed:" in line["msg"]]
    assert opened["conn"] == closed["conn"] and closed["code"] in (1000, 1012)
    assert messages[-1] == "stopped"


def test_an_unknown_log_format_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relay", "serve", "--port", "0", "--memory"],
        cwd=tmp_path,
        env={**os.environ, "RELAY_LOG_FORMAT": "xml"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "relay: error: log_format must be text or json, got 'xml'"


# --- store trouble ----------------------------------------------------------------------------


async def test_a_failed_store_write_is_a_warning_and_counted(
    nursery: trio.Nursery, captured: io.StringIO, log_format: str, tmp_path: Path
) -> None:
    path = tmp_path / "relay.db"
    relay = await start_relay(nursery, store=SqliteStore(str(path), busy_timeout=0.05))
    unique = f"unique-text-{uuid.uuid4().hex}"
    async with client(relay) as alice:
        await alice.send({"type": "auth", "userId": "alice"})
        await alice.expect("auth_ok")
        # another process holds the database's write lock longer than the busy timeout
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            await alice.send({"type": "message", "id": "m1", "recipientId": "bob", "text": unique})
            failed = await alice.expect("receipt", id="m1")
            assert (failed["status"], failed["reason"]) == ("failed", "internal")
        finally:
            other.execute("ROLLBACK")
            other.close()
        await alice.send({"type": "message", "id": "m2", "recipientId": "bob", "text": unique})
        await alice.expect("receipt", id="m2", status="sent")
    stats = relay.metrics.stats
    assert stats.store_failures == 1
    assert stats.messages_failed == {"internal": 1}

    text = captured.getvalue()
    assert unique not in text and "Traceback" not in text
    if log_format == "text":
        assert re.search(
            r"WARNING relay\.store: store write of 1 request\(s\) failed: .*locked", text
        )
        return
    (line,) = find(json_lines(text), logger="relay.store", level="warning")
    assert "database is locked" in line["msg"]
