"""The real services the several-node tests use: a database of their own on the machine's
PostgreSQL (127.0.0.1:5432, user postgres, trust auth), and a redis-server of their own on a
free port. A helper module, not a test module (tests/ is on sys.path, as for store_suite).

Nothing is mocked: a missing PostgreSQL or redis-server fails the tests that need them, with
what to install or start.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg

PG_HOST = os.environ.get("RELAY_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("RELAY_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("RELAY_TEST_PG_USER", "postgres")
_schemas = itertools.count(1)


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(
            f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres", autocommit=True
        )
    except psycopg.OperationalError as exc:
        raise RuntimeError(
            f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT} as {PG_USER} ({exc}); "
            "install it (apt-get install postgresql) and start it "
            "(service postgresql start), as bash .ci/run does"
        ) from None


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A new, uniquely named database (dropped at the end): its URL."""
    name = f"relay_test_{uuid.uuid4().hex[:12]}"
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with _admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fresh_schema(database_url: str) -> str:
    """A URL on `database_url` whose tables live in a new, empty schema of their own: an empty
    store per test without a CREATE DATABASE each."""
    schema = f"t{next(_schemas)}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return f"{database_url}?options={quote(f'-csearch_path={schema}')}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server of the tests' own on a free port (no persistence); restartable on the
    same port, as a Redis restart is what a node must live through."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.exe = exe
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.exe,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def flush(self) -> None:
        """FLUSHALL: every key of every database gone."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"FLUSHALL\r\n")
            if not s.recv(16).startswith(b"+OK"):
                raise RuntimeError("redis-server refused FLUSHALL")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
