"""An accepted upgrade leaves nothing behind for the cyclic garbage collector.

Users rely on: a relay whose clients come and go keeps a flat memory curve. `relay serve`
runs the collector's young generation only every 10,000 net new container objects
(cli.tune_collector), so garbage that reference counting cannot free piles up between
collections: with wsproto's server-side connection object (its frame parser is a generator
that references its owner) each upgrade left 8 such objects (about 1 kB), and `python -m bench
soak` (about 110 upgrades a minute) saw its RSS climb by about 1 MB over the ten minutes before
the first collection. The 101 response is built here without that object (the relay frames
WebSocket traffic itself), so what an upgrade allocates dies by reference counting.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
import trio
from support import RawWs, start_relay

from relay.echo import EchoHandler

UPGRADES = 40


@pytest.fixture
def collector_off() -> Iterator[None]:
    """The cyclic collector stopped (what it would free stays countable), restarted after."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def wsproto_objects() -> int:
    """wsproto's objects the collector tracks (live ones and garbage alike)."""
    modules = (type(o).__module__ for o in gc.get_objects())
    return sum(1 for m in modules if isinstance(m, str) and m.startswith("wsproto"))


async def test_upgrades_leave_no_wsproto_objects_behind(
    nursery: trio.Nursery, collector_off: None
) -> None:
    relay = await start_relay(nursery, handler=EchoHandler())
    before = wsproto_objects()
    for _ in range(UPGRADES):
        ws = await RawWs.connect(relay)
        await ws.stream.aclose()
    # every handshake has completed (each client read its 101) and every socket is closed
    assert wsproto_objects() - before == 0
