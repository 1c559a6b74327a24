"""The client's side of call signalling (contract v2, "Calls"), sans-IO: the call frames to
events and to a book of this device's calls, and the frames the client writes.

A `CallBook` (ClientState.calls) holds this device's calls by callId: placed here, or ringing
here. Its phases: `calling` (placed, no answer yet) -> `ringing` (the relay reached a callee
device) -> `answered`; `incoming` (an invite rang here) -> `answered` (this device accepted);
and `ended` from any of them, with the `call_end` reason (`answered_elsewhere` for an invite
another device of this user took). Ended calls stay readable (the last ENDED_KEPT of them).
Frames for callIds the book does not know still give their events; they change nothing else.
"""

from __future__ import annotations

import secrets
from typing import Any

from attrs import define, evolve, field, frozen

Frame = dict[str, Any]

#: ended calls kept in the book for reading (the oldest go first)
ENDED_KEPT = 100
CALL_FRAME_TYPES = ("call_invite", "call_ringing", "call_accept", "call_end", "call_signal")


@frozen
class CallInfo:
    call_id: str
    peer_id: str  # the other user
    media: str  # "audio" | "video"
    outgoing: bool  # placed by this device
    phase: str  # calling | ringing | incoming | answered | ended
    remote_sdp: str | None = None  # the invite's offer (incoming) or the accept's answer
    remote_device: str | None = None  # the callee device that answered (outgoing calls)
    reason: str | None = None  # why it ended


@frozen
class CallRecord:
    """The record a call left in the 1:1 conversation: a message's `call` (Message.call), from
    the caller. `outcome` is answered | missed | rejected | busy | unavailable; `duration_ms`
    how long it was answered (0 if never)."""

    call_id: str
    media: str
    outcome: str
    duration_ms: int


def call_record(value: object) -> CallRecord | None:
    """A message frame's `call` as a CallRecord; None when absent or not of the contract's
    shape."""
    if not isinstance(value, dict):
        return None
    call_id, media = value.get("callId"), value.get("media")
    outcome, duration = value.get("outcome"), value.get("durationMs")
    if not (isinstance(call_id, str) and isinstance(media, str) and isinstance(outcome, str)):
        return None
    if not isinstance(duration, int) or isinstance(duration, bool):
        return None
    return CallRecord(call_id, media, outcome, duration)


# --- events ----------------------------------------------------------------------------------------


@frozen
class CallInvited:
    """A call rings on this device: answer with `answer_call(call_id, sdp)` or reject it."""

    call_id: str
    caller_id: str
    media: str
    sdp: str
    caller_name: str | None = None


@frozen
class CallRinging:
    """The call this device placed rings on at least one device of the callee."""

    call_id: str


@frozen
class CallAccepted:
    """The callee's device `device_id` answered this device's call with `sdp`."""

    call_id: str
    sdp: str
    device_id: str


@frozen
class CallEnded:
    call_id: str
    reason: str


@frozen
class CallSignalled:
    """The other device of the call sent `payload` (ICE candidates, renegotiation)."""

    call_id: str
    payload: dict[str, Any]


CallEvent = CallInvited | CallRinging | CallAccepted | CallEnded | CallSignalled


def call_event(frame: Frame) -> CallEvent | None:
    """The event of one relay call frame; None when it lacks a field its type needs."""
    kind = frame.get("type")
    call_id = frame.get("callId")
    if not isinstance(call_id, str):
        return None
    if kind == "call_invite":
        caller, media, sdp = frame.get("callerId"), frame.get("media"), frame.get("sdp")
        if isinstance(caller, str) and isinstance(media, str) and isinstance(sdp, str):
            name = frame.get("callerName")
            return CallInvited(call_id, caller, media, sdp, name if isinstance(name, str) else None)
        return None
    if kind == "call_ringing":
        return CallRinging(call_id)
    if kind == "call_accept":
        sdp, device = frame.get("sdp"), frame.get("deviceId")
        if isinstance(sdp, str) and isinstance(device, str):
            return CallAccepted(call_id, sdp, device)
        return None
    if kind == "call_end":
        reason = frame.get("reason")
        return CallEnded(call_id, reason if isinstance(reason, str) else "hangup")
    if kind == "call_signal":
        payload = frame.get("payload")
        return CallSignalled(call_id, payload) if isinstance(payload, dict) else None
    return None


# --- the book -------------------------------------------------------------------------------------


@define
class CallBook:
    live: dict[str, CallInfo] = field(factory=dict)
    ended: dict[str, CallInfo] = field(factory=dict)

    def get(self, call_id: str) -> CallInfo | None:
        return self.live.get(call_id) or self.ended.get(call_id)

    def place(self, peer_id: str, media: str, call_id: str | None = None) -> CallInfo:
        call = CallInfo(call_id or new_call_id(), peer_id, media, True, "calling")
        self.live[call.call_id] = call
        return call

    def answered_here(self, call_id: str) -> None:
        call = self.live.get(call_id)
        if call is not None:
            self.live[call_id] = evolve(call, phase="answered")

    def end_here(self, call_id: str, reason: str) -> None:
        """This device ended (or rejected) the call: the relay tells only the other side."""
        call = self.live.pop(call_id, None)
        if call is not None:
            self._keep(evolve(call, phase="ended", reason=reason))

    def connection_lost(self) -> list[Any]:
        """The connection to the relay ended: so did every live call (the relay ends a
        connection's calls when it drops); one CallEnded `dropped` each."""
        events = []
        for call in list(self.live.values()):
            self.end_here(call.call_id, "dropped")
            events.append(CallEnded(call.call_id, "dropped"))
        return events

    def apply(self, frame: Frame) -> list[Any]:
        """The events of one relay call frame, the book updated."""
        event = call_event(frame)
        if event is None:
            return []
        call = self.live.get(event.call_id)
        if isinstance(event, CallInvited):
            self.live[event.call_id] = CallInfo(
                event.call_id, event.caller_id, event.media, False, "incoming", event.sdp
            )
        elif call is None:
            pass
        elif isinstance(event, CallRinging):
            self.live[call.call_id] = evolve(call, phase="ringing")
        elif isinstance(event, CallAccepted):
            self.live[call.call_id] = evolve(
                call, phase="answered", remote_sdp=event.sdp, remote_device=event.device_id
            )
        elif isinstance(event, CallEnded):
            del self.live[call.call_id]
            self._keep(evolve(call, phase="ended", reason=event.reason))
        return [event]

    def _keep(self, call: CallInfo) -> None:
        self.ended[call.call_id] = call
        while len(self.ended) > ENDED_KEPT:
            del self.ended[next(iter(self.ended))]


def new_call_id() -> str:
    return f"call-{secrets.token_hex(12)}"


# --- frames the client writes ---------------------------------------------------------------------


def invite_frame(call: CallInfo, sdp: str) -> Frame:
    return {
        "type": "call_invite",
        "callId": call.call_id,
        "peerId": call.peer_id,
        "media": call.media,
        "sdp": sdp,
    }


def accept_frame(call_id: str, sdp: str) -> Frame:
    return {"type": "call_accept", "callId": call_id, "sdp": sdp}


def reject_frame(call_id: str) -> Frame:
    return {"type": "call_reject", "callId": call_id}


def end_frame(call_id: str) -> Frame:
    return {"type": "call_end", "callId": call_id}


def signal_frame(call_id: str, payload: dict[str, Any]) -> Frame:
    return {"type": "call_signal", "callId": call_id, "payload": payload}
