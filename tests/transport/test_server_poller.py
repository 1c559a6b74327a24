"""The poller of ws:// connections: one task reads every ready socket, hands each read to the
handler's `on_messages_nowait`, and gives what that leaves to the connection's own task
(`on_messages`), pausing reads of that connection until it is done.

Users rely on: order kept across the hand-off, no read lost or doubled while a connection
waits on its task, a failing handler ending only its own connection, and many connections
served at once by the one poller.

Logical time (trio's autojump clock): a handler's wait and a peer's pause are ordered by
their durations, not by the machine's speed.
"""

from __future__ import annotations

import trio
from attrs import define, field
from support import RawWs, mask_frame, start_relay
from trio.testing import MockClock

from relay.echo import EchoHandler
from relay.ports import Connection


@define(eq=False)
class SplitEcho(EchoHandler):
    """Echoes. Payloads starting with b"slow" need waiting: on_messages_nowait stops before
    them, and on_messages echoes them after a pause (as a store commit would)."""

    now_batches: list[list[bytes]] = field(factory=list)
    later_batches: list[list[bytes]] = field(factory=list)
    pause: float = 0.05

    def on_messages_nowait(self, conn: Connection, payloads: list[bytes]) -> int:
        done = 0
        for payload in payloads:
            if payload.startswith(b"slow"):
                break
            if payload == b"explode":
                raise RuntimeError("explode")
            done += 1
        if done:
            self.now_batches.append(payloads[:done])
            self._echo(conn, payloads[:done])
        return done

    async def on_messages(self, conn: Connection, payloads: list[bytes]) -> None:
        self.later_batches.append(list(payloads))
        for payload in payloads:
            if payload.startswith(b"slow"):
                await trio.sleep(self.pause)
            self._echo(conn, [payload])

    @staticmethod
    def _echo(conn: Connection, payloads: list[bytes]) -> None:
        for payload in payloads:
            assert conn.send(b"\x81" + bytes([len(payload)]) + payload)


async def test_reads_are_handled_at_once_when_the_handler_can(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    handler = SplitEcho()
    relay = await start_relay(nursery, handler=handler)
    raw = await RawWs.connect(relay)
    await raw.send(mask_frame(0x1, b"a") + mask_frame(0x1, b"b"))
    assert [await raw.recv_frame() for _ in range(2)] == [(1, b"a"), (1, b"b")]
    assert handler.now_batches == [[b"a", b"b"]]
    assert handler.later_batches == []
    await raw.aclose()


async def test_order_is_kept_across_the_hand_off(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    handler = SplitEcho()
    relay = await start_relay(nursery, handler=handler)
    raw = await RawWs.connect(relay)
    first = [b"a", b"b", b"slow1", b"c", b"d"]
    await raw.send(b"".join(mask_frame(0x1, m) for m in first))
    # sent while the connection's task waits: read only once it is done, then at once again
    await trio.sleep(handler.pause / 5)
    await raw.send(mask_frame(0x1, b"e") + mask_frame(0x1, b"slow2") + mask_frame(0x1, b"f"))
    expected = [*first, b"e", b"slow2", b"f"]
    assert [(await raw.recv_frame())[1] for _ in expected] == expected
    assert handler.now_batches == [[b"a", b"b"], [b"e"]]
    assert handler.later_batches == [[b"slow1", b"c", b"d"], [b"slow2", b"f"]]
    await raw.aclose()


async def test_a_close_after_handed_off_payloads_is_answered_after_them(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    handler = SplitEcho()
    relay = await start_relay(nursery, handler=handler)
    raw = await RawWs.connect(relay)
    close = mask_frame(0x8, (4000).to_bytes(2, "big") + b"done")
    await raw.send(mask_frame(0x1, b"x") + mask_frame(0x1, b"slow") + close)
    assert await raw.recv_frame() == (1, b"x")
    assert await raw.recv_frame() == (1, b"slow")
    assert (await raw.expect_close())[0] == 4000
    await raw.aclose()


async def test_a_peer_gone_while_its_task_waits_ends_cleanly(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    @define(eq=False)
    class Recording(SplitEcho):
        closed: list[int] = field(factory=list)
        closed_event: trio.Event = field(factory=trio.Event)

        def on_close(self, conn: Connection, code: int) -> None:
            self.closed.append(code)
            self.closed_event.set()

    handler = Recording(pause=0.2)
    relay = await start_relay(nursery, handler=handler)
    raw = await RawWs.connect(relay)
    await raw.send(mask_frame(0x1, b"slow"))
    await trio.sleep(0.02)
    await raw.aclose()  # TCP end without a close frame, mid hand-off
    with trio.fail_after(5):
        await handler.closed_event.wait()
    assert handler.closed == [1006]
    assert relay.metrics.stats.connections_open == 0


async def test_a_failing_nowait_handler_closes_only_its_connection_1011(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    relay = await start_relay(nursery, handler=SplitEcho())
    bad = await RawWs.connect(relay)
    good = await RawWs.connect(relay)
    await bad.send(mask_frame(0x1, b"explode"))
    assert (await bad.expect_close())[0] == 1011
    await good.send(mask_frame(0x1, b"still here"))
    assert await good.recv_frame() == (1, b"still here")
    await bad.aclose()
    await good.aclose()


async def test_one_poller_serves_many_connections_at_once(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    handler = SplitEcho(pause=0.01)
    relay = await start_relay(nursery, handler=handler)
    clients = [await RawWs.connect(relay) for _ in range(60)]
    for i, raw in enumerate(clients):  # all sent before any is read back
        kind = b"slow" if i % 3 == 0 else b"now"
        await raw.send(mask_frame(0x1, kind + b"%d" % i) + mask_frame(0x1, b"end%d" % i))
    for i, raw in enumerate(clients):
        kind = b"slow" if i % 3 == 0 else b"now"
        assert await raw.recv_frame() == (1, kind + b"%d" % i)
        assert await raw.recv_frame() == (1, b"end%d" % i)
        await raw.aclose()
    assert sum(map(len, handler.now_batches)) + sum(map(len, handler.later_batches)) == 120
