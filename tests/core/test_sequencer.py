"""The sequencer releases live deliveries in seq order per conversation, whatever order the
store's appends return in (sans-IO: no sockets, no trio)."""

from __future__ import annotations

import random

from relay.core.sequencer import Sequencer as _Sequencer
from relay.store.base import StoredMessage


def _message(conversation: str, seq: int) -> StoredMessage:
    return StoredMessage(conversation, seq, f"m{seq}", "alice", "hi", "2026-01-01T00:00:00.000Z")


def _recorder() -> tuple[_Sequencer, list[tuple[str, int]]]:
    out: list[tuple[str, int]] = []
    return _Sequencer(
        lambda messages, audience, exclude: out.extend((m.conversation, m.seq) for m in messages)
    ), out


def test_appends_resuming_in_reverse_order_release_in_seq_order() -> None:
    sequencer, out = _recorder()
    conversation = "d:1:a:b"
    count = 2_000
    for _ in range(count):
        sequencer.begin([conversation], 0.0)
    # every append returns, last seq first; all but the final one leave appends in flight
    for seq in range(count, 0, -1):
        sequencer.end([conversation], [(conversation, seq, _message(conversation, seq), (), None)])
    assert out == [(conversation, seq) for seq in range(1, count + 1)]


def test_a_held_run_waits_for_its_gap_while_appends_are_in_flight() -> None:
    sequencer, out = _recorder()
    c = "g:runners"
    sequencer.begin([c], 0.0)
    sequencer.end([c], [(c, 1, _message(c, 1), (), None)])
    assert out == [(c, 1)]
    for _ in range(3):
        sequencer.begin([c], 0.0)
    sequencer.end([c], [(c, 3, _message(c, 3), (), None)])
    sequencer.end([c], [(c, 4, _message(c, 4), (), None)])
    assert out == [(c, 1)]  # 2 is still in flight: 3 and 4 wait for it
    sequencer.end([c], [(c, 2, _message(c, 2), (), None)])
    assert out == [(c, 1), (c, 2), (c, 3), (c, 4)]


def test_random_completion_orders_keep_every_conversation_in_order() -> None:
    rng = random.Random(7)
    sequencer, out = _recorder()
    appends = [(c, seq) for c in ("x", "y", "z") for seq in range(1, 301)]
    for c, _ in appends:
        sequencer.begin([c], 0.0)
    rng.shuffle(appends)
    for c, seq in appends:
        sequencer.end([c], [(c, seq, _message(c, seq), (), None)])
    for c in ("x", "y", "z"):
        assert [seq for conv, seq in out if conv == c] == list(range(1, 301))
