"""The sans-IO WebSocket on its own: plain bytes in, frames out, no socket and no trio.

Users rely on: the close handshake (RFC 6455 7.1: our close frame last, the peer's code
echoed, the code the connection ends with), one count for every frame dropped or refused,
pings answered, heartbeat pings and timeouts at the right moments.
"""

from __future__ import annotations

import struct
import subprocess
import sys

import pytest
from support import mask_frame

from relay.fastpath import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameParser,
    Outbox,
    encode_frame,
)
from relay.metrics import Stats
from relay.transport.websocket import PING_FRAME, WebSocket, WsEvent, WsState


def make_ws(max_bytes: int = 1 << 20, max_frames: int = 1000) -> tuple[WebSocket, list[object]]:
    woken: list[object] = []
    ws = WebSocket(
        outbox=Outbox(max_bytes, max_frames),
        parser=FrameParser(1 << 20),
        stats=Stats(),
        wake=woken.append,
    )
    return ws, woken


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


def test_the_transition_table_covers_every_state_and_ends_in_ended() -> None:
    from relay.transport.websocket import _TRANSITIONS

    assert set(_TRANSITIONS) == set(WsState)
    assert _TRANSITIONS[WsState.ENDED] == {}
    for state in WsState:
        if state is not WsState.ENDED:
            assert _TRANSITIONS[state][WsEvent.END] is WsState.ENDED


def test_we_close_first_then_the_peer_replies() -> None:
    ws, woken = make_ws()
    assert ws.send(encode_frame(OP_TEXT, b"before"))
    assert ws.begin_close(4000, "bye")
    assert ws.ws_state is WsState.LOCAL_CLOSING
    assert ws.closing and not ws.peer_close_seen
    assert ws.close_code == 4000
    assert not ws.begin_close(4001, "again")  # idempotent: the first code stays
    assert ws.close_code == 4000
    assert not ws.send(encode_frame(OP_TEXT, b"after"))  # nothing after our close frame
    data = ws.outbox.take()
    assert data == encode_frame(OP_TEXT, b"before") + encode_frame(
        OP_CLOSE, close_payload(4000, b"bye")
    )
    assert ws.close_remaining == len(data)
    payloads, op, payload = ws.receive(mask_frame(OP_CLOSE, close_payload(4000)))
    assert (payloads, op) == ([], OP_CLOSE)
    assert ws.end_of_read(op, payload) == (True, False)  # stop reading; closing began before
    assert ws.ws_state is WsState.CLOSED
    assert ws.peer_close_seen
    assert ws.close_code == 4000
    assert woken == [ws]  # once: the outbox was not taken by a driver in between
    ws.end()
    assert ws.ws_state is WsState.ENDED


@pytest.mark.parametrize(("payload", "echo"), [(close_payload(4002, b"x"), 4002), (b"", None)])
def test_the_peer_closes_first_and_its_code_is_echoed(payload: bytes, echo: int | None) -> None:
    ws, _ = make_ws()
    payloads, op, stop_payload = ws.receive(
        mask_frame(OP_TEXT, b"last") + mask_frame(OP_CLOSE, payload) + mask_frame(OP_TEXT, b"no")
    )
    assert payloads == [b"last"]  # nothing after the close frame
    assert ws.end_of_read(op, stop_payload) == (True, True)  # our closing began: the echo
    assert ws.ws_state is WsState.CLOSED
    expected = encode_frame(OP_CLOSE, b"" if echo is None else close_payload(echo))
    assert ws.outbox.take() == expected
    assert ws.close_code == (1005 if echo is None else echo)


def test_a_connection_that_ends_without_a_close_frame_ends_1006() -> None:
    ws, _ = make_ws()
    ws.end()
    assert ws.ws_state is WsState.ENDED
    assert ws.close_code == 1006
    assert not ws.send(b"x")
    assert not ws.begin_close(1000)


def test_the_close_frame_goes_in_even_when_the_outbox_is_full_and_nothing_after_it_goes_out() -> (
    None
):
    ws, _ = make_ws(max_bytes=10, max_frames=10)
    frame = encode_frame(OP_TEXT, b"12345678")  # 10 bytes: the outbox is full
    assert ws.send(frame)
    assert not ws.send(encode_frame(OP_TEXT, b"x"))
    assert ws.begin_close(1013, "outbox full")
    assert ws.stats.slow_consumer_closes == 1
    close = encode_frame(OP_CLOSE, close_payload(1013, b"outbox full"))
    assert ws.close_remaining == len(frame) + len(close)
    # Bytes pushed after the close frame (straight into the outbox) are never written.
    ws.outbox.push(encode_frame(OP_TEXT, b"late"))
    data = ws.outbox.take()
    allowed = ws.clip_to_close(data)
    assert allowed == frame + close
    ws.wrote_while_closing(len(frame))
    assert not ws.close_written
    assert ws.clip_to_close(close) == close
    ws.wrote_while_closing(len(close))
    assert ws.close_written
    assert ws.clip_to_close(b"more") == b""


