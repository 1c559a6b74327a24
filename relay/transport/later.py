"""Frames that ride the next write: what `Connection.send_later` queued (the `delivered`
receipts), written on the server's tick at the latest.

Invariants:
- A connection is in the server's `later` list at most once: `WsConnection.send_later` adds
  it (through `Server.defer`, one list append) only while it is neither dirty (a write is
  coming anyway) nor already deferred, and sets `WsConnection.deferred`; `write_deferred`
  clears the flag of every connection it is handed.
- The wait is bounded by one tick: the server's ticker hands the list to `write_deferred`
  every TICK_INTERVAL (relay.transport.server), before the handler's `maintain()`, so that the
  receipts it queues by `send_later` join these writes. A receipt therefore costs no socket
  write of its own when its connection writes anything within a tick.
- The writes go out LATER_SLICE connections at a time, the ticker pausing in between (every
  other task runs): at 10,000 connections each sending a message a second, a tick's receipts
  found no write to ride for about 2,500 connections, and writing them in one go held the event
  loop ~20 ms every tick (sparse@10000 p99 23.6 ms against node-ws's 3.9).
- The list and `defer` stay the server's own, so send_later's one call is a plain method
  call: `server.defer` as an attribute holding another object's bound method cost about 185
  more instructions per call on CPython 3.11 (callgrind: 1,505 against 1,320 per send_later's
  shell step).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from relay.transport.connection import WsConnection
from relay.transport.websocket import WsState

_OPEN = WsState.OPEN

#: Connections handed to the writers between two pauses (about 2 ms of socket writes).
LATER_SLICE = 64


async def write_deferred(later: list[WsConnection], pause: Callable[[], Awaitable[None]]) -> None:
    """What `send_later` queued on the connections of `later` (taken from the server) and no
    write has taken since: written now (the bound of its wait is one tick), LATER_SLICE
    connections before each `pause`, during which the flusher writes them."""
    for i, conn in enumerate(later):
        if i and not i % LATER_SLICE:
            await pause()
        conn.deferred = False
        if conn.outbox.pending_bytes and conn.ws_state is _OPEN:
            conn.flush_soon()
