"""Fixtures of the HTTP API tests; their helpers are in api_support.py (importable as
`api_support` from the modules here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio

HERE = Path(__file__).parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from api_support import start_api_relay  # noqa: E402

from relay import Relay  # noqa: E402


@pytest.fixture
async def relay(nursery: trio.Nursery) -> Relay:
    return await start_api_relay(nursery)


@pytest.fixture
async def sqlite_relay(nursery: trio.Nursery, tmp_path: Path) -> Relay:
    from relay.store.sqlite import SqliteStore

    return await start_api_relay(nursery, SqliteStore(str(tmp_path / "relay.db")))
