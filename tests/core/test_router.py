"""The router's table of users' connections: what delivery relies on when it iterates it."""

from __future__ import annotations

from typing import Any

from relay.core.router import Router


def connections(n: int) -> list[Any]:
    """Stand-ins for connections: the router holds them by identity only."""
    return [object() for _ in range(n)]


def test_a_users_connections_are_kept_once_in_connect_order() -> None:
    router = Router()
    a, b, c = connections(3)
    assert [router.add("u", conn) for conn in (a, b, c)] == [1, 2, 3]
    assert router.add("u", a) == 3  # registered once
    assert router.table()["u"] == (a, b, c) and router.connections("u") == [a, b, c]
    assert router.remove("u", b) == 2
    assert router.table()["u"] == (a, c)
    assert router.remove("u", a) == 1 and router.remove("u", c) == 0
    assert "u" not in router.table() and not router.is_connected("u")
    assert router.remove("u", a) == 0  # already gone: nothing to do


def test_a_connection_removed_during_delivery_leaves_the_iterated_tuple_whole() -> None:
    # delivery walks the table's tuple with no copy while a send may close a connection (a slow
    # consumer) and unregister it: the walk must still see every connection it started with,
    # once, and the table the new set afterwards
    router = Router()
    a, b, c, d = connections(4)
    for conn in (a, b, c):
        router.add("u", conn)
    seen = []
    for conn in router.table()["u"]:
        seen.append(conn)
        if conn is a:
            router.remove("u", b)
            router.add("u", d)
    assert seen == [a, b, c]
    assert router.table()["u"] == (a, c, d)
