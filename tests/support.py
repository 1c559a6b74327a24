"""Helpers for tests that run a real relay over loopback.

- `start_relay(nursery, **config_overrides)`: a started Relay on 127.0.0.1, port 0, in-memory.
- `ws_connect(url)`: a trio-websocket client connection (async context manager).
- `RawWs`: a WebSocket client on a raw socket, for frames no polite client would send.
- `http_get(relay, path)`: a plain HTTP/1.1 request on a raw socket.
- `served(command, cwd=...)`: a `relay serve` process (or a program that runs one) from its
  URL line until SIGTERM stops it.
"""

from __future__ import annotations

import itertools
import os
import signal
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import orjson
import trio
from attrs import define
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from relay import Relay, RelayConfig
from relay.fastpath import Outbox
from relay.store.base import Store, Watermarks
from relay.store.memory import MemoryStore

#: Settings every test relay gets unless a test overrides them: short waits, no files.
TEST_DEFAULTS: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 0,
    "db_path": None,
    "handshake_timeout": 2.0,
    "drain_timeout": 1.0,
}


@define
class Served:
    """A relay process started by `served`: its URL line, and its stderr once it stopped."""

    process: subprocess.Popen[str]
    line: str
    stderr: str = ""


@contextmanager
def served(
    command: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], Any] | None = None,
) -> Iterator[Served]:
    """`command` (one that runs `relay serve`) from the moment it prints its URL line (within
    20 s) until the block ends; then SIGTERM, on which it must exit 0 within 15 s (killed
    otherwise, and after a failure in the block). `stderr` is filled once it stopped."""
    process = subprocess.Popen(
        list(command),
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec_fn,
    )
    found = Served(process, "")
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 20
        line = ""
        while "running on" not in line and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
        assert "running on" in line, f"no URL line; stderr: {process.communicate()[1]}"
        found.line = line
        yield found
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
        found.stderr = process.communicate()[1]


#: The head of a probe program (`python -c PROBE_HEAD + ... scratch`): `relay serve` on its
#: embedded SQLite store in `scratch`, writing `report()` to `scratch/report` on SIGUSR1; the
#: probe defines `report` (a function returning text) before `serve()` is called.
PROBE_HEAD = """
import signal, sys
from pathlib import Path
from relay.cli import main

scratch = Path(sys.argv[1])

def _report(signum, frame):
    (scratch / "report.tmp").write_text(str(report()))
    (scratch / "report.tmp").rename(scratch / "report")

def serve():
    signal.signal(signal.SIGUSR1, _report)
    argv = ["serve", "--host", "127.0.0.1", "--port", "0", "--db", str(scratch / "relay.db")]
    raise SystemExit(main(argv))
"""


def serve_and_report(probe: str, scratch: Path, *, cwd: Path, env: dict[str, str]) -> str:
    """Run the probe program (PROBE_HEAD's) until it serves, signal it once its store's threads
    started, and return what it reported; it must then stop cleanly, without a traceback."""
    command = [sys.executable, "-c", probe, str(scratch)]
    with served(command, cwd=cwd, env={**env, "PYTHONUNBUFFERED": "1"}) as relay:
        relay.process.send_signal(signal.SIGUSR1)
        written = scratch / "report"
        deadline = time.monotonic() + 20
        while not written.exists():
            assert relay.process.poll() is None, relay.process.communicate()[1]
            assert time.monotonic() < deadline, "no report"
            time.sleep(0.05)
        text = written.read_text()
    assert "Traceback" not in relay.stderr, relay.stderr
    return text


async def start_relay(nursery: trio.Nursery, **config_overrides: Any) -> Relay:
    """Start a Relay in `nursery` and return it listening (`relay.url` usable).

    Keyword arguments override RelayConfig fields; `handler=` and `store=` go to Relay.
    Cancelling the nursery drains and stops it.
    """
    handler = config_overrides.pop("handler", None)
    store = config_overrides.pop("store", None)
    config = RelayConfig(**{**TEST_DEFAULTS, **config_overrides})
    relay = Relay(config, handler=handler, store=store)
    await nursery.start(relay.serve)
    return relay


@asynccontextmanager
async def ws_connect(url: str, **kwargs: Any) -> AsyncIterator[WebSocketConnection]:
    """A trio-websocket client connection to `url` (closed on exit)."""
    async with open_websocket_url(url, **kwargs) as ws:
        yield ws


def mask_frame(
    opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, rsv: int = 0
) -> bytes:
    """A client frame as RFC 6455 says (masked unless told otherwise)."""
    head = bytearray([(0x80 if fin else 0) | (rsv << 4) | opcode])
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head.append(mask_bit | n)
    elif n < 65536:
        head.append(mask_bit | 126)
        head += struct.pack("!H", n)
    else:
        head.append(mask_bit | 127)
        head += struct.pack("!Q", n)
    if not masked:
        return bytes(head) + payload
    key = os.urandom(4)
    body = bytes(b ^ key[i & 3] for i, b in enumerate(payload)) if n < 256 else _xor(payload, key)
    return bytes(head) + key + body


