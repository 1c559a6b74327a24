"""The client object's phase machine: the transition table, the reason it is lost, and the
methods it allows (the last against a port nobody listens on, in virtual time)."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from relay.client import ClientError, ConnectionLost, RelayClient
from relay.client.lifecycle import Lifecycle, Phase


def test_the_table_allows_the_documented_moves_only() -> None:
    life = Lifecycle()
    with pytest.raises(ClientError):
        life.move(Phase.GAVE_UP, "never ran")
    life.move(Phase.RUNNING)
    life.move(Phase.GAVE_UP, "gave up after 5 attempts")
    assert life.lost == "gave up after 5 attempts"
    life.move(Phase.RUNNING)
    assert life.lost is None and not life.closing
    life.move(Phase.CLOSING)
    assert life.closing and life.lost is None
    with pytest.raises(ClientError):
        life.move(Phase.RUNNING)
    life.move(Phase.CLOSED, "client closed")
    assert life.closing and life.lost == "client closed"
    for phase in Phase:
        with pytest.raises(ClientError):
            life.move(phase)


def test_a_client_that_gave_up_keeps_its_reason_when_closed() -> None:
    life = Lifecycle()
    life.move(Phase.RUNNING)
    life.move(Phase.GAVE_UP, "auth_failed: bad token")
    life.move(Phase.CLOSING)
    life.move(Phase.CLOSED, "client closed")
    assert life.lost == "auth_failed: bad token"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_a_client_is_entered_once_and_reconnects_only_while_open(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client = RelayClient(f"ws://127.0.0.1:{_closed_port()}", user_id="alice")
    with pytest.raises(ClientError, match="not open"):
        client.reconnect()
    async with client:
        client.reconnect()  # still trying: nothing to restart
        with pytest.raises(ClientError, match="entered once"):
            async with client:
                pass
    with pytest.raises(ClientError, match="not open"):
        client.reconnect()
    with pytest.raises(ClientError, match="entered once"):
        async with client:
            pass
    with pytest.raises(ConnectionLost, match="client closed"):
        await client.send_message("bob", "too late")
