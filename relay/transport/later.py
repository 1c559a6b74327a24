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
- The list and `defer` stay the server's own, so send_later's one call is a plain method
  call: `server.defer` as an attribute holding another object's bound method cost about 185
  more instructions per call on CPython 3.11 (callgrind: 1,505 against 1,320 per send_later's
  shell step).
"""

from __future__ import annotations

from relay.transport.connection import WsConnection
from relay.transport.websocket import WsState

_OPEN = WsState.OPEN


def write_deferred(later: list[WsConnection]) -> None:
    """What `send_later` queued on the connections of `later` (taken from the server) and no
    write has taken since: written now (the bound of its wait is one tick)."""
    for conn in later:
        conn.deferred = False
        if conn.outbox.pending_bytes and conn.ws_state is _OPEN:
            conn.flush_soon()
