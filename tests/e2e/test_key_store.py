"""The KeyStore ability (relay.store.base): one suite, run on the memory, SQLite and PostgreSQL
stores; SQLite keeps the keys across a reopen (migration 6)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from services import fresh_schema, postgres_database

from relay.store.base import DeviceKeys, KeyStore
from relay.store.memory import MemoryStore
from relay.store.postgres import PostgresStore
from relay.store.sqlite import SqliteStore


def keys(user: str, device: str, n: int = 1) -> DeviceKeys:
    return DeviceKeys(user, device, f"id{n}", f"enc{n}", f"sig{n}", f"2026-01-0{n}T00:00:00.000Z")


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeyStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    if request.param == "postgres":
        postgres = PostgresStore(fresh_schema(request.getfixturevalue("pg_database")))
        await postgres.open()
        try:
            yield postgres
        finally:
            await postgres.close()
        return
    sqlite = SqliteStore(str(tmp_path / "keys.db"))
    await sqlite.open()
    try:
        yield sqlite
    finally:
        await sqlite.close()


async def test_both_stores_declare_the_ability(store: KeyStore) -> None:
    assert isinstance(store, KeyStore)


async def test_a_user_without_keys_has_none(store: KeyStore) -> None:
    assert await store.device_keys("nobody") == []


async def test_each_device_keeps_its_latest_keys(store: KeyStore) -> None:
    await store.publish_keys(keys("bob", "watch"))
    await store.publish_keys(keys("bob", "phone"))
    await store.publish_keys(keys("alice", "phone"))
    await store.publish_keys(keys("bob", "phone", 2))  # a re-publish replaces
    assert await store.device_keys("bob") == [keys("bob", "phone", 2), keys("bob", "watch")]
    assert await store.device_keys("alice") == [keys("alice", "phone")]


async def test_sqlite_keeps_keys_across_a_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "relay.db")
    first = SqliteStore(path)
    await first.open()
    await first.publish_keys(keys("bob", "phone"))
    await first.close()
    again = SqliteStore(path)
    await again.open()
    try:
        assert await again.device_keys("bob") == [keys("bob", "phone")]
    finally:
        await again.close()
