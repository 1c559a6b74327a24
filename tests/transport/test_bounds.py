"""Memory bounds a hostile client cannot get past, on real sockets (docs/PROTOCOL.md, "Bounds
and exposure"): a reader that does not read, all outboxes together, connections and
handshakes per address, devices per user, frames before auth.

Time is trio's MockClock: the slow-consumer timeout and the handshake rate are logical time.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import orjson
import pytest
import trio
from attrs import define, field
from support import (
    FakeConn,
    RawWs,
    http_get,
    mask_frame,
    response_head,
    slow_reader,
    start_relay,
    upgrade_request,
)
from trio.testing import MockClock

from relay import Relay, RelayConfig
from relay.core import MessagingService
from relay.echo import EchoHandler
from relay.fastpath import OP_TEXT, encode_frame
from relay.ports import Connection
from relay.store.memory import MemoryStore
from relay.transport.websocket import PREAUTH_MESSAGE_BYTES, WebSocket

FRAME = encode_frame(OP_TEXT, b"x" * 16_000)
#: Heartbeats far away: these clients never answer pings.
QUIET = {"heartbeat_interval": 1000.0, "heartbeat_timeout": 1000.0}


@define(eq=False)
class Filler(EchoHandler):
    """Queues as many 16 kB frames as a client's message says; records connections and closes."""

    conns: list[WebSocket] = field(factory=list)
    closed: dict[int, int] = field(factory=dict)
    filled: trio.Event = field(factory=trio.Event)

    def on_open(self, conn: Connection) -> None:
        super().on_open(conn)
        assert isinstance(conn, WebSocket)
        self.conns.append(conn)

    async def on_messages(self, conn: Connection, payloads: list[bytes]) -> None:
        for payload in payloads:
            for _ in range(int(payload)):
                assert conn.send(FRAME)
        self.filled.set()

    def on_close(self, conn: Connection, code: int) -> None:
        self.closed[conn.id] = code


async def fill(relay: Relay, handler: Filler, frames: int) -> tuple[RawWs, WebSocket]:
    """A client that does not read, and its connection holding `frames` x 16 kB (what the
    kernel did not take)."""
    handler.filled = trio.Event()
    raw = await slow_reader(relay)
    await raw.send_text(str(frames))
    await handler.filled.wait()
    await trio.sleep(0.5)  # the kernel took what it takes
    conn = handler.conns[-1]
    assert conn.outbox.pending_bytes, "the kernel took it all: send more frames"
    return raw, conn


