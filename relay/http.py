"""The plain-HTTP side of the relay's one port: /healthz, /metrics, and error responses.

Sans-IO: `respond()` maps a parsed request onto a complete HTTP/1.1 response (bytes); the
shell writes it and closes the connection. Invariant: every response carries
`Content-Length` and `Connection: close`, so one request is answered per TCP connection.
"""

from __future__ import annotations

from http import HTTPStatus

from relay.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from relay.metrics import RelayMetrics

TEXT = "text/plain; charset=utf-8"


def render(
    status: int,
    body: bytes = b"",
    *,
    content_type: str = TEXT,
    headers: list[tuple[bytes, bytes]] | None = None,
    head: bool = False,
) -> bytes:
    """A complete HTTP/1.1 response; `head` leaves the body out (for HEAD requests)."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    lines = [
        f"HTTP/1.1 {status} {reason}".encode("latin-1"),
        b"Content-Type: " + content_type.encode("latin-1"),
        b"Content-Length: " + str(len(body)).encode("ascii"),
        b"Connection: close",
        b"Cache-Control: no-store",
    ]
    lines.extend(name + b": " + value for name, value in headers or ())
    return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head else body)


def error(status: int, message: str | None = None) -> bytes:
    """A short plain-text error response."""
    text = message if message is not None else HTTPStatus(status).phrase
    return render(status, text.encode("utf-8") + b"\n")


def respond(
    method: str, target: str, *, draining: bool, metrics: RelayMetrics
) -> tuple[int, bytes]:
    """(status, response bytes) for a plain (non-upgrade) HTTP request.

    GET /healthz: 200 "ok" while serving, 503 "draining" during shutdown.
    GET /metrics: Prometheus text of this relay. Other paths: 404. Other methods on a known
    path: 405. HEAD behaves as GET without a body.
    """
    path = target.split("?", 1)[0]
    if path not in ("/healthz", "/metrics"):
        return 404, error(404)
    if method not in ("GET", "HEAD"):
        return 405, render(405, b"Method Not Allowed\n", headers=[(b"Allow", b"GET, HEAD")])
    head = method == "HEAD"
    if path == "/healthz":
        if draining:
            return 503, render(503, b"draining", head=head)
        return 200, render(200, b"ok", head=head)
    return 200, render(200, metrics.render(), content_type=METRICS_CONTENT_TYPE, head=head)
