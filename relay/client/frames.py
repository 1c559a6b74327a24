"""The client's side of protocol v1's wire format: relay frames to values, values to frames.

Sans-IO and stateless: pure functions over decoded JSON objects (`Frame`) and the values of
model.py. The state (state.py) and the connection (link.py) read and write frames only here.

Invariants:
- `parse_message` never raises: a frame without a string `senderId`, `id` and `text` (or an
  `e2e` object in its place) gives None.
- A frame names a conversation by `groupId` (a group) before `peerId` / `recipientId` (direct).
- `message_frame(msg)` is the same frame for the same message, so a message written again after
  a reconnect carries its first id and the relay stores it once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from relay.client.calls import call_record
from relay.client.files import FileInfo
from relay.client.model import ConversationId, Message, MessageStatus

Frame = dict[str, Any]


def now_iso() -> str:
    """The current UTC time as the protocol writes it: `2026-02-05T10:30:15.123Z`."""
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def decode(raw: str | bytes) -> Frame | None:
    """A relay frame from one WebSocket message; None when it is not a JSON object."""
    try:
        frame = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return frame if isinstance(frame, dict) else None


def auth_frame(
    user_id: str,
    user_name: str | None,
    user_avatar: str | None,
    token: str | None,
    device_id: str | None,
) -> Frame:
    """The `auth` frame that opens a session; `acks: true` asks for `sent` / `failed` answers."""
    frame: Frame = {
        "type": "auth",
        "userId": user_id,
        "userName": user_name,
        "userAvatar": user_avatar,
        "timestamp": now_iso(),
        "acks": True,
    }
    if token is not None:
        frame["token"] = token
    if device_id is not None:
        frame["deviceId"] = device_id
    return frame


def frame_cid(frame: Frame) -> ConversationId | None:
    """The conversation a receipt or a conversation-list item names (`groupId` or `peerId`)."""
    gid = frame.get("groupId")
    if isinstance(gid, str):
        return ConversationId.group(gid)
    pid = frame.get("peerId")
    if isinstance(pid, str):
        return ConversationId.direct(pid)
    return None


def parse_message(frame: Frame, user_id: str) -> Message | None:
    """A `message` frame (live, backlog, history or a list preview) as seen by `user_id`."""
    sender = frame.get("senderId")
    mid = frame.get("id")
    text = frame.get("text")
    e2e = frame.get("e2e")
    if text is None and (isinstance(e2e, dict) or e2e is True):  # encrypted: no text
        text = ""
        e2e = e2e if isinstance(e2e, dict) else {}
    else:
        e2e = None
    attachments = _attachments(frame.get("attachments"))
    if text is None and attachments:  # files alone: no text
        text = ""
    if not isinstance(sender, str) or not isinstance(mid, str) or not isinstance(text, str):
        return None
    gid = frame.get("groupId")
    rid = frame.get("recipientId")
    if isinstance(gid, str):
        cid = ConversationId.group(gid)
    elif sender == user_id and isinstance(rid, str):
        cid = ConversationId.direct(rid)
    else:
        cid = ConversationId.direct(sender)
    outgoing = sender == user_id
    seq = frame.get("seq")
    return Message(
        id=mid,
        sender_id=sender,
        text=text,
        conversation=cid,
        status=MessageStatus.SENT if outgoing else MessageStatus.DELIVERED,
        outgoing=outgoing,
        seq=int(seq) if isinstance(seq, int) else None,
        timestamp=frame.get("timestamp"),
        server_timestamp=frame.get("serverTimestamp"),
        sender_name=frame.get("senderName"),
        sender_avatar=frame.get("senderAvatar"),
        recipient_id=rid if isinstance(rid, str) else None,
        group_id=gid if isinstance(gid, str) else None,
        meta=frame.get("meta") if isinstance(frame.get("meta"), dict) else None,
        e2e=e2e,
        attachments=attachments,
        call=call_record(frame.get("call")),
    )


def _attachments(value: object) -> tuple[FileInfo, ...] | None:
    """A message's `attachments` as FileInfo, skipping any entry not of the contract's shape;
    None when it carries none."""
    if not isinstance(value, list):
        return None
    found = []
    for item in value:
        if not isinstance(item, dict):
            continue
        fid, name, size = item.get("fileId"), item.get("name"), item.get("size")
        mime, sha256 = item.get("mime"), item.get("sha256")
        if (
            isinstance(fid, str)
            and isinstance(name, str)
            and isinstance(size, int)
            and isinstance(mime, str)
            and isinstance(sha256, str)
        ):
            found.append(FileInfo(fid, name, size, mime, sha256))
    return tuple(found) or None


def message_frame(msg: Message) -> Frame:
    """The `message` frame that sends this device's pending message."""
    frame: Frame = {
        "type": "message",
        "id": msg.id,
        "senderId": msg.sender_id,
        "text": msg.text,
        "timestamp": msg.timestamp,
        "status": "pending",
    }
    if msg.sender_name is not None:
        frame["senderName"] = msg.sender_name
    if msg.sender_avatar is not None:
        frame["senderAvatar"] = msg.sender_avatar
    if msg.group_id is not None:
        frame["groupId"] = msg.group_id
    else:
        frame["recipientId"] = msg.recipient_id
    if msg.meta is not None:
        frame["meta"] = msg.meta
    if msg.attachments is not None:  # the relay resolves each fileId; a text is then optional
        frame["attachments"] = [{"fileId": f.file_id} for f in msg.attachments]
        if not msg.text:
            del frame["text"]
    return frame


def receipt_frame(cid: ConversationId, seq: int, status: str) -> Frame:
    """A `delivered` or `read` watermark: everything up to `seq` in the conversation."""
    return {"type": "receipt", **cid.target(), "seq": seq, "status": status}


def typing_frame(cid: ConversationId, active: bool) -> Frame:
    target = {"groupId": cid.id} if cid.is_group else {"recipientId": cid.id}
    return {"type": "typing", **target, "state": "start" if active else "stop"}