async def test_a_client_that_does_not_read_is_closed_1013_after_slow_consumer_timeout(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    handler = Filler()
    relay = await start_relay(nursery, handler=handler, slow_consumer_timeout=30.0, **QUIET)
    raw, conn = await fill(relay, handler, 50)  # 800 kB: under the 1 MiB outbox
    held = conn.queued_bytes
    assert 64 * 1024 < held < 1024 * 1024  # the worst case: all of it, for the timeout
    await trio.sleep(29.0)
    assert handler.closed == {}
    assert relay.metrics.stats.slow_consumer_closes == 0
    # closed by the first sweep after 30 s over the mark (sweeps every 30 / 4 s)
    await trio.sleep(2 * 30.0 / 4)
    assert handler.closed == {conn.id: 1013}
    assert relay.metrics.stats.slow_consumer_closes == 1
    await raw.aclose()


async def test_a_connection_at_or_under_the_mark_is_kept(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    handler = Filler()
    relay = await start_relay(
        nursery, handler=handler, slow_consumer_timeout=30.0, slow_consumer_bytes=4 << 20, **QUIET
    )
    raw, conn = await fill(relay, handler, 50)
    assert conn.queued_bytes > 64 * 1024
    await trio.sleep(100.0)
    assert handler.closed == {}
    await raw.aclose()


async def test_over_the_outbox_budget_the_biggest_outbox_is_closed_first(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    handler = Filler()
    relay = await start_relay(
        nursery,
        handler=handler,
        outbox_budget_bytes=300_000,
        slow_consumer_timeout=1000.0,
        heartbeat_interval=100.0,
        heartbeat_timeout=100.0,
    )
    small_raw, small = await fill(relay, handler, 12)
    big_raw, big = await fill(relay, handler, 60)
    assert big.queued_bytes > small.queued_bytes
    total = small.queued_bytes + big.queued_bytes
    assert total > 300_000 and total - big.queued_bytes <= 300_000
    await trio.sleep(100.0 / 4 + 1)  # one sweep
    assert handler.closed == {big.id: 1013}
    assert relay.metrics.stats.slow_consumer_closes == 1
    for raw in (small_raw, big_raw):
        await raw.aclose()


# --- per address ----------------------------------------------------------------------------


def port_of(relay: Relay) -> int:
    assert relay.address is not None
    return relay.address.port


async def test_connections_per_address_are_capped_with_429(nursery: trio.Nursery) -> None:
    relay = await start_relay(
        nursery, handler=EchoHandler(), limit_loopback=True, max_connections_per_address=3
    )
    raws = [await RawWs.connect(relay) for _ in range(3)]
    status, response = await response_head(port_of(relay), upgrade_request())
    assert status == 429
    assert b"too many connections from this address" in response
    assert (await http_get(relay, "/healthz"))[0] == 429  # every TCP connection counts
    await raws.pop().aclose()
    for _ in range(500):  # until the relay has seen the close
        if (await response_head(port_of(relay), upgrade_request()))[0] == 101:
            break
        await trio.sleep(0.01)
    else:
        raise AssertionError("a closed connection still counts against its address")
    for raw in raws:
        await raw.aclose()


async def test_loopback_is_exempt_from_the_address_caps_by_default(
    nursery: trio.Nursery,
) -> None:
    relay = await start_relay(nursery, handler=EchoHandler(), max_connections_per_address=3)
    raws = [await RawWs.connect(relay) for _ in range(5)]
    for raw in raws:
        await raw.aclose()


async def test_handshakes_per_address_are_rate_limited_with_429(
    nursery: trio.Nursery, mock_clock: MockClock
) -> None:
    # 1 per second in bursts of ten seconds' worth; the clock stands still unless moved.
    relay = await start_relay(
        nursery, handler=EchoHandler(), limit_loopback=True, handshake_rate_per_address=1.0
    )
    for _ in range(10):
        assert await http_get(relay, "/healthz") == (200, b"ok")
    status, body = await http_get(relay, "/healthz")
    assert status == 429
    assert b"too many new connections from this address (at most 1 per second)" in body
    mock_clock.jump(1.0)
    assert await http_get(relay, "/healthz") == (200, b"ok")
    assert (await http_get(relay, "/healthz"))[0] == 429


# --- before auth, and per user (the messaging core) --------------------------------------------


def big_ping(size: int) -> bytes:
    """A `ping` frame of `size` bytes (an unknown field pads it; unknown fields are ignored)."""
    bare = b'{"type":"ping","ref":"big","pad":""}'
    return bare[:-2] + b"x" * (size - len(bare)) + b'"}'


async def test_frames_before_auth_are_bounded_small(nursery: trio.Nursery) -> None:
    relay = await start_relay(nursery)
    raw = await RawWs.connect(relay)
    await raw.send_text(big_ping(PREAUTH_MESSAGE_BYTES + 1))
    assert (await raw.expect_close())[0] == 1009
    await raw.aclose()
    # a frame announcing 64 KiB is refused from its header: nothing of it is held
    raw = await RawWs.connect(relay)
    await raw.send(mask_frame(0x1, big_ping(64 * 1024))[:1000])
    assert (await raw.expect_close())[0] == 1009
    await raw.aclose()


async def test_after_auth_frames_may_be_max_message_bytes(nursery: trio.Nursery) -> None:
    relay = await start_relay(nursery)
    raw = await RawWs.connect(relay)
    await raw.send_text(big_ping(PREAUTH_MESSAGE_BYTES))  # the pre-auth limit itself is taken
    assert orjson.loads((await raw.recv_frame())[1])["code"] == "unauthenticated"
    await raw.send_text(b'{"type":"auth","userId":"ann"}')
    assert orjson.loads((await raw.recv_frame())[1])["type"] == "auth_ok"
    await raw.send_text(big_ping(64 * 1024))
    while True:
        frame = orjson.loads((await raw.recv_frame())[1])
        if frame["type"] == "pong":
            break
    assert frame["ref"] == "big"
    await raw.aclose()


async def auth(raw: RawWs, user: str, device: str) -> dict[str, Any]:
    await raw.send_text(orjson.dumps({"type": "auth", "userId": user, "deviceId": device}))
    return dict(orjson.loads((await raw.recv_frame())[1]))


async def test_devices_per_user_are_capped(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    relay = await start_relay(nursery, max_devices_per_user=2)
    phone, watch, third = [await RawWs.connect(relay) for _ in range(3)]
    assert (await auth(phone, "ann", "phone"))["type"] == "auth_ok"
    assert (await auth(watch, "ann", "watch"))["type"] == "auth_ok"
    refused = await auth(third, "ann", "laptop")
    assert refused["type"] == "error" and refused["code"] == "auth_failed"
    assert "max_devices_per_user 2" in refused["message"]
    assert (await third.expect_close())[0] == 1008
    await third.aclose()
    other = await RawWs.connect(relay)
    assert (await auth(other, "bob", "phone"))["type"] == "auth_ok"  # per user
    await watch.aclose()
    with trio.fail_after(5):
        while True:
            again = await RawWs.connect(relay)
            if (await auth(again, "ann", "laptop"))["type"] == "auth_ok":
                break
            await again.aclose()
            await trio.sleep(0.01)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_two_history_pages_kept_alive_with_pings_are_closed_1013(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    # The hole as found: a client asks for two history pages (under the 1 MiB outbox), never
    # reads, and keeps itself alive with pings. It holds ~800 kB for slow_consumer_timeout.
    relay = await start_relay(nursery, slow_consumer_timeout=30.0)
    sender = await RawWs.connect(relay)
    assert (await auth(sender, "ann", "phone"))["type"] == "auth_ok"
    for n in range(100):
        message = {
            "type": "message",
            "id": f"m{n}",
            "senderId": "ann",
            "recipientId": "bob",
            "text": "y" * 4000,
            "timestamp": "2026-02-05T10:30:15Z",
        }
        await sender.send_text(orjson.dumps(message))
    receipts = 0
    while receipts < 100:
        frame = orjson.loads((await sender.recv_frame())[1])
        receipts += frame["type"] == "receipt"
    await sender.aclose()
    lazy = await slow_reader(relay)
    await lazy.send_text(b'{"type":"auth","userId":"ann","deviceId":"tablet"}')
    for _ in range(2):
        await lazy.send_text(b'{"type":"history","peerId":"bob","before":101,"limit":100}')
    asked = trio.current_time()
    stats = relay.metrics.stats
    while not stats.slow_consumer_closes and trio.current_time() - asked < 60:
        await lazy.send(mask_frame(0x9, b"alive"))  # alive for the heartbeat
        await trio.sleep(5.0)
    assert stats.slow_consumer_closes == 1
    assert 30.0 <= trio.current_time() - asked <= 30.0 + 2 * 30.0 / 4 + 5.0
    assert stats.heartbeat_timeouts == 0
    # the relay hung up (a reset when our last ping was unread)
    with trio.fail_after(5), contextlib.suppress(trio.BrokenResourceError):
        await lazy.wait_eof()


async def test_the_core_tells_the_shell_once_a_session_signed_in() -> None:
    service = MessagingService(RelayConfig(db_path=None, max_devices_per_user=1), MemoryStore())
    first, second = FakeConn(), FakeConn()
    for conn in (first, second):
        service.on_open(conn)
        assert conn.authenticated_calls == 0
        await service.on_messages(conn, [b'{"type":"auth","userId":"ann"}'])
    assert first.authenticated_calls == 1
    assert second.authenticated_calls == 0  # refused: over max_devices_per_user
    assert second.closed is not None and second.closed[0] == 1008