def _xor(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


class RawWs:
    """A WebSocket client speaking raw bytes on a trio socket stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.eof = False

    @classmethod
    async def connect(
        cls,
        relay: Relay,
        path: str = "/",
        extra: bytes = b"",
        tls: ssl.SSLContext | None = None,
    ) -> RawWs:
        """Connect and complete the opening handshake; `extra` is sent with the request.
        `tls`: over TLS (wss://) with this context."""
        address = relay.address
        assert address is not None
        stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", address.port)
        if tls is not None:
            stream = trio.SSLStream(stream, tls, server_hostname="127.0.0.1")
        ws = cls(stream)
        await ws.upgrade(address.port, path, extra)
        return ws

    async def upgrade(self, port: int, path: str = "/", extra: bytes = b"") -> None:
        """The opening handshake on this stream, to the relay on `port`."""
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        await self.stream.send_all(request + extra)
        head = await self._read_until(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise AssertionError(f"handshake refused: {head!r}")

    async def _fill(self) -> bool:
        data = await self.stream.receive_some(65536)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    async def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            if not await self._fill():
                raise AssertionError(f"EOF before {marker!r}: {bytes(self.buf)!r}")
        i = self.buf.index(marker) + len(marker)
        head = bytes(self.buf[:i])
        del self.buf[:i]
        return head

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send_text(self, text: str | bytes) -> None:
        raw = text.encode() if isinstance(text, str) else text
        await self.send(mask_frame(0x1, raw))

    async def recv_frame(self) -> tuple[int, bytes]:
        """The next server frame (opcode, payload); raises EOFError when the server hung up."""
        while True:
            frame = self._parse_one()
            if frame is not None:
                return frame
            if not await self._fill():
                raise EOFError("server closed the connection")

    def _parse_one(self) -> tuple[int, bytes] | None:
        buf = self.buf
        if len(buf) < 2:
            return None
        opcode = buf[0] & 0x0F
        if buf[1] & 0x80:
            raise AssertionError("server frame is masked")
        n = buf[1] & 0x7F
        pos = 2
        if n == 126:
            if len(buf) < 4:
                return None
            n = struct.unpack("!H", buf[2:4])[0]
            pos = 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n = struct.unpack("!Q", buf[2:10])[0]
            pos = 10
        if len(buf) < pos + n:
            return None
        payload = bytes(buf[pos : pos + n])
        del buf[: pos + n]
        return opcode, payload

    async def expect_close(self) -> tuple[int, str]:
        """Skip frames until the server's close frame; (code, reason)."""
        while True:
            opcode, payload = await self.recv_frame()
            if opcode == 0x8:
                if not payload:
                    return 1005, ""
                return struct.unpack("!H", payload[:2])[0], payload[2:].decode()

    async def wait_eof(self) -> None:
        """Read (and drop) until the server ends the TCP stream."""
        while await self._fill():
            pass

    async def aclose(self) -> None:
        await self.stream.aclose()


async def http_get(relay: Relay, path: str, method: str = "GET") -> tuple[int, bytes]:
    """(status, body) of a plain HTTP request to the relay."""
    address = relay.address
    assert address is not None
    return await http_request(address.port, f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


async def http_request(port: int, request: bytes) -> tuple[int, bytes]:
    """Send raw request bytes; (status, body) of the response (read until the server closes)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        data = bytearray()
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


_conn_ids = itertools.count(1)


def decode_server_frames(data: bytes) -> list[dict[str, Any]]:
    """Unmasked server text frames (what the relay queued) -> their JSON objects."""
    out = []
    i = 0
    while i < len(data):
        b0, b1 = data[i], data[i + 1]
        assert b0 == 0x81, f"expected a FIN text frame, got {b0:#x}"
        n = b1 & 0x7F
        i += 2
        if n == 126:
            (n,) = struct.unpack_from("!H", data, i)
            i += 2
        elif n == 127:
            (n,) = struct.unpack_from("!Q", data, i)
            i += 8
        out.append(orjson.loads(data[i : i + n]))
        i += n
    return out


class FakeConn:
    """The Connection protocol over a real Outbox; records close()."""

    def __init__(self, max_bytes: int = 1 << 20, max_frames: int = 4096) -> None:
        self.id = next(_conn_ids)
        self.remote = "127.0.0.1:40000"
        self.path = "/"
        self.outbox = Outbox(max_bytes, max_frames)
        self.state: Any = None
        self.input_queued = False
        self.closed: tuple[int, str] | None = None
        self.sends = 0
        self.authenticated_calls = 0

    def send(self, frame: bytes, droppable: bool = False) -> bool:
        self.sends += 1
        if self.closed is not None:
            return False
        return self.outbox.push(frame, droppable)

    def send_all(self, frames: Sequence[bytes]) -> bool:
        return all(self.send(frame) for frame in frames)

    def send_later(self, frame: bytes) -> bool:
        return self.send(frame)

    def close(self, code: int, reason: str = "") -> None:
        if self.closed is None:
            self.closed = (code, reason)

    def authenticated(self) -> None:
        self.authenticated_calls += 1


class SlowBacklogStore(MemoryStore):
    """`undelivered` for a device in `gates` waits until its gate is set (a slow backlog)."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: dict[str, trio.Event] = {}

    async def undelivered(self, user_id: str, device_id: str, *, limit: int = 1000) -> Any:
        gate = self.gates.get(device_id)
        if gate is not None:
            await gate.wait()
        return await super().undelivered(user_id, device_id, limit=limit)


async def watermarks_of(store: Store, conversation: str, user: str) -> Watermarks:
    """`user`'s watermarks in `conversation` as the live API reports them (every participant's
    in store.member_watermarks); zeros for a user who is not a participant."""
    return (await store.member_watermarks(conversation)).get(user, Watermarks(0, 0))


def upgrade_request(
    *,
    keys: tuple[bytes, ...] = (b"dGhlIHNhbXBsZSBub25jZQ==",),
    version: bytes = b"1.1",
    host: bytes = b"127.0.0.1",
    extra: bytes = b"",
) -> bytes:
    """A WebSocket upgrade request with these `Sec-WebSocket-Key` values (one header each),
    HTTP version and extra header lines (each ending in CRLF)."""
    lines = b"".join(b"Sec-WebSocket-Key: " + key + b"\r\n" for key in keys)
    return (
        b"GET / HTTP/" + version + b"\r\nHost: " + host + b"\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\n" + lines + b"Sec-WebSocket-Version: 13\r\n" + extra + b"\r\n"
    )


async def response_head(port: int, request: bytes) -> tuple[int, bytes]:
    """Send raw request bytes; (status, the response head and what came with it), without
    waiting for the server to close (a 101 keeps the connection open)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        data = bytearray()
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
        if not data.startswith(b"HTTP/1.1 101"):
            while chunk := await stream.receive_some(65536):
                data += chunk
    return int(bytes(data).split(b" ", 2)[1]), bytes(data)


async def slow_reader(relay: Relay, rcvbuf: int = 4096) -> RawWs:
    """A RawWs whose socket has a small receive buffer, for a client that does not read:
    the kernel then holds little of what the relay sends, the relay's outbox the rest."""
    address = relay.address
    assert address is not None
    sock = trio.socket.socket()
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, rcvbuf)
    await sock.connect(("127.0.0.1", address.port))
    ws = RawWs(trio.SocketStream(sock))
    await ws.send(upgrade_request())
    head = await ws._read_until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return ws


class JsonClient:
    """A JSON client over trio-websocket; frames not asked for yet wait in `pending`."""

    def __init__(self, ws: WebSocketConnection, wait: float = 3.0) -> None:
        self.ws = ws
        self.wait = wait  # seconds an expected frame or close may take before the test fails
        self.pending: list[dict[str, Any]] = []

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send_message(
            frame if isinstance(frame, str) else orjson.dumps(frame).decode()
        )

    async def expect(self, kind: str, **match: Any) -> dict[str, Any]:
        def fits(frame: dict[str, Any]) -> bool:
            return frame.get("type") == kind and all(frame.get(k) == v for k, v in match.items())

        for i, frame in enumerate(self.pending):
            if fits(frame):
                return self.pending.pop(i)
        with trio.fail_after(self.wait):
            while True:
                frame = orjson.loads(await self.ws.get_message())
                if fits(frame):
                    return frame  # type: ignore[no-any-return]
                self.pending.append(frame)

    async def closed(self) -> int:
        """The close code the relay ends this connection with."""
        with trio.fail_after(self.wait):
            try:
                while True:
                    await self.ws.get_message()
            except ConnectionClosed as exc:
                return exc.reason.code  # type: ignore[no-any-return]


class CountingNow(float):
    """A logical time that counts the comparisons made with it (`compared`): passed as `now`,
    it counts how many deadlines a call examined, whichever side of the operator it is on
    (`deadline <= now` calls this subclass's reflected `__ge__` before float's `__le__`).
    Arithmetic on it gives plain floats, which count nothing."""

    compared: int

    def __new__(cls, value: float) -> CountingNow:
        self = super().__new__(cls, value)
        self.compared = 0
        return self

    def __lt__(self, other: float) -> bool:
        self.compared += 1
        return float(self) < other

    def __le__(self, other: float) -> bool:
        self.compared += 1
        return float(self) <= other

    def __gt__(self, other: float) -> bool:
        self.compared += 1
        return float(self) > other

    def __ge__(self, other: float) -> bool:
        self.compared += 1
        return float(self) >= other
