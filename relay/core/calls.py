"""Calls: the relay's part of voice/video call set-up (contract v2, "Calls"). Sans-IO.

The relay routes signalling between two devices; media flows peer to peer (WebRTC) and never
through it. Each live call is a `Call` whose phase moves by relay.core.call_state's table.

- `call_invite` from a device of the caller: the callee busy (in a live call, either side)
  -> the caller gets `call_end busy`; no callee device connected -> `call_end unavailable`;
  else every connected device of the callee gets `call_invite` and the caller `call_ringing`
  (both answers echo the invite's `ref`). An invite from a user already in a live call, to
  themselves, or with the callId of a live call is refused with error `invalid`.
- `call_accept` from a ringing callee device: the caller's device gets it with `deviceId`; the
  callee's other ringing devices get `call_end answered_elsewhere`.
- `call_reject` (or `call_end`) from a ringing callee device: the caller gets
  `call_end rejected`, the callee's other ringing devices `call_end rejected` too.
- `call_end` from the caller's device or the answering device: the other side gets
  `call_end hangup` (while ringing: every ringing device).
- no answer within `call_ring_timeout`: the caller and every ringing device get `timeout`.
- a connection that closes ends its calls: the other side gets `call_end dropped`; a ringing
  callee device that closes only stops ringing, unless it was the last one.
- `call_signal` is forwarded between the call's two devices only: from the caller's device to
  the answering device (while ringing, to every ringing device: trickle ICE may start before
  the answer), and from the answering device to the caller's. Anyone else gets `forbidden`.
Frames naming a callId that is not live get `not_found`; a frame the call's phase does not
take (accepting an answered call) gets `invalid`.

Every call leaves one record (relay.core.call_state.Outcome) stored as a message in the 1:1
conversation, from the caller, with the record as its top-level `call` field (which only this
module writes: a client's message carrying `call` is refused), through the message pipeline's
publish (so it is counted in
`conversations`, shown by `history`, delivered to both users' devices). Ending a call only
queues its record; `store_records` (awaited by the frame handlers and by maintain) writes
them, and keeps one whose store write failed for the next call: a record is never lost while
the process runs, and its id makes a retry store it once.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from attrs import define, field

from relay.core.call_state import CallEvent, CallPhase, CallState, Outcome
from relay.core.context import Context
from relay.core.session import Session
from relay.errors import FrameError
from relay.ports import Connection
from relay.protocol.calls import (
    CallAcceptFrame,
    CallEndFrame,
    CallInviteFrame,
    CallRejectFrame,
    CallSignalFrame,
    encode_call_accept,
    encode_call_end,
    encode_call_invite,
    encode_call_ringing,
    encode_call_signal,
)
from relay.store.base import StoredMessage

log = logging.getLogger("relay.core")

#: Pipeline.publish: sends a message as a user from inside the process
Publish = Callable[..., Awaitable[StoredMessage]]

#: the text of a call record, for clients that do not read its `call`
_RECORD_TEXT = {
    Outcome.ANSWERED: "{media} call",
    Outcome.MISSED: "Missed {media} call",
    Outcome.REJECTED: "Declined {media} call",
    Outcome.BUSY: "Missed {media} call (busy)",
    Outcome.UNAVAILABLE: "Missed {media} call (unavailable)",
}


@define(eq=False, slots=True)
class Call:
    call_id: str
    media: str
    caller: str
    caller_name: str | None
    caller_conn: Connection
    callee: str
    deadline: float  # monotonic: when ringing turns into `timeout`
    state: CallState = field(factory=CallState)
    ringing: dict[int, Connection] = field(factory=dict)  # callee devices that got the invite
    callee_conn: Connection | None = None  # the device that accepted
    record_id: str = field(factory=lambda: f"call-{secrets.token_hex(12)}")

    def record(self) -> dict[str, Any]:
        """The stored message's `call` (contract v2: a top-level field of the message)."""
        outcome = self.state.outcome
        assert outcome is not None  # only an ended call has a record
        return {
            "callId": self.call_id,
            "media": self.media,
            "outcome": outcome.value,
            "durationMs": self.state.duration_ms,
        }


def _session(conn: Connection) -> Session:
    session = conn.state
    assert isinstance(session, Session)
    return session


