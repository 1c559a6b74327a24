"""A real webhook receiver for the webhook tests: an HTTP server on 127.0.0.1, port 0.

`receiver` (fixture): a stdlib ThreadingHTTPServer in a thread that answers each POST with the
next status of `receiver.statuses` (then `receiver.default`, 200), records it, and hands it to
the test through a Trio channel: `await receiver.next()` waits for the next request (failing
after a bound instead of hanging).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
import trio
from attrs import define, field

SECRET = "whsec-test-key-0123456789"
WAIT = 10.0  # seconds a request the test expects may take (its delay and retries included)


@define
class Received:
    body: bytes
    headers: dict[str, str]
    status: int  # what the receiver answered

    @property
    def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = orjson.loads(self.body)["events"]
        return events


@define(eq=False)
class Receiver:
    url: str = ""
    statuses: deque[int] = field(factory=deque)
    default: int = 200
    received: list[Received] = field(factory=list)
    _send: trio.MemorySendChannel[Received] | None = None
    _recv: trio.MemoryReceiveChannel[Received] | None = None
    _token: trio.lowlevel.TrioToken | None = None
    _lock: threading.Lock = field(factory=threading.Lock)

    def answer(self, body: bytes, headers: dict[str, str]) -> int:
        """Called in the server's thread: the status for this request, recorded."""
        with self._lock:
            status = self.statuses.popleft() if self.statuses else self.default
            got = Received(body, headers, status)
            self.received.append(got)
        assert self._send is not None and self._token is not None
        trio.from_thread.run_sync(self._send.send_nowait, got, trio_token=self._token)
        return status

    async def next(self) -> Received:
        assert self._recv is not None
        with trio.fail_after(WAIT):
            return await self._recv.receive()

    def accepted_events(self) -> list[dict[str, Any]]:
        """Every event of the requests answered 2xx, in order (duplicates included)."""
        return [e for r in self.received if 200 <= r.status < 300 for e in r.events]


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status = receiver.answer(body, {k.lower(): v for k, v in self.headers.items()})
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    rec._send, rec._recv = trio.open_memory_channel[Received](math.inf)
    rec._token = trio.lowlevel.current_trio_token()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(rec))
    server.daemon_threads = True
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        await trio.to_thread.run_sync(server.shutdown)
        server.server_close()


@pytest.fixture
def secret() -> str:
    """The webhook key the test relays sign with (as written in `secret_file`, less newline)."""
    return SECRET


@pytest.fixture
def secret_file(tmp_path: Any) -> str:
    path = tmp_path / "webhook.secret"
    path.write_text(SECRET + "\n")  # the trailing newline is not part of the key
    return str(path)
