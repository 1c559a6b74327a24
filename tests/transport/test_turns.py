"""The line for joining work (relay.transport.turns): handshakes and sign-ins, over ws:// and
wss://, go through JOINING_TURNS at a time, in arrival order; one waiting in line tells the core
its frames are here (`input_queued`), and /metrics shows the line.

Users rely on: a storm's sign-ins are each handled, in order, none lost; a device whose
`auth` waits in the relay's line is not closed for lateness; a client that connects and says
nothing keeps no one out; a load balancer's health probe is answered during a storm;
operators can see the line.
"""

from __future__ import annotations

import ssl
from typing import Any

import pytest
import trio
from attrs import define, field
from support import RawWs, http_get, http_request, mask_frame, start_relay
from trio.testing import MockClock

from relay.app import Relay
from relay.echo import EchoHandler
from relay.ports import Connection
from relay.transport import turns


@define(eq=False)
class Gate(EchoHandler):
    """An echo that never signs anyone in: every read is joining work. A payload b"hold" is
    echoed once `release` is set (as a slow sign-in's store round trip would end)."""

    release: trio.Event = field(factory=trio.Event)
    seen: list[bytes] = field(factory=list)
    conns: list[Connection] = field(factory=list)

    def on_open(self, conn: Connection) -> None:
        self.conns.append(conn)  # and no conn.authenticated()

    async def on_messages(self, conn: Connection, payloads: list[bytes]) -> None:
        for payload in payloads:
            self.seen.append(payload)
            if payload == b"hold":
                await self.release.wait()
            await super().on_messages(conn, [payload])


