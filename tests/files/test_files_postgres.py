"""Files with the PostgreSQL store: the bytes live in its database, so a file uploaded through
one relay node is served by another node on the same database (each node checks its own
sessions' httpTokens, and the readers a message granted are in the database too)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import trio
from services import fresh_schema, postgres_database
from support import TEST_DEFAULTS

from relay.app import Relay
from relay.client import FileRequestFailed, RelayClient
from relay.config import RelayConfig


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    with postgres_database() as url:
        yield url


async def test_a_file_sent_through_one_node_is_served_by_another(
    nursery: trio.Nursery, pg_database: str
) -> None:
    url = fresh_schema(pg_database)
    nodes = []
    for _ in range(2):
        node = Relay(RelayConfig(**{**TEST_DEFAULTS, "db_path": url}))
        await nursery.start(node.serve)
        nodes.append(node)
    data = os.urandom(600_000)  # three chunks of the database's 256 KiB
    async with (
        RelayClient(nodes[0].url, user_id="ann") as ann,
        RelayClient(nodes[1].url, user_id="bob") as bob,
        RelayClient(nodes[1].url, user_id="cy") as cy,
    ):
        with trio.fail_after(10):
            await ann.wait_online()
            await bob.wait_online()
            await cy.wait_online()
            info = (await ann.send_file("bob", data, name="big.bin")).attachments[0]
            # the grant follows the message's store commit: bob may have to ask again
            while True:
                try:
                    got = b"".join([chunk async for chunk in bob.download(info.file_id)])
                    break
                except FileRequestFailed as exc:
                    assert exc.status == 404
                    await trio.sleep(0.02)
            assert got == data
            with pytest.raises(FileRequestFailed) as other:  # not sent to cy
                async for _ in cy.download(info.file_id):
                    pass
            assert other.value.status == 404
