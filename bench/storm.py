"""The `storm` scenario's two halves outside the load generator: the backlog a restarted relay
finds in its store, and when each device comes back.

Invariant: the backlog is written through the relay's own SqliteStore (bench/prefill.py), so
the relay started on it is in exactly the state of a relay restarted with that many
undelivered messages.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

from bench.prefill import now_stamp, store_messages
from relay.client.backoff import ReconnectPolicy
from relay.store.base import NewMessage, direct_conversation

#: the user every backlog message comes from (never connected during the storm)
SENDER = "storm-sender"


def prefill(db: Path, users: list[str], per_user: int, text_bytes: int) -> int:
    """Store `per_user` messages from SENDER to each of `users`; returns how many."""
    return store_messages(db, _backlog(users, per_user, text_bytes))


def _backlog(users: list[str], per_user: int, text_bytes: int) -> Iterator[NewMessage]:
    stamp = now_stamp()
    text = "x" * text_bytes
    for k, user in enumerate(users):
        conversation = direct_conversation(SENDER, user)
        for j in range(per_user):
            # ids in the load generator's "<ns>.<counter>" form: it parses every id
            yield NewMessage(
                conversation=conversation,
                id=f"{k}.{j}",
                sender_id=SENDER,
                text=text,
                server_timestamp=stamp,
                recipient_id=user,
            )


def uniform_schedule(n: int, spread_s: float, seed: int = 1) -> list[float]:
    """Every device back within `spread_s` seconds, uniformly (a restart behind a load
    balancer that spreads reconnects)."""
    rng = random.Random(seed)
    return sorted(rng.uniform(0.0, spread_s) for _ in range(n))


def client_default_schedule(n: int, seed: int = 1) -> list[float]:
    """When n devices running the client library with its default ReconnectPolicy attempt
    their first reconnect after the relay dropped them all at once, from the first attempt."""
    rng = random.Random(seed)
    policy = ReconnectPolicy()
    times = sorted(policy.delay_before(1, rng) for _ in range(n))
    return [t - times[0] for t in times]
