"""`python -m bench soak`: mixed traffic against a `relay serve` process for minutes, its memory
sampled as it goes.

The relay runs as `python -m relay serve --host 127.0.0.1 --port 0 --db <temporary file>`
with its default settings (the SQLite store: the in-memory one keeps every message, so its
memory grows by design). This process drives it over loopback only, with minimal WebSocket
clients of its own (RFC 6455 framing on trio sockets):
- `users` steady users, one device each, sending 1:1 and group messages at `rate` messages
  per second in all, read receipts for some of what they receive, a `history` page every 5 s
  (some with `before`) and `conversations` every 10 s; they answer the relay's pings;
- `reconnectors`: users that connect, take their backlog, send a few messages, ask for
  history, and leave (a close frame or a dropped TCP connection, alternately), then come back
  after 1-3 s; the steady users write to them meanwhile;
- `slow_readers`: members of every group, with a 4 kB receive buffer, that ask for four pages
  of their groups' history and then never read, sending only WebSocket pings, for `slow_hold`
  seconds or until the relay closes them; then they come back.

Every `sample_every` seconds (10) it samples the relay's RSS (VmRSS); every `report_every`
(60) it prints it with CPU and the traffic so far; at the end it fits a line to the RSS samples
of the last `window` minutes and reports the growth over that window (budget: under
`budget_pct`, 1%). The samples are 10 s apart, not a minute: the relay trims its heap once a
minute (relay/heap.py) and slow readers hold ~1 MB for up to 45 s, so RSS swings by ~1 MB
within a minute; sampled once a minute, the phase against the trim drifts slowly and a few
low samples at one end of the window tilted the fitted line (2026-12-06, 21 samples: +1.2%
from dips of 1 MB at minutes 11 and 13 while the mappings other than the heap were flat). Everything is written to
bench/results/soak-<UTC time>-<pid>.json (or --json). Load is bounded: a fixed number of clients, a
fixed rate, a fixed duration; the relay is stopped at the end.

`--trace` samples the relay's heap from inside too (the relay runs under
bench/soak_probe.py, which writes glibc's malloc_info, SQLite's and Python's allocator figures at
each sample) and `--trace-python` adds tracemalloc snapshots: the end of the run reports what grew
over the window, by arena and by allocation site. Each sample also records RSS by kind of
mapping (/proc/PID/smaps) and the machine's load average.

Exit status: 0 when the run completed and RSS stayed within the budget (or --no-budget); 1
when the relay failed or the traffic did not run; 2 when the RSS budget was missed.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import itertools
import json
import os
import random
import signal
import socket
import struct
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
import trio

from bench import loadgen, servers, soak_probe

RESULTS = servers.ROOT / "bench" / "results"
#: steady users' periods: a history page, the conversation list
HISTORY_EVERY = 5.0
CONVERSATIONS_EVERY = 10.0
#: the slow readers' receive buffer (the kernel doubles it) and their pages of history
SLOW_RCVBUF = 4096
SLOW_PAGES = 4
CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Settings:
    minutes: float = 30.0
    sample_every: float = 10.0
    report_every: float = 60.0
    users: int = 20
    groups: int = 4
    group_size: int = 8
    reconnectors: int = 8
    slow_readers: int = 4
    rate: float = 200.0
    slow_hold: float = 45.0
    window: float = 20.0
    budget_pct: float = 1.0
    seed: int = 1
    trace: bool = False
    trace_python: bool = False
    trace_objects: bool = False
    # The relay keeps an ended session's httpToken `http_token_ttl` (1 h by default, the
    # contract's "valid ... after") and then forgets it: a table bounded by sign-ins per ttl,
    # ~200 B each, that fills for a whole hour at the soak's ~110 sign-ins a minute (the steady
    # Python-heap growth of a 30-minute run at 1 h, measured 2026-12-05). The soak looks for
    # growth without a bound, so it shortens that one retention to 5 minutes: the table is full
    # before the trend's window opens. `--http-token-ttl 3600` measures the default.
    http_token_ttl: float = 300.0


def parse_args(argv: list[str]) -> tuple[Settings, argparse.Namespace]:
    d = Settings()
    p = argparse.ArgumentParser(
        prog="python -m bench soak", description=__doc__.splitlines()[0] if __doc__ else None
    )
    p.add_argument("--minutes", type=float, default=d.minutes, help="duration (default 30)")
    p.add_argument(
        "--sample-every",
        type=float,
        default=d.sample_every,
        help="seconds between RSS samples, all of them fitted (10)",
    )
    p.add_argument(
        "--report-every",
        type=float,
        default=d.report_every,
        help="seconds between progress lines and, with --trace, heap probes (60)",
    )
    p.add_argument("--users", type=int, default=d.users, help="steady users (20)")
    p.add_argument("--groups", type=int, default=d.groups, help="groups among them (4)")
    p.add_argument("--group-size", type=int, default=d.group_size, help="members per group (8)")
    p.add_argument("--reconnectors", type=int, default=d.reconnectors, help="reconnecting users")
    p.add_argument("--slow-readers", type=int, default=d.slow_readers, help="non-reading users")
    p.add_argument("--rate", type=float, default=d.rate, help="messages per second in all (200)")
    p.add_argument(
        "--slow-hold", type=float, default=d.slow_hold, help="seconds a slow reader stays (45)"
    )
    p.add_argument(
        "--window", type=float, default=d.window, help="minutes at the end the RSS trend covers"
    )
    p.add_argument(
        "--budget-pct", type=float, default=d.budget_pct, help="RSS growth allowed over the window"
    )
    p.add_argument("--seed", type=int, default=d.seed, help="random seed of the traffic")
    p.add_argument("--no-budget", action="store_true", help="report the trend, do not enforce it")
    p.add_argument(
        "--trace",
        action="store_true",
        help="sample the relay's heap from inside too (glibc's arenas, SQLite's heap) and "
        "report what grew over the window",
    )
    p.add_argument(
        "--trace-python",
        action="store_true",
        help="--trace with tracemalloc: the Python allocation sites that grew too (slower; "
        "tracemalloc's own tables add to the heap)",
    )
    p.add_argument(
        "--trace-objects",
        action="store_true",
        help="--trace with each SQLite connection's heap and the Python objects over 128 kB, "
        "found by walking every object once a sample (its transient ~10 MB moves glibc's "
        "mmap threshold: a run with it says where memory is, not how much)",
    )
    p.add_argument(
        "--http-token-ttl",
        type=float,
        default=d.http_token_ttl,
        help="the relay's --http-token-ttl: seconds an ended session's httpToken is kept (300; "
        "the relay's default is 3600, a table that fills for an hour)",
    )
    p.add_argument("--json", type=Path, help="where to write the results")
    args = p.parse_args(argv)
    if (
        args.minutes <= 0
        or args.sample_every <= 0
        or args.report_every < args.sample_every
        or args.users < 2
        or args.rate <= 0
    ):
        p.error(
            "--minutes, --sample-every and --rate must be positive, --report-every at least "
            "--sample-every, --users at least 2"
        )
    args.trace = args.trace or args.trace_python or args.trace_objects
    settings = Settings(**{name: getattr(args, name) for name in Settings.__dataclass_fields__})
    return settings, args


# --- the RSS trend --------------------------------------------------------------------------------


def rss_trend(samples: list[tuple[float, float]], window_s: float) -> dict[str, Any]:
    """The least-squares line through the (seconds, RSS kB) samples of the last `window_s`
    seconds: its slope (kB per minute), its values at the window's ends and the growth between
    them in percent of the first."""
    if not samples:
        raise ValueError("no RSS samples")
    end = samples[-1][0]
    points = [(t, v) for t, v in samples if t >= end - window_s - 1e-9]
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var_t = sum((t - mean_t) ** 2 for t, _ in points)
    slope = 0.0 if var_t == 0 else sum((t - mean_t) * (v - mean_v) for t, v in points) / var_t
    start_t = points[0][0]
    first = mean_v + slope * (start_t - mean_t)
    last = mean_v + slope * (end - mean_t)
    return {
        "samples": n,
        "from_s": start_t,
        "to_s": end,
        "slope_kb_per_min": slope * 60,
        "fit_first_kb": first,
        "fit_last_kb": last,
        "growth_pct": 0.0 if first <= 0 else (last - first) / first * 100,
    }


# --- a minimal WebSocket client -------------------------------------------------------------------


class Closed(Exception):
    """The relay ended the connection."""


class Link:
    """One client WebSocket on a trio socket: masked frames out, server frames in."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.sending = trio.Lock()  # a reader answers pings and reads while others send

    @classmethod
    async def open(cls, port: int, rcvbuf: int | None = None) -> Link:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        with trio.fail_after(CONNECT_TIMEOUT):
            await sock.connect(("127.0.0.1", port))
            link = cls(trio.SocketStream(sock))
            key = base64.b64encode(os.urandom(16)).decode()
            await link.stream.send_all(
                (
                    f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            while b"\r\n\r\n" not in link.buf:
                await link._fill()
        head, _, rest = bytes(link.buf).partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            await link.abort()
            raise Closed(f"handshake refused: {head.splitlines()[0]!r}")
        link.buf = bytearray(rest)
        return link

    async def _fill(self) -> None:
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise Closed(str(exc)) from None
        if not data:
            raise Closed("end of stream")
        self.buf += data

    async def _send_frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0xFE, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0xFF, n)
        key = os.urandom(4)
        mask = (key * (n // 4 + 1))[:n]
        body = (int.from_bytes(payload, "little") ^ int.from_bytes(mask, "little")).to_bytes(
            n, "little"
        )
        try:
            async with self.sending:
                await self.stream.send_all(head + key + body)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise Closed(str(exc)) from None

    async def send(self, frame: dict[str, Any]) -> None:
        await self._send_frame(0x1, orjson.dumps(frame))

    async def ping(self) -> None:
        await self._send_frame(0x9, b"soak")

    def _frame(self) -> tuple[int, bytes] | None:
        """The next whole server frame in the buffer (opcode, payload), taken out; None when
        it has not all arrived."""
        buf = self.buf
        if len(buf) < 2:
            return None
        n = buf[1] & 0x7F
        pos = 2
        if n == 126:
            if len(buf) < 4:
                return None
            (n,) = struct.unpack_from("!H", buf, 2)
            pos = 4
        elif n == 127:
            if len(buf) < 10:
                return None
            (n,) = struct.unpack_from("!Q", buf, 2)
            pos = 10
        if len(buf) < pos + n:
            return None
        opcode = buf[0] & 0x0F
        payload = bytes(buf[pos : pos + n])
        del buf[: pos + n]
        return opcode, payload

    async def recv(self) -> dict[str, Any]:
        """The next text frame's JSON; answers pings; Closed at the relay's close or EOF."""
        while True:
            frame = self._frame()
            if frame is None:
                await self._fill()
                continue
            opcode, payload = frame
            if opcode == 0x1:
                result: dict[str, Any] = orjson.loads(payload)
                return result
            if opcode == 0x9:
                await self._send_frame(0xA, payload)
            elif opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                raise Closed(f"closed by the relay with {code}")

    async def close(self) -> None:
        """A close frame (1000), then the end of the TCP connection."""
        with contextlib.suppress(Closed):
            await self._send_frame(0x8, struct.pack("!H", 1000))
        await self.abort()

    async def abort(self) -> None:
        await self.stream.aclose()


# --- the traffic ----------------------------------------------------------------------------------


class Soak:
    """The clients' shared state: settings, the relay's port, counters."""

    def __init__(self, settings: Settings, port: int) -> None:
        self.s = settings
        self.port = port
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.rng = random.Random(settings.seed)
        self.steady = [f"soak-u{i}" for i in range(settings.users)]
        self.returning = [f"soak-r{i}" for i in range(settings.reconnectors)]
        self.slow = [f"soak-s{i}" for i in range(settings.slow_readers)]
        self.groups: dict[str, list[str]] = {}
        for g in range(min(settings.groups, settings.users)):
            owner = self.steady[g]
            others = [u for u in self.steady + self.returning if u != owner]
            size = min(settings.group_size - 1, len(others))
            # every slow reader is in every group: a busy group is what fills its outbox
            self.groups[f"soak-g{g}"] = [owner, *self.rng.sample(others, size), *self.slow]
        self.ids = 0

    def next_id(self) -> str:
        self.ids += 1
        return f"k{self.ids}"

    async def session(self, user: str, device: str, rcvbuf: int | None = None) -> Link:
        link = await Link.open(self.port, rcvbuf)
        await link.send({"type": "auth", "userId": user, "deviceId": device})
        with trio.fail_after(CONNECT_TIMEOUT):
            first = await link.recv()
        if first.get("type") != "auth_ok":
            await link.abort()
            raise Closed(f"auth refused: {first}")
        return link

    def note(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "message":
            self.counts["received"] += 1
        elif kind == "receipt":
            status = frame.get("status")
            self.counts[f"receipt {status}"] += 1
            if status == "failed":
                self.errors[f"failed receipt: {frame.get('reason')}"] += 1
        elif kind == "error":
            self.errors[f"error: {frame.get('code')}"] += 1
        elif kind in ("history", "conversations"):
            self.counts[f"{kind} answers"] += 1

    async def reader(self, link: Link) -> None:
        """Reads everything; answers a tenth of the messages with a read receipt."""
        while True:
            frame = await link.recv()
            self.note(frame)
            if frame.get("type") == "message" and self.rng.random() < 0.1:
                target = (
                    {"groupId": frame["groupId"]}
                    if frame.get("groupId")
                    else {"peerId": frame.get("senderId")}
                )
                await link.send(
                    {"type": "receipt", "seq": frame["seq"], "status": "read", **target}
                )

    async def reading(self, link: Link, body: Any) -> str | None:
        """Await `body()` while reading the link; the relay's reason when it closed the link
        (which ends both), else None."""
        closed: list[str] = []
        async with trio.open_nursery() as nursery:

            async def read() -> None:
                try:
                    await self.reader(link)
                except Closed as exc:
                    closed.append(str(exc))
                    nursery.cancel_scope.cancel()

            nursery.start_soon(read)
            try:
                await body()
            except Closed as exc:
                closed.append(str(exc))
            nursery.cancel_scope.cancel()
        return closed[0] if closed else None

    async def connect(self, role: str, user: str, device: str, rcvbuf: int | None = None) -> Link:
        """A session, retried every second until the relay takes it (each refusal counted)."""
        while True:
            try:
                return await self.session(user, device, rcvbuf)
            except (Closed, OSError, trio.TooSlowError) as exc:
                self.errors[f"{role} could not connect: {exc}"] += 1
            await trio.sleep(1)

    async def steady_user(self, user: str) -> None:
        """One device for the whole run; it reconnects if the relay drops it (counted)."""
        my_groups = [g for g, members in self.groups.items() if user in members]
        peers = [u for u in self.steady + self.returning if u != user]
        period = self.s.users / self.s.rate

        async def body(link: Link) -> None:
            next_history = trio.current_time() + self.rng.uniform(0, HISTORY_EVERY)
            next_list = trio.current_time() + self.rng.uniform(0, CONVERSATIONS_EVERY)
            while True:
                await trio.sleep(period * self.rng.uniform(0.5, 1.5))
                await self.send_one(link, my_groups, peers)
                now = trio.current_time()
                if now >= next_history:
                    next_history = now + HISTORY_EVERY
                    await self.ask_history(link, my_groups, peers)
                if now >= next_list:
                    next_list = now + CONVERSATIONS_EVERY
                    await link.send({"type": "conversations"})

        while True:
            link = await self.connect("steady user", user, "desk")
            try:
                reason = await self.reading(link, lambda link=link: body(link))
            finally:
                await link.abort()
            self.errors[f"steady user dropped: {reason}"] += 1

    async def send_one(self, link: Link, my_groups: list[str], peers: list[str]) -> None:
        text = "soak " + "x" * self.rng.randrange(10, 200)
        if my_groups and self.rng.random() < 0.25:
            target: dict[str, str] = {"groupId": self.rng.choice(my_groups)}
            self.counts["sent group"] += 1
        else:
            if self.slow and self.rng.random() < 0.05:
                peer = self.rng.choice(self.slow)
            else:
                peer = self.rng.choice(peers)
            target = {"recipientId": peer}
            self.counts["sent 1:1"] += 1
        await link.send({"type": "message", "id": self.next_id(), "text": text, **target})

    async def ask_history(self, link: Link, my_groups: list[str], peers: list[str]) -> None:
        target: dict[str, Any]
        if my_groups and self.rng.random() < 0.3:
            target = {"groupId": self.rng.choice(my_groups)}
        else:
            target = {"peerId": self.rng.choice(peers)}
        if self.rng.random() < 0.5:
            target["before"] = self.rng.randrange(2, 500)
        await link.send({"type": "history", "limit": 50, **target})
        self.counts["history asked"] += 1

    async def reconnector(self, user: str) -> None:
        """Comes and goes: a few messages and a history page per visit, a clean close or a
        dropped connection alternately."""
        my_groups = [g for g, members in self.groups.items() if user in members]

        async def visit(link: Link) -> None:
            for _ in range(3):
                await self.send_one(link, my_groups, self.steady)
                await trio.sleep(0.2)
            await self.ask_history(link, my_groups, self.steady)
            await trio.sleep(self.rng.uniform(1.0, 3.0))

        for n in itertools.count():
            link = await self.connect("reconnector", user, "phone")
            self.counts["reconnects"] += 1
            reason = await self.reading(link, lambda link=link: visit(link))
            if reason is not None:
                self.errors[f"reconnector dropped: {reason}"] += 1
            if n % 2:
                await link.abort()
            else:
                await link.close()
            await trio.sleep(self.rng.uniform(1.0, 3.0))

    async def slow_reader(self, user: str) -> None:
        """Asks for pages of its groups' history, then never reads (its groups' messages pile
        up): only pings, for `slow_hold` seconds or until the relay closes it."""
        targets = [{"groupId": g} for g in self.groups] or [{"peerId": self.steady[0]}]
        while True:
            link = await self.connect("slow reader", user, "watch", rcvbuf=SLOW_RCVBUF)
            self.counts["slow reader sessions"] += 1
            try:
                for page in range(SLOW_PAGES):
                    target = targets[page % len(targets)]
                    await link.send({"type": "history", "limit": 100, **target})
                with trio.move_on_after(self.s.slow_hold):
                    while True:
                        await trio.sleep(5)
                        await link.ping()
                self.counts["slow readers left"] += 1
            except Closed:
                self.counts["slow readers closed by the relay"] += 1
            await link.abort()
            await trio.sleep(1)

    async def setup_groups(self) -> None:
        for group, members in self.groups.items():
            link = await self.session(members[0], "setup")
            await link.send(
                {"type": "group_create", "groupId": group, "name": group, "members": members[1:]}
            )
            with trio.fail_after(CONNECT_TIMEOUT):
                while (await link.recv()).get("type") != "group":
                    pass
            await link.close()

    async def traffic(self) -> None:
        async with trio.open_nursery() as nursery:
            for user in self.steady:
                nursery.start_soon(self.steady_user, user)
            for user in self.returning:
                nursery.start_soon(self.reconnector, user)
            for user in self.slow:
                nursery.start_soon(self.slow_reader, user)


# --- the run --------------------------------------------------------------------------------------


def say(msg: str) -> None:
    print(msg, flush=True)


def _clock(seconds: float) -> str:
    """m:ss, right-aligned for runs of up to 999 minutes."""
    return f"{int(seconds) // 60:3d}:{int(seconds) % 60:02d}"


#: /proc/PID/status fields sampled: RSS, and its anonymous and file-backed parts
_STATUS_FIELDS = {b"VmRSS": "rss_kb", b"RssAnon": "anon_kb", b"RssFile": "file_kb"}


def proc_memory_kb(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon and RssFile of `pid` (kB) from /proc/PID/status."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            name, _, value = line.partition(b":")
            if name in _STATUS_FIELDS:
                found[_STATUS_FIELDS[name]] = int(value.split()[0])
    missing = set(_STATUS_FIELDS.values()) - set(found)
    if missing:
        raise RuntimeError(f"no {', '.join(sorted(missing))} for pid {pid}")
    return found


def db_bytes(db: Path) -> int:
    """The database's size on disk: the file, its WAL and its shared-memory index."""
    total = 0
    for path in db.parent.glob(db.name + "*"):
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


def sample(pid: int, started: float, db: Path) -> dict[str, float]:
    """One sample: the relay's memory and CPU, the database's size, and the machine's load
    averages (1, 5 and 15 minutes: other work on the machine, beside the relay's figures)."""
    load1, load5, load15 = os.getloadavg()
    maps = {f"maps_{kind}": kb for kind, kb in soak_probe.smaps_kb(pid).items()}
    return {
        "t": round(time.monotonic() - started, 3),
        **proc_memory_kb(pid),
        **maps,
        "cpu_s": loadgen.proc_cpu_seconds(pid),
        "db_bytes": db_bytes(db),
        "load1": load1,
        "load5": load5,
        "load15": load15,
    }


async def probe(
    pid: int, trace_dir: Path | None, at: dict[str, float], probes: Iterator[int]
) -> None:
    """With --trace: the relay's next tracemalloc snapshot and malloc_info, written when it
    handles SIGUSR1 (waited for, at most a minute); the sample `at` records its number."""
    if trace_dir is None:
        return
    n = at["probe"] = next(probes)
    os.kill(pid, signal.SIGUSR1)
    with trio.fail_after(60):
        while not (trace_dir / f"done-{n:04d}").exists():  # noqa: ASYNC110 - another process
            await trio.sleep(0.1)


async def drive(
    settings: Settings,
    server: servers.RunningServer,
    db: Path,
    samples: list[dict[str, float]],
    trace_dir: Path | None,
) -> Soak:
    soak = Soak(settings, server.port)
    await soak.setup_groups()
    started = time.monotonic()
    probes = itertools.count()
    samples.append(sample(server.pid, started, db) | {"reported": 1})
    await probe(server.pid, trace_dir, samples[-1], probes)
    total = _clock(settings.minutes * 60)
    say(f"[{_clock(0)}/{total}] relay RSS {samples[0]['rss_kb'] / 1024:.1f} MB")
    per_report = max(1, round(settings.report_every / settings.sample_every))
    first = trio.current_time()
    with trio.move_on_after(settings.minutes * 60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(soak.traffic)
            reported = samples[0]
            for k in itertools.count(1):
                await trio.sleep_until(first + k * settings.sample_every)
                if not server.alive():
                    break
                now = sample(server.pid, started, db)
                samples.append(now)
                if k % per_report:
                    continue
                now["reported"] = 1
                await probe(server.pid, trace_dir, now, probes)
                c = soak.counts
                cpu = (now["cpu_s"] - reported["cpu_s"]) / max(now["t"] - reported["t"], 1e-9)
                reported = now
                say(
                    f"[{_clock(now['t'])}/{total}] relay RSS "
                    f"{now['rss_kb'] / 1024:.1f} MB (anon {now['anon_kb'] / 1024:.1f}, file "
                    f"{now['file_kb'] / 1024:.1f}; heap {now['maps_heap'] / 1024:.1f}, other "
                    f"anon {now['maps_anon'] / 1024:.1f} in {now['maps_anon_maps']} maps, "
                    f"{now['maps_threads']} threads), db {now['db_bytes'] / 1e6:.1f} MB, "
                    f"cpu {cpu:.0%}, load {now['load1']:.2f}; sent {c['sent 1:1']:,} 1:1 + "
                    f"{c['sent group']:,} group, received {c['received']:,}, history "
                    f"{c['history answers']:,}, conversations {c['conversations answers']:,}, "
                    f"reconnects {c['reconnects']:,}, slow-reader sessions "
                    f"{c['slow reader sessions']:,}, errors {sum(soak.errors.values()):,}"
                )
            nursery.cancel_scope.cancel()  # the relay died
    if not server.alive():
        raise servers.ServerError("the relay died during the soak")
    end = sample(server.pid, started, db) | {"reported": 1}
    if end["t"] - samples[-1]["t"] >= 1.0:
        samples.append(end)
    else:
        samples[-1]["reported"] = 1
    if "probe" not in samples[-1]:
        await probe(server.pid, trace_dir, samples[-1], probes)
    return soak


def main(argv: list[str]) -> int:
    settings, args = parse_args(argv)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    json_path = args.json or RESULTS / f"soak-{stamp}-{os.getpid()}.json"
    # the pid too: soaks started in the same second (A/B runs side by side) keep their own logs
    log_path = RESULTS / "logs" / f"soak-{stamp}-{os.getpid()}.log"
    say(
        f"soak: {settings.minutes:g} min, {settings.users} users at {settings.rate:g} msg/s, "
        f"{min(settings.groups, settings.users)} groups of {settings.group_size}, "
        f"{settings.reconnectors} reconnecting, {settings.slow_readers} slow readers; RSS every "
        f"{settings.sample_every:g} s; relay log {log_path}"
    )
    samples: list[dict[str, float]] = []
    doc: dict[str, Any] = {"started_utc": stamp, "settings": asdict(settings)}
    with tempfile.TemporaryDirectory(prefix="relay-soak-") as tmp:
        db = Path(tmp) / "soak.db"
        argv_relay = [sys.executable, "-m", "relay", "serve", "--host", "127.0.0.1"]
        argv_relay += ["--port", "0", "--db", str(db)]
        argv_relay += ["--http-token-ttl", f"{settings.http_token_ttl:g}"]
        env: dict[str, str] = {}
        trace_dir = None
        if settings.trace:
            trace_dir = Path(tmp) / "trace"
            trace_dir.mkdir()
            argv_relay[1:3] = ["-c", _TRACED_RELAY]
            env[soak_probe.TRACE_DIR_ENV] = str(trace_dir)
            if settings.trace_python:
                env[soak_probe.TRACE_PYTHON_ENV] = "1"
            if settings.trace_objects:
                env[soak_probe.TRACE_OBJECTS_ENV] = "1"
        doc["relay_argv"] = argv_relay
        try:
            server = servers.start(servers.ServerSpec("relay", argv_relay, env), log_path, None)
        except servers.ServerError as exc:
            say(f"soak: {exc}")
            return 1
        try:
            soak = trio.run(drive, settings, server, db, samples, trace_dir)
        except (servers.ServerError, Closed, OSError, trio.TooSlowError) as exc:
            say(f"soak: FAILED: {exc!r}\nrelay log tail:\n{server.log_tail()}")
            doc |= {"error": str(exc), "samples": samples}
            _write(json_path, doc)
            return 1
        finally:
            server.stop()
            doc["db_bytes"] = sum(p.stat().st_size for p in Path(tmp).glob("soak.db*"))
        if trace_dir is not None:
            doc["trace"] = trace_report(samples, trace_dir, settings)

    # a run no longer than the window: its whole curve (the sampler's clock overshoots the end)
    window_s = settings.window * 60 if settings.window < settings.minutes else float("inf")
    trend = rss_trend([(s["t"], s["rss_kb"]) for s in samples], window_s)
    trend_anon = rss_trend([(s["t"], s["anon_kb"]) for s in samples], window_s)
    flat = trend["growth_pct"] < settings.budget_pct
    doc |= {
        "samples": samples,
        "counts": dict(soak.counts),
        "errors": dict(soak.errors),
        "trend": trend,
        "trend_anon": trend_anon,
        "budget": {"growth_pct_below": settings.budget_pct, "met": flat},
    }
    _write(json_path, doc)
    c = soak.counts
    say("")
    for line in curve_lines(samples):
        say(line)
    say("")
    say(
        f"traffic: {c['sent 1:1']:,} 1:1 and {c['sent group']:,} group messages sent, "
        f"{c['received']:,} received, {c['receipt sent']:,} sent receipts, "
        f"{c['history answers']:,} history pages, {c['conversations answers']:,} conversation "
        f"lists, {c['reconnects']:,} reconnects, {c['slow reader sessions']:,} slow-reader "
        f"sessions ({c['slow readers closed by the relay']:,} closed by the relay); "
        f"database {doc['db_bytes'] / 1e6:.1f} MB"
    )
    for what, n in sorted(soak.errors.items()):
        say(f"  {n:,} x {what}")
    say(trend_line("RssAnon", trend_anon))
    say(
        f"{trend_line('RSS', trend)} (budget < {settings.budget_pct:g}%): "
        f"{'flat' if flat else 'GROWING'}"
    )
    if "trace" in doc:
        for line in trace_lines(doc["trace"]):
            say(line)
    say(f"results: {json_path}")
    if not (c["sent 1:1"] and c["received"]):
        say("soak: FAILED: no traffic went through")
        return 1
    return 0 if flat or args.no_budget else 2


#: `python -c` program that runs the relay traced (argv after it: `serve ...`)
_TRACED_RELAY = (
    "import sys; from bench.soak_probe import traced_relay; "
    "raise SystemExit(traced_relay(sys.argv[1:]))"
)


def trace_report(
    samples: list[dict[str, float]], trace_dir: Path, settings: Settings
) -> dict[str, Any]:
    """What grew between the probe at the window's start and the last one: Python allocation
    sites (tracemalloc), each malloc arena's used and free bytes, glibc's direct mmaps."""
    end = samples[-1]["t"]
    window_s = settings.window * 60 if settings.window < settings.minutes else float("inf")
    probed = [s for s in samples if "probe" in s]
    first = int(next(s["probe"] for s in probed if s["t"] >= end - window_s - 1e-9))
    last = int(probed[-1]["probe"])
    info = [trace_dir / f"malloc-{i:04d}.xml" for i in (first, last)]
    python: dict[str, Any] = {}
    if settings.trace_python:
        snap = [trace_dir / f"snap-{i:04d}" for i in (first, last)]
        python = {
            "traced_bytes": [soak_probe.traced_total(p) for p in snap],
            "by_line": soak_probe.growth_by_line(snap[0], snap[1]),
            "by_traceback": soak_probe.top_growth(snap[0], snap[1], limit=8),
        }
    return {
        "from_sample": first,
        "to_sample": last,
        **python,
        "arenas": [soak_probe.arenas(p) for p in info],
        "mmapped": [soak_probe.mmapped(p) for p in info],
        "heap": soak_probe.heap_series(trace_dir, len(probed)),
    }


def trace_lines(trace: dict[str, Any]) -> list[str]:
    lines = [f"what grew from probe {trace['from_sample']} to probe {trace['to_sample']}:"]
    if "traced_bytes" in trace:
        old, new = trace["traced_bytes"]
        lines.append(
            f"traced Python allocations: {old / 1e6:.2f} -> {new / 1e6:.2f} MB; the lines "
            "that grew most:"
        )
        for s in trace["by_line"]:
            lines.append(
                f"  {s['size_diff'] / 1e3:+9.1f} kB {s['count_diff']:+7d} blocks  {s['line']}"
            )
        lines.append("the call paths that grew most (innermost frame last):")
        for s in trace["by_traceback"]:
            lines.append(f"  {s['size_diff'] / 1e3:+9.1f} kB {s['count_diff']:+7d} blocks")
            lines.extend(f"      {frame}" for frame in s["frames"][-6:])
    before = {a["nr"]: a for a in trace["arenas"][0]}
    lines.append("malloc arenas (MB used / free, start -> end of the window):")
    for a in trace["arenas"][1]:
        b = before.get(a["nr"], {"used": 0, "free": 0})
        lines.append(
            f"  arena {a['nr']:2d}: {b['used'] / 1e6:6.2f} / {b['free'] / 1e6:6.2f} -> "
            f"{a['used'] / 1e6:6.2f} / {a['free'] / 1e6:6.2f}"
        )
    m0, m1 = trace["mmapped"]
    lines.append(f"  direct mmaps: {m0 / 1e6:.2f} -> {m1 / 1e6:.2f} MB")
    lines.append(
        "heap by owner, MB each probe: malloc in use / free in the arenas / mmapped, "
        "SQLite's (now, high-water), Python's (traced; its allocator's 1 MiB arenas):"
    )
    for n, h in enumerate(trace["heap"]):
        # with tracemalloc on, Python's allocator is wrapped and sys._debugmallocstats prints
        # none of its figures
        pymalloc = (
            f"{h['python_arenas']} arenas, blocks {h['python_blocks'] / 1e6:6.2f} used / "
            f"{h['python_free_blocks'] / 1e6:5.2f} free"
            if "python_blocks" in h
            else "(its allocator's figures hidden by tracemalloc)"
        )
        lines.append(
            f"  {n:3d}: {h['malloc_used'] / 1e6:6.2f} / {h['malloc_free'] / 1e6:5.2f} / "
            f"{h['malloc_mmapped'] / 1e6:5.2f}   sqlite {h['sqlite_used'] / 1e6:6.2f} "
            f"({h['sqlite_high'] / 1e6:6.2f})   python traced {h['python_traced'] / 1e6:6.2f}, "
            f"{pymalloc}"
        )
    h0, h1 = trace["heap"][trace["from_sample"]], trace["heap"][trace["to_sample"]]
    if h1.get("sqlite_connections"):
        lines.append("SQLite connections (kB: page cache / schema / statements, start -> end):")
        for n, (a, b) in enumerate(
            itertools.zip_longest(h0.get("sqlite_connections", []), h1["sqlite_connections"])
        ):
            a = a or {"cache": 0, "schema": 0, "stmt": 0}
            b = b or {"cache": 0, "schema": 0, "stmt": 0}
            lines.append(
                f"  {n}: {a['cache'] / 1e3:7.1f} / {a['schema'] / 1e3:5.1f} / "
                f"{a['stmt'] / 1e3:6.1f} -> {b['cache'] / 1e3:7.1f} / {b['schema'] / 1e3:5.1f} "
                f"/ {b['stmt'] / 1e3:6.1f}"
            )
    if h1.get("big_objects"):
        lines.append("Python objects over 128 kB at the end (bytes, length, held by):")
        for o in h1["big_objects"][:12]:
            lines.append(f"  {o['type']:10s} {o['bytes']:>10,} {o['len']:>9,}  {o['owner']}")
    return lines


def curve_lines(samples: list[dict[str, float]]) -> list[str]:
    """The sampled curve, one line a reported sample (each if none is marked): time, RSS, its
    anonymous and file-backed parts, the database's size on disk, the machine's 1-minute load
    average."""
    lines = ["   time   RSS MB  RssAnon MB  RssFile MB   DB MB   load"]
    for s in [s for s in samples if "reported" in s] or samples:
        lines.append(
            f"{_clock(s['t'])}   {s['rss_kb'] / 1024:6.1f}  {s['anon_kb'] / 1024:10.1f}  "
            f"{s['file_kb'] / 1024:10.1f}  {s['db_bytes'] / 1e6:6.1f}  {s['load1']:5.2f}"
        )
    return lines


def trend_line(what: str, trend: dict[str, Any]) -> str:
    return (
        f"{what} over the last {(trend['to_s'] - trend['from_s']) / 60:.1f} min "
        f"({trend['samples']} samples): {trend['fit_first_kb'] / 1024:.1f} -> "
        f"{trend['fit_last_kb'] / 1024:.1f} MB on the fitted line, slope "
        f"{trend['slope_kb_per_min']:+.1f} kB/min, growth {trend['growth_pct']:+.2f}%"
    )


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))
