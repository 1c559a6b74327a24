"""The WebSocket side of the shell over loopback: framing limits, control frames, close codes.

Clients: trio-websocket (a polite client) and RawWs (raw bytes, for what no polite client
sends). The handler is the echo handler unless a test records calls with its own.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
import trio
from attrs import define, field
from support import RawWs, mask_frame, start_relay, ws_connect
from trio.testing import MockClock
from trio_websocket import ConnectionClosed

from relay import Relay
from relay.echo import EchoHandler
from relay.ports import Connection

MAX = 64 * 1024


async def start_echo(nursery: trio.Nursery, **overrides: Any) -> Relay:
    """A relay whose handler echoes (unless `handler=` says otherwise)."""
    overrides.setdefault("handler", EchoHandler())
    return await start_relay(nursery, **overrides)


@define(eq=False)
class RecordingHandler(EchoHandler):
    """Echoes, and records what the shell told it."""

    opened: list[Connection] = field(factory=list)
    batches: list[list[bytes]] = field(factory=list)
    closed: list[tuple[int, int]] = field(factory=list)
    flushed: int = 0
    ticks: int = 0
    closed_event: trio.Event = field(factory=trio.Event)

    def on_open(self, conn: Connection) -> None:
        self.opened.append(conn)

    async def on_messages(self, conn: Connection, payloads: list[bytes]) -> None:
        self.batches.append(list(payloads))
        await super().on_messages(conn, payloads)

    def on_flushed(self, conn: Connection) -> None:
        self.flushed += 1

    def on_close(self, conn: Connection, code: int) -> None:
        self.closed.append((conn.id, code))
        self.closed_event.set()

    def tick(self, now: float) -> None:
        self.ticks += 1


@pytest.mark.parametrize("size", [0, 125, 126, 65535, MAX])
async def test_echo_sizes_up_to_max_message_bytes(nursery: trio.Nursery, size: int) -> None:
    relay = await start_echo(nursery)
    text = "".join(chr(0x61 + i % 26) for i in range(size))
    async with ws_connect(relay.url) as ws:
        await ws.send_message(text)
        assert await ws.get_message() == text


async def test_message_over_max_is_closed_1009(nursery: trio.Nursery) -> None:
    relay = await start_echo(nursery)
    async with ws_connect(relay.url) as ws:
        await ws.send_message("x" * (MAX + 1))
        with pytest.raises(ConnectionClosed) as info:
            await ws.get_message()
        assert info.value.reason.code == 1009


async def test_max_message_bytes_is_configurable(nursery: trio.Nursery) -> None:
    relay = await start_echo(nursery, max_message_bytes=10)
    raw = await RawWs.connect(relay)
    await raw.send_text("0123456789")
    assert await raw.recv_frame() == (1, b"0123456789")
    await raw.send_text("0123456789A")
    assert await raw.expect_close() == (1009, "message over max_message_bytes")
    await raw.aclose()


async def test_multibyte_utf8_round_trip(nursery: trio.Nursery) -> None:
    relay = await start_echo(nursery)
    async with ws_connect(relay.url) as ws:
        await ws.send_message("héllo wörld — 👋")
        assert await ws.get_message() == "héllo wörld — 👋"


async def test_fragmented_message_is_reassembled(nursery: trio.Nursery) -> None:
    handler = RecordingHandler()
    relay = await start_echo(nursery, handler=handler)
    raw = await RawWs.connect(relay)
    await raw.send(mask_frame(0x1, b"hel", fin=False))
    await raw.send(mask_frame(0x9, b"mid"))  # a ping between fragments
    await raw.send(mask_frame(0x0, b"lo ", fin=False))
    await raw.send(mask_frame(0x0, b"world"))
    assert await raw.recv_frame() == (0xA, b"mid")
    assert await raw.recv_frame() == (0x1, b"hello world")
    assert handler.batches == [[b"hello world"]]
    await raw.aclose()


async def test_ping_gets_pong_with_its_payload(nursery: trio.Nursery) -> None:
    relay = await start_echo(nursery)
    async with ws_connect(relay.url) as ws:
        with trio.fail_after(2):
            await ws.ping(b"are you there")  # returns when the matching pong arrived
    raw = await RawWs.connect(relay)
    await raw.send(mask_frame(0x9, b"p1"))
    assert await raw.recv_frame() == (0xA, b"p1")
    await raw.send(mask_frame(0xA, b"unsolicited pong"))  # ignored, connection stays
    await raw.send_text("still here")
    assert await raw.recv_frame() == (0x1, b"still here")
    await raw.aclose()


@pytest.mark.parametrize("code", [1000, 1001, 4000])
async def test_client_close_code_is_echoed_and_reported(nursery: trio.Nursery, code: int) -> None:
    handler = RecordingHandler()
    relay = await start_echo(nursery, handler=handler)
    raw = await RawWs.connect(relay)
    await raw.send(mask_frame(0x8, struct.pack("!H", code) + b"bye"))
    assert await raw.expect_close() == (code, "")
    with trio.fail_after(2):
        await raw.wait_eof()  # the server ends the TCP stream after the handshake
        await raw.aclose()
        await handler.closed_event.wait()
    assert handler.closed == [(handler.opened[0].id, code)]


async def test_trio_websocket_close_handshake(nursery: trio.Nursery) -> None:
    handler = RecordingHandler()
    relay = await start_echo(nursery, handler=handler)
    async with ws_connect(relay.url) as ws:
        await ws.send_message("a")
        assert await ws.get_message() == "a"
        await ws.aclose(code=4001, reason="done")
        assert ws.closed is not None
        assert ws.closed.code == 4001
    with trio.fail_after(2):
        await handler.closed_event.wait()
    assert handler.closed[0][1] == 4001


async def test_empty_close_is_answered_with_empty_close(nursery: trio.Nursery) -> None:
    handler = RecordingHandler()
    relay = await start_echo(nursery, handler=handler)
    raw = await RawWs.connect(relay)
    await raw.send(mask_frame(0x8, b""))
    assert await raw.expect_close() == (1005, "")
    await raw.aclose()
    with trio.fail_after(2):
        await handler.closed_event.wait()
    assert handler.closed[0][1] == 1005


async def test_binary_frame_is_closed_1003(nursery: trio.Nursery) -> None:
    relay = await start_echo(nursery)
    async with ws_connect(relay.url) as ws:
        await ws.send_message(b"\x00\x01")
        with pytest.raises(ConnectionClosed) as info:
            await ws.get_message()
        assert info.value.reason.code == 1003


async def test_invalid_utf8_is_closed_1007(nursery: trio.Nursery) -> None:
    relay = await start_echo(nursery)
    raw = await RawWs.connect(relay)
    await raw.send(mask_frame(0x1, b"ok \xc3\x28"))
    assert (await raw.expect_close())[0] == 1007
    with trio.fail_after(2):
        await raw.wait_eof()
    await raw.aclose()


async def test_unmasked_frame_is_closed_1002(nursery: trio.Nursery) -> None:
    relay = await start_echo(nursery)
    raw = await RawWs.connect(relay)
    await raw.send(mask_frame(0x1, b"hello", masked=False))
    assert (await raw.expect_close())[0] == 1002
    with trio.fail_after(2):
        await raw.wait_eof()
    await raw.aclose()


async def test_texts_before_a_violation_are_still_delivered(nursery: trio.Nursery) -> None:
    handler = RecordingHandler()
    relay = await start_echo(nursery, handler=handler)
    raw = await RawWs.connect(relay)
    await raw.send(mask_frame(0x1, b"one") + mask_frame(0x1, b"two") + mask_frame(0x2, b"bin"))
    assert await raw.recv_frame() == (1, b"one")
    assert await raw.recv_frame() == (1, b"two")
    assert (await raw.expect_close())[0] == 1003
    await raw.aclose()
    assert handler.batches == [[b"one", b"two"]]


async def test_many_frames_in_one_write_are_one_batch_answered_in_order(
    nursery: trio.Nursery,
) -> None:
    handler = RecordingHandler()
    relay = await start_echo(nursery, handler=handler)
    raw = await RawWs.connect(relay)
    messages = [f"m{i}".encode() for i in range(200)]
    await raw.send(b"".join(mask_frame(0x1, m) for m in messages))
    for m in messages:
        assert await raw.recv_frame() == (1, m)
    # One TCP write on loopback arrives in one read: one on_messages call with all 200,
    # and their 200 echoes leave in one socket write (two if the read was split).
    assert sum(len(b) for b in handler.batches) == 200
    assert len(handler.batches) <= 2
    assert relay.metrics.stats.socket_writes <= len(handler.batches)
    await raw.aclose()


async def test_frame_split_across_writes(nursery: trio.Nursery) -> None:
    relay = await start_echo(nursery)
    raw = await RawWs.connect(relay)
    frame = mask_frame(0x1, b"x" * 300)
    for i in range(0, len(frame), 7):
        await raw.send(frame[i : i + 7])
        await trio.lowlevel.checkpoint()
    assert await raw.recv_frame() == (1, b"x" * 300)
    await raw.aclose()


async def test_frames_sent_with_the_handshake_request_are_served(nursery: trio.Nursery) -> None:
    relay = await start_echo(nursery)
    raw = await RawWs.connect(relay, extra=mask_frame(0x1, b"early bird"))
    assert await raw.recv_frame() == (1, b"early bird")
    await raw.aclose()


@pytest.mark.parametrize("path", ["/", "/ws", "/any/path?x=1"])
async def test_upgrade_on_any_path(nursery: trio.Nursery, path: str) -> None:
    handler = RecordingHandler()
    relay = await start_echo(nursery, handler=handler)
    async with ws_connect(relay.url + path) as ws:
        await ws.send_message(path)
        assert await ws.get_message() == path
    assert handler.opened[0].path == path


async def test_connection_attributes_and_flush_callbacks(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    handler = RecordingHandler()
    relay = await start_echo(nursery, handler=handler)
    async with ws_connect(relay.url) as ws, ws_connect(relay.url) as ws2:
        await ws.send_message("a")
        assert await ws.get_message() == "a"
        await ws2.send_message("b")
        assert await ws2.get_message() == "b"
        first, second = handler.opened
        assert first.id != second.id
        assert first.remote.startswith("127.0.0.1:")
        assert first.state is None
        assert handler.flushed >= 2
    await trio.sleep(0.3)  # handler.tick runs every 250 ms
    assert handler.ticks >= 1


async def test_handler_failure_closes_1011_and_server_keeps_serving(
    nursery: trio.Nursery,
) -> None:
    @define(eq=False)
    class Failing(EchoHandler):
        async def on_messages(self, conn: Connection, payloads: list[bytes]) -> None:
            if payloads[0] == b"boom":
                raise RuntimeError("boom")
            await super().on_messages(conn, payloads)

    relay = await start_echo(nursery, handler=Failing())
    async with ws_connect(relay.url) as ws:
        await ws.send_message("boom")
        with pytest.raises(ConnectionClosed) as info:
            await ws.get_message()
        assert info.value.reason.code == 1011
    async with ws_connect(relay.url) as ws:
        await ws.send_message("fine")
        assert await ws.get_message() == "fine"


async def test_close_from_the_handler_flushes_what_was_queued_first(
    nursery: trio.Nursery,
) -> None:
    @define(eq=False)
    class SayBye(EchoHandler):
        async def on_messages(self, conn: Connection, payloads: list[bytes]) -> None:
            await super().on_messages(conn, payloads)
            conn.close(4002, "bye")
            conn.close(4003, "ignored: close is idempotent")
            assert not conn.send(b"\x81\x01x")

    relay = await start_echo(nursery, handler=SayBye())
    raw = await RawWs.connect(relay)
    await raw.send_text("last words")
    assert await raw.recv_frame() == (1, b"last words")
    assert await raw.expect_close() == (4002, "bye")
    await raw.send(mask_frame(0x8, struct.pack("!H", 4002)))
    with trio.fail_after(2):
        await raw.wait_eof()
    await raw.aclose()
