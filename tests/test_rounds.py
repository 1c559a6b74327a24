"""Periodic upkeep examines a bounded slice per call (relay.rounds), so no tick or sweep holds the
event loop in proportion to the users, conversations, addresses or connections, and each still
reaches every entry within one pass. Counted in entries examined and pauses taken, not in time."""

from __future__ import annotations

from typing import Any

import trio
from hypothesis import given
from hypothesis import strategies as st

from relay.config import RelayConfig
from relay.core.ratelimit import RateLimiter
from relay.core.sequencer import SEQUENCER_IDLE, Sequencer
from relay.fastpath import FrameParser, Outbox
from relay.metrics import Stats
from relay.rounds import Rounds
from relay.transport.admission import Admission
from relay.transport.connection import RawConnection
from relay.transport.later import LATER_SLICE, write_deferred
from relay.transport.sweep import SWEEP_SLICE, sweep
from relay.transport.websocket import WsState


@given(
    st.integers(min_value=1, max_value=50),
    st.lists(st.integers(min_value=0, max_value=200), unique=True, max_size=300),
)
def test_a_pass_hands_out_each_key_once_a_slice_at_a_time(size: int, keys: list[int]) -> None:
    rounds: Rounds[int] = Rounds(size)
    table = dict.fromkeys(keys)
    seen: list[int] = []
    while True:
        taken = rounds.next(table)
        assert len(taken) <= size
        seen.extend(taken)
        table[1000 + len(seen)] = None  # added during the pass: not in it
        if not rounds.passing():
            break
    assert seen == keys  # every key once, in the table's order


def test_a_key_removed_during_a_pass_is_still_handed_out_and_the_next_pass_skips_it() -> None:
    rounds: Rounds[str] = Rounds(2)
    table = dict.fromkeys("abcde")
    assert rounds.next(table) == ["a", "b"]
    del table["c"]
    assert rounds.next(table) == ["c", "d"]  # the caller looks it up again and skips it
    assert rounds.next(table) == ["e"]
    assert rounds.next(table) == ["a", "b"]  # a new pass: the table as it is now
    assert rounds.next(table) == ["d", "e"]


def test_the_rate_limiter_prunes_a_slice_per_call_and_every_full_bucket_in_a_pass() -> None:
    limiter = RateLimiter(rate=1.0, burst=1.0)
    limiter._rounds = Rounds(100)
    for i in range(250):
        assert limiter.allow(f"u{i}", 0.0)
    assert [limiter.prune(5.0) for _ in range(3)] == [100, 100, 50]
    assert len(limiter) == 0


def test_the_sequencer_forgets_idle_conversations_a_slice_per_call() -> None:
    sequencer = Sequencer(lambda message, audience, exclude: None)
    sequencer._rounds = Rounds(100)
    sequencer.begin([f"c{i}" for i in range(250)], 0.0)
    sequencer.end([f"c{i}" for i in range(250)], [])
    assert len(sequencer._used) == 250
    remaining = []
    for _ in range(3):
        sequencer.prune(SEQUENCER_IDLE)
        remaining.append(len(sequencer._used))
    assert remaining == [150, 50, 0]


def test_admission_forgets_idle_addresses_a_slice_per_call() -> None:
    admission = Admission(max_per_address=10, rate=1.0)
    admission._rounds = Rounds(100)
    for i in range(250):
        assert admission.admit(f"10.0.{i // 256}.{i % 256}", 0.0) is None
        admission.release(f"10.0.{i // 256}.{i % 256}")
    remaining = []
    for _ in range(3):
        admission.prune(1000.0)
        remaining.append(len(admission.addresses))
    assert remaining == [150, 50, 0]


def open_connections(n: int, config: RelayConfig, woken: list[int] | None = None) -> list[Any]:
    """`n` open ws:// connections with no socket (what the sweep and the ticker look at);
    each one handed to the writers is appended to `woken`."""
    stats = Stats()
    return [
        RawConnection(
            sock=None,
            fd=-1,
            outbox=Outbox(config.outbox_max_bytes, config.outbox_max_frames),
            parser=FrameParser(1024),
            stats=stats,
            wake=lambda conn: None if woken is None else woken.append(conn.id),
            last_rx=0.0,
            message_limit=1024,
            id=i,
            remote="10.0.0.1",
            path="/",
            server=None,
        )
        for i in range(n)
    ]


class Pauses:
    def __init__(self) -> None:
        self.count = 0

    async def __call__(self) -> None:
        self.count += 1
        await trio.lowlevel.checkpoint()


async def test_the_sweep_pauses_between_slices_and_still_pings_every_silent_connection() -> None:
    config = RelayConfig()
    conns = open_connections(2 * SWEEP_SLICE + 1, config)
    assert all(conn.ws_state is WsState.OPEN for conn in conns)
    pause = Pauses()
    # silent for the heartbeat interval, not yet for interval + timeout: each gets a ping
    await sweep(conns, config, Stats(), config.heartbeat_interval, pause)
    assert pause.count == 2
    assert all(conn.outbox.pending_frames == 1 for conn in conns)


async def test_deferred_frames_go_to_the_writers_a_slice_between_pauses() -> None:
    # a tick's `delivered` receipts that found no write to ride: handed to the writers
    # LATER_SLICE connections at a time, so the event loop runs between the slices' writes
    config = RelayConfig()
    woken: list[int] = []
    conns = open_connections(2 * LATER_SLICE + 1, config, woken)
    for conn in conns:
        assert conn.queue_quietly(b"receipt")  # what send_later queues, its server's list aside
        conn.deferred = True
    seen: list[int] = []

    async def pause() -> None:
        seen.append(len(woken))  # how many were handed over before each pause
        await trio.lowlevel.checkpoint()

    await write_deferred(conns, pause)
    assert seen == [LATER_SLICE, 2 * LATER_SLICE]
    assert woken == [conn.id for conn in conns]
    assert not any(conn.deferred for conn in conns)
