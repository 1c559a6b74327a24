"""The ports between the Trio shell (relay.transport) and the messaging core (relay.core).

The shell owns sockets and implements `Connection`, one per WebSocket; the core owns meaning and
implements `ConnectionHandler`. Neither imports the other: both import this module.

Optional abilities of a handler are named, runtime-checkable Protocols; the shell and the
embedding API test for them once with `isinstance`, never by probing attributes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from relay.fastpath import Outbox


class Connection(Protocol):
    """One WebSocket as the core sees it.

    Invariants the shell keeps:
    - `send` and `send_later` are the ways to queue a frame: every frame queued, dropped or
      refused is counted; what `send` queued is written at the end of this scheduler tick, one
      socket write per connection per tick, in queue order, and with it whatever `send_later`
      queued before; what only `send_later` queued waits at most until the shell's next tick;
    - after `close` nothing more is queued (`send` answers False) and the close frame is the
      last frame written.
    """

    id: int  # unique in this process
    remote: str  # "ip:port" of the peer
    path: str  # request target of the opening handshake
    outbox: Outbox  # read-only for the core: its fill level decides flow control
    state: Any  # the core's slot (its Session); None until on_open
    #: frames of this connection reached the relay and wait, not yet given to the handler,
    #: in the shell's line for joining work (relay.transport.turns): the client is not late
    input_queued: bool

    def send(self, frame: bytes, droppable: bool = False) -> bool:
        """Queue an encoded WebSocket frame. Droppable frames (typing, presence) give way first
        when the outbox is over half full. False: it did not fit, or the connection is closing
        (a refused frame that must not be dropped obliges the caller to close with 1013)."""
        ...

    def send_all(self, frames: Sequence[bytes]) -> bool:
        """`send` each of `frames` (none droppable), in order, stopping at the first that does
        not fit; False then, as for `send` (the frames before it stay queued)."""
        ...

    def send_later(self, frame: bytes) -> bool:
        """Queue a frame that need not cost a socket write of its own: it goes out with the
        next write this connection makes anyway (in queue order), and at the latest at the
        shell's next tick (relay.transport.server.TICK_INTERVAL). For frames nobody waits on
        at once (`delivered` receipts). False as for `send` (never droppable)."""
        ...

    def close(self, code: int, reason: str = "") -> None:
        """Queue a close frame after what is queued, then end the connection. Idempotent."""
        ...

    def authenticated(self) -> None:
        """The session authenticated: the connection now takes messages up to
        `max_message_bytes` (before, up to the shell's smaller pre-auth limit)."""
        ...


class ConnectionHandler(Protocol):
    """What the shell calls for each connection; the messaging core implements it."""

    def on_open(self, conn: Connection) -> None:
        """A WebSocket completed its handshake."""
        ...

    async def on_messages(self, conn: Connection, payloads: list[bytes]) -> None:
        """The complete text messages of one read, in order (or what `on_messages_nowait`
        left of them)."""
        ...

    def on_flushed(self, conn: Connection) -> None:
        """Everything queued so far reached the kernel."""
        ...

    def on_close(self, conn: Connection, code: int) -> None:
        """The connection ended with `code` (exactly once per on_open)."""
        ...

    def tick(self, now: float) -> None:
        """About every 250 ms: deadlines, presence grace, typing lapse (`now`: trio's clock)."""
        ...


@runtime_checkable
class InlineHandler(Protocol):
    """A handler that takes the leading payloads of a read at once, in the shell's poller."""

    def on_messages_nowait(self, conn: Connection, payloads: list[bytes]) -> int:
        """Handle payloads in order for as long as that needs no waiting; return how many.
        The shell awaits `on_messages` with the rest."""
        ...


@runtime_checkable
class Maintained(Protocol):
    """A handler with store work that its synchronous callbacks queue (delivery marks,
    lastSeen, backlog batches), awaited by the shell's ticker after each `tick`."""

    async def maintain(self, pause: Callable[[], Awaitable[None]] | None = None) -> None:
        """Do the queued work, awaiting `pause()` between slices so the poller keeps going."""
        ...


@runtime_checkable
class Lifecycle(Protocol):
    """A handler with resources to open before serving and to close after the drain."""

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Publisher(Protocol):
    """A handler that can send a message from inside the process (`Relay.publish`)."""

    async def publish(self, **message: Any) -> Any: ...