def test_every_dropped_or_refused_droppable_frame_is_counted() -> None:
    ws, woken = make_ws(max_bytes=1000, max_frames=4)
    assert ws.send(b"t1", True)
    assert ws.send(b"t2", True)
    assert ws.send(b"m1")
    assert not ws.send(b"t3", True)  # over half full: refused, counted
    assert ws.outbox.dropped == 1
    assert ws.send(b"m2")
    assert ws.send(b"m3")  # the oldest droppable frame gives way
    assert ws.outbox.dropped == 2
    ws.count_dropped()  # the driver, when it writes the outbox or ends
    assert ws.stats.messages_dropped == 2 and ws.outbox.dropped == 0
    ws.count_dropped()
    assert ws.stats.messages_dropped == 2
    assert ws.outbox.take() == b"t2m1m2m3"
    assert woken == [ws]
    ws.dirty = False  # the driver took the outbox
    assert ws.send(b"m4")
    assert woken == [ws, ws]


def test_flush_soon_wakes_the_driver_once_and_never_after_the_end() -> None:
    ws, woken = make_ws()
    ws.outbox.push(b"pushed")
    ws.flush_soon()
    ws.flush_soon()
    assert woken == [ws]
    ws.dirty = False
    ws.end()
    ws.flush_soon()
    assert woken == [ws]


def test_pings_are_answered_and_pongs_ignored() -> None:
    ws, _ = make_ws()
    data = mask_frame(OP_PING, b"p") + mask_frame(OP_PONG, b"q") + mask_frame(OP_TEXT, b"t")
    assert ws.receive(data) == ([b"t"], -1, b"")
    assert ws.stats.frames_in == 3
    assert ws.outbox.take() == encode_frame(OP_PONG, b"p")


def test_a_binary_frame_is_closed_1003_while_reading_goes_on() -> None:
    ws, _ = make_ws()
    payloads, op, payload = ws.receive(mask_frame(OP_BINARY, b"\x00"))
    assert (payloads, op) == ([], OP_BINARY)
    assert ws.end_of_read(op, payload) == (False, True)
    assert ws.close_code == 1003
    # The peer's reply completes the handshake.
    payloads, op, payload = ws.receive(mask_frame(OP_CLOSE, close_payload(1003)))
    assert ws.end_of_read(op, payload) == (True, False)
    assert ws.ws_state is WsState.CLOSED


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (mask_frame(OP_TEXT, b"\xff"), 1007),
        (mask_frame(OP_TEXT, b"x", masked=False), 1002),
        (mask_frame(OP_TEXT, b"x" * 100), 1009),
    ],
)
def test_a_protocol_violation_closes_with_the_parsers_code(data: bytes, code: int) -> None:
    ws, _ = make_ws()
    ws.parser = FrameParser(50)
    payloads, op, payload = ws.receive(data)
    assert (payloads, op) == ([], -1)
    assert ws.end_of_read(op, payload) == (True, True)
    assert ws.close_code == code
    assert ws.ws_state is WsState.LOCAL_CLOSING


def test_a_plain_read_neither_stops_nor_closes() -> None:
    ws, _ = make_ws()
    assert ws.end_of_read(-1, b"") == (False, False)
    assert ws.ws_state is WsState.OPEN


def test_heartbeat_pings_a_silent_peer_then_gives_up_on_it() -> None:
    ws, _ = make_ws()
    ws.last_rx = 100.0
    assert not ws.heartbeat(100.9, 1.0, 0.5)
    assert ws.outbox.pending_frames == 0
    assert not ws.heartbeat(101.0, 1.0, 0.5)  # silent for the interval: a ping
    assert ws.outbox.take() == PING_FRAME
    assert not ws.heartbeat(101.4, 1.0, 0.5)  # pinged less than an interval ago
    assert ws.outbox.pending_frames == 0
    assert ws.heartbeat(101.5, 1.0, 0.5)  # interval + timeout of silence: presumed dead
    ws.last_rx = 101.6  # heard from: silent again from here
    assert not ws.heartbeat(102.0, 1.0, 0.5)
    assert ws.outbox.pending_frames == 0


def test_the_websocket_is_sans_io() -> None:
    code = "import sys, relay.transport.websocket; sys.exit('trio' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_a_peers_own_1013_close_is_not_counted_as_a_slow_consumer_close() -> None:
    ws, _ = make_ws()
    _, op, payload = ws.receive(mask_frame(OP_CLOSE, close_payload(1013, b"busy")))
    assert ws.end_of_read(op, payload) == (True, True)
    assert ws.close_code == 1013  # echoed
    assert ws.stats.slow_consumer_closes == 0
    ours, _ = make_ws()
    assert ours.begin_close(1013, "slow consumer")
    assert ours.stats.slow_consumer_closes == 1


