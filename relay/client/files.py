"""The client side of `/files` (contract v2, "Files"): upload and download over HTTP/1.1 on the
relay's port (h11, one connection per call), authenticated by the session's `httpToken`.

`ws://host:port/...` is served as `http://host:port`, `wss://` as `https://` (certificate
checked with the default context unless one is given). Bodies are streamed both ways: an
upload reads its source in chunks, a download hands its chunks to the caller.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterable, AsyncIterator
from urllib.parse import quote, urlsplit

import h11
import orjson
import trio
from attrs import frozen

from relay.errors import ClientError

CHUNK = 64 * 1024


class FileRequestFailed(ClientError):
    """The relay answered a file request with an error status."""

    def __init__(self, status: int, body: bytes) -> None:
        try:
            detail = orjson.loads(body).get("message", "")
        except (orjson.JSONDecodeError, AttributeError):
            detail = body[:200].decode("utf-8", "replace")
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status


@frozen
class FileInfo:
    file_id: str
    name: str
    size: int
    mime: str
    sha256: str


async def _connect(url: str, context: ssl.SSLContext | None) -> trio.abc.Stream:
    parts = urlsplit(url)
    secure = parts.scheme in ("wss", "https")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if secure else 80)
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    if secure:
        tls = trio.SSLStream(stream, context or ssl.create_default_context(), server_hostname=host)
        await tls.do_handshake()
        stream = tls
    return stream


async def _exchange(
    url: str,
    method: str,
    target: str,
    headers: list[tuple[bytes, bytes]],
    body: AsyncIterable[bytes] | None,
    context: ssl.SSLContext | None,
) -> AsyncIterator[h11.Response | bytes]:
    """Send one request (a body chunked); yield the response head, then its body chunks."""
    conn = h11.Connection(h11.CLIENT)
    host = (urlsplit(url).netloc or "relay").encode()
    sent = [(b"host", host), *headers]
    if body is not None:
        sent.append((b"transfer-encoding", b"chunked"))
    stream = await _connect(url, context)
    async with stream:
        await stream.send_all(conn.send(h11.Request(method=method, target=target, headers=sent)))
        if body is not None:
            async for chunk in body:
                if chunk:
                    await stream.send_all(conn.send(h11.Data(data=chunk)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(CHUNK)))
            elif isinstance(event, h11.Response):
                yield event
            elif isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return


async def _chunks_of(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), CHUNK):
        yield data[i : i + CHUNK]


async def upload(
    url: str,
    token: str,
    data: bytes | AsyncIterable[bytes],
    *,
    name: str,
    mime: str | None = None,
    context: ssl.SSLContext | None = None,
) -> FileInfo:
    headers = [(b"authorization", f"Bearer {token}".encode())]
    if mime is not None:
        headers.append((b"content-type", mime.encode("latin-1")))
    body = _chunks_of(data) if isinstance(data, bytes) else data
    status, answer = 0, bytearray()
    target = f"/files?name={quote(name, safe='')}"
    async for part in _exchange(url, "POST", target, headers, body, context):
        if isinstance(part, h11.Response):
            status = part.status_code
        else:
            answer += part
    if status != 201:
        raise FileRequestFailed(status, bytes(answer))
    info = orjson.loads(answer)
    return FileInfo(info["fileId"], info["name"], info["size"], info["mime"], info["sha256"])


async def download(
    url: str, token: str, file_id: str, *, context: ssl.SSLContext | None = None
) -> AsyncIterator[bytes]:
    """The file's bytes, chunk by chunk; FileRequestFailed for an error answer."""
    headers = [(b"authorization", f"Bearer {token}".encode())]
    target = f"/files/{quote(file_id, safe='')}"
    status = 0
    failed = bytearray()
    async for part in _exchange(url, "GET", target, headers, None, context):
        if isinstance(part, h11.Response):
            status = part.status_code
        elif status == 200:
            yield part
        else:
            failed += part
    if status != 200:
        raise FileRequestFailed(status, bytes(failed))
