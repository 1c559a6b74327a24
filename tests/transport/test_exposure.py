"""What the relay shows and logs to whom: /metrics on loopback or its own address, and one
warning (no traceback flood) while the process is out of descriptors; and what a client that
trickles its handshake cannot take from others."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import socket

import pytest
import trio
from support import RawWs, http_get, http_request, mask_frame, start_relay
from trio.testing import MockClock

from relay import RelayConfig
from relay.echo import EchoHandler
from relay.errors import ConfigError
from relay.metrics import RelayMetrics
from relay.transport import http, turns
from relay.transport.admission import is_loopback_peer
from relay.transport.server import ACCEPT_RETRY


async def test_metrics_on_the_main_port_answer_loopback_peers(nursery: trio.Nursery) -> None:
    relay = await start_relay(nursery, handler=EchoHandler())
    status, body = await http_get(relay, "/metrics")
    assert status == 200 and b"relay_connections_open" in body


def test_metrics_on_the_main_port_are_refused_to_other_peers() -> None:
    metrics = RelayMetrics()

    def respond(path: str, metrics_here: bool | None) -> tuple[int, bytes]:
        return http.respond("GET", path, draining=False, metrics=metrics, metrics_here=metrics_here)

    status, response = respond("/metrics", False)
    assert status == 403
    assert b"/metrics is served to loopback peers only" in response
    assert respond("/metrics", True)[0] == 200
    assert respond("/metrics", None)[0] == 404  # served on metrics_listen
    assert respond("/healthz", False)[0] == 200


@pytest.mark.parametrize(
    "address,loopback",
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.7", False),
        ("::ffff:10.0.0.7", False),
        ("2001:db8::1", False),
        ("fe80::1%eth0", False),
    ],
)
def test_which_peers_are_on_loopback(address: str, loopback: bool) -> None:
    assert is_loopback_peer(address) is loopback


async def test_metrics_listen_moves_metrics_to_their_own_address(nursery: trio.Nursery) -> None:
    relay = await start_relay(nursery, handler=EchoHandler(), metrics_listen="127.0.0.1:0")
    assert (await http_get(relay, "/metrics"))[0] == 404
    assert await http_get(relay, "/healthz") == (200, b"ok")
    own = relay.metrics_address
    assert own is not None and relay.address is not None
    assert own.port not in (0, relay.address.port)
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    status, body = await http_request(own.port, request)
    assert status == 200 and b"relay_connections_open" in body
    probe = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    assert await http_request(own.port, probe) == (200, b"ok")  # a probe that takes no line
    assert (await http_request(own.port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 200
    assert (await http_request(own.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 404
    assert (await http_request(own.port, b"POST /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 405
    assert (await http_request(own.port, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 405


@pytest.mark.parametrize("text", ["9090", "localhost:", ":9090", "host:port", "h:70000"])
def test_a_malformed_metrics_listen_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="metrics_listen must be HOST:PORT"):
        RelayConfig(metrics_listen=text)


def test_metrics_listen_takes_ipv6_in_brackets() -> None:
    assert RelayConfig(metrics_listen="[::1]:9090").metrics_address == ("::1", 9090)


async def test_out_of_descriptors_logs_one_warning_without_a_traceback(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    # A real descriptor shortage: the process's soft limit is lowered to its lowest free
    # descriptor, so accept() fails with EMFILE until the limit is raised again.
    caplog.set_level(logging.INFO, logger="relay.transport")
    relay = await start_relay(nursery, handler=EchoHandler())
    assert relay.address is not None
    client = socket.socket()  # made while descriptors are left; its connect needs none
    client.setblocking(False)
    lowest_free = os.dup(0)
    os.close(lowest_free)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
    try:
        with contextlib.suppress(BlockingIOError):
            client.connect(("127.0.0.1", relay.address.port))
        await trio.sleep(10 * ACCEPT_RETRY)  # about 10 failed attempts
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(client))
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        with trio.fail_after(5):
            assert (await stream.receive_some(4096)).startswith(b"HTTP/1.1 200")
        await stream.aclose()
    finally:
        client.close()
    records = [r for r in caplog.records if r.name == "relay.transport"]
    warnings = [r for r in records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "EMFILE" in warnings[0].getMessage()
    assert warnings[0].exc_info is None
    again = [r.getMessage() for r in records if "accepting connections again" in r.getMessage()]
    assert len(again) == 1


async def test_clients_that_trickle_their_request_hold_no_turn(
    nursery: trio.Nursery, autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Handshakes do their parsing holding one of JOINING_TURNS; one that waits for the rest of
    # its request gives its turn back, so slow clients cannot keep the others out.
    monkeypatch.setattr(turns, "JOINING_TURNS", 2)
    relay = await start_relay(nursery, handler=EchoHandler(), handshake_timeout=30.0)
    assert relay.address is not None
    slow = []
    for _ in range(8):
        stream = await trio.open_tcp_stream("127.0.0.1", relay.address.port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        slow.append(stream)
    await trio.testing.wait_all_tasks_blocked()
    started = trio.current_time()
    raw = await RawWs.connect(relay)
    assert trio.current_time() - started < 1.0  # not after the slow ones' handshake_timeout
    await raw.send(mask_frame(0x1, b"hi"))
    assert await raw.recv_frame() == (1, b"hi")
    await raw.aclose()
    for stream in slow:
        await stream.aclose()
