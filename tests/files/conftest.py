"""Files tests: a small HTTP/1.1 client (h11) that streams request bodies, and a relay with
its files in the test's directory."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import h11
import orjson
import pytest
import trio
from attrs import define
from trio_websocket import open_websocket_url


@define
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


async def http(
    port: int,
    method: str,
    target: str,
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes | AsyncIterable[bytes] = b"",
    length: int | None = None,
) -> Answer:
    """One request on a fresh connection; a body given as an iterable goes chunked unless
    `length` is given (then as Content-Length, possibly a lie)."""
    conn = h11.Connection(h11.CLIENT)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    sent = [(b"host", b"127.0.0.1"), *(headers or [])]
    if isinstance(body, bytes):
        sent.append((b"content-length", str(len(body)).encode()))
    elif length is not None:
        sent.append((b"content-length", str(length).encode()))
    else:
        sent.append((b"transfer-encoding", b"chunked"))
    async with stream:
        await stream.send_all(conn.send(h11.Request(method=method, target=target, headers=sent)))
        try:
            if isinstance(body, bytes):
                if body:
                    await stream.send_all(conn.send(h11.Data(data=body)))
            else:
                async for chunk in body:
                    await stream.send_all(conn.send(h11.Data(data=chunk)))
            if length is None or isinstance(body, bytes):
                await stream.send_all(conn.send(h11.EndOfMessage()))
        except (trio.BrokenResourceError, h11.LocalProtocolError):
            pass  # the relay answered (413) and closed before the body was all sent
        response: h11.Response | None = None
        data = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    chunk = b""
                conn.receive_data(chunk)
                continue
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                data += event.data
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        assert response is not None
        return Answer(response.status_code, dict(response.headers), bytes(data))


@asynccontextmanager
async def session(url: str, user: str) -> AsyncIterator[str]:
    """`user` signed in over WebSocket while inside; yields its auth_ok's httpToken."""
    async with open_websocket_url(url) as ws:
        await ws.send_message(orjson.dumps({"type": "auth", "userId": user}).decode())
        with trio.fail_after(5):
            ok = orjson.loads(await ws.get_message())
        assert ok["type"] == "auth_ok", ok
        yield ok["httpToken"]


async def pieces(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


class Kit:
    """What the files tests use, as one fixture (test modules import no helper module)."""

    http = staticmethod(http)
    session = staticmethod(session)
    pieces = staticmethod(pieces)


@pytest.fixture
def kit() -> type[Kit]:
    return Kit
