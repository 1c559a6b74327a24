"""The message path's JSON: the delivery and `sent` frames, and the checks and reader of the
`message` frame."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import orjson

from relay._fastpath_py.framing import encode_frame
from relay._fastpath_py.records import record

T = TypeVar("T")


# --- JSON frames of the message path --------------------------------------------------------------


def message_dict(message: Any, status: str = "delivered") -> dict[str, Any]:
    """A stored message (a StoredMessage) in the contract's message shape (delivery, history,
    conversations); absent optional fields are left out. Built field by field: it is on the
    hot path."""
    body: dict[str, Any] = {"type": "message", "id": message.id, "senderId": message.sender_id}
    if message.sender_name is not None:
        body["senderName"] = message.sender_name
    if message.sender_avatar is not None:
        body["senderAvatar"] = message.sender_avatar
    if message.recipient_id is not None:
        body["recipientId"] = message.recipient_id
    if message.group_id is not None:
        body["groupId"] = message.group_id
    if message.e2e is None:
        body["text"] = message.text
    else:
        body["e2e"] = message.e2e
    body["timestamp"] = message.client_timestamp or message.server_timestamp
    body["status"] = status
    body["seq"] = message.seq
    body["serverTimestamp"] = message.server_timestamp
    if message.meta is not None:
        body["meta"] = message.meta
    if message.attachments is not None:
        body["attachments"] = message.attachments
    if message.call is not None:
        body["call"] = message.call
    return body


def encode_sent(
    message_id: str, peer_id: str | None, group_id: str | None, seq: int, timestamp: str
) -> bytes:
    """The JSON of the `sent` receipt: to the sender once its message is durable."""
    if group_id is None:
        body: dict[str, Any] = {"type": "receipt", "id": message_id, "peerId": peer_id}
    else:
        body = {"type": "receipt", "id": message_id, "groupId": group_id}
    body["status"] = "sent"
    body["seq"] = seq
    body["timestamp"] = timestamp
    return orjson.dumps(body)


def encode_delivery(message: Any) -> bytes:
    """The delivery frame of a stored message (a StoredMessage): a text frame of its contract
    shape with status `delivered`, seq and serverTimestamp."""
    return encode_frame(1, orjson.dumps(message_dict(message)))


def encode_sent_frame(
    message_id: str, peer_id: str | None, group_id: str | None, seq: int, timestamp: str
) -> bytes:
    """The `sent` receipt's text frame: to the sender once its message is durable."""
    return encode_frame(1, encode_sent(message_id, peer_id, group_id, seq, timestamp))


def encode_receipt_frame(
    message_id: str | None,
    seq: int,
    status: str,
    user_id: str,
    timestamp: str,
    peer_id: str | None,
    group_id: str | None,
) -> bytes:
    """A delivered/read watermark receipt's text frame (relay.protocol.encode_receipt_status's
    JSON: the fields that are not None, in this order)."""
    body = {
        "type": "receipt",
        "id": message_id,
        "peerId": peer_id,
        "groupId": group_id,
        "seq": seq,
        "status": status,
        "userId": user_id,
        "timestamp": timestamp,
    }
    return encode_frame(1, orjson.dumps({k: v for k, v in body.items() if v is not None}))


# --- the `message` frame's checks -----------------------------------------------------------------

#: what message_fault's answer means: MESSAGE_FAULTS[answer] names the first check the message
#: fails, in the order they are made ("" at 0: it passes them all). "<field>:type" is a value of
#: the wrong type, "<field>:length" a string out of its range; the ids (recipientId, groupId,
#: senderId) are 1-ident_max characters, the short texts 0-short_text_max.
MESSAGE_FAULTS = (
    "",
    "id",
    "recipientId:type",
    "recipientId:length",
    "groupId:type",
    "groupId:length",
    "senderId:type",
    "senderId:length",
    "senderName:type",
    "senderName:length",
    "senderAvatar:type",
    "senderAvatar:length",
    "timestamp:type",
    "timestamp:length",
    "recipientId:one_of",
    "text:type",
    "text:empty",
    "text:long",
    "meta:type",
    "meta:deep",
    "meta:long",
    "e2e:type",
    "e2e:text",
    "e2e:v",
    "e2e:suite",
    "e2e:senderDevice",
    "e2e:boxes",
    "e2e:long",
    "attachments:type",
    "call",
)
_F_ID = 1
_F_STRINGS = 2  # the first of the six optional strings' pairs of answers (type, length)
_F_ONE_OF = 14
_F_TEXT_TYPE = 15
_F_TEXT_EMPTY = 16
_F_TEXT_LONG = 17
_F_META_TYPE = 18
_F_META_DEEP = 19
_F_META_LONG = 20
_F_E2E = 21  # the first of the e2e answers, in MESSAGE_FAULTS' order
_F_ATTACHMENTS = 28
_F_CALL = 29  # a client's message carrying `call`: only the relay writes call records

