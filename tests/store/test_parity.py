"""MemoryStore and SqliteStore agree: the same random workload (appends with resends, receipts,
group changes, presence) gives the same answer to every query, step by step.

The shared suite pins each behaviour down by example; this catches the combinations it does not
spell out. Seeds are fixed, so a failure names the seed and step that reproduce it.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from store_suite import group, msg

from relay.errors import StoreError
from relay.store.base import Store, direct_conversation, group_conversation
from relay.store.memory import MemoryStore
from relay.store.sqlite import SqliteStore

USERS = ("a", "b", "c", "d")
GROUPS = ("g1", "g2")
DEVICES = ("", "phone", "watch")


async def call(store: Store, name: str, *args: Any, **kwargs: Any) -> Any:
    """The result of a store call, or the class of the StoreError it raised."""
    try:
        return await getattr(store, name)(*args, **kwargs)
    except StoreError as exc:
        return type(exc)


def conversations_of(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return group_conversation(rng.choice(GROUPS))
    a, b = rng.sample(USERS, 2)
    return direct_conversation(a, b)


async def step(rng: random.Random, stores: list[Store], members: dict[str, set[str]]) -> str:
    """Do one random operation on every store; returns a description of it if they disagreed."""
    kind = rng.choice(
        ["append"] * 5 + ["delivered", "read", "group", "members", "seen", "device"] + ["query"] * 4
    )
    if kind == "append":
        batch = []
        for _ in range(rng.randint(1, 4)):
            sender = rng.choice(USERS)
            mid = f"{sender}{rng.randrange(25)}"  # small id pool: resends happen
            joined = [g for g in GROUPS if sender in members.get(g, set())]
            if joined and rng.random() < 0.4:
                batch.append(msg(sender, group=rng.choice(joined), id=mid))
            else:
                batch.append(msg(sender, rng.choice([u for u in USERS if u != sender]), id=mid))
        op: tuple[str, tuple[Any, ...], dict[str, Any]] = ("append_many", (batch,), {})
    elif kind == "delivered":
        conversation = conversations_of(rng)
        seq = rng.randrange(0, 12)
        op = ("mark_delivered", (conversation, rng.choice(USERS), rng.choice(DEVICES), seq), {})
    elif kind == "read":
        op = ("mark_read", (conversations_of(rng), rng.choice(USERS), rng.randrange(0, 12)), {})
    elif kind == "group":
        gid = rng.choice(GROUPS)
        people = rng.sample(USERS, rng.randint(1, 3))
        made = group(gid, people)
        op = ("create_group", (made,), {})
        if gid not in members:
            members[gid] = set(people)
    elif kind == "members":
        gid = rng.choice(GROUPS)
        people = rng.sample(USERS, rng.randint(1, 4))
        op = ("set_group_members", (gid, people), {})
        if gid in members:
            members[gid] = set(people)
    elif kind == "device":
        op = ("register_device", (rng.choice(USERS), rng.choice(DEVICES)), {})
    elif kind == "seen":
        op = (
            "set_last_seen",
            (rng.choice(USERS), f"2026-02-05T10:{rng.randrange(60):02d}:00.000Z"),
            {},
        )
    else:
        op = rng.choice(
            [
                (
                    "undelivered",
                    (rng.choice(USERS), rng.choice(DEVICES)),
                    {"limit": rng.randint(1, 50)},
                ),
                ("conversations", (rng.choice(USERS),), {"limit": rng.randint(1, 10)}),
                ("contacts", (rng.choice(USERS),), {}),
                ("member_watermarks", (conversations_of(rng),), {}),
                ("coverage", (rng.choice(USERS),), {"limit": rng.randint(0, 8)}),
                ("last_seq", (conversations_of(rng),), {}),
                ("get_group", (rng.choice(GROUPS),), {}),
                ("last_seen", (list(USERS),), {}),
                (
                    "latest_by_sender",
                    (
                        conversations_of(rng),
                        rng.randrange(0, 6),
                        rng.randrange(0, 14),
                        rng.choice(USERS),
                    ),
                    {},
                ),
                (
                    "history",
                    (conversations_of(rng),),
                    rng.choice(
                        [
                            {"limit": rng.randint(0, 6)},
                            {"before": rng.randrange(0, 14), "limit": rng.randint(1, 6)},
                            {"after": rng.randrange(0, 14), "limit": rng.randint(1, 6)},
                        ]
                    ),
                ),
            ]
        )
    name, args, kwargs = op
    results = [await call(store, name, *args, **kwargs) for store in stores]
    if results[0] != results[1]:
        return f"{name}{args}{kwargs}:\n  memory: {results[0]}\n  sqlite: {results[1]}"
    return ""


@pytest.mark.parametrize("seed", range(6))
async def test_memory_and_sqlite_agree(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    memory = MemoryStore()
    sqlite = SqliteStore(tmp_path / "relay.db", commit_interval=0)
    await memory.open()
    await sqlite.open()
    members: dict[str, set[str]] = {}
    try:
        for n in range(200):
            difference = await step(rng, [memory, sqlite], members)
            assert not difference, f"seed {seed}, step {n}: {difference}"
        # and the per-user views at the end, for everyone
        for user in USERS:
            for device in DEVICES:
                assert await memory.undelivered(user, device) == await sqlite.undelivered(
                    user, device
                )
            assert await memory.conversations(user) == await sqlite.conversations(user)
            assert await memory.coverage(user, limit=100) == await sqlite.coverage(user, limit=100)
    finally:
        await sqlite.close()
