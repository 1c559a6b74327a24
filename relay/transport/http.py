"""The plain-HTTP side of the relay's port: /healthz, /metrics, the web chat, errors; and the
metrics listener's pages (`respond_side`).

Sans-IO: `respond()` maps a parsed request onto a complete HTTP/1.1 response (bytes); the
shell writes it and closes the connection. Invariant: every response carries
`Content-Length` and `Connection: close`, so one request is answered per TCP connection.
"""

from __future__ import annotations

import re
from functools import cache
from http import HTTPStatus
from importlib import resources

from relay.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from relay.metrics import RelayMetrics

TEXT = "text/plain; charset=utf-8"

#: The web chat's files (relay/web/), by request path. Served only when `web_chat` is on.
WEB_FILES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/chat.js": ("chat.js", "text/javascript; charset=utf-8"),
    "/chat.css": ("chat.css", "text/css; charset=utf-8"),
    "/hpke.js": ("hpke.js", "text/javascript; charset=utf-8"),
    "/e2e.js": ("e2e.js", "text/javascript; charset=utf-8"),
    "/attachments.js": ("attachments.js", "text/javascript; charset=utf-8"),
    "/calls.js": ("calls.js", "text/javascript; charset=utf-8"),
}

#: A Host header value that is safe to put into a CSP source expression.
_HOST = re.compile(rb"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")


def web_csp(host: bytes | None) -> bytes:
    """The web chat's Content-Security-Policy: its own files, and WebSockets to this host only.

    `img-src blob:`: the page shows a received picture from a `blob:` URL of bytes it fetched
    itself, since `GET /files` needs a Bearer header an `<img src>` cannot send.

    `'self'` already covers ws(s) to the same host in CSP 3; the explicit ws:// and wss://
    sources keep browsers that predate that rule working. A missing or odd Host leaves `'self'`.
    """
    connect = b"'self'"
    if host is not None and _HOST.match(host):
        connect += b" ws://" + host + b" wss://" + host
    return (
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
        b"connect-src " + connect + b"; base-uri 'none'; form-action 'none'; "
        b"frame-ancestors 'none'"
    )


@cache
def web_file(name: str) -> bytes:
    """The bytes of one file of the packaged web chat."""
    return resources.files("relay").joinpath("web", name).read_bytes()


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
    method: str,
    target: str,
    *,
    draining: bool,
    metrics: RelayMetrics,
    web_chat: bool = False,
    host: bytes | None = None,
    metrics_here: bool | None = True,
    problem: str | None = None,
) -> tuple[int, bytes]:
    """(status, response bytes) for a plain (non-upgrade) HTTP request.

    `problem`: why this node cannot serve now (PostgreSQL or Redis lost): /healthz answers 503
    with it.

    GET /healthz: 200 "ok" while serving, 503 "draining" during shutdown.
    GET /metrics: Prometheus text of this relay when `metrics_here` (the peer may read it),
    403 when False (a peer not on loopback), 404 when None (served on another address).
    With `web_chat`: GET / (or /index.html) the
    chat page and its /chat.js and /chat.css, under a CSP that `host` (the request's Host)
    narrows. Other paths: 404. Other methods on a known path: 405. HEAD behaves as GET
    without a body.
    """
    path = target.split("?", 1)[0]
    web = WEB_FILES.get(path) if web_chat else None
    if path == "/metrics":
        if metrics_here is None:
            return 404, error(404)
        if not metrics_here:
            return 403, error(403, "/metrics is served to loopback peers only (see metrics_listen)")
        return respond_metrics(method, target, metrics)
    if web is None and path != "/healthz":
        return 404, error(404)
    if method not in ("GET", "HEAD"):
        return _get_or_head_only()
    head = method == "HEAD"
    if web is not None:
        name, content_type = web
        security = [
            (b"Content-Security-Policy", web_csp(host)),
            (b"X-Content-Type-Options", b"nosniff"),
            (b"Referrer-Policy", b"no-referrer"),
        ]
        body = web_file(name)
        return 200, render(200, body, content_type=content_type, headers=security, head=head)
    return _health(head, draining, problem)


def _get_or_head_only() -> tuple[int, bytes]:
    """The answer to another method on a path served to GET and HEAD."""
    return 405, render(405, b"Method Not Allowed\n", headers=[(b"Allow", b"GET, HEAD")])


def _health(head: bool, draining: bool, problem: str | None) -> tuple[int, bytes]:
    """/healthz's answer (see `respond`)."""
    if draining:
        return 503, render(503, b"draining", head=head)
    if problem is not None:
        return 503, render(503, f"unavailable: {problem}".encode(), head=head)
    return 200, render(200, b"ok", head=head)


def respond_side(
    method: str, target: str, metrics: RelayMetrics, *, draining: bool, problem: str | None
) -> tuple[int, bytes]:
    """(status, response bytes) for a request to the metrics listener: GET /metrics and
    GET /healthz (and HEAD), nothing else. Its connections take no turns, so a load
    balancer's probe there is answered during a storm even when the main port speaks TLS
    (where a probe's TLS handshake waits in the joining line like any other)."""
    if target.split("?", 1)[0] == "/healthz":
        if method not in ("GET", "HEAD"):
            return _get_or_head_only()
        return _health(method == "HEAD", draining, problem)
    return respond_metrics(method, target, metrics)


def respond_metrics(method: str, target: str, metrics: RelayMetrics) -> tuple[int, bytes]:
    """(status, response bytes) for GET /metrics (and HEAD); 404 for any other path."""
    if target.split("?", 1)[0] != "/metrics":
        return 404, error(404)
    if method not in ("GET", "HEAD"):
        return _get_or_head_only()
    body = metrics.render()
    return 200, render(200, body, content_type=METRICS_CONTENT_TYPE, head=method == "HEAD")
