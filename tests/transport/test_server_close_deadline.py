"""The close deadline on ws:// connections: a peer that neither answers our close frame nor
reads what is queued is cut CLOSE_TIMEOUT after close(), and the server goes on serving.

(ws:// connections carry no cancel scope of their own: the server's expirer ends them.)
Logical time (trio's autojump clock): the deadline is exact, and no test waits for it.
"""

from __future__ import annotations

import socket

import pytest
import trio
from attrs import define, field
from support import RawWs, mask_frame, start_relay, ws_connect
from trio.testing import MockClock

from relay.echo import EchoHandler
from relay.fastpath import OP_TEXT, encode_frame
from relay.ports import Connection
from relay.transport.connection import CLOSE_TIMEOUT


@define(eq=False)
class Closer(EchoHandler):
    """Echoes; "bye" closes with 4000; "flood" queues `flood_bytes` first, then closes 4001."""

    flood_bytes: int = 0
    closed: list[tuple[int, int]] = field(factory=list)
    closed_event: trio.Event = field(factory=trio.Event)

    async def on_messages(self, conn: Connection, payloads: list[bytes]) -> None:
        for payload in payloads:
            if payload == b"bye":
                conn.close(4000, "bye")
            elif payload == b"flood":
                chunk = encode_frame(OP_TEXT, b"f" * 60_000)
                for _ in range(self.flood_bytes // 60_000):
                    assert conn.send(chunk)
                conn.close(4001, "flooded")
            else:
                await super().on_messages(conn, [payload])

    def on_close(self, conn: Connection, code: int) -> None:
        self.closed.append((conn.id, code))
        self.closed_event.set()


async def test_a_peer_that_never_answers_our_close_is_cut(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    handler = Closer()
    relay = await start_relay(nursery, handler=handler)
    ws = await RawWs.connect(relay)
    await ws.send(mask_frame(0x1, b"bye"))
    assert await ws.expect_close() == (4000, "bye")
    closed_at = trio.current_time()
    # No close reply, no FIN from us: the relay ends the TCP stream at its deadline.
    with trio.fail_after(CLOSE_TIMEOUT + 2):
        await ws.wait_eof()
        await handler.closed_event.wait()
    assert trio.current_time() - closed_at == pytest.approx(CLOSE_TIMEOUT, abs=0.01)
    assert [code for _, code in handler.closed] == [4000]
    await ws.aclose()


async def test_a_peer_that_stops_reading_is_cut_while_its_writer_waits(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    handler = Closer(flood_bytes=1_200_000)
    relay = await start_relay(nursery, handler=handler, outbox_max_bytes=4 * 1024 * 1024)
    address = relay.address
    assert address is not None
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", address.port))
    slow = RawWs(trio.SocketStream(sock))
    await slow.send(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await slow._read_until(b"\r\n\r\n")
    await slow.send(mask_frame(0x1, b"flood"))
    # More than the kernel buffers take: the rest waits in a writer task that never gets to
    # write it. The deadline ends the connection anyway, exactly once, with our code.
    with trio.fail_after(CLOSE_TIMEOUT + 2):
        await handler.closed_event.wait()
    assert [code for _, code in handler.closed] == [4001]
    async with ws_connect(relay.url) as fast:
        await fast.send_message("still serving")
        assert await fast.get_message() == "still serving"
    await slow.aclose()