#: a message carries 1-ATTACHMENTS_MAX attachments, each an object naming an uploaded file by
#: its `fileId` (a string of 1-ATTACHMENT_ID_MAX characters)
ATTACHMENTS_MAX = 10
ATTACHMENT_ID_MAX = 64

#: the e2e object's fixed shape: the one version and suite the contract names; at most
#: E2E_BOXES_MAX boxes (a sender's devices and its recipients'), E2E_BYTES_MAX bytes as JSON
E2E_VERSION = 1
E2E_SUITE = "hpke-x25519-sha256-aes256gcm"
E2E_BOXES_MAX = 256
E2E_BYTES_MAX = 262144
_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

#: the rules message_fault and decode_message take, as relay.protocol.Limits.rules makes them
Rules = tuple[int, int, int, int, int, int, int]


#: what orjson writes as JSON objects and arrays
_NESTED = (dict, list, tuple)


def _deeper(value: Any, levels: int) -> bool:
    """Whether `value` nests more than `levels` objects and arrays (dicts, lists, tuples: what
    orjson writes as them) on its deepest path; a scalar nests none. Never descends more than
    `levels` + 1 deep, whatever `value` holds (even a cycle)."""
    if isinstance(value, dict):
        items: Any = value.values()
    elif isinstance(value, _NESTED):
        items = value
    else:
        return False
    if levels <= 0:
        return True
    return any(isinstance(item, _NESTED) and _deeper(item, levels - 1) for item in items)


def _base64(value: object) -> bool:
    """Whether `value` is a non-empty str of standard base64 (padded, RFC 4648 section 4)."""
    if value.__class__ is not str or not value or len(value) % 4:
        return False
    body = value.rstrip("=")
    if len(value) - len(body) > 2 or not body.isascii():
        return False
    # what is left once the alphabet is deleted, in C (the set's way was ~2 us per box)
    return not body.encode().translate(None, _B64_ALPHABET)


def attachments_fault(attachments: object, e2e: object) -> int:
    """0 when `attachments` is a list of 1-ATTACHMENTS_MAX objects each with a string `fileId`
    (1-ATTACHMENT_ID_MAX characters) of a message without `e2e`, else _F_ATTACHMENTS. Whether
    the files exist and are the sender's is the relay's asynchronous check, not this one."""
    if attachments.__class__ is not list or e2e is not None:
        return _F_ATTACHMENTS
    assert isinstance(attachments, list)
    if not 0 < len(attachments) <= ATTACHMENTS_MAX:
        return _F_ATTACHMENTS
    for item in attachments:
        if item.__class__ is not dict:
            return _F_ATTACHMENTS
        file_id = item.get("fileId")
        if file_id.__class__ is not str or not 0 < len(file_id) <= ATTACHMENT_ID_MAX:
            return _F_ATTACHMENTS
    return 0


def e2e_fault(e2e: object, text: object, ident_max: int) -> int:
    """0 when `e2e` is a valid e2e object of a message whose `text` is absent, else the first
    failed check's number (MESSAGE_FAULTS: the e2e answers). Only shape and size: the boxes
    stay opaque."""
    if e2e.__class__ is not dict:
        return _F_E2E
    assert isinstance(e2e, dict)
    if len(e2e) != 4:  # exactly v, suite, senderDevice, boxes (checked one by one below)
        return _F_E2E
    if text is not None:
        return _F_E2E + 1
    v = e2e.get("v")
    if v.__class__ is not int or v != E2E_VERSION:
        return _F_E2E + 2
    if e2e.get("suite") != E2E_SUITE:
        return _F_E2E + 3
    device = e2e.get("senderDevice")
    if device.__class__ is not str or not 0 < len(device) <= ident_max:
        return _F_E2E + 4
    boxes = e2e.get("boxes")
    if boxes.__class__ is not dict or not 0 < len(boxes) <= E2E_BOXES_MAX:
        return _F_E2E + 5
    for key, box in boxes.items():
        if key.__class__ is not str or not 0 < len(key) <= ident_max or not _base64(box):
            return _F_E2E + 5
    if len(orjson.dumps(e2e)) > E2E_BYTES_MAX:
        return _F_E2E + 6
    return 0


