"""The requests a relay's ports answer that are not WebSocket upgrades: the shell's I/O around
relay.transport.http (sans-IO responses) and relay.transport.httpserver (routed keep-alive).

- On the main port, a request under a prefix the route table claims (/api/v1, /files) turns
  its connection into a keep-alive HTTP/1.1 connection (`HttpServer`); any other plain request
  is answered by `http.respond` (/healthz, /metrics to loopback peers, the web chat, 404) and
  the connection closed. Both answer from the same `respond`, so a path means the same on
  either.
- The metrics listener (config.metrics_listen) answers GET /metrics and /healthz, nothing else.
- Every status answered is counted in relay_http_requests_total (`count`); a refusal before
  or instead of an upgrade (`refuse`) is also a handshake failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio
from attrs import define

from relay.config import RelayConfig
from relay.metrics import RelayMetrics
from relay.transport import http
from relay.transport.admission import is_loopback_peer
from relay.transport.handshake import HttpFailure, OpeningRequest, answer_and_close, read_request
from relay.transport.httpserver import HttpServer, RouteTable

log = logging.getLogger("relay.transport")


@define(eq=False)
class PlainHttp:
    """A server's plain-HTTP answers; `draining` and `problem` are read at each request."""

    config: RelayConfig
    metrics: RelayMetrics
    routes: RouteTable | None
    #: whether the server is draining (/healthz and new upgrades answer 503)
    draining: Callable[[], bool]
    #: why the handler cannot serve now (relay.health), or None
    problem: Callable[[], str | None]

    def count(self, status: int) -> None:
        counts = self.metrics.stats.http_requests
        counts[status] = counts.get(status, 0) + 1

    async def refuse(self, stream: trio.abc.Stream, failure: HttpFailure) -> None:
        self.metrics.stats.handshake_failures += 1
        self.count(failure.status)
        await answer_and_close(stream, http.error(failure.status, failure.message))

    async def answer(self, stream: trio.abc.Stream, request: OpeningRequest, remote: str) -> None:
        """A plain request on the main port, from `remote` ("ip:port")."""
        routes = self.routes
        metrics_here = self._metrics_here(remote)
        if routes is not None and routes.prefix_of(request.target.split("?", 1)[0]) is not None:
            # this connection becomes a keep-alive HTTP/1.1 connection until it ends
            server = HttpServer(
                routes,
                lambda method, target, host: self._respond(method, target, host, metrics_here),
                draining=self.draining,
                on_status=self.count,
                io_timeout=self.config.handshake_timeout,
            )
            await server.serve(stream, request, remote)
            return
        status, response = self._respond(request.method, request.target, request.host, metrics_here)
        self.count(status)
        await answer_and_close(stream, response)

    async def serve_metrics(self, tcp: trio.SocketStream) -> None:
        """A connection to the metrics listener: GET /metrics and /healthz, nothing else."""
        try:
            request: OpeningRequest | None = None
            with trio.move_on_after(self.config.handshake_timeout):
                try:
                    request = await read_request(tcp)
                except HttpFailure as exc:
                    await self.refuse(tcp, exc)
                    return
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            if request is not None:
                status, response = http.respond_side(
                    request.method,
                    request.target,
                    self.metrics,
                    draining=self.draining(),
                    problem=self.problem(),
                )
                self.count(status)
                await answer_and_close(tcp, response)
        except Exception:
            log.exception("metrics connection failed")
        finally:
            await trio.aclose_forcefully(tcp)

    def _respond(
        self, method: str, target: str, host: bytes | None, metrics_here: bool | None
    ) -> tuple[int, bytes]:
        return http.respond(
            method,
            target,
            draining=self.draining(),
            metrics=self.metrics,
            web_chat=self.config.web_chat,
            host=host,
            metrics_here=metrics_here,
            problem=self.problem(),
        )

    def _metrics_here(self, remote: str) -> bool | None:
        """Whether the main port answers /metrics to `remote` ("ip:port"): None when it is
        served elsewhere (metrics_listen), else whether the peer is on loopback."""
        if self.config.metrics_listen is not None:
            return None
        return is_loopback_peer(remote.rsplit(":", 1)[0])
