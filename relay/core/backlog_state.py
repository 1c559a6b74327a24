"""A backlog's state (sans-IO data): its phase, the fetched batch, what it waits for.

The phase moves only by `BacklogState.handle`, by the transition table `_TRANSITIONS` (h11's
`_state.py` style); relay.core.backlog says what each phase means and drives it:

    READY --FETCH--> FETCHING --FED_PART--> FEEDING --AGAIN--> READY
    FETCHING --AGAIN--> FETCHING            FEEDING --WAIT--> WAITING
    FETCHING --WAIT or FAILED--> WAITING    WAITING --FETCH--> FETCHING
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from typing import Any

from attrs import define, field

from relay.errors import RelayError
from relay.store.base import StoredMessage


class BacklogQueue:
    """First in, first out: the fetched backlog messages of one session not yet queued.

    Holds no list while empty. Invariant: `_items` is None exactly when the queue is empty, and
    then `_head` is 0; otherwise `_items[_head:]` are the queued messages in order.
    """

    __slots__ = ("_head", "_items")

    def __init__(self) -> None:
        self._items: list[Any] | None = None
        self._head = 0

    def __len__(self) -> int:
        items = self._items
        return 0 if items is None else len(items) - self._head

    def __bool__(self) -> bool:
        return self._items is not None

    def __iter__(self) -> Iterator[Any]:
        items = self._items
        return iter(()) if items is None else iter(items[self._head :])

    def append(self, item: Any) -> None:
        if self._items is None:
            self._items = [item]
        else:
            self._items.append(item)

    def extend(self, items: Iterable[Any]) -> None:
        for item in items:
            self.append(item)

    def popleft(self) -> Any:
        items = self._items
        if items is None:
            raise IndexError("pop from an empty BacklogQueue")
        head = self._head
        item = items[head]
        head += 1
        if head == len(items):
            self._items = None
            self._head = 0
        else:
            items[head - 1] = None  # not kept alive by the queue once taken
            self._head = head
        return item

    def clear(self) -> None:
        self._items = None
        self._head = 0


class BacklogError(RelayError):
    """The core asked a backlog for a transition its phase does not have (a bug)."""


class BacklogPhase(enum.Enum):
    READY = "ready"  # a fetch may start
    FETCHING = "fetching"  # store.undelivered is awaited (the pump runs)
    FEEDING = "feeding"  # a fetched batch is queued as the outbox drains
    WAITING = "waiting"  # the batch is queued; the next fetch waits for its marks


class BacklogEvent(enum.Enum):
    FETCH = "fetch"  # a pump starts fetching the next batch
    FED_PART = "fed_part"  # the fetched batch did not all fit under half the outbox
    AGAIN = "again"  # the batch is queued and another fetch is due
    WAIT = "wait"  # the batch is queued; its marks are outstanding
    FAILED = "failed"  # the store read failed: maintain() retries


_READY, _FETCHING, _FEEDING, _WAITING = BacklogPhase

_TRANSITIONS: dict[BacklogPhase, dict[BacklogEvent, BacklogPhase]] = {
    _READY: {BacklogEvent.FETCH: _FETCHING},
    _FETCHING: {
        BacklogEvent.FED_PART: _FEEDING,
        BacklogEvent.AGAIN: _FETCHING,
        BacklogEvent.WAIT: _WAITING,
        BacklogEvent.FAILED: _WAITING,
    },
    _FEEDING: {BacklogEvent.AGAIN: _READY, BacklogEvent.WAIT: _WAITING},
    _WAITING: {BacklogEvent.FETCH: _FETCHING},
}


@define(slots=True)
class BacklogState:
    """One session's backlog while it runs (see the module doc)."""

    phase: BacklogPhase = BacklogPhase.READY
    # the fetched batch not yet queued: fed as the outbox drains (never over half of it)
    queue: BacklogQueue = field(factory=BacklogQueue)
    # acks=true: conversation -> the seq to acknowledge before the next fetch
    need: dict[str, int] = field(factory=dict)
    # own messages from other devices, with their frames: sent after the backlog
    held: list[tuple[StoredMessage, bytes]] = field(factory=list)
    skipped: bool = False  # a live message from others arrived since the last fetch
    full: bool = False  # the last fetch returned a whole batch: more may follow
    fresh: bool = False  # the last fetch brought messages this connection lacked

    def handle(self, event: BacklogEvent) -> BacklogPhase:
        try:
            phase = _TRANSITIONS[self.phase][event]
        except KeyError:
            raise BacklogError(f"backlog {self.phase.value} cannot {event.value}") from None
        self.phase = phase
        return phase
