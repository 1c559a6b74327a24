"""RelayClient with several URLs (the nodes of one relay): it moves to the next URL when one
fails, and after a drop, and its messages are stored once whichever node takes them."""

from __future__ import annotations

import trio
from services import free_port
from support import start_relay

from relay.client import ConversationId, MessageStatus, RelayClient


async def test_the_client_moves_to_the_next_url_on_failure() -> None:
    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery)
        dead = f"ws://127.0.0.1:{free_port()}"  # nothing listens there
        async with (
            RelayClient([dead, relay.url], user_id="ann", reconnect_delay=0.01) as ann,
            RelayClient(relay.url, user_id="bob") as bob,
        ):
            with trio.fail_after(10):
                await ann.wait_online()
                assert ann.url == relay.url
                await bob.wait_online()
                sent = await ann.send_message("bob", "found you")
                await ann.wait_message(sent.id, MessageStatus.SENT)
                await bob.wait_until(lambda s: len(s.messages(ConversationId.direct("ann"))) == 1)
        nursery.cancel_scope.cancel()


def test_a_client_needs_a_url() -> None:
    import pytest

    with pytest.raises(ValueError, match="at least one URL"):
        RelayClient([], user_id="ann")
