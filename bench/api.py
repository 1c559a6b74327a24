"""`python -m bench api`: publishes per second through the HTTP API against the same count of
messages over WebSocket, in one run against one `relay serve` process.

The relay runs as `python -m relay serve --host 127.0.0.1 --port 0` with an API key and the
store asked for (`--store sqlite`, the default: a temporary file; or `memory`), pinned to
`--cpu` when given. Both sides are closed loops of `clients` connections with one message in
flight each (HTTP/1.1 without pipelining allows no more; the WebSocket side is held to the
same so the two compare the relay's work per message, not the window):
- http: each client keeps one keep-alive connection and POSTs /api/v1/publish
  (`{"senderId":"bs<i>","recipientId":"br<i>","text":…}`), awaiting the 200 (durable);
- ws: each client is an authenticated WebSocket sending a `message` to the same kind of
  recipient and awaiting its `sent` receipt (durable).
Recipients are not connected, so neither side pays for delivery. The phases alternate
(ws, http, ws, http, …, `rounds` times each) after a warmup of each, and each figure is the
median of its rounds: messages per second, and the relay's CPU seconds per 1,000 messages
(from /proc/<pid>/stat at the window's edges). Raw HTTP and WebSocket framing of our own on
trio sockets keep the client's cost small and alike on both sides.

Results go to bench/results/api-<UTC time>.json (or --json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import trio

from bench import servers
from bench.soak import Closed, Link

RESULTS = servers.ROOT / "bench" / "results"
KEY = "bench-api-key"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench api", description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=16, help="connections on each side (16)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per round (3)")
    p.add_argument("--warmup", type=float, default=0.5, help="seconds of warmup per side (0.5)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of each side (2)")
    p.add_argument("--store", choices=("sqlite", "memory"), default="sqlite")
    p.add_argument("--text-bytes", type=int, default=100, help="message text size (100)")
    p.add_argument("--cpu", type=int, default=None, help="pin the relay to this core")
    p.add_argument("--json", type=Path, default=None, help="where to write the results")
    return p.parse_args(argv)


def say(msg: str) -> None:
    print(msg, flush=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class HttpLink:
    """One keep-alive HTTP/1.1 connection that POSTs publishes and reads the answers."""

    def __init__(self, stream: trio.SocketStream, port: int) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.head = (
            f"POST /api/v1/publish HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
        ).encode()

    @classmethod
    async def open(cls, port: int) -> HttpLink:
        return cls(await trio.open_tcp_stream("127.0.0.1", port), port)

    async def publish(self, body: bytes) -> int:
        """POST one publish; the answer's status."""
        await self.stream.send_all(self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self.buf[:end])
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                total = end + 4 + length
                if len(self.buf) >= total:
                    del self.buf[:total]
                    return int(head.split(b" ", 2)[1])
            data = await self.stream.receive_some(65536)
            if not data:
                raise Closed("the relay closed an HTTP connection")
            self.buf += data


class Side:
    """One side's clients and what they counted."""

    def __init__(self, name: str, port: int, clients: int, text: str) -> None:
        self.name = name
        self.port = port
        self.clients = clients
        self.text = text
        self.count = 0
        self.errors = 0
        self.links: list[Any] = []
        self._seq = 0

    async def connect(self) -> None:
        for i in range(self.clients):
            if self.name == "http":
                self.links.append(await HttpLink.open(self.port))
            else:
                link = await Link.open(self.port)
                await link.send({"type": "auth", "userId": f"ws{i}", "deviceId": "bench"})
                while (await link.recv()).get("type") != "auth_ok":
                    pass
                self.links.append(link)

    async def run(self, seconds: float) -> int:
        """Publish in closed loops for `seconds`; how many were answered."""
        start = self.count
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                for i, link in enumerate(self.links):
                    nursery.start_soon(self._loop, i, link)
        return self.count - start

    async def _loop(self, i: int, link: Any) -> None:
        while True:
            self._seq += 1
            mid = f"{self.name}-{i}-{self._seq}"
            if self.name == "http":
                body = orjson.dumps(
                    {"senderId": f"hs{i}", "recipientId": f"hr{i}", "text": self.text, "id": mid}
                )
                if await link.publish(body) == 200:
                    self.count += 1
                else:
                    self.errors += 1
            else:
                await link.send(
                    {"type": "message", "id": mid, "recipientId": f"wr{i}", "text": self.text}
                )
                while True:
                    frame = await link.recv()
                    if frame.get("type") == "receipt" and frame.get("id") == mid:
                        break
                if frame.get("status") == "sent":
                    self.count += 1
                else:
                    self.errors += 1


