"""The `storm` scenario's two halves outside the load generator: the backlog a restarted relay
finds in its store, and when each device comes back.

Invariant: the backlog is written through the relay's own SqliteStore (the same code and
schema the relay then opens), so the relay started on it is in exactly the state of a relay
restarted with that many undelivered messages; nothing is faked in the database.
"""

from __future__ import annotations

import datetime
import random
from pathlib import Path

import trio

from relay.client.backoff import ReconnectPolicy
from relay.store.base import NewMessage, direct_conversation
from relay.store.sqlite import SqliteStore

#: the user every backlog message comes from (never connected during the storm)
SENDER = "storm-sender"
BATCH = 2000


def prefill(db: Path, users: list[str], per_user: int, text_bytes: int) -> int:
    """Store `per_user` messages from SENDER to each of `users`; returns how many."""
    return trio.run(_prefill, db, users, per_user, text_bytes)


async def _prefill(db: Path, users: list[str], per_user: int, text_bytes: int) -> int:
    store = SqliteStore(db)
    await store.open()
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    text = "x" * text_bytes
    batch: list[NewMessage] = []
    count = 0
    try:
        for k, user in enumerate(users):
            conversation = direct_conversation(SENDER, user)
            for j in range(per_user):
                # ids in the load generator's "<ns>.<counter>" form: it parses every id
                batch.append(
                    NewMessage(
                        conversation=conversation,
                        id=f"{k}.{j}",
                        sender_id=SENDER,
                        text=text,
                        server_timestamp=stamp,
                        recipient_id=user,
                    )
                )
                if len(batch) >= BATCH:
                    count += len(await store.append_many(batch))
                    batch = []
        if batch:
            count += len(await store.append_many(batch))
    finally:
        await store.close()
    return count


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
