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
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis(redis_server: RedisServer) -> RedisServer:
    """The session's redis-server, emptied: an earlier test's nodes leave presence keys that
    live for their ttl, which a later test's nodes would read as users online."""
    if redis_server.process is None:  # a test that stopped it and failed before restarting
        redis_server.start()
    redis_server.flush()
    return redis_server
