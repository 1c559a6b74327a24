"""The opening handshake as RFC 6455 4.2.1 has it, an exact request-size limit, and the
`Origin` check of browser upgrades: raw requests on a real socket, answers read off the wire.

Users rely on: a malformed upgrade is refused with 400 and a body saying what is wrong (never
101, never a traceback), a request head over 16384 bytes with 431 however it is written, and
a page of another site cannot open a WebSocket when origins are restricted.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import pytest
import trio
from support import RawWs, mask_frame, response_head, start_relay, upgrade_request

from relay import Relay
from relay.echo import EchoHandler
from relay.transport.handshake import MAX_REQUEST_BYTES


async def start_echo(nursery: trio.Nursery, **overrides: Any) -> Relay:
    overrides.setdefault("handler", EchoHandler())
    return await start_relay(nursery, **overrides)


def port_of(relay: Relay) -> int:
    assert relay.address is not None
    return relay.address.port


GOOD_KEY = base64.b64encode(bytes(range(16)))


@pytest.mark.parametrize(
    "keys,why",
    [
        ((), b"expected one Sec-WebSocket-Key header, got 0"),
        ((GOOD_KEY, GOOD_KEY), b"expected one Sec-WebSocket-Key header, got 2"),
        ((b"",), b"must encode 16 bytes, not 0"),
        ((b"not base64 at all!",), b"Sec-WebSocket-Key is not base64"),
        ((base64.b64encode(bytes(15)),), b"must encode 16 bytes, not 15"),
        ((base64.b64encode(bytes(17)),), b"must encode 16 bytes, not 17"),
        ((GOOD_KEY[:-2] + b"?=",), b"Sec-WebSocket-Key is not base64"),
    ],
    ids=["missing", "twice", "empty", "not-base64", "15-bytes", "17-bytes", "bad-char"],
)
async def test_an_upgrade_without_one_16_byte_key_is_400(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, keys: tuple[bytes, ...], why: bytes
) -> None:
    relay = await start_echo(nursery)
    status, response = await response_head(port_of(relay), upgrade_request(keys=keys))
    assert status == 400
    assert why in response
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


async def test_a_good_key_is_accepted(nursery: trio.Nursery) -> None:
    relay = await start_echo(nursery)
    status, _ = await response_head(port_of(relay), upgrade_request(keys=(GOOD_KEY,)))
    assert status == 101


async def test_an_http_1_0_upgrade_is_400(nursery: trio.Nursery) -> None:
    relay = await start_echo(nursery)
    status, response = await response_head(port_of(relay), upgrade_request(version=b"1.0"))
    assert status == 400
    assert b"needs HTTP/1.1 or later" in response


def padded(size: int) -> bytes:
    """A valid upgrade request of exactly `size` bytes (an X-Pad header makes up the rest)."""
    bare = upgrade_request(extra=b"X-Pad: \r\n")
    assert len(bare) <= size
    return upgrade_request(extra=b"X-Pad: " + b"p" * (size - len(bare)) + b"\r\n")


async def test_the_request_size_limit_is_exact(nursery: trio.Nursery) -> None:
    relay = await start_echo(nursery)
    port = port_of(relay)
    assert len(padded(MAX_REQUEST_BYTES)) == MAX_REQUEST_BYTES
    assert (await response_head(port, padded(MAX_REQUEST_BYTES)))[0] == 101
    status, response = await response_head(port, padded(MAX_REQUEST_BYTES + 1))
    assert status == 431
    assert b"request head over 16384 bytes" in response


async def test_a_large_request_in_one_write_is_431(nursery: trio.Nursery) -> None:
    # One write of 30 KiB used to be taken whole (h11 checks its limit only between reads).
    relay = await start_echo(nursery)
    assert (await response_head(port_of(relay), padded(30 * 1024)))[0] == 431


async def test_early_frames_after_a_request_at_the_limit_still_arrive(
    nursery: trio.Nursery,
) -> None:
    # Reading stops at the limit; what follows the request stays in the kernel for the
    # connection to read, in the same write or not.
    relay = await start_echo(nursery)
    stream = await trio.open_tcp_stream("127.0.0.1", port_of(relay))
    await stream.send_all(padded(MAX_REQUEST_BYTES) + mask_frame(0x1, b"early"))
    ws = RawWs(stream)
    head = await ws._read_until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    assert await ws.recv_frame() == (0x1, b"early")
    await ws.aclose()


# --- Origin ---------------------------------------------------------------------------------


def with_origin(origin: bytes | None, host: bytes = b"127.0.0.1") -> bytes:
    extra = b"" if origin is None else b"Origin: " + origin + b"\r\n"
    return upgrade_request(host=host, extra=extra)


async def test_allowed_origins_admit_only_those_origins(nursery: trio.Nursery) -> None:
    relay = await start_echo(
        nursery, allowed_origins="https://chat.example.com, https://other.example:8443"
    )
    port = port_of(relay)
    assert (await response_head(port, with_origin(b"https://chat.example.com")))[0] == 101
    assert (await response_head(port, with_origin(b"https://Chat.Example.com")))[0] == 101
    assert (await response_head(port, with_origin(b"https://other.example:8443")))[0] == 101
    status, response = await response_head(port, with_origin(b"https://evil.example"))
    assert status == 403
    assert b"this origin may not open WebSockets here" in response
    assert (await response_head(port, with_origin(b"null")))[0] == 403
    assert (await response_head(port, with_origin(None)))[0] == 101  # not a browser


async def test_the_web_chat_admits_its_own_origin_only_by_default(nursery: trio.Nursery) -> None:
    relay = await start_echo(nursery, web_chat=True)
    port = port_of(relay)
    host = f"127.0.0.1:{port}".encode()
    own = b"http://" + host
    assert (await response_head(port, with_origin(own, host=host)))[0] == 101
    assert (await response_head(port, with_origin(b"https://" + host, host=host)))[0] == 101
    assert (await response_head(port, with_origin(b"http://evil.example", host=host)))[0] == 403
    other_port = f"http://127.0.0.1:{port + 1}".encode()
    assert (await response_head(port, with_origin(other_port, host=host)))[0] == 403
    assert (await response_head(port, with_origin(None, host=host)))[0] == 101


async def test_the_web_chat_keeps_its_own_origin_next_to_configured_ones(
    nursery: trio.Nursery,
) -> None:
    relay = await start_echo(nursery, web_chat=True, allowed_origins="https://app.example")
    port = port_of(relay)
    host = f"127.0.0.1:{port}".encode()
    assert (await response_head(port, with_origin(b"http://" + host, host=host)))[0] == 101
    assert (await response_head(port, with_origin(b"https://app.example", host=host)))[0] == 101
    assert (await response_head(port, with_origin(b"https://evil.example", host=host)))[0] == 403


async def test_without_web_chat_or_allowed_origins_no_origin_is_checked(
    nursery: trio.Nursery,
) -> None:
    relay = await start_echo(nursery)
    assert (await response_head(port_of(relay), with_origin(b"https://any.example")))[0] == 101


async def test_a_star_admits_every_origin(nursery: trio.Nursery) -> None:
    relay = await start_echo(nursery, web_chat=True, allowed_origins="*")
    assert (await response_head(port_of(relay), with_origin(b"https://any.example")))[0] == 101
