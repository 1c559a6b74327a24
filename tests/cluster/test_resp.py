"""relay.cluster.resp, the link's Trio shell around coredis's RESP parser: replies parsed from
any split of the bytes,
and a subscription against the session's real redis-server (confirmed channels hear what is
published after, in order; an error reply is raised; a stopped server ends the connection)."""

from __future__ import annotations

import pytest
import trio
from services import RedisServer

from relay.cluster import resp

REPLIES = (
    b"*3\r\n$7\r\nmessage\r\n$8\r\nrelay:u:\r\n$5\r\nM\nab\n\r\n"
    b":42\r\n+OK\r\n$-1\r\n*0\r\n-ERR wrong\r\n$0\r\n\r\n"
)
PARSED = [
    [b"message", b"relay:u:", b"M\nab\n"],
    42,
    b"OK",
    None,
    [],
    "wrong",
    b"",
]


def test_replies_parse_from_any_split_of_the_bytes() -> None:
    for cut in range(len(REPLIES) + 1):
        conn = resp.RespConnection(trio.testing.MemorySendStream())  # type: ignore[arg-type]
        got: list[object] = []
        for part in (REPLIES[:cut], REPLIES[cut:]):
            conn._parser.feed(part)
            got.extend(conn._take())
        got = [str(r) if isinstance(r, resp.RedisReplyError) else r for r in got]
        assert got == PARSED, cut


def test_a_malformed_reply_ends_the_connection() -> None:
    conn = resp.RespConnection(trio.testing.MemorySendStream())  # type: ignore[arg-type]
    conn._parser.feed(b"!nonsense\r\n")
    with pytest.raises(resp.RedisGone):
        conn._take()


def test_a_command_is_encoded_as_a_resp_array() -> None:
    assert resp.encode(["PUBLISH", b"ch", b"a\r\nb"]) == (
        b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$4\r\na\r\nb\r\n"
    )


async def test_a_confirmed_subscription_hears_every_publish_in_order(redis: RedisServer) -> None:
    got: list[tuple[bytes, bytes]] = []
    heard = trio.Event()

    def handle(channel: bytes, data: bytes) -> None:
        got.append((channel, data))
        if len(got) == 1001:
            heard.set()

    publisher = await resp.connect(redis.url)
    listener = await resp.connect(redis.url)
    async with trio.open_nursery() as nursery:
        sub = resp.Subscription(listener, handle)
        nursery.start_soon(sub.run)
        await sub.subscribe("relay:u:a", "relay:u:b")
        counts = await publisher.call_many(
            [("PUBLISH", "relay:u:a", b"%d" % i) for i in range(1000)]
        )
        assert counts == [1] * 1000  # each reached the subscriber
        big = bytes(range(256)) * 1000  # across many reads
        await publisher.call_many([("PUBLISH", "relay:u:b", big)])
        with trio.fail_after(10):
            await heard.wait()
        assert got[:1000] == [(b"relay:u:a", b"%d" % i) for i in range(1000)]
        assert got[1000] == (b"relay:u:b", big)
        with pytest.raises(resp.RedisReplyError):
            await publisher.call_many([("PUBLISH", "only-one-argument")])
        nursery.cancel_scope.cancel()
    await publisher.aclose()
    await listener.aclose()


async def test_a_stopped_server_ends_the_subscription(redis: RedisServer) -> None:
    listener = await resp.connect(redis.url)
    sub = resp.Subscription(listener, lambda channel, data: None)
    try:
        with pytest.raises(ExceptionGroup) as ended:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sub.run)
                await sub.subscribe("relay:u:a")
                redis.stop()
        assert ended.group_contains(resp.RedisGone)
        with pytest.raises(resp.RedisGone):
            await sub.subscribe("relay:u:b")
    finally:
        redis.start()
        await listener.aclose()
