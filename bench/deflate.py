"""The deflate scenario's client: `python -m bench.deflate` < config.json > result.json.

One writer fills a conversation with `messages` messages of `text_bytes` characters; then one
reader, offering permessage-deflate as Chromium does (`permessage-deflate;
client_max_window_bits`), fetches that conversation's newest page of 50 (`history`) over and
over for `duration` seconds after `warmup`, one request in flight. Against a relay with
compression on the pages come compressed; with --no-compression the same offer is declined.

Invariant: the figures are counted inside the measured window only: the bytes the reader's
socket received (the wire: frame headers included, before inflating), the pages read, and
the server's CPU from /proc/<server_pid> at the window's edges (bench.loadgen.make_snapshot).
Every page is inflated when compressed, parsed, and must hold the `messages` expected.
"""

from __future__ import annotations

import base64
import json
import os
import random
import socket
import struct
import sys
import time
import zlib
from typing import Any

from bench.loadgen import make_snapshot

OFFER = "permessage-deflate; client_max_window_bits"
PAGE = 50


class Client:
    """A blocking WebSocket client on a raw socket that counts the bytes it receives."""

    def __init__(self, port: int, offer: str | None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.received = 0
        self.last_size = 0
        key = base64.b64encode(os.urandom(16)).decode()
        head = (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        )
        if offer is not None:
            head += f"Sec-WebSocket-Extensions: {offer}\r\n"
        self.sock.sendall((head + "\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        end = self.buf.index(b"\r\n\r\n") + 4
        response = bytes(self.buf[:end]).decode("latin-1")
        del self.buf[:end]
        if not response.startswith("HTTP/1.1 101"):
            raise RuntimeError(f"handshake refused: {response.splitlines()[0]}")
        self.extensions = next(
            (
                line.split(":", 1)[1].strip()
                for line in response.split("\r\n")
                if line.lower().startswith("sec-websocket-extensions:")
            ),
            None,
        )

    def _fill(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise RuntimeError("the relay closed the connection")
        self.received += len(data)
        self.buf += data

    def send(self, frame: dict[str, Any]) -> None:
        payload = json.dumps(frame).encode()
        n = len(payload)
        head = struct.pack("!BB", 0x81, 0x80 | n) if n < 126 else struct.pack("!BBH", 0x81, 254, n)
        mask = os.urandom(4)
        key = (mask * (n // 4 + 1))[:n]
        body = (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
            n, "little"
        )
        self.sock.sendall(head + mask + body)

    def recv(self) -> tuple[dict[str, Any], bool]:
        """The next text frame's JSON, and whether it came compressed (RSV1); `last_size` is
        its payload's size as text (inflated)."""
        while True:
            while len(self.buf) < 2:
                self._fill()
            b0, b1 = self.buf[0], self.buf[1]
            n, pos = b1 & 0x7F, 2
            if n == 126:
                while len(self.buf) < 4:
                    self._fill()
                n, pos = struct.unpack_from("!H", self.buf, 2)[0], 4
            elif n == 127:
                while len(self.buf) < 10:
                    self._fill()
                n, pos = struct.unpack_from("!Q", self.buf, 2)[0], 10
            while len(self.buf) < pos + n:
                self._fill()
            payload = bytes(self.buf[pos : pos + n])
            del self.buf[: pos + n]
            if b0 & 0x0F != 1:
                continue  # pings and the like
            compressed = bool(b0 & 0x40)
            if compressed:
                payload = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
            self.last_size = len(payload)
            return json.loads(payload), compressed

    def expect(self, **fields: Any) -> tuple[dict[str, Any], bool]:
        while True:
            frame, compressed = self.recv()
            if all(frame.get(k) == v for k, v in fields.items()):
                return frame, compressed
            if frame.get("type") == "error":
                raise RuntimeError(f"error frame: {frame}")


#: Chat-like words: texts made of them compress like real chat (varied, short words), not like
#: one phrase repeated, which deflate shrinks far more than anything people write.
WORDS = [
    "the",
    "a",
    "to",
    "you",
    "and",
    "I",
    "it",
    "is",
    "that",
    "of",
    "in",
    "for",
    "on",
    "are",
    "ok",
    "yes",
    "no",
    "where",
    "when",
    "meet",
    "see",
    "soon",
    "tomorrow",
    "tonight",
    "today",
    "at",
    "seven",
    "eight",
    "lunch",
    "dinner",
    "coffee",
    "call",
    "me",
    "later",
    "sorry",
    "thanks",
    "great",
    "sounds",
    "good",
    "running",
    "late",
    "on",
    "my",
    "way",
    "home",
    "work",
    "train",
    "bus",
    "traffic",
    "really",
    "what",
    "how",
]


def chat_text(i: int, size: int) -> str:
    """Message `i`'s text: `size` characters of words picked by a seeded generator."""
    pick = random.Random(i)
    words: list[str] = []
    length = 0
    while length < size:
        word = pick.choice(WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:size]


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    port, prefix = int(cfg["port"]), str(cfg.get("user_prefix", "d"))
    writer_id, peer_id = prefix + "writer", prefix + "peer"
    size = int(cfg["text_bytes"])
    writer = Client(port, None)
    writer.send({"type": "auth", "userId": writer_id})
    writer.expect(type="auth_ok")
    count = int(cfg.get("messages", PAGE))
    for i in range(count):
        writer.send(
            {"type": "message", "id": f"h{i}", "recipientId": peer_id, "text": chat_text(i, size)}
        )
    for _ in range(count):
        writer.expect(type="receipt", status="sent")
    reader = Client(port, OFFER)
    reader.send({"type": "auth", "userId": writer_id, "deviceId": "reader"})
    reader.expect(type="auth_ok")
    request = {"type": "history", "peerId": peer_id, "limit": PAGE, "ref": "page"}

    def fetch() -> tuple[int, bool]:
        reader.send(request)
        page, compressed = reader.expect(type="history", ref="page")
        if len(page["messages"]) != min(count, PAGE):
            raise RuntimeError(f"a page of {len(page['messages'])} messages")
        return reader.last_size, compressed

    warm_until = time.monotonic() + float(cfg["warmup"])
    while time.monotonic() < warm_until:
        fetch()
    snapshot = make_snapshot(int(cfg["server_pid"]), None, cfg.get("server_cpu"), cfg.get("cpu"))
    before = snapshot()
    received0 = reader.received
    pages = 0
    page_bytes, compressed = 0, False
    end = time.monotonic() + float(cfg["duration"])
    while time.monotonic() < end:
        page_bytes, compressed = fetch()
        pages += 1
    after = snapshot()
    wire = reader.received - received0
    for client in (writer, reader):
        client.sock.close()
    return {
        "before": before,
        "after": after,
        "pages": pages,
        "wire_bytes": wire,
        "page_json_bytes": page_bytes,
        "compressed": compressed,
        "extensions": reader.extensions,
    }


def main() -> int:
    cfg = json.loads(sys.stdin.read())
    if cfg.get("cpu") is not None:
        os.sched_setaffinity(0, {int(cfg["cpu"])})
    try:
        result = run(cfg)
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
