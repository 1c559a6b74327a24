"""Outgoing: every frame the client is to write, gathered for the connection's one writer.

Four sources, written in this order on each wake-up: delivered receipts and unconfirmed messages
(from ClientState), control frames (read receipts, typing, status) and requests (frames that
await an answer, matched by `ref`).

Invariants:
- Connections are numbered by `generation` (1 for the first that reached `auth_ok`); a request
  is written once per generation, so one still unanswered after a reconnect is written again.
- A request leaves the table when it is answered or failed; its waiter then wakes exactly once.
- Control frames are written once; those not kept offline (typing, status) are dropped when the
  link leaves ONLINE, the others (read receipts) wait for the next connection.
- `wake()` never blocks and coalesces: one pending wake-up covers any number of calls.
- Once `close()` is called the writer writes what is due without the ack delay, then sets
  `drained`.
"""

from __future__ import annotations

import itertools
from contextlib import suppress

import trio
from attrs import define, field

from relay.client.frames import Frame
from relay.client.model import RequestFailed
from relay.client.state import ClientState
from relay.errors import ClientError


@define(eq=False)
class Request:
    frame: Frame
    answer: str  # type of the frame that answers it
    done: trio.Event = field(factory=trio.Event)
    written: int = 0  # connection generation it was last written on
    result: Frame | None = None
    error: ClientError | None = None


class Outgoing:
    def __init__(self, state: ClientState) -> None:
        self.state = state
        self.generation = 0  # count of connections that reached auth_ok
        self.closing = False
        self.drained = trio.Event()  # set by the writer once it wrote everything, closing
        self._hurry = trio.Event()  # set when closing: held-back receipts go out at once
        self._requests: dict[str, Request] = {}
        self._refs = itertools.count(1)
        self._control: list[tuple[Frame, bool]] = []  # (frame, keep while offline)
        self._wake_send, self._wake_recv = trio.open_memory_channel[None](1)

    # --- queueing ---------------------------------------------------------------------------------

    def wake(self) -> None:
        with suppress(trio.WouldBlock):  # a wake-up is pending already
            self._wake_send.send_nowait(None)

    def queue(self, frame: Frame, *, keep_offline: bool) -> None:
        self._control.append((frame, keep_offline))
        self.wake()

    async def request(self, frame: Frame, answer: str) -> Frame:
        """Write `frame` with a fresh `ref` and wait for its answer of type `answer` (raises
        RequestFailed for an `error` answer, or what `fail_all` was given)."""
        ref = f"~req-{next(self._refs)}"
        frame["ref"] = ref
        req = Request(frame, answer)
        self._requests[ref] = req
        self.wake()
        try:
            await req.done.wait()
        finally:
            self._requests.pop(ref, None)
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    def offline(self) -> None:
        """The link left ONLINE: control frames that make no sense later are dropped."""
        self._control = [(f, keep) for f, keep in self._control if keep]

    def close(self) -> None:
        self.closing = True
        self._hurry.set()
        self.wake()

    # --- answers ----------------------------------------------------------------------------------

    def waiting_for(self, kind: object, ref: object) -> Request | None:
        """The request a frame of type `kind` answers: by `ref`, or for the answers that carry
        none (`presence`, `pong`) the oldest request of that type."""
        if isinstance(ref, str):
            return self._requests.get(ref)
        if kind in ("presence", "pong"):
            return next((r for r in self._requests.values() if r.answer == kind), None)
        return None

    def refused(self, req: Request, frame: Frame) -> None:
        req.error = RequestFailed(str(frame.get("code")), str(frame.get("message", "")))
        self._finish(req)

    def answered(self, req: Request, frame: Frame) -> None:
        req.result = frame
        self._finish(req)

    def fail_all(self, error: ClientError) -> None:
        for req in list(self._requests.values()):
            req.error = error
            self._finish(req)

    def _finish(self, req: Request) -> None:
        ref = req.frame.get("ref")
        if isinstance(ref, str):
            self._requests.pop(ref, None)
        req.done.set()

    # --- the writer's side ------------------------------------------------------------------------

    def connected(self) -> int:
        """A connection reached auth_ok: its generation."""
        self.generation += 1
        return self.generation

    def take(self, generation: int) -> list[Frame]:
        """Every frame due on connection `generation`, in writing order."""
        frames = self.state.take_acks()
        frames += [f for f, _ in self._control]
        self._control.clear()
        frames += self.state.take_unsent(generation)
        for req in list(self._requests.values()):
            if req.written != generation:
                req.written = generation
                frames.append(req.frame)
        return frames

    async def wait(self, generation: int, ack_delay: float) -> None:
        """Until more is due. When only delivered receipts are, wait `ack_delay` more, so that
        a burst of messages ends first and gets one receipt per conversation, not one each."""
        await self._wake_recv.receive()
        if ack_delay and not self._urgent(generation) and not self.closing:
            with trio.move_on_after(ack_delay):
                await self._hurry.wait()

    def _urgent(self, generation: int) -> bool:
        """Frames other than delivered receipts wait to be written on this connection."""
        return bool(
            self._control
            or self.state.has_unsent(generation)
            or any(r.written != generation for r in self._requests.values())
        )
