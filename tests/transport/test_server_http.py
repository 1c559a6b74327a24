"""The plain-HTTP side of the relay's one port: /healthz, /metrics, 404/405/400, refusals."""

from __future__ import annotations

import urllib.request
from typing import Any

import trio
from support import RawWs, http_get, http_request, mask_frame, start_relay, ws_connect

from relay import Relay
from relay.echo import EchoHandler


async def start_echo(nursery: trio.Nursery, **overrides: Any) -> Relay:
    overrides.setdefault("handler", EchoHandler())
    return await start_relay(nursery, **overrides)


def metric(text: str, name: str) -> float:
    """The value of an unlabelled sample in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in metrics:\n{text}")


async def test_healthz_ok_while_serving(nursery: trio.Nursery) -> None:
    relay = await start_echo(nursery)
    assert await http_get(relay, "/healthz") == (200, b"ok")


async def test_healthz_with_urllib(nursery: trio.Nursery) -> None:
    relay = await start_echo(nursery)
    address = relay.address
    assert address is not None

    def fetch() -> tuple[int, bytes, str]:
        url = f"http://127.0.0.1:{address.port}/healthz"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read(), response.headers["Content-Type"]

    status, body, content_type = await trio.to_thread.run_sync(fetch)
    assert (status, body) == (200, b"ok")
    assert content_type.startswith("text/plain")


async def test_unknown_path_is_404_and_other_methods_405(nursery: trio.Nursery) -> None:
    relay = await start_echo(nursery)
    assert (await http_get(relay, "/nope"))[0] == 404
    assert (await http_get(relay, "/"))[0] == 404  # no web chat unless enabled
    assert (await http_get(relay, "/healthz", method="POST"))[0] == 405
    status, body = await http_get(relay, "/healthz", method="HEAD")
    assert (status, body) == (200, b"")


async def test_bad_request_is_400(nursery: trio.Nursery) -> None:
    relay = await start_echo(nursery)
    address = relay.address
    assert address is not None
    assert (await http_request(address.port, b"this is not http\r\n\r\n"))[0] == 400
    # An upgrade request without Sec-WebSocket-Key is a bad request too.
    no_key = (
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    assert (await http_request(address.port, no_key))[0] == 400
    wrong_version = no_key.replace(b"13", b"8").replace(
        b"\r\n\r\n", b"\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    assert (await http_request(address.port, wrong_version))[0] == 426
    huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
    assert (await http_request(address.port, huge))[0] == 431


async def test_metrics_counters_move(nursery: trio.Nursery) -> None:
    relay = await start_echo(nursery)
    status, body = await http_get(relay, "/metrics")
    assert status == 200
    before = body.decode()
    assert metric(before, "relay_connections_open") == 0
    assert 'relay_fastpath_info{implementation="' in before

    async with ws_connect(relay.url) as ws:
        for i in range(5):
            await ws.send_message(f"hello {i}")
            assert await ws.get_message() == f"hello {i}"
        during = (await http_get(relay, "/metrics"))[1].decode()
        assert metric(during, "relay_connections_open") == 1
    address = relay.address
    assert address is not None
    await http_request(address.port, b"garbage\r\n\r\n")  # a failed handshake
    raw = await RawWs.connect(relay)
    await raw.send(mask_frame(0x2, b"binary"))
    await raw.expect_close()
    await raw.aclose()

    after = (await http_get(relay, "/metrics"))[1].decode()
    assert metric(after, "relay_connections_total") == 2
    assert metric(after, "relay_frames_received_total") >= 6
    assert metric(after, "relay_frames_sent_total") >= 6
    assert metric(after, "relay_bytes_received_total") > metric(
        before, "relay_bytes_received_total"
    )
    assert metric(after, "relay_bytes_sent_total") >= 5 * len("hello 0")
    assert metric(after, "relay_handshake_failures_total") == 1
    assert 'relay_http_requests_total{status="200"}' in after
    assert 'relay_http_requests_total{status="400"} 1.0' in after


async def test_two_relays_have_separate_metrics(nursery: trio.Nursery) -> None:
    one = await start_echo(nursery)
    two = await start_echo(nursery)
    async with ws_connect(one.url) as ws:
        await ws.send_message("x")
        await ws.get_message()
    text_one = (await http_get(one, "/metrics"))[1].decode()
    text_two = (await http_get(two, "/metrics"))[1].decode()
    assert metric(text_one, "relay_connections_total") == 1
    assert metric(text_two, "relay_connections_total") == 0


async def test_handshake_timeout_cuts_a_silent_connection(nursery: trio.Nursery) -> None:
    relay = await start_echo(nursery, handshake_timeout=0.2)
    address = relay.address
    assert address is not None
    stream = await trio.open_tcp_stream("127.0.0.1", address.port)
    await stream.send_all(b"GET / HTTP/1.1\r\n")  # and never the rest
    with trio.fail_after(2):
        assert await stream.receive_some(100) == b""
    await stream.aclose()
    text = (await http_get(relay, "/metrics"))[1].decode()
    assert metric(text, "relay_handshake_failures_total") == 1


async def test_max_connections_refuses_upgrades_with_503(nursery: trio.Nursery) -> None:
    relay = await start_echo(nursery, max_connections=1)
    async with ws_connect(relay.url) as ws:
        await ws.send_message("one")
        assert await ws.get_message() == "one"
        address = relay.address
        assert address is not None
        upgrade = (
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        assert (await http_request(address.port, upgrade))[0] == 503
        assert await http_get(relay, "/healthz") == (200, b"ok")