async def drive(args: argparse.Namespace, server: servers.RunningServer) -> dict[str, Any]:
    text = "x" * args.text_bytes
    sides = {name: Side(name, server.port, args.clients, text) for name in ("ws", "http")}
    for side in sides.values():
        await side.connect()
        await side.run(args.warmup)
    rounds: dict[str, list[dict[str, float]]] = {"ws": [], "http": []}
    for r in range(args.rounds):
        for name, side in sides.items():
            cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
            n = await side.run(args.duration)
            cpu1, t1 = cpu_seconds(server.pid), time.monotonic()
            fig = {
                "messages": n,
                "per_s": n / (t1 - t0),
                "relay_cpu_s_per_1000": (cpu1 - cpu0) / n * 1000 if n else float("nan"),
            }
            rounds[name].append(fig)
            say(
                f"round {r + 1} {name:>4}: {fig['per_s']:,.0f} publishes/s, relay CPU "
                f"{fig['relay_cpu_s_per_1000'] * 1000:.0f} ms per 1,000"
            )
    summary = {
        name: {
            "per_s": statistics.median(f["per_s"] for f in figs),
            "relay_cpu_s_per_1000": statistics.median(f["relay_cpu_s_per_1000"] for f in figs),
            "errors": sides[name].errors,
        }
        for name, figs in rounds.items()
    }
    return {"rounds": rounds, "summary": summary}


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    json_path = args.json or RESULTS / f"api-{stamp}.json"
    log_path = RESULTS / "logs" / f"api-{stamp}.log"
    doc: dict[str, Any] = {"started_utc": stamp, "settings": vars(args) | {"json": None}}
    with tempfile.TemporaryDirectory(prefix="relay-bench-api-") as tmp:
        store = ["--memory"] if args.store == "memory" else ["--db", str(Path(tmp) / "api.db")]
        argv_relay = [sys.executable, "-m", "relay", "serve", "--host", "127.0.0.1"]
        argv_relay += ["--port", "0", *store, "--api-keys", KEY]
        # the WebSocket side must not meet the per-user message bucket (publish has none)
        limit = str(servers.RELAY_RATE_LIMIT)
        argv_relay += ["--rate-limit-messages", limit, "--rate-limit-burst", limit]
        doc["relay_argv"] = argv_relay
        say(
            f"api: {args.clients} clients per side, one publish in flight each, "
            f"{args.rounds} x {args.duration:g} s per side, {args.store} store"
        )
        try:
            server = servers.start(servers.ServerSpec("relay", argv_relay), log_path, args.cpu)
        except servers.ServerError as exc:
            say(f"api: {exc}")
            return 1
        try:
            doc |= trio.run(drive, args, server)
        except (Closed, OSError, trio.TooSlowError) as exc:
            say(f"api: FAILED: {exc}\nrelay log tail:\n{server.log_tail()}")
            return 1
        finally:
            server.stop()
    s = doc["summary"]
    ratio = s["http"]["per_s"] / s["ws"]["per_s"] if s["ws"]["per_s"] else float("nan")
    say(
        f"median: http {s['http']['per_s']:,.0f} publishes/s "
        f"({s['http']['relay_cpu_s_per_1000'] * 1000:.0f} ms relay CPU per 1,000), "
        f"ws {s['ws']['per_s']:,.0f} messages/s "
        f"({s['ws']['relay_cpu_s_per_1000'] * 1000:.0f} ms per 1,000): http/ws {ratio:.2f}"
    )
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(doc, indent=1, default=str))
    say(f"results: {json_path}")
    errors = s["http"]["errors"] + s["ws"]["errors"]
    if errors or not (s["http"]["per_s"] and s["ws"]["per_s"]):
        say(f"api: FAILED: {errors} refused publishes")
        return 1
    return 0
