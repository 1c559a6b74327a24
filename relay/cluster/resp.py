"""The cluster link's hot path to Redis: PUBLISH in pipelines, and the pub/sub subscription
whose messages are handed to a callback as they are parsed. Replies are parsed by coredis's
sans-IO RESP parser (`coredis.parser.Parser`); this module is only the Trio shell around it.

Measured reason: through coredis's client, each pub/sub message crossed two anyio memory
streams and a cancel scope (about 30% of a busy node's main thread), and each publish pipeline
ran its own writer task; here a read of the socket is fed to the parser in one synchronous pass
and every complete message in it is handled at once, and a pipeline is one `send_all` and one
parse of the replies. The heartbeat's keys (SET, SCAN, MGET: a few a second) stay on coredis's
client.

Invariants:
- `Subscription.subscribe` returns once Redis confirmed every channel (a publish Redis takes
  after that reaches this node), or raises RedisGone when the connection ended meanwhile;
- the messages of a subscription are handled in the order Redis sent them;
- a connection that failed (EOF, a malformed reply, a timeout) raises RedisGone and is not
  used again: the link opens new ones.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import trio
from coredis.exceptions import InvalidResponse, RedisError
from coredis.parser import NotEnoughData, Parser

from relay.errors import RelayError

#: seconds to connect (and authenticate), and to wait for the replies of a pipeline
CONNECT_TIMEOUT: Final = 2.0
REPLY_TIMEOUT: Final = 5.0
_READ: Final = 65536


class RedisGone(RelayError):
    """The connection to Redis ended or failed; the link reconnects."""


class RedisReplyError(RelayError):
    """Redis answered a command with an error."""


def encode(args: Sequence[bytes | str]) -> bytes:
    """One command in RESP2 (an array of bulk strings; replies are parsed by coredis)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n" % len(data))
        out.append(data)
        out.append(b"\r\n")
    return b"".join(out)


class RespConnection:
    """One connection: commands in pipelines (`call_many`), or a subscription's stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._parser = Parser()
        self._send_lock = trio.Lock()

    async def _fill(self) -> None:
        try:
            data = await self.stream.receive_some(_READ)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise RedisGone(f"reading from Redis failed: {exc!r}") from None
        if not data:
            raise RedisGone("Redis closed the connection")
        self._parser.feed(data if isinstance(data, bytes) else bytes(data))

    def _take(self) -> list[Any]:
        """Every complete reply read so far, in order; an error reply as a RedisReplyError."""
        replies: list[Any] = []
        parser = self._parser
        while True:
            try:
                parsed = parser.parse()
            except (InvalidResponse, ValueError) as exc:
                raise RedisGone(f"malformed reply from Redis: {exc}") from None
            if isinstance(parsed, NotEnoughData):
                return replies
            reply = parsed[1]
            replies.append(RedisReplyError(str(reply)) if isinstance(reply, RedisError) else reply)

    async def send(self, data: bytes) -> None:
        async with self._send_lock:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise RedisGone(f"writing to Redis failed: {exc!r}") from None

    async def call_many(self, commands: Sequence[Sequence[bytes | str]]) -> list[Any]:
        """Send `commands` in one write and return their replies (the first error raised).
        Only one task calls this at a time on a connection."""
        if not commands:
            return []
        await self.send(b"".join(encode(c) for c in commands))
        replies: list[Any] = []
        with trio.move_on_after(REPLY_TIMEOUT) as scope:
            replies.extend(self._take())
            while len(replies) < len(commands):
                await self._fill()
                replies.extend(self._take())
        if scope.cancelled_caught:
            raise RedisGone(f"Redis did not answer within {REPLY_TIMEOUT} s")
        for reply in replies:
            if isinstance(reply, RedisReplyError):
                raise reply
        return replies

    async def aclose(self) -> None:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            await self.stream.aclose()


async def connect(url: str) -> RespConnection:
    """A connection to the Redis of `url` (redis://, rediss://, unix://), authenticated and on
    its database."""
    parts = urlsplit(url)
    with trio.move_on_after(CONNECT_TIMEOUT) as scope:
        stream: trio.abc.Stream
        if parts.scheme == "unix":
            stream = await trio.open_unix_socket(parts.path)
        else:
            host = parts.hostname or "127.0.0.1"
            stream = await trio.open_tcp_stream(host, parts.port or 6379)
            if parts.scheme == "rediss":
                tls = trio.SSLStream(stream, ssl.create_default_context(), server_hostname=host)
                await tls.do_handshake()
                stream = tls
        conn = RespConnection(stream)
        setup: list[list[bytes | str]] = []
        if parts.password is not None:
            user = unquote(parts.username) if parts.username else None
            password = unquote(parts.password)
            setup.append(["AUTH", user, password] if user else ["AUTH", password])
        db = parts.path.strip("/") if parts.scheme != "unix" else ""
        if db and db != "0":
            setup.append(["SELECT", db])
        setup.append(["PING"])
        await conn.call_many(setup)
        return conn
    assert scope.cancelled_caught
    raise RedisGone(f"connecting to Redis at {parts.hostname or parts.path} timed out")


class Subscription:
    """The pub/sub side of a connection: `run` reads it and hands each message to
    `handle(channel, data)`; `subscribe` waits for Redis's confirmation of each channel."""

    def __init__(self, conn: RespConnection, handle: Callable[[bytes, bytes], None]) -> None:
        self.conn = conn
        self.handle = handle
        self._waiting: dict[bytes, list[trio.Event]] = {}
        self._ended: str | None = None

    async def run(self) -> None:
        conn = self.conn
        handle = self.handle
        try:
            while True:
                await conn._fill()
                for reply in conn._take():
                    if not isinstance(reply, list) or len(reply) < 3:
                        if isinstance(reply, RedisReplyError):
                            raise RedisGone(f"Redis refused a subscription command: {reply}")
                        continue
                    kind = reply[0]
                    if kind == b"message":
                        handle(reply[1], reply[2])
                    elif kind == b"subscribe":
                        for event in self._waiting.pop(reply[1], ()):
                            event.set()
        except BaseException as exc:
            self._ended = repr(exc)
            raise
        finally:
            if self._ended is None:
                self._ended = "the subscription stopped"
            for events in self._waiting.values():  # waiters learn that it ended
                for event in events:
                    event.set()
            self._waiting.clear()

    async def subscribe(self, *channels: str) -> None:
        if not channels:
            return
        if self._ended is not None:
            raise RedisGone(f"the subscription ended: {self._ended}")
        events = []
        for channel in channels:
            event = trio.Event()
            self._waiting.setdefault(channel.encode(), []).append(event)
            events.append(event)
        await self.conn.send(encode(["SUBSCRIBE", *channels]))
        for event in events:
            await event.wait()
        if self._ended is not None:
            raise RedisGone(f"the subscription ended: {self._ended}")

    async def unsubscribe(self, *channels: str) -> None:
        if channels and self._ended is None:
            await self.conn.send(encode(["UNSUBSCRIBE", *channels]))
