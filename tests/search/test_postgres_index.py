"""The PostgreSQL search index (relay/store/postgres/search.py): rows stored before it existed
(their vector NULL, as migration 4 leaves them) get their vectors when a store opens; tokens
beyond PostgreSQL's bounds (a lexeme over 2047 bytes) are stored and still found exactly."""

from __future__ import annotations

import psycopg
from services import fresh_schema
from store_suite import msg, put

from relay.search import parse_query
from relay.store.postgres import PostgresStore


async def found(store: PostgresStore, user: str, query: str) -> list[str]:
    page = await store.search(user, parse_query(query), limit=100)
    return [m.text for m in page.messages]


async def test_rows_without_a_vector_get_one_at_open(pg_database: str) -> None:
    url = fresh_schema(pg_database)
    store = PostgresStore(url)
    await store.open()
    await put(store, msg("a", "b", text="Grüße aus Köln"), msg("b", "a", text="東京タワー"))
    await store.close()
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE messages SET search = NULL")
    store = PostgresStore(url)
    await store.open()
    try:
        assert await found(store, "a", "grusse") == ["Grüße aus Köln"]
        assert await found(store, "b", "タワー") == ["東京タワー"]
    finally:
        await store.close()
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM messages WHERE search IS NULL").fetchone()
        assert row is not None and row[0] == 0


async def test_a_word_longer_than_a_lexeme_is_found_exactly(pg_database: str) -> None:
    url = fresh_schema(pg_database)
    store = PostgresStore(url)
    await store.open()
    long, other = "a" * 3000, "a" * 2999 + "b"
    try:
        await put(store, msg("a", "b", text=f"x {long} y"), msg("a", "b", text=other))
        assert await found(store, "a", long) == [f"x {long} y"]
        assert await found(store, "a", other) == [other]
        assert await found(store, "a", "a" * 2500 + "*") == [other, f"x {long} y"]
        assert await found(store, "a", f'"{long} y"') == [f"x {long} y"]
    finally:
        await store.close()
