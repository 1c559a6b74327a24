"""EventHub: a client's events fanned out to its subscribers (EventStream), and change wake-ups.

Invariants:
- Publishing never blocks: each subscriber has a bounded buffer; the events that do not fit are
  counted and dropped, and the next event that fits is preceded by `Lagged(dropped=n)`.
- A subscriber whose stream was closed is removed at the next publish.
- Every publish (and every `notify`) wakes every `wait_changed()` caller, so a waiter re-reads
  the state after each change; the state itself stays complete whatever a subscriber lost.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio
from attrs import define, field

from relay.client.model import Event, Lagged


class EventStream:
    """A subscription to a client's events: an async iterator and an async context manager.

    It ends when the client closes; closing it unsubscribes."""

    def __init__(self, receive: trio.MemoryReceiveChannel[Event]) -> None:
        self._receive = receive

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def receive(self) -> Event:
        """The next event; raises EndOfChannel when the client closed."""
        return await self._receive.receive()

    def receive_nowait(self) -> Event:
        """The next queued event; raises trio.WouldBlock when none is queued."""
        return self._receive.receive_nowait()

    def drain(self) -> list[Event]:
        """Every event queued now, without waiting."""
        events: list[Event] = []
        while True:
            try:
                events.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return events

    def close(self) -> None:
        self._receive.close()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


@define(eq=False)
class _Subscriber:
    send: trio.MemorySendChannel[Event]
    dropped: int = 0


@define(eq=False)
class EventHub:
    _subscribers: list[_Subscriber] = field(factory=list)
    _changed: trio.Event = field(factory=trio.Event)

    def subscribe(self, buffer: int, *, closed: bool = False) -> EventStream:
        """A stream of the events published from now on; already ended when `closed`."""
        send, receive = trio.open_memory_channel[Event](buffer)
        if closed:
            send.close()
        else:
            self._subscribers.append(_Subscriber(send))
        return EventStream(receive)

    def publish(self, events: Sequence[Event], force: bool = False) -> None:
        """Hand `events` to every subscriber and wake the waiters (when there are events, or
        `force`)."""
        if not events and not force:
            return
        for sub in list(self._subscribers):
            for event in events:
                try:
                    if sub.dropped:
                        sub.send.send_nowait(Lagged(sub.dropped))
                        sub.dropped = 0
                    sub.send.send_nowait(event)
                except trio.WouldBlock:
                    sub.dropped += 1
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._subscribers.remove(sub)
                    break
        self.notify()

    def notify(self) -> None:
        """Wake every `wait_changed()` caller."""
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    def close(self) -> None:
        """End every subscriber's stream."""
        for sub in self._subscribers:
            sub.send.close()
        self._subscribers.clear()
