"""The call-signalling frames of contract v2 (sans-IO): the client frames as typed values, their
parsers (registered in relay.protocol.parse's table) and the server frames.

The relay reads only what routing needs: `callId`, `peerId` and `media`. `sdp` and a
`call_signal`'s `payload` are the peers' own (WebRTC session descriptions, ICE candidates) and
are forwarded untouched; the relay checks only their type and size:
- `callId`: 1-CALL_ID_MAX characters, chosen by the caller, unique among live calls;
- `sdp`: a string of 1-CALL_SDP_MAX characters;
- `payload`: a JSON object of at most CALL_PAYLOAD_MAX bytes as JSON, nesting at most
  META_DEPTH_MAX objects and arrays (like a message's `meta`).
Every failure is `invalid` with `field` naming it, as for v1 frames.
"""

from __future__ import annotations

from typing import Any

import orjson
from attrs import frozen

from relay.fastpath import message_fault
from relay.protocol.fields import Fields
from relay.protocol.limits import IDENT_MAX, META_DEPTH_MAX, Limits

CALL_ID_MAX = 64
#: an SDP offer or answer: a few KiB for audio, up to ~10 KiB for video with many codecs
CALL_SDP_MAX = 32_768
CALL_PAYLOAD_MAX = 16_384
CALL_MEDIA = ("audio", "video")
#: why a call ended, as `call_end` says it
CALL_END_REASONS = (
    "unavailable",
    "busy",
    "answered_elsewhere",
    "rejected",
    "hangup",
    "timeout",
    "dropped",
)


@frozen
class CallInviteFrame:
    call_id: str
    peer_id: str
    media: str  # "audio" | "video"
    sdp: str
    ref: str | None = None


@frozen
class CallAcceptFrame:
    call_id: str
    sdp: str
    ref: str | None = None


@frozen
class CallRejectFrame:
    call_id: str
    ref: str | None = None


@frozen
class CallEndFrame:
    call_id: str
    ref: str | None = None


@frozen
class CallSignalFrame:
    call_id: str
    payload: dict[str, Any]
    ref: str | None = None


CallFrame = CallInviteFrame | CallAcceptFrame | CallRejectFrame | CallEndFrame | CallSignalFrame


# --- parsers (relay.protocol.parse's table) -------------------------------------------------------


def _call_id(f: Fields) -> str:
    return f.required_string("callId", max_len=CALL_ID_MAX)


def _sdp(f: Fields) -> str:
    return f.required_string("sdp", max_len=CALL_SDP_MAX)


def parse_call_invite(f: Fields, limits: Limits) -> CallInviteFrame:
    return CallInviteFrame(
        call_id=_call_id(f),
        peer_id=f.required_string("peerId", max_len=IDENT_MAX),
        media=f.choice("media", CALL_MEDIA),
        sdp=_sdp(f),
        ref=f.ref,
    )


def parse_call_accept(f: Fields, limits: Limits) -> CallAcceptFrame:
    return CallAcceptFrame(call_id=_call_id(f), sdp=_sdp(f), ref=f.ref)


def parse_call_reject(f: Fields, limits: Limits) -> CallRejectFrame:
    return CallRejectFrame(call_id=_call_id(f), ref=f.ref)


def parse_call_end(f: Fields, limits: Limits) -> CallEndFrame:
    return CallEndFrame(call_id=_call_id(f), ref=f.ref)


#: message_fault's rules for a payload checked as a message's meta: only the meta checks
#: (depth, then size) can fail for {"text": "x", "recipientId": "x", "meta": payload}
_PAYLOAD_RULES = (CALL_ID_MAX, IDENT_MAX, 1, 1, CALL_PAYLOAD_MAX, META_DEPTH_MAX, META_DEPTH_MAX)


def parse_call_signal(f: Fields, limits: Limits) -> CallSignalFrame:
    call_id = _call_id(f)
    payload = f.obj.get("payload")
    if payload is None:
        raise f.fail("payload", "is required")
    if not isinstance(payload, dict):
        raise f.fail("payload", "must be an object")
    if payload_fault(payload):
        raise f.fail(
            "payload",
            f"must nest at most {META_DEPTH_MAX} objects and arrays and be at most "
            f"{CALL_PAYLOAD_MAX} bytes as JSON",
        )
    return CallSignalFrame(call_id=call_id, payload=payload, ref=f.ref)


def payload_fault(payload: dict[str, Any]) -> bool:
    """Whether a call_signal payload is too deep or too large: the fast path's own meta checks
    (one definition of depth and size), with the payload's bounds."""
    try:
        return bool(
            message_fault({"text": "x", "recipientId": "x", "meta": payload}, "x", _PAYLOAD_RULES)
        )
    except orjson.JSONEncodeError:  # not writable as JSON (only from in-process callers)
        return True


# --- server frames --------------------------------------------------------------------------------


def _dumps(obj: dict[str, Any]) -> bytes:
    return orjson.dumps({k: v for k, v in obj.items() if v is not None})


def encode_call_invite(
    call_id: str, caller_id: str, media: str, sdp: str, caller_name: str | None = None
) -> bytes:
    return _dumps(
        {
            "type": "call_invite",
            "callId": call_id,
            "callerId": caller_id,
            "callerName": caller_name,
            "media": media,
            "sdp": sdp,
        }
    )


def encode_call_ringing(call_id: str, *, ref: str | None = None) -> bytes:
    return _dumps({"type": "call_ringing", "callId": call_id, "ref": ref})


def encode_call_accept(call_id: str, sdp: str, device_id: str) -> bytes:
    return _dumps({"type": "call_accept", "callId": call_id, "sdp": sdp, "deviceId": device_id})


def encode_call_end(call_id: str, reason: str, *, ref: str | None = None) -> bytes:
    return _dumps({"type": "call_end", "callId": call_id, "reason": reason, "ref": ref})


def encode_call_signal(call_id: str, payload: dict[str, Any]) -> bytes:
    return _dumps({"type": "call_signal", "callId": call_id, "payload": payload})
