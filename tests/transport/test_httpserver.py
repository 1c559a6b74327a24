"""The routed HTTP/1.1 side (relay.transport.httpserver) on a real relay over loopback:
keep-alive, Content-Length and chunked bodies, the body bound, 404/405 under a claimed prefix,
streamed responses, HEAD, and the unclaimed paths still answered and closed as before."""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio
from support import TEST_DEFAULTS
from trio.testing import MockClock

from relay import Relay, RelayConfig
from relay.transport.httpserver import (
    IDLE_TIMEOUT,
    HttpError,
    Request,
    RequestBody,
    Response,
    RouteTable,
)

JSON = [(b"content-type", b"application/json")]


async def echo(request: Request, body: RequestBody) -> Response:
    data = await body.read()
    return Response(200, [(b"content-type", b"application/octet-stream")], data)


async def counted(request: Request, body: RequestBody) -> Response:
    total = 0
    async for chunk in body:
        total += len(chunk)
    return Response(200, JSON, b'{"received":%d}' % total)


async def hello(request: Request, body: RequestBody) -> Response:
    name = request.params["name"]
    return Response(200, JSON, b'{"hello":"%s"}' % name.encode())


async def stream(request: Request, body: RequestBody) -> Response:
    async def parts() -> AsyncIterator[bytes]:
        for i in range(3):
            yield b"part%d;" % i

    return Response(200, [(b"content-type", b"text/plain")], parts())


async def teapot(request: Request, body: RequestBody) -> Response:
    raise HttpError(418, "short and stout")


async def start(nursery: trio.Nursery) -> Relay:
    table = RouteTable()
    table.claim("/t/")
    table.add("POST", "/t/echo", echo, max_body=100)
    table.add("POST", "/t/count", counted, max_body=1000)
    table.add("GET", "/t/hello/{name}", hello)
    table.add("GET", "/t/stream", stream)
    table.add("GET", "/t/teapot", teapot)
    relay = Relay(RelayConfig(**TEST_DEFAULTS), routes=table)
    await nursery.start(relay.serve)
    return relay


