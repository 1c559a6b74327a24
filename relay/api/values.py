"""The HTTP API's answers as values: what the relay's backend part builds and what the clients
return (one definition for both sides)."""

from __future__ import annotations

from typing import Any

from attrs import frozen


@frozen
class Published:
    """A stored message: its id, its `seq` in the conversation, the relay's timestamp."""

    id: str
    seq: int
    timestamp: str


@frozen
class Presence:
    """A user's presence: status, last seen (None while online), devices connected."""

    user_id: str
    status: str
    last_seen: str | None
    devices: int


@frozen
class Page:
    """A page of a conversation's messages, oldest first, and whether more lie beyond it."""

    items: list[dict[str, Any]]
    has_more: bool
