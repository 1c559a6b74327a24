"""The optional abilities on the PostgreSQL store: the WebhookOutbox suite
(tests/webhook_outbox_suite.py), and what only a store shared by several nodes promises — one
node at a time scans and sends (the cursor row's lease), so an event is made and sent once per
cluster, not once per node."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from services import fresh_schema, postgres_database
from store_suite import msg, put
from webhook_outbox_suite import WebhookOutboxSuite, ev

from relay.store.base import Store
from relay.store.postgres import PostgresStore


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture
def pg_url(pg_database: str) -> str:
    return fresh_schema(pg_database)


class TestPostgresOutbox(WebhookOutboxSuite):
    @pytest.fixture
    async def store(self, pg_url: str) -> AsyncIterator[Store]:
        postgres = PostgresStore(pg_url)
        await postgres.open()
        yield postgres
        await postgres.close()


async def test_one_node_at_a_time_scans_and_sends(pg_url: str) -> None:
    first, second = PostgresStore(pg_url), PostgresStore(pg_url)
    await first.open()
    await second.open()
    try:
        await first.webhook_start()
        await second.webhook_start()
        await put(first, msg("a", "b", id="m1"))
        [candidate] = await first.webhook_candidates(limit=10)  # first takes the lease
        assert await second.webhook_candidates(limit=10) == []
        # a scan that lost the race stores nothing and leaves the cursor
        assert await second.webhook_advance(candidate.position, [ev("x")], max_pending=10) == 0
        assert await first.webhook_pending() == (0, None)
        await first.webhook_advance(candidate.position, [ev("e1", 10.0)], max_pending=10)
        assert [e.id for e in await first.webhook_due(100.0, limit=10)] == ["e1"]
        assert await second.webhook_due(100.0, limit=10) == []  # only the holder sends
        assert await second.webhook_pending() == (1, 10.0)  # but every node sees the backlog
    finally:
        await first.close()
        await second.close()


async def test_the_lease_passes_on_when_its_holder_is_gone(pg_url: str) -> None:
    first, second = PostgresStore(pg_url), PostgresStore(pg_url)
    await first.open()
    await second.open()
    try:
        await first.webhook_start()
        await put(first, msg("a", "b", id="m1"))
        assert len(await first.webhook_candidates(limit=10)) == 1
        await first.close()  # the holder stops renewing; its lease lapses (made past here)
        await second._write(lambda conn: conn.execute("UPDATE webhook_cursor SET lease_until = 0"))
        assert [c.message.id for c in await second.webhook_candidates(limit=10)] == ["m1"]
    finally:
        await first.close()
        await second.close()