@define(eq=False)
class Calls:
    _ctx: Context
    _publish: Publish
    _live: dict[str, Call] = field(factory=dict)  # callId -> live call
    _by_conn: dict[int, set[str]] = field(factory=dict)  # connection id -> its live callIds
    _by_user: dict[str, set[str]] = field(factory=dict)  # user -> live callIds, either side
    _records: list[Call] = field(factory=list)  # ended calls whose record is not stored yet

    # --- frames ---------------------------------------------------------------------------------
    async def on_invite(self, conn: Connection, session: Session, frame: CallInviteFrame) -> None:
        ctx = self._ctx
        user = session.user_id
        callee = frame.peer_id
        if callee == user:
            ctx.error(
                conn,
                session,
                "invalid",
                "peerId: cannot call yourself",
                ref=frame.ref,
                field="peerId",
            )
            return
        if frame.call_id in self._live:
            ctx.error(
                conn,
                session,
                "invalid",
                "callId: a call with this id is in progress",
                ref=frame.ref,
                field="callId",
            )
            return
        if self._by_user.get(user):
            ctx.error(
                conn,
                session,
                "invalid",
                "already in a call: end it first",
                ref=frame.ref,
                field="callId",
            )
            return
        now = ctx.clock()
        call = Call(
            frame.call_id,
            frame.media,
            user,
            session.user_name,
            conn,
            callee,
            now + ctx.config.call_ring_timeout,
        )
        if self._by_user.get(callee):
            self._end_now(call, CallEvent.BUSY, now)
            ctx.send(conn, session, encode_call_end(call.call_id, "busy", ref=frame.ref))
        else:
            devices = [c for c in ctx.router.connections(callee) if _session(c).active]
            if not devices:
                self._end_now(call, CallEvent.UNAVAILABLE, now)
                ctx.send(conn, session, encode_call_end(call.call_id, "unavailable", ref=frame.ref))
            else:
                call.state.handle(CallEvent.RING, now)
                self._enter(call, conn)
                invite = encode_call_invite(
                    call.call_id, user, call.media, frame.sdp, session.user_name
                )
                for device in devices:
                    call.ringing[device.id] = device
                    self._index(device, call)
                    ctx.send(device, _session(device), invite)
                ctx.send(conn, session, encode_call_ringing(call.call_id, ref=frame.ref))
        await self.store_records()

    async def on_accept(self, conn: Connection, session: Session, frame: CallAcceptFrame) -> None:
        call = self._ringing_callee(conn, session, frame.call_id, frame.ref)
        if call is None:
            return
        ctx = self._ctx
        call.state.handle(CallEvent.ACCEPT, ctx.clock())
        call.callee_conn = conn
        others = [c for c in call.ringing.values() if c is not conn]
        call.ringing.clear()
        end = encode_call_end(call.call_id, "answered_elsewhere")
        for other in others:
            self._unindex(other, call)
            ctx.send(other, _session(other), end)
        self._send(call.caller_conn, encode_call_accept(call.call_id, frame.sdp, session.device_id))

    async def on_reject(self, conn: Connection, session: Session, frame: CallRejectFrame) -> None:
        call = self._ringing_callee(conn, session, frame.call_id, frame.ref)
        if call is not None:
            self._finish(call, CallEvent.REJECT, "rejected", "rejected", skip=conn)
            await self.store_records()

    async def on_end(self, conn: Connection, session: Session, frame: CallEndFrame) -> None:
        call = self._find(conn, session, frame.call_id, frame.ref)
        if call is None:
            return
        if conn is call.caller_conn or conn is call.callee_conn:
            self._finish(call, CallEvent.HANGUP, "hangup", "hangup", skip=conn)
        elif conn.id in call.ringing:  # a ringing device that ends the call declines it
            self._finish(call, CallEvent.REJECT, "rejected", "rejected", skip=conn)
        else:
            self._forbidden(conn, session, frame.ref)
            return
        await self.store_records()

    def on_signal(self, conn: Connection, session: Session, frame: CallSignalFrame) -> None:
        call = self._find(conn, session, frame.call_id, frame.ref)
        if call is None:
            return
        signal = encode_call_signal(call.call_id, frame.payload)
        if conn is call.caller_conn:
            if call.callee_conn is not None:
                self._send(call.callee_conn, signal)
            else:
                for device in call.ringing.values():
                    self._send(device, signal)
        elif conn is call.callee_conn:
            self._send(call.caller_conn, signal)
        else:
            self._forbidden(conn, session, frame.ref)

    # --- time and connections -------------------------------------------------------------------
    def tick(self) -> None:
        """Ringing calls past their deadline end with `timeout` on both sides."""
        if not self._live:
            return
        now = self._ctx.clock()
        for call in [c for c in self._live.values() if c.state.phase is CallPhase.RINGING]:
            if now >= call.deadline:
                self._finish(call, CallEvent.TIMEOUT, "timeout", "timeout")

    def dropped(self, conn: Connection) -> None:
        """The connection closed: its calls end (a ringing callee device only stops ringing,
        unless it was the last one)."""
        call_ids = self._by_conn.get(conn.id)
        if not call_ids:
            return
        for call_id in list(call_ids):
            call = self._live.get(call_id)
            if call is None:
                continue
            if conn.id in call.ringing and conn is not call.caller_conn:
                del call.ringing[conn.id]
                self._unindex(conn, call)
                if call.ringing:
                    continue
            self._finish(call, CallEvent.DROP, "dropped", "dropped", skip=conn)
        self._by_conn.pop(conn.id, None)

    def in_call(self, user_id: str) -> bool:
        """Whether the user has a live call (ringing or answered, either side)."""
        return bool(self._by_user.get(user_id))

    async def store_records(self, pause: Callable[[], Awaitable[None]] | None = None) -> None:
        """Store the records of ended calls (see the module docstring); one that fails stays
        queued for the next call."""
        while self._records:
            call = self._records[0]
            outcome = call.state.outcome
            assert outcome is not None
            try:
                await self._publish(
                    sender_id=call.caller,
                    recipient_id=call.callee,
                    text=_RECORD_TEXT[outcome].format(media=call.media),
                    message_id=call.record_id,
                    sender_name=call.caller_name,
                    call=call.record(),
                )
            except FrameError as refused:  # the settings refuse it (a tiny max_text_chars)
                log.warning("the record of call %s cannot be stored: %s", call.call_id, refused)
            except Exception:
                log.exception("storing the record of call %s failed", call.call_id)
                return
            if self._records and self._records[0] is call:
                self._records.pop(0)
            if pause is not None:
                await pause()

    # --- internals ------------------------------------------------------------------------------
    def _find(
        self, conn: Connection, session: Session, call_id: str, ref: str | None
    ) -> Call | None:
        call = self._live.get(call_id)
        if call is None:
            self._ctx.error(conn, session, "not_found", "no such call", ref=ref, field="callId")
        return call

    def _ringing_callee(
        self, conn: Connection, session: Session, call_id: str, ref: str | None
    ) -> Call | None:
        """The live call `call_id` when `conn` is one of its ringing callee devices; else the
        error is answered and None returned."""
        call = self._find(conn, session, call_id, ref)
        if call is None:
            return None
        if session.user_id != call.callee or (
            conn.id not in call.ringing and conn is not call.callee_conn
        ):
            self._forbidden(conn, session, ref)
            return None
        if call.state.phase is not CallPhase.RINGING:
            self._ctx.error(
                conn, session, "invalid", "the call is no longer ringing", ref=ref, field="callId"
            )
            return None
        return call

    def _forbidden(self, conn: Connection, session: Session, ref: str | None) -> None:
        self._ctx.error(
            conn, session, "forbidden", "this device is not in the call", ref=ref, field="callId"
        )

    def _send(self, conn: Connection, frame: bytes) -> None:
        self._ctx.send(conn, _session(conn), frame)

    def _enter(self, call: Call, caller_conn: Connection) -> None:
        self._live[call.call_id] = call
        self._by_user.setdefault(call.caller, set()).add(call.call_id)
        self._by_user.setdefault(call.callee, set()).add(call.call_id)
        self._index(caller_conn, call)

    def _index(self, conn: Connection, call: Call) -> None:
        self._by_conn.setdefault(conn.id, set()).add(call.call_id)

    def _unindex(self, conn: Connection, call: Call) -> None:
        ids = self._by_conn.get(conn.id)
        if ids is not None:
            ids.discard(call.call_id)
            if not ids:
                del self._by_conn[conn.id]

    def _end_now(self, call: Call, event: CallEvent, now: float) -> None:
        """A call that ends at its invite (busy, unavailable): only its record remains."""
        call.state.handle(event, now)
        self._records.append(call)

    def _finish(
        self,
        call: Call,
        event: CallEvent,
        to_caller: str,
        to_callee: str,
        *,
        skip: Connection | None = None,
    ) -> None:
        """End a live call by `event`: `call_end` to the caller's device (reason `to_caller`)
        and to the callee's devices in the call (`to_callee`), except `skip` (the device whose
        frame or drop ended it);
        the call leaves every index and its record is queued."""
        call.state.handle(event, self._ctx.clock())
        del self._live[call.call_id]
        for user in (call.caller, call.callee):
            ids = self._by_user.get(user)
            if ids is not None:
                ids.discard(call.call_id)
                if not ids:
                    del self._by_user[user]
        callee_side = list(call.ringing.values())
        if call.callee_conn is not None:
            callee_side.append(call.callee_conn)
        call.ringing.clear()
        for conn, reason in [(call.caller_conn, to_caller)] + [(c, to_callee) for c in callee_side]:
            self._unindex(conn, call)
            if conn is not skip:
                self._send(conn, encode_call_end(call.call_id, reason))
        self._records.append(call)