def message_fault(obj: Mapping[str, Any], message_id: object, rules: Rules) -> int:
    """The checks of a `message` frame (or a published message), made once here: 0 when
    `message_id` and the fields of `obj` pass them all, else the first failed one's number
    (MESSAGE_FAULTS names it). `rules` is (message_id_max, ident_max, short_text_max,
    max_text_chars, max_meta_bytes, max_meta_depth, max_frame_depth): the limits, chosen by
    relay.protocol (the last is decode_message's). A `meta` nesting more than max_meta_depth
    levels (_deeper) is refused before its size is measured as orjson writes it, so JSON read
    by orjson is always measured; a published meta orjson cannot write raises its
    JSONEncodeError."""
    id_max, ident_max, short_max, max_text, max_meta, max_depth, _ = rules
    if message_id.__class__ is not str or not 0 < len(message_id) <= id_max:
        return _F_ID
    get = obj.get
    peer = get("recipientId")
    group = get("groupId")
    sender = get("senderId")
    name = get("senderName")
    avatar = get("senderAvatar")
    stamp = get("timestamp")
    # the common case in one expression; the loop below finds the first bad field otherwise
    if not (
        (peer is None or (peer.__class__ is str and 0 < len(peer) <= ident_max))
        and (group is None or (group.__class__ is str and 0 < len(group) <= ident_max))
        and (sender is None or (sender.__class__ is str and 0 < len(sender) <= ident_max))
        and (name is None or (name.__class__ is str and len(name) <= short_max))
        and (avatar is None or (avatar.__class__ is str and len(avatar) <= short_max))
        and (stamp is None or (stamp.__class__ is str and len(stamp) <= short_max))
    ):
        fault = _F_STRINGS
        for value, low, high in (
            (peer, 1, ident_max),
            (group, 1, ident_max),
            (sender, 1, ident_max),
            (name, 0, short_max),
            (avatar, 0, short_max),
            (stamp, 0, short_max),
        ):
            if value is not None:
                if value.__class__ is not str:
                    return fault
                if not low <= len(value) <= high:
                    return fault + 1
            fault += 2
    if (peer is None) == (group is None):
        return _F_ONE_OF
    if "call" in obj:
        return _F_CALL
    text = get("text")
    e2e = get("e2e")
    attachments = get("attachments")
    if attachments is not None:
        fault = attachments_fault(attachments, e2e)
        if fault:
            return fault
    if e2e is not None:
        fault = e2e_fault(e2e, text, ident_max)
        if fault:
            return fault
    elif text is None and attachments is not None:
        pass  # files alone: the text is optional
    elif text.__class__ is not str:
        return _F_TEXT_TYPE
    elif not text:
        return _F_TEXT_EMPTY
    elif len(text) > max_text:
        return _F_TEXT_LONG
    meta = get("meta")
    if meta is not None:
        if not isinstance(meta, dict):
            return _F_META_TYPE
        if _deeper(meta, max_depth):
            return _F_META_DEEP
        if len(orjson.dumps(meta)) > max_meta:
            return _F_META_LONG
    return 0


def decode_message(payload: bytes | str, rules: Rules, frame_cls: type[T]) -> T | Any:
    """A client frame's bytes: a `frame_cls` (MessageFrame: id, text, senderId, recipientId,
    groupId, senderName, senderAvatar, timestamp, meta, ref, e2e, attachments, with ref the id
    when it is not a string, and text "" when e2e or attachments stand in its place) when it is a `message` frame message_fault passes under `rules`, else the decoded
    JSON value (orjson.loads; its JSONDecodeError when not JSON). JSON nesting more than
    `rules[6]` (max_frame_depth, at least 1) objects and arrays raises ValueError, whatever it
    holds. The compiled module reads the usual shape without a dict."""
    obj = orjson.loads(payload)
    if (obj.__class__ is dict or obj.__class__ is list) and _deeper(obj, rules[6]):
        raise ValueError(f"JSON nests deeper than {rules[6]} levels")
    if obj.__class__ is dict and obj.get("type") == "message":
        get = obj.get
        ident = get("id")
        if not message_fault(obj, ident, rules):
            ref = get("ref")
            if ref.__class__ is not str:
                ref = ident
            e2e = get("e2e")
            text = get("text")
            fields = (
                ident,
                "" if text is None else text,
                get("senderId"),
                get("recipientId"),
                get("groupId"),
                get("senderName"),
                get("senderAvatar"),
                get("timestamp"),
                get("meta"),
                ref,
                e2e,
                get("attachments"),
            )
            return record(frame_cls, fields)
    return obj
