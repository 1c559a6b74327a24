"""permessage-deflate (RFC 7692): negotiation, compression once per payload, bounded inflation.

Real parts: the relay on 127.0.0.1, the `websockets` client (which negotiates and decodes
permessage-deflate itself), and a raw client for what no well-behaved client sends.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import pytest
import trio
from support import RawWs, mask_frame, start_relay, upgrade_request
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from relay import Relay
from relay.cli import build_parser, config_from
from relay.config import RelayConfig
from relay.echo import EchoHandler
from relay.fastpath import OP_BINARY, OP_CLOSE, OP_PING, OP_TEXT, encode_frame
from relay.metrics import Stats
from relay.transport.deflate import (
    INBOUND_WINDOW_BITS,
    DeflateParams,
    Deflaters,
    FrameDeflater,
    InflateError,
    Inflater,
    negotiate,
    parse_offers,
)

TAIL = b"\x00\x00\xff\xff"
CHROMIUM_OFFER = b"permessage-deflate; client_max_window_bits"


def inflate_alone(payload: bytes, bits: int = 15) -> bytes:
    """A compressed message inflated by a fresh inflater (server_no_context_takeover)."""
    return zlib.decompressobj(-bits).decompress(payload + TAIL)


def deflate_message(data: bytes, z: Any = None) -> bytes:
    """`data` compressed as a client compresses one message (RFC 7692 7.2.1)."""
    z = z or zlib.compressobj(6, zlib.DEFLATED, -15)
    out: bytes = z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(TAIL)
    return out[:-4]


def header(frame: bytes) -> tuple[int, int]:
    """(first byte, header length) of a server frame."""
    n = frame[1] & 0x7F
    return frame[0], 2 if n < 126 else (4 if n == 126 else 10)


# --- negotiation (sans-IO) ----------------------------------------------------------------------


def test_chromium_offer_is_answered_with_a_small_client_window() -> None:
    agreed = negotiate([CHROMIUM_OFFER])
    assert agreed == DeflateParams(
        server_window_bits=15, client_window_bits=INBOUND_WINDOW_BITS, answer_client_bits=True
    )
    assert agreed.header_value() == (
        b"permessage-deflate; server_no_context_takeover; client_max_window_bits=12"
    )


def test_a_bare_offer_is_answered_with_server_no_context_takeover_only() -> None:
    agreed = negotiate([b"permessage-deflate"])
    assert agreed is not None
    assert agreed.header_value() == b"permessage-deflate; server_no_context_takeover"
    assert (agreed.server_window_bits, agreed.client_window_bits) == (15, 15)


def test_every_parameter_offered_is_honoured() -> None:
    agreed = negotiate(
        [
            b"permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
            b'server_max_window_bits=10; client_max_window_bits="9"'
        ]
    )
    assert agreed is not None
    assert (agreed.server_window_bits, agreed.client_window_bits) == (10, 9)
    assert agreed.client_no_context_takeover
    assert agreed.header_value() == (
        b"permessage-deflate; server_no_context_takeover; server_max_window_bits=10; "
        b"client_no_context_takeover; client_max_window_bits=9"
    )


@pytest.mark.parametrize(
    "offer",
    [
        b"permessage-deflate; server_max_window_bits=7",
        b"permessage-deflate; server_max_window_bits=16",
        b"permessage-deflate; server_max_window_bits=010",
        b"permessage-deflate; server_max_window_bits",
        b"permessage-deflate; server_max_window_bits=8",  # zlib: no raw 256-byte window
        b"permessage-deflate; client_max_window_bits=x",
        b"permessage-deflate; client_max_window_bits=1 5",
        b"permessage-deflate; client_no_context_takeover=1",
        b"permessage-deflate; server_no_context_takeover=true",
        b"permessage-deflate; mystery",
        b"permessage-deflate; client_max_window_bits; client_max_window_bits=10",
        b"permessage-deflate; =10",
        b"x-webkit-deflate-frame",
        b"",
    ],
)
def test_an_invalid_offer_is_declined(offer: bytes) -> None:
    assert negotiate([offer]) is None


def test_the_first_acceptable_of_several_offers_wins() -> None:
    values = [
        b"foo, permessage-deflate; server_max_window_bits=20",
        b"permessage-deflate; client_max_window_bits=10, permessage-deflate",
    ]
    agreed = negotiate(values)
    assert agreed is not None and agreed.client_window_bits == 10


def test_offers_are_parsed_with_quoted_strings() -> None:
    assert parse_offers([b'a; p="x,y;z", B ; Q = 3 ,, c']) == [
        ("a", [("p", "x,y;z")]),
        ("b", [("q", "3")]),
        ("c", []),
    ]


# --- compression once per payload (sans-IO) -----------------------------------------------------


def text_frame(size: int, fill: str = "chat ") -> bytes:
    return encode_frame(OP_TEXT, (fill * (size // len(fill) + 1))[:size].encode())


def test_a_large_frame_is_compressed_once_for_every_recipient() -> None:
    stats = Stats()
    deflater = FrameDeflater(1024, stats)
    frame = text_frame(5000)
    out = deflater.frame(frame)
    first, head = header(out)
    assert first == 0x80 | 0x40 | OP_TEXT  # FIN, RSV1, text
    assert len(out) < len(frame) // 10
    assert inflate_alone(out[head:]) == frame[4:]
    assert deflater.frame(frame) is out  # the next recipient: the same bytes, not compressed again
    assert stats.frames_compressed == 1
    # no context is carried: a second payload decodes alone too
    other = text_frame(3000, "other ")
    out2 = deflater.frame(other)
    assert inflate_alone(out2[header(out2)[1] :]) == other[4:]
    assert stats.frames_compressed == 2


def test_small_control_and_incompressible_frames_are_left_alone() -> None:
    stats = Stats()
    deflater = FrameDeflater(1024, stats)
    small = text_frame(1023)
    assert deflater.frame(small) is small
    assert deflater.frame(text_frame(1024))[0] & 0x40  # exactly the threshold: compressed
    ping = encode_frame(OP_PING, b"p" * 125)
    assert FrameDeflater(0, stats).frame(ping) is ping
    noise = encode_frame(OP_TEXT, os.urandom(4000))
    assert deflater.frame(noise) is noise
    assert stats.frames_compressed == 1


def test_a_limited_server_window_gets_its_own_deflater() -> None:
    pool = Deflaters(0, Stats())
    wide, _ = pool.for_params(DeflateParams())
    narrow, inflater = pool.for_params(DeflateParams(server_window_bits=9, client_window_bits=10))
    assert pool.for_params(DeflateParams())[0] is wide and narrow is not wide
    frame = text_frame(20000, "0123456789abcdef" * 40)
    assert inflate_alone(narrow.frame(frame)[4:], 9) == frame[4:]
    assert inflater.window_bits == 10


# --- inflation (sans-IO) ------------------------------------------------------------------------


def test_a_decompression_bomb_stops_at_the_limit() -> None:
    bomb = deflate_message(b"\x00" * (50 << 20))  # 50 MiB of zeros in about 50 KB
    with pytest.raises(InflateError) as caught:
        Inflater().inflate(bomb, 16 * 1024)
    assert caught.value.code == 1009
    exact = deflate_message(b"a" * 16384)
    assert Inflater().inflate(exact, 16384) == b"a" * 16384


def test_corrupt_data_is_1007() -> None:
    with pytest.raises(InflateError) as caught:
        Inflater().inflate(b"\xff\xff\xff\xff", 1000)
    assert caught.value.code == 1007


def test_context_takeover_is_kept_unless_negotiated_away() -> None:
    z = zlib.compressobj(6, zlib.DEFLATED, -15)
    one, two = deflate_message(b"hello hello", z), deflate_message(b"hello hello", z)
    keeping = Inflater()
    assert keeping.inflate(one, 100) == keeping.inflate(two, 100) == b"hello hello"
    assert keeping.holds_state
    fresh = Inflater(no_context_takeover=True)
    assert fresh.inflate(one, 100) == b"hello hello" and not fresh.holds_state


# --- with the websockets client -----------------------------------------------------------------


async def start_echo(nursery: trio.Nursery, **overrides: Any) -> Relay:
    return await start_relay(nursery, handler=EchoHandler(), **overrides)


def echo_round(url: str, texts: list[str], **options: Any) -> tuple[str | None, list[str]]:
    """(the response's Sec-WebSocket-Extensions, the echoes) with the websockets client."""
    with connect(url, max_size=None, **options) as ws:
        echoes = []
        for text in texts:
            ws.send(text)
            got = ws.recv(timeout=5)
            assert isinstance(got, str)
            echoes.append(got)
        assert ws.response is not None
        return ws.response.headers.get("Sec-WebSocket-Extensions"), echoes


async def test_websockets_negotiates_and_both_directions_compress(nursery: trio.Nursery) -> None:
    relay = await start_echo(nursery)
    stats = relay.metrics.stats
    texts = ["x" * 10, json.dumps({"text": "hello " * 2000}), "y" * 60000]
    answer, echoes = await trio.to_thread.run_sync(echo_round, relay.url, texts)
    assert echoes == texts
    # websockets offers `permessage-deflate; client_max_window_bits`, as Chromium does
    assert answer == "permessage-deflate; server_no_context_takeover; client_max_window_bits=12"
    assert stats.frames_compressed == 2  # the two large echoes, not the small one
    assert stats.bytes_out < 2000  # 72 kB of text went out compressed
    assert stats.bytes_in < 2000


async def test_without_an_offer_nothing_is_compressed(nursery: trio.Nursery) -> None:
    relay = await start_echo(nursery)
    texts = ["z" * 5000]
    answer, echoes = await trio.to_thread.run_sync(
        lambda: echo_round(relay.url, texts, compression=None)
    )
    assert (answer, echoes) == (None, texts)
    assert relay.metrics.stats.frames_compressed == 0
    assert relay.metrics.stats.bytes_out > 5000


async def test_no_compression_declines_every_offer(nursery: trio.Nursery) -> None:
    relay = await start_echo(nursery, compression=False)
    texts = ["z" * 5000]
    answer, echoes = await trio.to_thread.run_sync(echo_round, relay.url, texts)
    assert (answer, echoes) == (None, texts)
    assert relay.metrics.stats.frames_compressed == 0


class CountingSocket(socket.socket):
    """A client socket that counts the bytes it received (the wire, before any decoding)."""

    received = 0

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        self.received += len(data)
        return data


def counting_socket(relay: Relay) -> CountingSocket:
    address = relay.address
    assert address is not None
    sock = CountingSocket(socket.AF_INET, socket.SOCK_STREAM)
    sock.connect(("127.0.0.1", address.port))
    return sock


def fill_history(alice: Any, bob: Any, run: str, n: int = 50) -> None:
    """alice+run writes bob+run `n` messages (about 400 bytes of text each); returns once bob
    has every delivery and nothing more is on its way to alice."""
    for ws, user in ((alice, "alice" + run), (bob, "bob" + run)):
        ws.send(json.dumps({"type": "auth", "userId": user}))
        assert json.loads(ws.recv(timeout=5))["type"] == "auth_ok"
    for i in range(n):
        text = f"message {i}: " + "the quick brown fox jumps over the lazy dog " * 8
        alice.send(
            json.dumps({"type": "message", "id": f"m{i}", "recipientId": "bob" + run, "text": text})
        )
    delivered = 0
    while delivered < n:
        delivered += json.loads(bob.recv(timeout=5)).get("type") == "message"
    alice.send(json.dumps({"type": "ping", "ref": "quiet"}))
    while json.loads(alice.recv(timeout=5)).get("ref") != "quiet":
        pass


async def test_a_compressed_history_page_decodes_in_websockets(nursery: trio.Nursery) -> None:
    relay = await start_relay(nursery)

    def fetch(compression: str | None) -> tuple[dict[str, Any], int, int]:
        sock = counting_socket(relay)
        with (
            connect(relay.url, sock=sock, max_size=None, compression=compression) as alice,
            connect(relay.url, max_size=None) as bob,
        ):
            fill_history(alice, bob, str(compression))
            before = sock.received
            peer = "bob" + str(compression)
            alice.send(json.dumps({"type": "history", "peerId": peer, "ref": "h"}))
            raw = alice.recv(timeout=5)
            assert isinstance(raw, str)
            return json.loads(raw), len(raw.encode()), sock.received - before

    page, size, wire = await trio.to_thread.run_sync(fetch, "deflate")
    assert page["type"] == "history" and page["ref"] == "h"
    assert [m["id"] for m in page["messages"]] == [f"m{i}" for i in range(50)]
    assert size > 20000
    assert wire < size / 5  # the page crossed the wire compressed
    # the same page without the extension: every byte of it
    plain, plain_size, plain_wire = await trio.to_thread.run_sync(fetch, None)
    assert len(plain["messages"]) == 50 and plain_wire > plain_size


async def test_a_delivery_to_many_devices_is_compressed_once(nursery: trio.Nursery) -> None:
    relay = await start_relay(nursery)
    stats = relay.metrics.stats
    text = "fan-out " * 300  # 2400 characters: the delivery frame is compressed

    def run() -> list[str]:
        with (
            connect(relay.url, max_size=None) as alice,
            connect(relay.url, max_size=None) as bob1,
            connect(relay.url, max_size=None) as bob2,
            connect(relay.url, max_size=None) as bob3,
        ):
            for ws, user, device in (
                (alice, "alice", "a"),
                (bob1, "bob", "b1"),
                (bob2, "bob", "b2"),
                (bob3, "bob", "b3"),
            ):
                ws.send(json.dumps({"type": "auth", "userId": user, "deviceId": device}))
                assert json.loads(ws.recv(timeout=5))["type"] == "auth_ok"
            before = stats.frames_compressed
            alice.send(
                json.dumps({"type": "message", "id": "f1", "recipientId": "bob", "text": text})
            )
            texts = []
            for bob in (bob1, bob2, bob3):
                while (frame := json.loads(bob.recv(timeout=5)))["type"] != "message":
                    pass
                texts.append(frame["text"])
            assert stats.frames_compressed - before == 1
            return texts

    assert await trio.to_thread.run_sync(run) == [text] * 3


NODE_CLIENT = Path(__file__).parent.parent / "node" / "ws_client.js"


async def test_node_ws_negotiates_and_round_trips_compressed(
    nursery: trio.Nursery, node: str
) -> None:
    """Node `ws` (the original design's library) offers permessage-deflate by default."""
    relay = await start_echo(nursery)
    text = "node " * 12000
    steps = [{"sendRepeat": ["node ", 12000]}, {"expect": "message"}, {"close": 1000}]
    with trio.fail_after(10):
        done = await trio.run_process(
            [node, str(NODE_CLIENT), relay.url, json.dumps(steps)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()
    events = [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]
    digests = [e["sha256"] for e in events if e["event"] == "message"]
    assert digests == [hashlib.sha256(text.encode()).hexdigest()]
    stats = relay.metrics.stats
    assert stats.frames_compressed == 1
    assert stats.bytes_in < 1000 and stats.bytes_out < 1000  # 60 kB each way, compressed


def test_the_cli_turns_compression_off_and_sets_the_threshold() -> None:
    args = build_parser().parse_args(["serve", "--no-compression", "--compress-min-bytes", "64"])
    config = config_from(args, {})
    assert (config.compression, config.compress_min_bytes) == (False, 64)
    from_env = config_from(build_parser().parse_args(["serve"]), {"RELAY_COMPRESSION": "false"})
    assert not from_env.compression
    assert RelayConfig().compression and RelayConfig().compress_min_bytes == 1024


# --- what no well-behaved client sends (raw client) ---------------------------------------------


async def raw_connect(relay: Relay, extensions: bytes | None) -> tuple[RawWs, bytes]:
    """A RawWs after the handshake (offering `extensions`), and the response head."""
    address = relay.address
    assert address is not None
    stream = await trio.open_tcp_stream("127.0.0.1", address.port)
    ws = RawWs(stream)
    extra = b"" if extensions is None else b"Sec-WebSocket-Extensions: " + extensions + b"\r\n"
    await ws.send(upgrade_request(extra=extra))
    head = await ws._read_until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return ws, head


async def close_code_after(relay: Relay, extensions: bytes | None, data: bytes) -> int:
    ws, _ = await raw_connect(relay, extensions)
    with trio.fail_after(5):
        await ws.send(data)
        code, _ = await ws.expect_close()
    await ws.aclose()
    return code


async def test_rsv1_without_negotiation_is_1002(nursery: trio.Nursery) -> None:
    relay = await start_echo(nursery)
    frame = mask_frame(OP_TEXT, deflate_message(b"hello"), rsv=4)
    assert await close_code_after(relay, None, frame) == 1002
    # and with compression off the offer is declined, so the same
    off = await start_echo(nursery, compression=False)
    assert await close_code_after(off, CHROMIUM_OFFER, frame) == 1002


async def test_a_decompression_bomb_is_1009(nursery: trio.Nursery) -> None:
    relay = await start_echo(nursery)
    bomb = deflate_message(b"{" * (8 << 20))  # 8 MiB inflated, about 8 KB on the wire
    assert len(bomb) < 16 * 1024  # under the pre-auth frame limit: only inflating finds it
    tracemalloc.start()
    try:
        code = await close_code_after(relay, CHROMIUM_OFFER, mask_frame(OP_TEXT, bomb, rsv=4))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 1009
    assert peak < 2 << 20  # it never inflated the 8 MiB


async def test_corrupt_and_misplaced_compression_close_the_connection(
    nursery: trio.Nursery,
) -> None:
    relay = await start_echo(nursery)
    corrupt = mask_frame(OP_TEXT, b"\xff\xff\xff\xff", rsv=4)
    assert await close_code_after(relay, CHROMIUM_OFFER, corrupt) == 1007
    not_utf8 = mask_frame(OP_TEXT, deflate_message(b"\xff\xfe"), rsv=4)
    assert await close_code_after(relay, CHROMIUM_OFFER, not_utf8) == 1007
    ping = mask_frame(OP_PING, deflate_message(b"p"), rsv=4)
    assert await close_code_after(relay, CHROMIUM_OFFER, ping) == 1002
    binary = mask_frame(OP_BINARY, deflate_message(b"\x00\x01"), rsv=4)
    assert await close_code_after(relay, CHROMIUM_OFFER, binary) == 1003  # v1 is text only


async def test_raw_compressed_echo_and_uncompressed_control_frames(
    nursery: trio.Nursery,
) -> None:
    relay = await start_echo(nursery)
    ws, head = await raw_connect(relay, CHROMIUM_OFFER)
    assert b"sec-websocket-extensions: permessage-deflate; server_no_context_takeover" in (
        head.lower()
    )
    text = b"0123456789" * 500
    z = zlib.compressobj(6, zlib.DEFLATED, -INBOUND_WINDOW_BITS)
    with trio.fail_after(5):
        for _ in range(2):  # the second message refers back into the first (context takeover)
            await ws.send(mask_frame(OP_TEXT, deflate_message(text, z), rsv=4))
            while len(ws.buf) < 2 or ws.buf[0] & 0x0F != OP_TEXT:
                await ws._fill()
            assert ws.buf[0] & 0x40  # the echo is compressed
            _, payload = await ws.recv_frame()
            assert inflate_alone(payload) == text
        await ws.send(mask_frame(OP_PING, b"hb"))
        await ws._fill()
        assert ws.buf[0] == 0x80 | 10  # the pong: FIN, no RSV1
        await ws.send(mask_frame(OP_CLOSE, struct.pack("!H", 1000)))
        assert (await ws.expect_close())[0] == 1000
    await ws.aclose()


# --- memory per connection ----------------------------------------------------------------------


async def test_memory_per_connection_with_and_without_deflate(nursery: trio.Nursery) -> None:
    """What a connection costs: the extension's state after each connection sent one
    compressed message and got one compressed answer (the figures docs/PROTOCOL.md
    "Compression" states)."""
    relay = await start_echo(nursery)
    n = 40
    text = json.dumps({"type": "message", "text": "hello " * 300}).encode()

    async def open_all(extensions: bytes | None) -> tuple[list[RawWs], int]:
        conns = []
        tracemalloc.start()
        base, _ = tracemalloc.get_traced_memory()
        for _ in range(n):
            ws, _ = await raw_connect(relay, extensions)
            payload = deflate_message(text) if extensions else text
            await ws.send(mask_frame(OP_TEXT, payload, rsv=4 if extensions else 0))
            await ws.recv_frame()
            conns.append(ws)
        used, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return conns, (used - base) // n

    with trio.fail_after(20):
        plain, plain_cost = await open_all(None)
        deflated, deflate_cost = await open_all(CHROMIUM_OFFER)
        cheap, cheap_cost = await open_all(CHROMIUM_OFFER + b"; client_no_context_takeover")
    extra = deflate_cost - plain_cost
    # one inflater with a 2^12 window: about 11 KiB (zlib's state, the window)
    assert 6 * 1024 < extra < 16 * 1024, (plain_cost, deflate_cost)
    assert cheap_cost - plain_cost < 2 * 1024, (plain_cost, cheap_cost)
    print(
        f"bytes per connection: plain {plain_cost}, deflate {deflate_cost}, "
        f"deflate + client_no_context_takeover {cheap_cost}"
    )
    for ws in plain + deflated + cheap:
        await ws.aclose()


async def test_websockets_sees_1009_for_a_message_that_inflates_over_the_limit(
    nursery: trio.Nursery,
) -> None:
    relay = await start_echo(nursery, max_message_bytes=20000)

    def client() -> int | None:
        with connect(relay.url, max_size=None) as ws:
            ws.send("q" * 30000)  # compresses to little, inflates over the limit
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=5)
            assert ws.protocol.close_code is not None
            return ws.protocol.close_code

    assert await trio.to_thread.run_sync(client) == 1009
