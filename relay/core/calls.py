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

With several nodes (relay.cluster.calls) a call lives on its caller's node (its home), whose
`Calls` keeps it: callee devices connected to other nodes are `RemoteDevice`s, reached and
heard through the `CallRouting` the node's broker gives (RoutesCalls). The home asks the nodes
holding the callee whether the callee is busy and how many devices they have before it rings
(`probe`), tells them what happens (`invite`, `answered`, `ended`, `signal`, `error`), and
takes their devices' frames and drops through the `remote_*` methods; a frame of a local
device for a call homed elsewhere is the routing's (`forward`).

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
from typing import Any, NamedTuple, Protocol, runtime_checkable

from attrs import define, field, frozen

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


class RemoteDevice(NamedTuple):
    """A callee device connected to another node: that node's id and the device's id."""

    node: str
    device_id: str


@frozen
class Probe:
    """What the other nodes holding a callee said before a call rings there."""

    busy: bool  # the callee is in a live call homed or ringing on one of them
    devices: tuple[RemoteDevice, ...]  # the callee's connected devices there


CallFrameIn = CallAcceptFrame | CallRejectFrame | CallEndFrame | CallSignalFrame


@runtime_checkable
class CallRouting(Protocol):
    """How a node's calls reach callee devices on other nodes (relay.cluster.calls)."""

    async def probe(self, call: Call) -> Probe:
        """Ask the other nodes holding the callee; at most a bounded wait for a dead one."""
        ...

    def invite(self, call: Call, sdp: str) -> None:
        """Ring the callee's devices on other nodes (each node answers with remote_rang)."""
        ...

    def answered(self, call: Call, by: RemoteDevice | None) -> None:
        """The call was answered (by `by`, or by a device of this node): the other remote
        ringing devices get answered_elsewhere."""
        ...

    def ended(self, call: Call, reason: str, skip: RemoteDevice | None) -> None:
        """The call ended: its remote devices get call_end `reason`, but `skip`."""
        ...

    def signal(self, call: Call, payload: dict[str, Any]) -> None:
        """The caller's call_signal to the remote answering device, or to every remote ringing
        one while the call rings."""
        ...

    def error(self, call: Call, to: RemoteDevice, code: str, message: str, ref: str | None) -> None:
        """An error frame (field callId) to a remote device whose frame was refused."""
        ...

    def forward(self, conn: Connection, session: Session, frame: CallFrameIn) -> bool:
        """A local device's frame for a call homed on another node: sent there (or refused
        here); False when no call of that id rang here."""
        ...

    def dropped(self, conn: Connection) -> None:
        """A local connection closed: the homes of the calls it rang for are told."""
        ...

    def tick(self, now: float) -> None:
        """Devices still ringing here for a call whose home never ended it (the home node
        died) stop, with `timeout`."""
        ...


