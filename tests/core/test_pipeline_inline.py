"""The core's inline path (on_messages_nowait, as the shell's poller calls it) answers exactly
as the awaited path (on_messages) does: same frames to every connection, same store contents,
whatever mix of messages, refusals and other frames a read holds. No sockets: both services
run over FakeConn and a MemoryStore with a fixed clock.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import FakeConn, decode_server_frames

from relay.config import RelayConfig
from relay.core import MessagingService
from relay.store.memory import MemoryStore

USERS = ("ann", "bob", "cy")

frames = st.one_of(
    st.builds(
        lambda i, to, text: {"type": "message", "id": f"m{i}", "recipientId": to, "text": text},
        st.integers(0, 6),  # repeated ids: duplicates get the same `sent` again
        st.sampled_from(USERS),
        st.sampled_from(["hi", "x" * 5000, "", 'ok "quoted" \n']),  # too long, empty: refused
    ),
    st.builds(
        lambda i: {"type": "message", "id": f"g{i}", "groupId": "team", "text": "to all"},
        st.integers(0, 3),
    ),
    st.builds(
        lambda i: {
            "type": "message",
            "id": f"x{i}",
            "senderId": "mallory",
            "recipientId": "bob",
            "text": "spoofed",
        },
        st.integers(0, 2),
    ),
    st.just({"type": "ping", "ref": "p"}),
    st.just({"type": "message", "id": 7, "text": "bad id"}),
    st.just({"type": "presence", "userIds": ["bob"]}),
)
reads = st.lists(
    st.tuples(st.sampled_from(USERS), st.lists(frames, min_size=1, max_size=5)),
    min_size=1,
    max_size=8,
)


class Clock:
    now = 1000.0
    wall = 1_780_000_000.0


async def setup(inline: bool) -> tuple[MessagingService, dict[str, FakeConn]]:
    clock = Clock()
    service = MessagingService(
        RelayConfig(db_path=None, rate_limit_burst=12, rate_limit_messages=0.001),
        MemoryStore(),
        clock=lambda: clock.now,
        wall=lambda: clock.wall,
    )
    conns = {}
    for user in USERS:
        conn = FakeConn()
        service.on_open(conn)
        await service.on_messages(conn, [orjson.dumps({"type": "auth", "userId": user})])
        conns[user] = conn
    await service.on_messages(
        conns["ann"],
        [
            orjson.dumps(
                {"type": "group_create", "groupId": "team", "name": "T", "members": list(USERS)}
            )
        ],
    )
    for conn in conns.values():
        conn.outbox.take()
    return service, conns


async def run(inline: bool, script: list[tuple[str, list[dict[str, Any]]]]) -> list[Any]:
    service, conns = await setup(inline)
    seen: list[Any] = []
    for user, batch in script:
        conn = conns[user]
        payloads = [orjson.dumps(f) for f in batch]
        if inline:
            done = service.on_messages_nowait(conn, payloads)
            assert 0 <= done <= len(payloads)
            if done < len(payloads):
                await service.on_messages(conn, payloads[done:])
        else:
            await service.on_messages(conn, payloads)
        for name in USERS:
            seen.append((name, decode_server_frames(conns[name].outbox.take())))
            service.on_flushed(conns[name])
    await service.maintain()
    history = await service.store.history("g:team", limit=100)
    seen.append([m.id for m in history[0]])
    return seen


@settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(script=reads)
async def test_inline_and_awaited_paths_answer_alike(script: list[Any]) -> None:
    assert await run(True, script) == await run(False, script)


async def test_the_inline_path_stops_at_the_first_frame_that_needs_waiting() -> None:
    service, conns = await setup(True)
    payloads = [
        orjson.dumps({"type": "message", "id": "a", "recipientId": "bob", "text": "1"}),
        orjson.dumps({"type": "history", "peerId": "bob"}),
        orjson.dumps({"type": "message", "id": "b", "recipientId": "bob", "text": "2"}),
    ]
    assert service.on_messages_nowait(conns["ann"], payloads) == 1
    (sent,) = decode_server_frames(conns["ann"].outbox.take())
    assert (sent["type"], sent["status"], sent["seq"]) == ("receipt", "sent", 1)
    (delivered,) = decode_server_frames(conns["bob"].outbox.take())
    assert (delivered["id"], delivered["status"]) == ("a", "delivered")