async def test_sign_ins_take_turns_in_order_and_the_line_is_visible(
    nursery: trio.Nursery, autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(turns, "JOINING_TURNS", 1)
    handler = Gate()
    relay = await start_relay(nursery, handler=handler)
    first, second, third = [await RawWs.connect(relay) for _ in range(3)]
    await first.send(mask_frame(0x1, b"hold"))
    await trio.testing.wait_all_tasks_blocked()
    await second.send(mask_frame(0x1, b"two"))
    await trio.testing.wait_all_tasks_blocked()
    await third.send(mask_frame(0x1, b"three"))
    await trio.testing.wait_all_tasks_blocked()

    assert handler.seen == [b"hold"]  # the others wait for the one turn
    assert [c.input_queued for c in handler.conns] == [False, True, True]
    metric = relay.metrics.registry.get_sample_value
    assert metric("relay_joining_active") == 1
    assert metric("relay_joining_waiting") == 2

    handler.release.set()
    assert await first.recv_frame() == (1, b"hold")
    assert await second.recv_frame() == (1, b"two")
    assert await third.recv_frame() == (1, b"three")
    assert handler.seen == [b"hold", b"two", b"three"]  # in arrival order
    assert [c.input_queued for c in handler.conns] == [False, False, False]
    assert metric("relay_joining_waiting") == 0
    for raw in (first, second, third):
        await raw.aclose()


async def _one_turn_held(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, **config: Any
) -> tuple[Relay, Gate, RawWs]:
    """A relay with one turn, and a connection whose sign-in holds it until the handler's
    `release` is set."""
    monkeypatch.setattr(turns, "JOINING_TURNS", 1)
    handler = Gate()
    relay = await start_relay(nursery, handler=handler, **config)
    holder = await RawWs.connect(relay)
    await holder.send(mask_frame(0x1, b"hold"))
    await trio.testing.wait_all_tasks_blocked()
    return relay, handler, holder


async def test_a_handshake_waiting_in_line_is_not_cut_by_handshake_timeout(
    nursery: trio.Nursery, autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # handshake_timeout is the client's time to send its request; a wait for a turn behind
    # the relay's own joining work does not count against it.
    relay, handler, holder = await _one_turn_held(nursery, monkeypatch, handshake_timeout=5.0)
    joined: list[RawWs] = []

    async def join() -> None:
        joined.append(await RawWs.connect(relay))

    nursery.start_soon(join)
    await trio.sleep(20.0)  # four handshake timeouts, in line
    assert joined == []
    assert relay.metrics.registry.get_sample_value("relay_joining_waiting") == 1
    handler.release.set()
    await trio.testing.wait_all_tasks_blocked()
    assert len(joined) == 1
    await joined[0].send(mask_frame(0x1, b"in"))
    assert await joined[0].recv_frame() == (1, b"in")
    await holder.aclose()
    await joined[0].aclose()


async def test_a_health_probe_skips_the_line_and_an_upgrade_at_its_path_does_not(
    nursery: trio.Nursery, autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A load balancer's probe during a storm: the line can be seconds long, and a probe that
    # times out takes the node out of service as its devices come back.
    relay, handler, holder = await _one_turn_held(nursery, monkeypatch, handshake_timeout=60.0)
    joined: list[RawWs] = []
    pages: list[tuple[int, bytes]] = []

    async def join() -> None:  # an upgrade at the probe's path
        joined.append(await RawWs.connect(relay, path="/healthz"))

    async def page() -> None:  # plain HTTP, but not a probe
        pages.append(await http_get(relay, "/nowhere"))

    nursery.start_soon(join)
    nursery.start_soon(page)
    await trio.testing.wait_all_tasks_blocked()
    assert relay.metrics.registry.get_sample_value("relay_joining_waiting") == 2

    with trio.fail_after(1.0):  # answered at once, in front of the line
        assert await http_get(relay, "/healthz") == (200, b"ok")
        assert (await http_get(relay, "/healthz?from=lb"))[0] == 200
        assert (await http_get(relay, "/healthz", method="HEAD"))[0] == 200
    assert joined == [] and pages == []  # still in line

    handler.release.set()
    await trio.testing.wait_all_tasks_blocked()
    assert len(joined) == 1 and [status for status, _ in pages] == [404]
    await joined[0].send(mask_frame(0x1, b"in"))
    assert await joined[0].recv_frame() == (1, b"in")
    await holder.aclose()
    await joined[0].aclose()


async def test_wss_handshakes_and_sign_ins_take_turns_and_a_silent_tls_client_holds_none(
    nursery: trio.Nursery,
    autojump_clock: MockClock,
    monkeypatch: pytest.MonkeyPatch,
    certificate: tuple[str, str],
) -> None:
    # Over wss:// the TLS handshake is the heaviest joining work of all: in a storm it waits
    # in the same line, and a client that opens TCP and says nothing keeps no one out.
    cert, key = certificate
    tls = ssl.create_default_context(cafile=cert)
    monkeypatch.setattr(turns, "JOINING_TURNS", 1)
    handler = Gate()
    relay = await start_relay(
        nursery,
        handler=handler,
        certfile=cert,
        keyfile=key,
        handshake_timeout=600.0,
        metrics_listen="127.0.0.1:0",
    )
    metric = relay.metrics.registry.get_sample_value
    address = relay.address
    assert address is not None
    silent = await trio.open_tcp_stream("127.0.0.1", address.port)
    await trio.testing.wait_all_tasks_blocked()
    assert metric("relay_joining_active") == 0  # waiting for its ClientHello, no turn held

    holder = await RawWs.connect(relay, tls=tls)  # in, though the silent one came first
    await holder.send(mask_frame(0x1, b"hold"))  # a sign-in that holds the one turn
    await trio.testing.wait_all_tasks_blocked()
    assert handler.seen == [b"hold"]
    assert metric("relay_joining_active") == 1
    tcp = await trio.open_tcp_stream("127.0.0.1", address.port)
    waiting = trio.SSLStream(tcp, tls, server_hostname="127.0.0.1")
    handshaken = trio.Event()

    async def handshake() -> None:
        await waiting.do_handshake()
        handshaken.set()

    nursery.start_soon(handshake)
    await trio.testing.wait_all_tasks_blocked()
    assert not handshaken.is_set()  # its TLS handshake waits for the turn
    assert metric("relay_joining_waiting") == 1
    # a probe's TLS handshake would wait too: on the metrics listener it takes no line
    side = relay.metrics_address
    assert side is not None
    with trio.fail_after(1.0):
        probe = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        assert await http_request(side.port, probe) == (200, b"ok")

    handler.release.set()
    assert await holder.recv_frame() == (1, b"hold")
    await handshaken.wait()
    joined = RawWs(waiting)
    await joined.upgrade(address.port)
    await joined.send(mask_frame(0x1, b"in"))
    assert await joined.recv_frame() == (1, b"in")
    assert metric("relay_joining_waiting") == 0
    for raw in (holder, joined):
        await raw.aclose()
    await silent.aclose()