@runtime_checkable
class RoutesCalls(Protocol):
    """A broker of several nodes: it gives the calls their routing (relay.cluster)."""

    def call_routing(self, calls: Calls) -> CallRouting: ...


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
    remote_ringing: set[RemoteDevice] = field(factory=set)  # ringing on other nodes
    remote_callee: RemoteDevice | None = None  # the remote device that accepted
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
    routing: CallRouting | None = None  # other nodes' devices (relay.cluster.calls), if any

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
        probe = Probe(False, ())
        if self.routing is not None and not self._by_user.get(callee):
            probe = await self.routing.probe(call)
            if self._live.get(call.call_id) is not None or self._by_user.get(user):
                # another invite of this user's went ahead while the nodes answered
                why = "already in a call: end it first"
                ctx.error(conn, session, "invalid", why, ref=frame.ref, field="callId")
                return
            now = ctx.clock()
            call.deadline = now + ctx.config.call_ring_timeout
        if self._by_user.get(callee) or probe.busy:
            self._end_now(call, CallEvent.BUSY, now)
            ctx.send(conn, session, encode_call_end(call.call_id, "busy", ref=frame.ref))
        else:
            devices = [c for c in ctx.router.connections(callee) if _session(c).active]
            if not devices and not probe.devices:
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
                if probe.devices and self.routing is not None:
                    call.remote_ringing.update(probe.devices)
                    self.routing.invite(call, frame.sdp)
                ctx.send(conn, session, encode_call_ringing(call.call_id, ref=frame.ref))
        await self.store_records()

    async def on_accept(self, conn: Connection, session: Session, frame: CallAcceptFrame) -> None:
        if self._forwarded(conn, session, frame):
            return
        call = self._ringing_callee(conn, session, frame.call_id, frame.ref)
        if call is None:
            return
        call.callee_conn = conn
        self._answer(call, conn, None, frame.sdp, session.device_id)

    def _answer(
        self,
        call: Call,
        conn: Connection | None,
        remote: RemoteDevice | None,
        sdp: str,
        device_id: str,
    ) -> None:
        """The ringing call was accepted by the local device `conn` or the remote `remote`:
        every other ringing device gets answered_elsewhere, the caller the answer."""
        ctx = self._ctx
        call.state.handle(CallEvent.ACCEPT, ctx.clock())
        call.remote_callee = remote
        others = [c for c in call.ringing.values() if c is not conn]
        call.ringing.clear()
        end = encode_call_end(call.call_id, "answered_elsewhere")
        for other in others:
            self._unindex(other, call)
            ctx.send(other, _session(other), end)
        if call.remote_ringing and self.routing is not None:
            self.routing.answered(call, remote)
        call.remote_ringing.clear()
        self._send(call.caller_conn, encode_call_accept(call.call_id, sdp, device_id))

    async def on_reject(self, conn: Connection, session: Session, frame: CallRejectFrame) -> None:
        if self._forwarded(conn, session, frame):
            return
        call = self._ringing_callee(conn, session, frame.call_id, frame.ref)
        if call is not None:
            self._finish(call, CallEvent.REJECT, "rejected", "rejected", skip=conn)
            await self.store_records()

    async def on_end(self, conn: Connection, session: Session, frame: CallEndFrame) -> None:
        if self._forwarded(conn, session, frame):
            return
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
        if self._forwarded(conn, session, frame):
            return
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
                if (call.remote_callee or call.remote_ringing) and self.routing is not None:
                    self.routing.signal(call, frame.payload)
        elif conn is call.callee_conn:
            self._send(call.caller_conn, signal)
        else:
            self._forbidden(conn, session, frame.ref)

    # --- time and connections -------------------------------------------------------------------
    def tick(self) -> None:
        """Ringing calls past their deadline end with `timeout` on both sides."""
        now = self._ctx.clock()
        if self.routing is not None:
            self.routing.tick(now)
        if not self._live:
            return
        for call in [c for c in self._live.values() if c.state.phase is CallPhase.RINGING]:
            if now >= call.deadline:
                self._finish(call, CallEvent.TIMEOUT, "timeout", "timeout")

    def dropped(self, conn: Connection) -> None:
        """The connection closed: its calls end (a ringing callee device only stops ringing,
        unless it was the last one)."""
        if self.routing is not None:  # its calls homed on other nodes
            self.routing.dropped(conn)
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
                if call.ringing or call.remote_ringing:
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

    # --- callee devices on other nodes (relay.cluster.calls) ------------------------------------
    def hosts(self, call_id: str) -> bool:
        """Whether `call_id` is a live call of this node (its home)."""
        return call_id in self._live

    def remote_rang(self, call_id: str, node: str, devices: list[str]) -> None:
        """`node` rang these of the callee's devices (those connected when the invite came):
        they replace what its probe said."""
        call = self._live.get(call_id)
        if call is None or call.state.phase is not CallPhase.RINGING:
            return
        call.remote_ringing = {d for d in call.remote_ringing if d.node != node}
        call.remote_ringing.update(RemoteDevice(node, d) for d in devices)
        if not call.ringing and not call.remote_ringing:
            self._finish(call, CallEvent.DROP, "dropped", "dropped")

    def remote_accept(self, call_id: str, by: RemoteDevice, sdp: str, ref: str | None) -> None:
        call = self._remote_ringing(call_id, by, ref)
        if call is not None:
            self._answer(call, None, by, sdp, by.device_id)

    def remote_reject(self, call_id: str, by: RemoteDevice, ref: str | None) -> None:
        call = self._remote_ringing(call_id, by, ref)
        if call is not None:
            self._finish(call, CallEvent.REJECT, "rejected", "rejected", skip_remote=by)

    def remote_end(self, call_id: str, by: RemoteDevice, ref: str | None) -> None:
        call = self._live.get(call_id)
        if call is None:
            return  # it ended meanwhile: the device was told
        if by == call.remote_callee:
            self._finish(call, CallEvent.HANGUP, "hangup", "hangup", skip_remote=by)
        elif by in call.remote_ringing:
            self._finish(call, CallEvent.REJECT, "rejected", "rejected", skip_remote=by)
        elif self.routing is not None:
            self.routing.error(call, by, "forbidden", "this device is not in the call", ref)

    def remote_signal(
        self, call_id: str, by: RemoteDevice, payload: dict[str, Any], ref: str | None
    ) -> None:
        call = self._live.get(call_id)
        if call is None:
            return
        if by == call.remote_callee:
            self._send(call.caller_conn, encode_call_signal(call.call_id, payload))
        elif self.routing is not None:
            self.routing.error(call, by, "forbidden", "this device is not in the call", ref)

    def remote_dropped(self, call_id: str, by: RemoteDevice) -> None:
        """A remote device of the call closed its connection (or its node stopped)."""
        call = self._live.get(call_id)
        if call is None:
            return
        if by == call.remote_callee:
            self._finish(call, CallEvent.DROP, "dropped", "dropped", skip_remote=by)
        elif by in call.remote_ringing:
            call.remote_ringing.discard(by)
            if not call.ringing and not call.remote_ringing:
                self._finish(call, CallEvent.DROP, "dropped", "dropped", skip_remote=by)

    def _remote_ringing(self, call_id: str, by: RemoteDevice, ref: str | None) -> Call | None:
        """The live call when `by` rings for it and it still rings; else `by` is told why."""
        call = self._live.get(call_id)
        if call is None:
            return None  # it ended meanwhile: the device was told
        if call.state.phase is not CallPhase.RINGING or by not in call.remote_ringing:
            reason = (
                "the call is no longer ringing"
                if call.state.phase is not CallPhase.RINGING
                else "this device is not in the call"
            )
            code = "invalid" if call.state.phase is not CallPhase.RINGING else "forbidden"
            if self.routing is not None:
                self.routing.error(call, by, code, reason, ref)
            return None
        return call

    def _forwarded(self, conn: Connection, session: Session, frame: CallFrameIn) -> bool:
        """Whether the frame is for a call homed on another node (the routing took it)."""
        return (
            self.routing is not None
            and frame.call_id not in self._live
            and self.routing.forward(conn, session, frame)
        )

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
        skip_remote: RemoteDevice | None = None,
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
        if (call.remote_ringing or call.remote_callee) and self.routing is not None:
            self.routing.ended(call, to_callee, skip_remote)
        call.remote_ringing.clear()
        self._records.append(call)
