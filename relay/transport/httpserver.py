"""The HTTP/1.1 server side of the relay's port for routed, non-upgrade requests (h11).

A `RouteTable` owns path prefixes (`claim`) and the routes under them (`add`). A request
whose path is under a claimed prefix is served here; every other plain request keeps the
close-after-answer path of relay.transport.http (/healthz, /metrics, the web chat).

    table = RouteTable()
    table.claim("/api/", errors=my_error_responder)       # 404/405/413/... bodies under it
    table.add("POST", "/api/v1/publish", handler, max_body=64 * 1024)
    table.add("GET", "/files/{fileId}", download)          # {name}: one path segment

    async def handler(request: Request, body: RequestBody) -> Response:
        data = await body.read()                           # whole body, bounded by max_body
        # or: async for chunk in body: ...                 # streamed, bounded the same way
        return Response(200, [(b"content-type", b"application/json")], b"{}")
        # or Response(200, headers, some_async_iterator_of_bytes, length=n_or_None)

Invariants:
- a request body is never buffered beyond what the handler asks for; more than the route's
  `max_body` (declared by Content-Length, or counted while reading chunked) is a 413 and the
  connection is closed after the answer (its body is left unread);
- keep-alive: the connection serves request after request (pipelined ones in order) until the
  client closes, says `Connection: close`, idles `idle_timeout` between requests, a body is
  left unread, or the relay drains (then the answer says `Connection: close`);
- a handler's `HttpError` is answered through the claiming prefix's `errors`; any other
  exception is logged and answered 500 (or the connection is cut when the response had begun);
- HEAD is served by the GET route without its body; `Expect: 100-continue` is answered when
  the handler first reads the body.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
)
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote

import h11
import trio
from attrs import define, field, frozen
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from relay.transport.handshake import OpeningRequest

log = logging.getLogger("relay.transport")

#: Default bound of a route's request body.
DEFAULT_MAX_BODY = 64 * 1024
#: Size of one read from the socket while reading a body.
READ_SIZE = 64 * 1024
#: How long a keep-alive connection may stay idle between two requests.
IDLE_TIMEOUT = 30.0

Headers = list[tuple[bytes, bytes]]


class HttpError(Exception):
    """Raised by a handler (or by `RequestBody`) to answer `status`; `message` is the text,
    `code`/`field` what a JSON error body names (see the claiming prefix's `errors`)."""

    def __init__(
        self,
        status: int,
        message: str | None = None,
        *,
        code: str | None = None,
        field: str | None = None,
        headers: Headers | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message if message is not None else HTTPStatus(status).phrase
        self.code = code
        self.field = field
        self.headers = headers or []


@frozen
class Request:
    """One request's head, its route's path parameters and the peer."""

    method: str
    target: str
    path: str  # percent-decoded per segment when matched
    query: str  # the raw query string (without "?")
    headers: Headers  # names lower-cased
    http_version: bytes
    remote: str
    params: dict[str, str] = field(factory=dict)
    route: str = ""  # the matched route's template ("" when none)

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lower case), None when absent."""
        return next((v for n, v in self.headers if n == name), None)

    def query_params(self) -> dict[str, str]:
        """The query's parameters (the last value of a repeated one wins)."""
        return dict(parse_qsl(self.query, keep_blank_values=True))


@frozen
class Response:
    """What a handler returns. `body` bytes are sent with Content-Length; an async iterable
    is streamed, with Content-Length when `length` is given, else chunked (HTTP/1.1)."""

    status: int
    headers: Headers = field(factory=list)
    body: bytes | AsyncIterable[bytes] = b""
    length: int | None = None


Handler = Callable[[Request, "RequestBody"], Awaitable[Response]]
#: Builds the response of an error under a prefix: (request, error) -> Response
ErrorResponder = Callable[[Request, HttpError], Response]


def plain_error(request: Request, error: HttpError) -> Response:
    """The default ErrorResponder: a short plain-text body."""
    body = (error.message + "\n").encode("utf-8")
    headers = [(b"content-type", b"text/plain; charset=utf-8"), *error.headers]
    return Response(error.status, headers, body)


@frozen
class Route:
    methods: frozenset[str]
    template: str
    pattern: re.Pattern[str]
    handler: Handler
    max_body: int


@frozen
class Prefix:
    prefix: str
    errors: ErrorResponder


_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _compile(template: str) -> re.Pattern[str]:
    out = []
    pos = 0
    for match in _PARAM.finditer(template):
        out.append(re.escape(template[pos : match.start()]))
        out.append(f"(?P<{match.group(1)}>[^/]+)")
        pos = match.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out))