async def read_response(
    stream: trio.SocketStream, buf: bytearray
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One response (Content-Length or chunked) from `stream`; `buf` keeps what follows."""
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        assert data, "closed before a response"
        buf += data
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    buf[:] = rest
    if b"content-length" in headers:
        n = int(headers[b"content-length"])
        while len(buf) < n:
            buf += await stream.receive_some(65536)
        body = bytes(buf[:n])
        del buf[:n]
        return status, headers, body
    assert headers.get(b"transfer-encoding") == b"chunked"
    body = b""
    while True:
        while b"\r\n" not in buf:
            buf += await stream.receive_some(65536)
        size_line, _, _ = bytes(buf).partition(b"\r\n")
        size = int(size_line, 16)
        need = len(size_line) + 2 + size + 2
        while len(buf) < need:
            buf += await stream.receive_some(65536)
        body += bytes(buf[len(size_line) + 2 : len(size_line) + 2 + size])
        del buf[:need]
        if size == 0:
            return status, headers, body


async def test_keep_alive_serves_several_requests_on_one_connection(
    nursery: trio.Nursery,
) -> None:
    relay = await start(nursery)
    assert relay.address is not None
    s = await trio.open_tcp_stream("127.0.0.1", relay.address.port)
    buf = bytearray()
    await s.send_all(b"POST /t/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    status, headers, body = await read_response(s, buf)
    assert (status, body) == (200, b"hello")
    assert b"connection" not in headers
    # chunked request body, then a path parameter, both on the same connection (pipelined)
    await s.send_all(
        b"POST /t/count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
        b"GET /t/hello/w%C3%B6rld HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert (await read_response(s, buf))[::2] == (200, b'{"received":7}')
    status, _, body = await read_response(s, buf)
    assert (status, body.decode()) == (200, '{"hello":"w\u00f6rld"}')
    await s.aclose()


async def test_a_body_over_the_bound_is_413_and_closes(nursery: trio.Nursery) -> None:
    relay = await start(nursery)
    assert relay.address is not None
    s = await trio.open_tcp_stream("127.0.0.1", relay.address.port)
    buf = bytearray()
    await s.send_all(b"POST /t/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n")
    status, headers, _ = await read_response(s, buf)
    assert status == 413 and headers[b"connection"] == b"close"
    assert await s.receive_some(10) == b""
    # chunked: counted while read
    s = await trio.open_tcp_stream("127.0.0.1", relay.address.port)
    buf = bytearray()
    chunk = b"x" * 600
    await s.send_all(
        b"POST /t/count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % len(chunk)
        + chunk
        + b"\r\n"
        + b"%x\r\n" % len(chunk)
        + chunk
        + b"\r\n"
    )
    status, headers, _ = await read_response(s, buf)
    assert status == 413 and headers[b"connection"] == b"close"


async def test_errors_under_a_claimed_prefix(nursery: trio.Nursery) -> None:
    relay = await start(nursery)
    assert relay.address is not None
    s = await trio.open_tcp_stream("127.0.0.1", relay.address.port)
    buf = bytearray()
    await s.send_all(b"GET /t/nothing HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(s, buf))[0] == 404
    await s.send_all(b"DELETE /t/echo HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, _ = await read_response(s, buf)
    assert (status, headers[b"allow"]) == (405, b"POST")
    await s.send_all(b"GET /t/teapot HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(s, buf))[::2] == (418, b"short and stout\n")
    # a streamed response is chunked; HEAD has the head alone
    await s.send_all(b"GET /t/stream HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(s, buf))[::2] == (200, b"part0;part1;part2;")
    await s.send_all(b"HEAD /t/hello/x HTTP/1.1\r\nHost: x\r\n\r\n")
    while b"\r\n\r\n" not in buf:
        buf += await s.receive_some(65536)
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: 13" in head.lower()
    assert rest == b""
    # a later request outside the prefix is answered the old way, and the connection closes
    await s.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while chunk := await s.receive_some(65536):
        data += chunk
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"ok")
    assert b"Connection: close" in data
    metrics = relay.metrics.render().decode()
    assert 'relay_http_route_requests_total{method="GET",route="/t/teapot",status="418"} 1.0' in (
        metrics
    )


async def test_unclaimed_paths_answer_and_close_as_before(nursery: trio.Nursery) -> None:
    relay = await start(nursery)
    assert relay.address is not None
    s = await trio.open_tcp_stream("127.0.0.1", relay.address.port)
    await s.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while chunk := await s.receive_some(65536):
        data += chunk
    assert data.startswith(b"HTTP/1.1 200") and b"Connection: close" in data


async def test_an_idle_keep_alive_connection_or_a_stalled_body_is_closed(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    relay = await start(nursery)
    assert relay.address is not None
    s = await trio.open_tcp_stream("127.0.0.1", relay.address.port)
    buf = bytearray()
    request = b"GET /t/hello/x HTTP/1.1\r\nHost: x\r\n\r\n"
    await s.send_all(request)
    assert (await read_response(s, buf))[0] == 200
    await trio.sleep(IDLE_TIMEOUT - 1)
    await s.send_all(request)  # still served: idle less than IDLE_TIMEOUT
    assert (await read_response(s, buf))[0] == 200
    started = trio.current_time()
    with trio.fail_after(IDLE_TIMEOUT + 5):
        assert await s.receive_some(10) == b""  # then closed by the relay
    assert IDLE_TIMEOUT <= trio.current_time() - started < IDLE_TIMEOUT + 1
    # a body that stops coming: cut after handshake_timeout without an answer
    s = await trio.open_tcp_stream("127.0.0.1", relay.address.port)
    await s.send_all(b"POST /t/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    started = trio.current_time()
    with trio.fail_after(relay.config.handshake_timeout + 5):
        assert await s.receive_some(10) == b""
    assert trio.current_time() - started < relay.config.handshake_timeout + 1
