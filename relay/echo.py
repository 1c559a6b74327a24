"""EchoHandler: a ConnectionHandler that sends every text message back to its sender.

It exercises the shell end to end (framing, outbox, flusher) without the messaging core;
the transport tests use it. Invariant: echoes keep the order of the received messages, and a
connection whose outbox is full is closed with 1013, never left with a gap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attrs import define

from relay.fastpath import OP_TEXT, encode_frame

if TYPE_CHECKING:
    from relay.ports import Connection


@define(eq=False)
class EchoHandler:
    def on_open(self, conn: Connection) -> None:
        conn.authenticated()  # no sign-in here: every peer may send whole-size messages

    async def on_messages(self, conn: Connection, payloads: list[bytes]) -> None:
        for payload in payloads:
            if not conn.send(encode_frame(OP_TEXT, payload)):
                conn.close(1013, "outbox full")
                return

    def on_flushed(self, conn: Connection) -> None:
        pass

    def on_close(self, conn: Connection, code: int) -> None:
        pass

    def tick(self, now: float) -> None:
        pass