@define(eq=False)
class RouteTable:
    """Routes by method and path template; see the module docstring."""

    routes: list[Route] = field(factory=list)
    prefixes: list[Prefix] = field(factory=list)
    #: answers by (method, route template, status): what the metrics collector reads
    counts: dict[tuple[str, str, int], int] = field(factory=dict)

    def claim(self, prefix: str, errors: ErrorResponder = plain_error) -> None:
        """Serve every path under `prefix` here (unknown ones 404 through `errors`)."""
        self.prefixes.append(Prefix(prefix, errors))

    def add(
        self,
        methods: str | tuple[str, ...],
        template: str,
        handler: Handler,
        *,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        """Route `methods` on `template` ("/a/{name}/b": a name matches one segment) to
        `handler`; the template must lie under a claimed prefix."""
        if isinstance(methods, str):
            methods = (methods,)
        if self.prefix_of(template) is None:
            raise ValueError(f"{template} is under no claimed prefix")
        self.routes.append(
            Route(frozenset(methods), template, _compile(template), handler, max_body)
        )

    def prefix_of(self, path: str) -> Prefix | None:
        """The claim that owns `path` (the longest), None when it is not served here."""
        best: Prefix | None = None
        for prefix in self.prefixes:
            if path.startswith(prefix.prefix) and (
                best is None or len(prefix.prefix) > len(best.prefix)
            ):
                best = prefix
        return best

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | list[str]:
        """The route and its decoded parameters; else the methods the path allows ([]: 404)."""
        allowed: list[str] = []
        for route in self.routes:
            found = route.pattern.fullmatch(path)
            if found is None:
                continue
            if method in route.methods or (method == "HEAD" and "GET" in route.methods):
                return route, {k: unquote(v) for k, v in found.groupdict().items()}
            allowed.extend(sorted(route.methods))
        return sorted(set(allowed))

    def count(self, method: str, route: str, status: int) -> None:
        key = (method, route, status)
        self.counts[key] = self.counts.get(key, 0) + 1


class _Cut(Exception):
    """The connection cannot go on (the peer vanished or broke the protocol, or a timeout)."""


@define(eq=False)
class RequestBody:
    """The request's body as an async iterator of chunks, bounded by the route's max_body."""

    _http: _HttpConnection
    max_body: int
    #: the declared Content-Length, None for chunked (or no body)
    length: int | None
    received: int = 0
    done: bool = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self.next_chunk()
            if chunk is None:
                return
            yield chunk

    async def next_chunk(self) -> bytes | None:
        """The next chunk of the body, None at its end. Raises HttpError 413 past max_body."""
        if self.done:
            return None
        if self.length is not None and self.length > self.max_body:
            raise HttpError(413, f"request body over {self.max_body} bytes")
        http = self._http
        conn = http.conn
        if conn.they_are_waiting_for_100_continue:
            await http.send(h11.InformationalResponse(status_code=100, headers=[]))
        while True:
            event = await http.next_event()
            if isinstance(event, h11.Data):
                self.received += len(event.data)
                if self.received > self.max_body:
                    raise HttpError(413, f"request body over {self.max_body} bytes")
                if event.data:
                    return bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self.done = True
                return None
            else:
                raise _Cut(f"unexpected {type(event).__name__} in a request body")

    async def read(self) -> bytes:
        """The whole body (at most max_body bytes, else HttpError 413)."""
        parts = []
        while (chunk := await self.next_chunk()) is not None:
            parts.append(chunk)
        return b"".join(parts)


@define(eq=False)
class _HttpConnection:
    stream: trio.abc.Stream
    conn: h11.Connection
    idle_timeout: float
    io_timeout: float
    pending: list[bytes] = field(factory=list)  # encoded by `queue`, not yet written
    #: bounds each read and write: its deadline is set around the I/O and put back to
    #: infinity after, and its expiry ends the connection. One scope per connection: under
    #: cProfile a fail_after per read and write took about a seventh of a small request's
    #: time (`python -m bench api` shows no difference beyond its noise)
    deadline: trio.CancelScope = field(factory=trio.CancelScope)

    async def next_event(self, *, idle: bool = False) -> object:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise _Cut(str(exc)) from None
            if event is not h11.NEED_DATA:
                return event
            timeout = self.idle_timeout if idle else self.io_timeout
            self.deadline.deadline = trio.current_time() + timeout
            try:
                data = await self.stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise _Cut("read failed") from None
            finally:
                self.deadline.deadline = math.inf
            self.conn.receive_data(bytes(data))

    async def send(self, event: h11.Event) -> None:
        """Write `event` (and whatever `queue` held before it)."""
        self.queue(event)
        await self.flush()

    def queue(self, event: h11.Event) -> None:
        """Encode `event` to be written by the next `flush`: a whole response goes out in one
        write (three writes, head, body and end, cost about an eighth more relay CPU per
        publish: `python -m bench api --store memory`, 158 -> 139 ms per 1,000)."""
        try:
            data = self.conn.send(event)
        except h11.LocalProtocolError as exc:
            raise _Cut(str(exc)) from None
        if data:
            self.pending.append(data)

    async def flush(self) -> None:
        if not self.pending:
            return
        data = b"".join(self.pending)
        self.pending.clear()
        self.deadline.deadline = trio.current_time() + self.io_timeout
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise _Cut("write failed") from None
        finally:
            self.deadline.deadline = math.inf


#: Answers a request under no claimed prefix (the plain-HTTP side); the connection then closes.
Fallback = Callable[[str, str, bytes | None], tuple[int, bytes]]


@define(eq=False)
class HttpServer:
    """Serves one TCP (or TLS) connection's requests from the first one on."""

    table: RouteTable
    fallback: Fallback
    #: whether the relay drains (answers then close the connection)
    draining: Callable[[], bool]
    #: counts every answer by status (the shell's relay_http_requests)
    on_status: Callable[[int], None]
    idle_timeout: float = IDLE_TIMEOUT
    io_timeout: float = 10.0

    async def serve(self, stream: trio.abc.Stream, first: OpeningRequest, remote: str) -> None:
        """Answer `first` (the opening request, read by relay.transport.handshake) and every
        later request on `stream`, then close it."""
        http = _HttpConnection(stream, first.parser, self.idle_timeout, self.io_timeout)
        head = (first.method, first.target, first.headers, first.http_version)
        try:
            with http.deadline:
                await self._serve(http, head, remote)
            if http.deadline.cancelled_caught:
                log.debug("HTTP connection from %s timed out", remote)
        except _Cut as exc:
            log.debug("HTTP connection from %s cut: %s", remote, exc)
        finally:
            await _close(stream)

    async def _serve(
        self, http: _HttpConnection, head: tuple[str, str, Headers, bytes], remote: str
    ) -> None:
        parser = http.conn
        while True:
            if not await self._one(http, *head, remote):
                break
            if parser.our_state is h11.MUST_CLOSE or parser.their_state is not h11.DONE:
                break
            try:
                parser.start_next_cycle()
            except h11.LocalProtocolError:
                break
            event = await http.next_event(idle=True)
            if not isinstance(event, h11.Request):
                break  # the peer closed
            head = (
                event.method.decode("ascii", "replace"),
                event.target.decode("ascii", "replace"),
                [(bytes(n), bytes(v)) for n, v in event.headers],
                bytes(event.http_version),
            )

    async def _one(
        self,
        http: _HttpConnection,
        method: str,
        target: str,
        headers: Headers,
        http_version: bytes,
        remote: str,
    ) -> bool:
        """Answer one request; False when the connection must end after it."""
        path, _, query = target.partition("?")
        prefix = self.table.prefix_of(path)
        if prefix is None or _is_upgrade(headers):
            # Not ours: the plain-HTTP side answers it as on a fresh connection, and closes.
            host = next((v for n, v in headers if n == b"host"), None)
            status, answer = self.fallback(method, target, host)
            self.on_status(status)
            with (
                trio.move_on_after(self.io_timeout),
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
            ):
                await http.stream.send_all(answer)
            return False
        request = Request(
            method=method,
            target=target,
            path=path,
            query=query,
            headers=headers,
            http_version=http_version,
            remote=remote,
        )
        length_header = request.header(b"content-length")
        length = int(length_header) if length_header is not None else None
        found = self.table.match(method, path)
        max_body = found[0].max_body if isinstance(found, tuple) else 0
        body = RequestBody(http, max_body, length)
        if length == 0 or (length is None and request.header(b"transfer-encoding") is None):
            body.done = True
            # h11 still has the EndOfMessage to hand out
            await _end_of_body(http)
        route_name = ""
        try:
            if isinstance(found, list):
                if not found:
                    raise HttpError(404, "no such resource")
                raise HttpError(
                    405,
                    f"{method} is not allowed here",
                    headers=[(b"allow", ", ".join(found).encode("ascii"))],
                )
            route, params = found
            route_name = route.template
            if length is not None and length > route.max_body:
                raise HttpError(413, f"request body over {route.max_body} bytes")
            request = Request(
                method=method,
                target=target,
                path=path,
                query=query,
                headers=headers,
                http_version=request.http_version,
                remote=remote,
                params=params,
                route=route.template,
            )
            response = await route.handler(request, body)
        except HttpError as exc:
            response = prefix.errors(request, exc)
        except _Cut:
            raise
        except Exception:
            log.exception("HTTP handler of %s %s failed", method, route_name or path)
            response = prefix.errors(request, HttpError(500, "internal error", code="internal"))
        self.on_status(response.status)
        self.table.count(method, route_name or prefix.prefix, response.status)
        keep = body.done and not self.draining()
        await self._respond(http, request, response, keep)
        return keep

    async def _respond(
        self, http: _HttpConnection, request: Request, response: Response, keep: bool
    ) -> None:
        headers = [(n.lower(), v) for n, v in response.headers]
        names = {n for n, _ in headers}
        body = response.body
        if isinstance(body, bytes | bytearray):
            if b"content-length" not in names:
                headers.append((b"content-length", str(len(body)).encode("ascii")))
        elif response.length is not None and b"content-length" not in names:
            headers.append((b"content-length", str(response.length).encode("ascii")))
        if b"cache-control" not in names:
            headers.append((b"cache-control", b"no-store"))
        if not keep:
            headers.append((b"connection", b"close"))
        try:
            reason = HTTPStatus(response.status).phrase.encode("ascii")
        except ValueError:
            reason = b""
        http.queue(h11.Response(status_code=response.status, headers=headers, reason=reason))
        head_only = request.method == "HEAD"
        if isinstance(body, bytes | bytearray):
            if body and not head_only:
                http.queue(h11.Data(data=bytes(body)))
        elif not head_only:
            try:
                async for chunk in body:
                    if chunk:
                        await http.send(h11.Data(data=chunk))
            except _Cut:
                raise
            except Exception:
                log.exception("HTTP response body of %s %s failed", request.method, request.path)
                raise _Cut("response body failed") from None
        elif isinstance(body, AsyncGenerator):  # not iterated: let it clean up
            await body.aclose()
        await http.send(h11.EndOfMessage())


async def _end_of_body(http: _HttpConnection) -> None:
    """Take the EndOfMessage of a request without a body (h11 hands it out before the next
    request; nothing is read from the socket for it)."""
    event = await http.next_event()
    if not isinstance(event, h11.EndOfMessage):
        raise _Cut(f"unexpected {type(event).__name__} after a request without a body")


def _is_upgrade(headers: Headers) -> bool:
    return any(n == b"upgrade" for n, _ in headers)


async def _close(stream: trio.abc.Stream) -> None:
    """End the connection gracefully (bounded): FIN, then drain what the peer still sends."""
    with trio.move_on_after(1.0):
        try:
            if isinstance(stream, trio.SocketStream):
                await stream.send_eof()
                while await stream.receive_some(4096):
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    await trio.aclose_forcefully(stream)


@define(eq=False)
class RouteCollector(Collector):
    """`relay_http_route_requests_total{method,route,status}`: the answers of a RouteTable
    (`route` is the template; the claimed prefix itself for a 404/405 under it)."""

    table: RouteTable

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "relay_http_route_requests",
            "Routed HTTP requests answered (the API, files), by method, route and status",
            labels=["method", "route", "status"],
        )
        for (method, route, status), count in sorted(self.table.counts.items()):
            family.add_metric([method, route, str(status)], count)
        yield family
