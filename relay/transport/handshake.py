"""The opening handshake: read the HTTP request (h11), accept a WebSocket upgrade (wsproto).

`read_request` and `answer_and_close` do the I/O on a trio stream; `accept_upgrade` and
`origin_allowed` are sans-IO. Invariants: no more than MAX_REQUEST_BYTES are ever read before
the request is complete (each read asks for what is left of that budget, so one large write
cannot slip past it), and nothing is read past the request's end that is not handed on, so
the bytes a client sent after its upgrade request (early WebSocket frames) reach the
connection. An upgrade is accepted only as RFC 6455 4.2.1 has it: HTTP/1.1 or later, and
exactly one `Sec-WebSocket-Key` that is the base64 of 16 bytes. The one extension answered is
permessage-deflate (relay.transport.deflate), when the caller agreed to an offer of it.
"""

from __future__ import annotations

import binascii
from collections.abc import Awaitable, Callable

import h11
import trio
from attrs import frozen
from wsproto.connection import ConnectionType
from wsproto.events import RejectConnection
from wsproto.events import Request as WsRequest
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError as WsRemoteProtocolError
from wsproto.utilities import generate_accept_token

from relay.transport.deflate import DeflateParams, negotiate

#: Largest opening HTTP request (request line + headers) accepted; more is answered 431.
MAX_REQUEST_BYTES = 16 * 1024
#: How long a plain-HTTP connection may take to read its response before it is cut.
HTTP_LINGER = 1.0


class HttpFailure(Exception):
    """The opening request cannot be served; `status` is the HTTP answer, `message` its text
    (None: the status's phrase). Caught by the server, never escapes it."""

    def __init__(self, status: int, message: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@frozen
class OpeningRequest:
    method: str
    target: str
    http_version: bytes  # b"1.1", b"1.0"
    headers: list[tuple[bytes, bytes]]
    raw: bytes  # every byte received so far
    parser: h11.Connection

    @property
    def is_upgrade(self) -> bool:
        return any(
            name == b"upgrade" and b"websocket" in value.lower() for name, value in self.headers
        )

    @property
    def host(self) -> bytes | None:
        return self.header(b"host")

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lower case), None when absent."""
        return next((v for n, v in self.headers if n == name), None)


async def read_request(
    stream: trio.abc.Stream, readable: Callable[[], Awaitable[None]] | None = None
) -> OpeningRequest | None:
    """Read the opening HTTP request (bounded by MAX_REQUEST_BYTES); None when the peer closed
    first. Raises HttpFailure for a request h11 rejects. `readable`, when given, is awaited
    before each read (relay.transport.turns: it waits for the bytes, then for a turn)."""
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
    raw = bytearray()
    while True:
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError as exc:
            raise HttpFailure(exc.error_status_hint, "bad request") from None
        if event is h11.NEED_DATA:
            room = MAX_REQUEST_BYTES - len(raw)
            if room <= 0:
                raise HttpFailure(431, f"request head over {MAX_REQUEST_BYTES} bytes")
            if readable is not None:
                await readable()
            data = await stream.receive_some(room)
            raw += data
            parser.receive_data(bytes(data))
            continue
        if isinstance(event, h11.Request):
            return OpeningRequest(
                method=event.method.decode("ascii", "replace"),
                target=event.target.decode("ascii", "replace"),
                http_version=bytes(event.http_version),
                headers=[(bytes(name), bytes(value)) for name, value in event.headers],
                raw=bytes(raw),
                parser=parser,
            )
        return None  # ConnectionClosed (or nothing more will come)


def deflate_offered(request: OpeningRequest) -> DeflateParams | None:
    """The permessage-deflate agreement for the request's `Sec-WebSocket-Extensions` offers
    (every such header, in order); None when none can be accepted."""
    return negotiate([v for n, v in request.headers if n == b"sec-websocket-extensions"])


def accept_upgrade(
    request: OpeningRequest, deflate: DeflateParams | None = None
) -> tuple[bytes, bytes]:
    """The 101 response to a WebSocket upgrade request (answering permessage-deflate with
    `deflate` when given), and the bytes the client sent after the request. Raises
    HttpFailure when the upgrade cannot be accepted."""
    _check_upgrade(request)
    handshake = H11Handshake(ConnectionType.SERVER)
    try:
        handshake.receive_data(request.raw)
        events = list(handshake.events())
    except WsRemoteProtocolError as exc:
        hint = exc.event_hint
        status = hint.status_code if isinstance(hint, RejectConnection) else 400
        raise HttpFailure(status, str(exc)) from None
    if not events or not isinstance(events[0], WsRequest):
        raise HttpFailure(400)
    trailing = _trailing_after_request(request.parser)
    if trailing is None:
        raise HttpFailure(400, "an upgrade request has no body")
    extension = None if deflate is None else deflate.header_value()
    return _switching_protocols(request, extension), trailing


def _switching_protocols(request: OpeningRequest, extension: bytes | None) -> bytes:
    """The 101 response wsproto's `H11Handshake.send(AcceptConnection(...))` writes (no
    subprotocol; the negotiated permessage-deflate `extension` when there is one), without the
    wsproto `Connection` that call also builds: the relay frames WebSocket traffic itself, and
    that object (its frame parser is a generator referencing its owner) is a reference cycle
    only the cyclic collector frees, about 1 kB per upgrade left for minutes under `relay
    serve`'s 10,000-object young generation. `_check_upgrade` has found exactly one key."""
    key = request.header(b"sec-websocket-key")
    assert key is not None
    head = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + generate_accept_token(key) + b"\r\n"
    )
    if extension is not None:
        head += b"Sec-WebSocket-Extensions: " + extension + b"\r\n"
    return head + b"\r\n"


