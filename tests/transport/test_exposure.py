"""What the relay shows and logs to whom: /metrics on loopback or its own address, and one
warning (no traceback flood) while the process is out of descriptors."""

from __future__ import annotations

import errno
import logging
from typing import Any

import pytest
import trio
from support import http_get, http_request, start_relay
from trio.testing import MockClock

from relay import RelayConfig
from relay.echo import EchoHandler
from relay.errors import ConfigError
from relay.metrics import RelayMetrics
from relay.transport import http
from relay.transport.admission import is_loopback_peer
from relay.transport.server import ACCEPT_RETRY, Server


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
    assert (await http_request(own.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 404
    assert (await http_request(own.port, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 405


@pytest.mark.parametrize("text", ["9090", "localhost:", ":9090", "host:port", "h:70000"])
def test_a_malformed_metrics_listen_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="metrics_listen must be HOST:PORT"):
        RelayConfig(metrics_listen=text)


def test_metrics_listen_takes_ipv6_in_brackets() -> None:
    assert RelayConfig(metrics_listen="[::1]:9090").metrics_address == ("::1", 9090)


class StarvedListener:
    """A listener whose accept fails with EMFILE `failures` times, then waits forever."""

    def __init__(self, failures: int) -> None:
        self.failures = failures

    async def __aenter__(self) -> StarvedListener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def accept(self) -> Any:
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        await trio.sleep_forever()


async def test_out_of_descriptors_logs_one_warning_without_a_traceback(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    server = Server(RelayConfig(), EchoHandler())
    listener = StarvedListener(failures=50)
    with trio.move_on_after(50 * ACCEPT_RETRY + 1):
        async with trio.open_nursery() as nursery:
            await server._accept_loop(listener, nursery, server._handle_tcp)  # type: ignore[arg-type]
    records = [r for r in caplog.records if r.name == "relay.transport"]
    assert [r.levelno for r in records] == [logging.WARNING]
    assert "EMFILE" in records[0].getMessage()
    assert records[0].exc_info is None
