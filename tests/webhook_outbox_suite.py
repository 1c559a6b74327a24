"""The behavioural suite of the WebhookOutbox store ability (relay.store.base), for every store
that has it.

A test module runs it by defining a `store` fixture (an opened, empty store) and a class
`class TestXOutbox(WebhookOutboxSuite): ...` (tests/store/test_webhook_outbox.py runs it on the
memory and SQLite stores). A helper module, not a test module, like store_suite.
"""

from __future__ import annotations

from typing import Any

from store_suite import AB, AC, msg, put

from relay.store.base import OutboxEvent, Store, WebhookOutbox


def ev(ident: str, created: float = 100.0, next_at: float | None = None) -> OutboxEvent:
    return OutboxEvent(
        id=ident,
        body=f'{{"id":"{ident}"}}',
        created_at=created,
        next_at=created if next_at is None else next_at,
        attempts=0,
    )


def outbox(store: Store) -> WebhookOutbox:
    assert isinstance(store, WebhookOutbox)
    return store


async def ids_after_cursor(store: Any) -> list[str]:
    return [c.message.id for c in await store.webhook_candidates(limit=100)]


class WebhookOutboxSuite:
    async def test_is_a_webhook_outbox(self, store: Store) -> None:
        assert isinstance(store, WebhookOutbox)

    async def test_starting_does_not_replay_the_history(self, store: Store) -> None:
        box = outbox(store)
        await put(store, msg("a", "b", id="old"))
        assert await box.webhook_candidates(limit=10) == []  # not started: nothing
        await box.webhook_start()
        assert await box.webhook_candidates(limit=10) == []
        await put(store, msg("a", "b", id="new"))
        assert await ids_after_cursor(store) == ["new"]

    async def test_starting_again_keeps_the_cursor(self, store: Store) -> None:
        box = outbox(store)
        await box.webhook_start()
        await put(store, msg("a", "b", id="m1"))
        await box.webhook_start()
        assert await ids_after_cursor(store) == ["m1"]

    async def test_candidates_come_in_acceptance_order_across_conversations(
        self, store: Store
    ) -> None:
        box = outbox(store)
        await box.webhook_start()
        await put(store, msg("a", "b", id="x1"), msg("a", "c", id="y1"))
        await put(store, msg("b", "a", id="x2"))
        await put(store, msg("c", "a", id="y2"), msg("a", "b", id="x3"))
        found = await box.webhook_candidates(limit=10)
        assert [c.message.id for c in found] == ["x1", "y1", "x2", "y2", "x3"]
        assert [c.message.conversation for c in found] == [AB, AC, AB, AC, AB]
        assert [c.message.seq for c in found] == [1, 1, 2, 2, 3]
        positions = [c.position for c in found]
        assert positions == sorted(set(positions))
        assert [c.message.id for c in await box.webhook_candidates(limit=2)] == ["x1", "y1"]
        assert await box.webhook_candidates(limit=0) == []

    async def test_advancing_moves_the_cursor_forward_only(self, store: Store) -> None:
        box = outbox(store)
        await box.webhook_start()
        await put(store, msg("a", "b", id="m1"), msg("a", "b", id="m2"), msg("a", "b", id="m3"))
        found = await box.webhook_candidates(limit=10)
        assert await box.webhook_advance(found[1].position, [], max_pending=10) == 0
        assert await ids_after_cursor(store) == ["m3"]
        await box.webhook_advance(found[0].position, [], max_pending=10)  # back: ignored
        assert await ids_after_cursor(store) == ["m3"]
        await box.webhook_advance(found[2].position, [], max_pending=10)
        assert await ids_after_cursor(store) == []

    async def test_added_events_are_due_oldest_first_and_kept_once(self, store: Store) -> None:
        box = outbox(store)
        await box.webhook_start()
        await put(store, msg("a", "b", id="m1"))
        [candidate] = await box.webhook_candidates(limit=10)
        events = [ev("e2", created=20.0), ev("e1", created=10.0), ev("e3", 30.0, next_at=90.0)]
        await box.webhook_advance(candidate.position, events, max_pending=10)
        assert await box.webhook_candidates(limit=10) == []
        assert await box.webhook_pending() == (3, 10.0)
        assert [e.id for e in await box.webhook_due(50.0, limit=10)] == ["e1", "e2"]
        assert await box.webhook_due(50.0, limit=1) == [events[1]]  # kept exactly as given
        assert [e.id for e in await box.webhook_due(90.0, limit=10)] == ["e1", "e2", "e3"]
        assert await box.webhook_due(5.0, limit=10) == []
        # the same id again (a scan made again after a crash) keeps the pending one
        again = OutboxEvent("e1", "other", 1.0, 1.0, 7)
        await box.webhook_advance(candidate.position, [again], max_pending=10)
        assert (await box.webhook_due(50.0, limit=1))[0] == events[1]
        assert (await box.webhook_pending())[0] == 3

    async def test_settling_removes_and_reschedules(self, store: Store) -> None:
        box = outbox(store)
        await box.webhook_start()
        await box.webhook_advance(
            0, [ev("e1", 10.0), ev("e2", 20.0), ev("e3", 30.0)], max_pending=10
        )
        await box.webhook_settle(["e1", "unknown"], [("e2", 500.0), ("nope", 1.0)])
        assert await box.webhook_pending() == (2, 30.0)
        assert [e.id for e in await box.webhook_due(100.0, limit=10)] == ["e3"]
        [e2] = [e for e in await box.webhook_due(500.0, limit=10) if e.id == "e2"]
        assert (e2.attempts, e2.next_at, e2.created_at, e2.body) == (1, 500.0, 20.0, '{"id":"e2"}')
        await box.webhook_settle([], [("e2", 600.0)])
        [e2] = [e for e in await box.webhook_due(600.0, limit=10) if e.id == "e2"]
        assert e2.attempts == 2
        await box.webhook_settle(["e2", "e3"], [])
        assert await box.webhook_pending() == (0, None)

    async def test_a_full_backlog_drops_the_oldest(self, store: Store) -> None:
        box = outbox(store)
        await box.webhook_start()
        first = [ev("e1", 10.0), ev("e2", 20.0), ev("e3", 30.0)]
        assert await box.webhook_advance(0, first, max_pending=3) == 0
        dropped = await box.webhook_advance(0, [ev("e4", 40.0), ev("e0", 5.0)], max_pending=3)
        assert dropped == 2
        assert [e.id for e in await box.webhook_due(100.0, limit=10)] == ["e2", "e3", "e4"]
        assert (await box.webhook_pending())[0] == 3