def _check_upgrade(request: OpeningRequest) -> None:
    """RFC 6455 4.2.1's demands that wsproto leaves unchecked: HTTP/1.1 or later, and one
    `Sec-WebSocket-Key` that decodes (strict base64) to exactly 16 bytes."""
    if request.http_version < b"1.1":
        raise HttpFailure(400, "a WebSocket upgrade needs HTTP/1.1 or later")
    keys = [v for n, v in request.headers if n == b"sec-websocket-key"]
    if len(keys) != 1:
        raise HttpFailure(400, f"expected one Sec-WebSocket-Key header, got {len(keys)}")
    try:
        nonce = binascii.a2b_base64(keys[0].strip(), strict_mode=True)
    except binascii.Error:
        raise HttpFailure(400, "Sec-WebSocket-Key is not base64") from None
    if len(nonce) != 16:
        raise HttpFailure(400, f"Sec-WebSocket-Key must encode 16 bytes, not {len(nonce)}")


def origin_allowed(request: OpeningRequest, allowed: frozenset[str], same_origin: bool) -> bool:
    """Whether the upgrade's `Origin` (sent by browsers, not by other clients) may connect.

    A request without `Origin` always may: the check is against other sites' pages, and a
    browser always names the page's origin (a script cannot change it). `allowed` holds lower-cased origins
    (`scheme://host[:port]`), or "*" for any; `same_origin` also admits an origin whose
    host[:port] is the request's `Host`. Nothing allowed and not `same_origin`: no check."""
    origin = request.header(b"origin")
    if origin is None or (not allowed and not same_origin) or "*" in allowed:
        return True
    text = origin.decode("latin-1").strip().lower()
    if text in allowed:
        return True
    host = request.host
    if not same_origin or host is None:
        return False
    _scheme, sep, authority = text.partition("://")
    return bool(sep) and authority == host.decode("latin-1").strip().lower()


def _trailing_after_request(parser: h11.Connection) -> bytes | None:
    """The bytes the client sent after its upgrade request (early WebSocket frames), or None
    when the request has a body or is incomplete."""
    while True:
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError:
            return None
        if event is h11.PAUSED:
            return bytes(parser.trailing_data[0])
        if not isinstance(event, h11.EndOfMessage):
            return None


async def answer_and_close(stream: trio.abc.Stream, response: bytes) -> None:
    """Write a whole HTTP response, then end the connection gracefully (bounded)."""
    with trio.move_on_after(HTTP_LINGER):
        try:
            await stream.send_all(response)
            if isinstance(stream, trio.SocketStream):
                await stream.send_eof()
                while await stream.receive_some(4096):
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    await trio.aclose_forcefully(stream)
