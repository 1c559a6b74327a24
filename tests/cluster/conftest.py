"""Fixtures of the several-node tests: one database on the machine's PostgreSQL and one
redis-server of their own for the session; each test gets an empty schema of that database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from services import RedisServer, fresh_schema, postgres_database


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture
def pg_url(pg_database: str) -> str:
    return fresh_schema(pg_database)


@pytest.fixture(scope="session")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    yield server
    server.stop()
