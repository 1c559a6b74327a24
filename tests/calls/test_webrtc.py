"""A real WebRTC connection set up through the relay: two aiortc peers, each in a process of
its own (tests/calls/webrtc_peer.py; aiortc runs on asyncio), signal a call over plain
WebSockets — the offer in call_invite, the answer in call_accept, every ICE candidate in
call_signal — and open a data channel between them on loopback that carries a message each
way. The relay stores the answered call's record."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio
from support import start_relay

from relay.store.base import direct_conversation
from relay.store.memory import MemoryStore

PEER = Path(__file__).with_name("webrtc_peer.py")
#: seconds the two peers may take (ICE and DTLS on a loaded 2-core machine); a hang fails
LIMIT = 90.0


async def _read_line(stream: Any, lines: list[str], buffer: bytearray) -> str:
    """The next line of a process's stdout; `buffer` keeps what follows it."""
    while b"\n" not in buffer:
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise AssertionError(f"the peer closed its output; it printed {lines}")
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    lines.append(line.decode())
    return lines[-1]


async def _run_peer(url: str, role: str, ready: trio.Event | None) -> dict[str, Any]:
    process = await trio.lowlevel.open_process(
        [sys.executable, str(PEER), url, role],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    lines: list[str] = []
    buffer = bytearray()
    errors = bytearray()

    async def drain_stderr() -> None:
        assert process.stderr is not None
        async for chunk in process.stderr:
            errors.extend(chunk)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain_stderr)
            assert process.stdout is not None
            if ready is not None:
                assert await _read_line(process.stdout, lines, buffer) == "ready"
                ready.set()
            result = json.loads(await _read_line(process.stdout, lines, buffer))
            code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert code == 0, errors.decode(errors="replace")
    assert isinstance(result, dict)
    return result


async def test_two_aiortc_peers_open_a_data_channel_through_the_relays_signalling(
    nursery: trio.Nursery,
) -> None:
    store = MemoryStore()
    relay = await start_relay(nursery, store=store)
    results: dict[str, dict[str, Any]] = {}
    ready = trio.Event()

    async def peer(role: str) -> None:
        results[role] = await _run_peer(relay.url, role, ready if role == "callee" else None)

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as peers:
            peers.start_soon(peer, "callee")
            await ready.wait()  # bob is connected before alice calls: the call rings
            peers.start_soon(peer, "caller")
    caller, callee = results["caller"], results["callee"]

    # the data channel carried a message each way
    assert callee["received"] == ["ping"]
    assert caller["received"] == ["pong"]
    assert caller["channel"] == "open"
    assert caller["ice"] == "completed" and callee["ice"] == ["completed"]
    # the offer and the answer went through the relay without candidates; every candidate
    # (and the end of them) came through call_signal, and they were on loopback
    assert caller["sdp_candidates"] == 0 and callee["sdp_candidates"] == 0
    assert caller["frames"].index("call_ringing") < caller["frames"].index("call_accept")
    assert "call_invite" in callee["frames"]
    assert caller["signals_in"] >= 2 and callee["signals_in"] >= 2
    assert caller["remote_hosts"] == ["127.0.0.1"] and callee["remote_hosts"] == ["127.0.0.1"]
    # the caller hung up: the callee was told, and the call left its answered record
    assert callee["reason"] == "hangup"
    with trio.fail_after(5):
        while True:
            page, _ = await store.history(direct_conversation("alice", "bob"))
            if page:
                break
            await trio.sleep(0.05)
    (record,) = page
    assert record.sender_id == "alice" and record.call is not None
    assert record.call["callId"] == "call-webrtc-1" and record.call["outcome"] == "answered"