def test_authenticated_raises_the_frame_limit_from_the_pre_auth_one() -> None:
    ws = WebSocket(
        outbox=Outbox(1 << 20, 1000),
        parser=FrameParser(100),
        stats=Stats(),
        wake=lambda _: None,
        message_limit=1000,
    )
    ws.authenticated()
    assert ws.receive(mask_frame(OP_TEXT, b"a" * 1000)) == ([b"a" * 1000], -1, b"")
    before = WebSocket(
        outbox=Outbox(1 << 20, 1000),
        parser=FrameParser(100),
        stats=Stats(),
        wake=lambda _: None,
        message_limit=1000,
    )
    # half a frame over the pre-auth limit is refused from its header, nothing buffered
    before.receive(mask_frame(OP_TEXT, b"a" * 101)[:10])
    assert before.parser.failed and before.parser.close_code == 1009


def test_a_partial_frame_is_checked_against_the_raised_limit() -> None:
    parser = FrameParser(100)
    frame = mask_frame(OP_TEXT, b"b" * 90)
    assert parser.feed(frame[:50]) == []
    parser.max_message_bytes = 80  # lowered under the buffered frame: refused on the next feed
    assert parser.feed(frame[50:]) == []
    assert parser.failed and parser.close_code == 1009
    raised = FrameParser(10)
    raised.max_message_bytes = 200
    assert raised.feed(mask_frame(OP_TEXT, b"c" * 150)) == [(OP_TEXT, b"c" * 150)]


def test_backed_up_counts_from_the_first_sample_over_the_mark() -> None:
    ws, _ = make_ws()
    assert ws.send(encode_frame(OP_TEXT, b"x" * 200))
    assert not ws.backed_up(0.0, mark=100, timeout=30.0)  # over: the time starts
    assert not ws.backed_up(29.9, mark=100, timeout=30.0)
    assert ws.backed_up(30.0, mark=100, timeout=30.0)
    ws.outbox.take()
    assert not ws.backed_up(31.0, mark=100, timeout=30.0)  # drained: the time stops
    assert ws.backed_up_since is None
    assert ws.send(encode_frame(OP_TEXT, b"x" * 200))
    assert not ws.backed_up(40.0, mark=100, timeout=30.0)
    assert not ws.backed_up(69.0, mark=100, timeout=30.0)
    ws.in_flight = 150  # bytes a wss:// writer holds count too
    ws.outbox.take()
    assert ws.backed_up(70.0, mark=100, timeout=30.0)


def test_send_all_queues_a_run_in_order_and_wakes_the_driver_once() -> None:
    ws, woken = make_ws()
    frames = [encode_frame(OP_TEXT, b"one"), encode_frame(OP_TEXT, b"two")]
    assert ws.send_all(frames)
    assert ws.send_all((encode_frame(OP_TEXT, b"three"),))
    assert woken == [ws]
    assert ws.outbox.take() == b"".join(frames) + encode_frame(OP_TEXT, b"three")


def test_send_all_stops_at_the_first_frame_that_does_not_fit_and_keeps_those_before() -> None:
    ws, woken = make_ws(max_bytes=30, max_frames=10)
    fits = encode_frame(OP_TEXT, b"x" * 10)  # 12 bytes
    assert not ws.send_all([fits, fits, fits, fits])  # the third would make 36 > 30
    assert woken == [ws]
    assert ws.outbox.take() == fits + fits
    full, full_woken = make_ws(max_bytes=5)
    assert not full.send_all([fits])  # nothing fits: nothing queued, the driver not woken
    assert full_woken == [] and full.outbox.pending_frames == 0


def test_send_all_queues_nothing_once_closing() -> None:
    ws, _ = make_ws()
    assert ws.begin_close(1000)
    before = ws.outbox.pending_bytes
    assert not ws.send_all([encode_frame(OP_TEXT, b"late")])
    assert ws.outbox.pending_bytes == before


def test_send_all_compresses_each_frame_as_send_does() -> None:
    from relay.transport.deflate import FrameDeflater

    large = encode_frame(OP_TEXT, b'{"type":"message","text":"' + b"hello " * 400 + b'"}')
    small = encode_frame(OP_TEXT, b'{"type":"receipt"}')
    one, _ = make_ws()
    one.deflater = FrameDeflater(1024, one.stats)
    assert one.send_all([large, small])
    other, _ = make_ws()
    other.deflater = FrameDeflater(1024, other.stats)
    assert other.send(large) and other.send(small)
    data = one.outbox.take()
    assert data == other.outbox.take()
    assert len(data) < len(large)  # the large frame went out compressed, the small one as is
    assert data.endswith(small)
